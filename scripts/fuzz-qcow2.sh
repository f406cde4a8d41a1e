#!/usr/bin/env bash
# Builds the qcow2 libFuzzer target (src/block/fuzz/qcow2_fuzz.cpp) with clang
# and runs it for a while on a seed corpus it generates.
# Usage: scripts/fuzz-qcow2.sh [OUT_DIR] [SECONDS]
#   OUT_DIR  where the binary, seeds, corpus and crash files go (default build-fuzz)
#   SECONDS  run time, bounded by -max_total_time (default 25)
# Exit status is libFuzzer's: 0 when nothing was found. A crashing input is
# left in OUT_DIR as crash-* for reproduction: OUT_DIR/qcow2_fuzz FILE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build-fuzz}
secs=${2:-25}
cxx=$(command -v clang++ || command -v clang++-14 || true)
if [ -z "$cxx" ]; then
  echo "fuzz-qcow2.sh: clang++ not found (Debian packages clang and libclang-rt-14-dev)" >&2
  exit 1
fi
mkdir -p "$out"
bin="$out/qcow2_fuzz"
srcs=(
  "$root/src/block/fuzz/qcow2_fuzz.cpp"
  "$root/src/block/backend.cpp" "$root/src/block/file.cpp" "$root/src/block/raw.cpp"
  "$root/src/block/open.cpp" "$root/src/block/compress.cpp"
  "$root/src/block/qcow2/header.cpp" "$root/src/block/qcow2/qcow2.cpp"
  "$root/src/block/qcow2/refcount.cpp" "$root/src/block/qcow2/check.cpp"
  "$root/src/base/log.cpp" "$root/src/base/counters.cpp"
)
if [ ! -x "$bin" ] || [ -n "$(find "$root/src/block" "$root/src/base" -newer "$bin" \
      \( -name '*.cpp' -o -name '*.h' \) -print -quit)" ]; then
  echo "fuzz-qcow2.sh: building $bin with $cxx"
  zlib=()
  if [ -e /usr/include/zlib.h ]; then zlib=(-DPOPEK_HAVE_ZLIB=1 -lz); fi
  "$cxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root/src" "${srcs[@]}" "${zlib[@]}" -lzstd -lpthread -o "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi
seeds="$out/seeds"
corpus="$out/corpus"
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus"
POPEK_FUZZ_WRITE_SEEDS="$seeds" "$bin"
# More seeds from QEMU itself when it is installed: v2, compression, zero
# clusters, refcount widths, a backing file name.
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
  q=0
  for opts in "cluster_size=512" "cluster_size=512,compat=0.10" "cluster_size=512,refcount_bits=1" \
              "cluster_size=1k,refcount_bits=64" "cluster_size=512,compression_type=zstd" \
              "cluster_size=4k,lazy_refcounts=on"; do
    f="$seeds/qemu-seed-$q.qcow2"
    qemu-img create -q -f qcow2 -o "$opts" "$f" 256k 2>/dev/null || continue
    qemu-io -c 'write -P 0x11 0 1k' -c 'write -z 8k 2k' -c 'write -c -P 0x22 64k 4k' \
      -c 'discard 2k 512' "$f" >/dev/null 2>&1 || true
    q=$((q + 1))
  done
  qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw "$seeds/qemu-seed-backing.qcow2" 64k \
    2>/dev/null || true
fi
echo "fuzz-qcow2.sh: $(ls "$seeds" | wc -l) seeds, running for ${secs}s"
cd "$out"
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
  -print_final_stats=1 "$corpus" "$seeds" 2>&1 | tee "$out/fuzz.log" | grep -v '^#[0-9]*.*\(NEW\|REDUCE\|pulse\)' || true
status=${PIPESTATUS[0]}
grep -E 'stat::number_of_executed_units|stat::peak_rss' "$out/fuzz.log" || true
exit "$status"
