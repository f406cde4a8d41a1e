#!/usr/bin/env bash
# bench/interp/run.sh [BUILD_DIR]: guest MIPS of popek's interpreter on a loop
# program (bench/interp/loop.asm), median of 3 runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
popek=$build/popek
rom=$(mktemp /tmp/popek-bench-XXXX.bin)
trap 'rm -f "$rom"' EXIT
nasm -f bin -w-number-overflow -I"$here/../../tests/guest/" -o "$rom" "$here/loop.asm"
echo "engine  insns        seconds  MIPS"
mips=()
for run in 1 2 3; do
  out=$("$popek" run --firmware "$rom" --memory 8M --stats 2>&1 || true)
  insns=$(awk '/interp.insns/ {print $2}' <<<"$out")
  secs=$(sed -n 's/.*statistics (\([0-9.]*\) s wall.*/\1/p' <<<"$out")
  m=$(awk -v i="$insns" -v s="$secs" 'BEGIN {printf "%.1f", i / s / 1e6}')
  printf "interp  %-12s %-8s %s\n" "$insns" "$secs" "$m"
  mips+=("$m")
done
printf '%s\n' "${mips[@]}" | sort -n | sed -n 2p | xargs printf "median interpreter speed: %s guest MIPS\n"
