#!/bin/bash
# Boot benchmark: popek's engines and QEMU TCG, wall time to POPEK-READY and to
# power-off, medians and ratios. See bench/boot/boot.py (or --help).
exec python3 -B "$(dirname "${BASH_SOURCE[0]}")/boot.py" "$@"
