#!/bin/bash
# CPU-work benchmark: bench/cpu/cpubench.c inside the guest under popek's
# engines and QEMU TCG, and natively; medians and ratios. See bench/cpu/cpu.py
# (or --help).
exec python3 -B "$(dirname "${BASH_SOURCE[0]}")/cpu.py" "$@"
