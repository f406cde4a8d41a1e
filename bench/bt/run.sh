#!/bin/bash
# The Performance figures of issue 4 (the bt engine) in one run on one machine:
#   1. boot: bench/boot/run.sh (wall time to POPEK-READY and to power-off);
#   2. CPU work in the guest: bench/cpu/run.sh (cpubench parts vs native).
# By default, as the issue asks: boot with popek bt, popek interp and QEMU TCG;
# CPU work with popek bt, QEMU TCG and native. Each prints the issue's goals
# as met / not met next to the measured ratios.
#
# Usage: bench/bt/run.sh [--engines LIST] [--runs N] [--popek PATH]
#                        [--timeout S] [--memory M] [--qemu-cpu MODEL]
#                        [--keep-logs DIR] [--scale S] [--parts LIST]
#                        [--clock guest|host] [--native-cflags FLAGS]
#                        [--boot-runs N] [--cpu-runs N]
# --scale, --parts, --clock and --native-cflags go to the CPU figure only;
# --boot-runs and --cpu-runs set --runs for one figure; the rest go to both
# (see their --help). Interp is slow (about 50 s per boot, ~60x native in the
# CPU work): with --engines including interp, use a small --scale (e.g. 0.02).
# Exit status: 0 if both figures were measured without failures, else 1.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
boot=() cpu=() boot_last=() cpu_last=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --scale|--parts|--clock|--native-cflags) cpu+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --boot-runs) boot_last=(--runs "${2:?$1 needs a value}"); shift 2 ;;
    --cpu-runs) cpu_last=(--runs "${2:?$1 needs a value}"); shift 2 ;;
    --*) boot+=("$1" "${2:?$1 needs a value}"); cpu+=("$1" "$2"); shift 2 ;;
    *) echo "bench/bt/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
boot+=("${boot_last[@]+"${boot_last[@]}"}") cpu+=("${cpu_last[@]+"${cpu_last[@]}"}")
status=0
echo "=== 1. Boot ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
"$here/../boot/run.sh" "${boot[@]+"${boot[@]}"}" || status=1
echo
echo "=== 2. CPU work in the guest ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
"$here/../cpu/run.sh" "${cpu[@]+"${cpu[@]}"}" || status=1
exit $status
