#!/bin/bash
# Division and call-heavy work (issue 19): bench/calls/callbench.c (a DIV/IDIV
# loop, recursive fib, a call/ret chain) in the guest under popek bt and QEMU
# TCG, and natively; medians, ratios and issue 19's goals. The harness is
# bench/cpu/cpu.py's (same options: --engines, --runs, --scale, --parts, ...).
here="$(dirname "${BASH_SOURCE[0]}")"
exec python3 -B "$here/../cpu/cpu.py" --source "$here/callbench.c" --goals issue19 "$@"
