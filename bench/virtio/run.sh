#!/bin/bash
# virtio throughput: guest dd to/from /dev/vda (raw) and /dev/vdb (qcow2) and
# TCP host<->guest through user-mode networking, on popek's engines and on
# qemu-system-i386 TCG with virtio devices, in one run; prints a table with
# ratios. See bench/virtio/bench.py (or --help).
exec python3 -B "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
