#!/bin/bash
# x87 floating-point work: bench/x87/x87bench.c (an FFT, a double matrix
# product, libm, printf/strtod of doubles, double <-> int conversions) in the
# guest, whose CPU has no SSE (gcc -m32 code is x87 code), under popek bt with
# its inline x87 (bt) and without it (bt-nox87: every x87 instruction a callout
# into the semantics) and QEMU TCG, and natively; medians and ratios. The
# harness is bench/cpu/cpu.py's (same options: --engines, --runs, --scale,
# --parts, ...).
here="$(dirname "${BASH_SOURCE[0]}")"
exec python3 -B "$here/../cpu/cpu.py" --source "$here/x87bench.c" --goals x87 \
  --engines bt,bt-nox87,qemu "$@"
