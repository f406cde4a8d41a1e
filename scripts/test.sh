#!/usr/bin/env bash
# The test command: installs what is missing, builds popek (-O2 -g) and runs the
# whole ctest suite (unit, firmware, oracle, block, fuzz, and the Debian guest
# boot), then builds once more with ASan+UBSan and runs the unit tests there.
# The Debian guest is fetched into ./cache/guest (or $POPEK_CACHE), and the
# Debian system image built into ./cache/debian (scripts/fetch-debian.sh).
# Environment: POPEK_JOBS (default: number of CPUs), POPEK_SKIP_ASAN=1.
#
# Order, for the wall time on two cores: the Debian image's build (its second
# stage is one popek process: one core) runs beside the tests that do not need
# it; the ASan build (one job) beside the Debian system tests (two long popek
# processes, one of which ends early). Each overlapped step's output is shown
# when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${POPEK_JOBS:-$(nproc)}
asan=$([ "${POPEK_SKIP_ASAN:-0}" != 1 ] && echo 1 || echo 0)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

./scripts/setup.sh
# The guest tests boot the default Debian guest; fetch it (cached after the first time).
./scripts/fetch-guest.sh

echo "== build (release: -O2 -g) =="
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$jobs"

# The Debian system guest's image (tests/debian) is built with popek itself;
# cached after the first time. Without it (no network, say) its tests skip.
echo "== the Debian system image (scripts/fetch-debian.sh, beside the first tests; log at the end) =="
./scripts/fetch-debian.sh >"$logs/fetch-debian.log" 2>&1 &
fetch_pid=$!
echo "== tests (release, all but the Debian system's) =="
status=0
ctest --test-dir build -j"$jobs" --output-on-failure -LE debian || status=$?
fetch_status=0
wait "$fetch_pid" || fetch_status=$?
echo "== fetch-debian (exit status $fetch_status) =="
cat "$logs/fetch-debian.log"
[ "$fetch_status" = 0 ] || echo "test.sh: warning: the Debian system image could not be built; tests/debian will skip"

if [ "$asan" = 1 ]; then
  echo "== build (ASan+UBSan, beside the Debian system tests; log below) =="
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
        -DPOPEK_SANITIZE=ON >/dev/null
  ninja -C build-asan -j1 >"$logs/asan-build.log" 2>&1 &
  asan_pid=$!
fi
echo "== tests (release, the Debian system's) =="
ctest --test-dir build -j"$jobs" --output-on-failure -L debian || status=$?
[ "$status" = 0 ] || { echo "test.sh: release tests failed"; exit "$status"; }

if [ "$asan" = 1 ]; then
  asan_status=0
  wait "$asan_pid" || asan_status=$?
  echo "== build (ASan+UBSan): $(tail -1 "$logs/asan-build.log") =="
  if [ "$asan_status" != 0 ]; then cat "$logs/asan-build.log"; exit "$asan_status"; fi
  ninja -C build-asan -j"$jobs"
  echo "== tests (ASan+UBSan, label unit; the fuzzers shorter, firmware on interp, bt, lockstep and switching) =="
  # The release run above has the full counts and every variant; this one looks
  # for memory errors on the same paths, at a fraction of the time (ASan at -O1
  # runs several times slower; the kvm variants wait on KVM's emulator).
  POPEK_FUZZ_SEQUENCES=1500 POPEK_FUZZ_MMX_SEQUENCES=300 POPEK_FUZZ_X87_SEQUENCES=400 \
  POPEK_FUZZ_FRAME_SEQUENCES=500 POPEK_SWITCH_FUZZ_SEQUENCES=200 POPEK_PM_FUZZ_SEQUENCES=600 \
  POPEK_PM_FUZZ_KVM_SEQUENCES=10 POPEK_KVM_FUZZ_SEQUENCES=10 \
    ctest --test-dir build-asan -j"$jobs" -L unit --output-on-failure \
      -E '^guest_fw_.*_(bt1|btnochain|bttiered|switchkvm|kvm)$'
fi
echo "== all tests passed =="
