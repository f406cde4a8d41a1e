#!/usr/bin/env bash
# The test command: installs what is missing, builds popek (-O2 -g) and runs the
# whole ctest suite (unit, firmware, oracle, block, fuzz, and the Debian guest
# boot), then builds once more with ASan+UBSan and runs the unit tests there.
# The Debian guest is fetched into ./cache/guest (or $POPEK_CACHE), and the
# Debian system image built into ./cache/debian (scripts/fetch-debian.sh).
# Environment: POPEK_JOBS (default: number of CPUs), POPEK_SKIP_ASAN=1.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${POPEK_JOBS:-$(nproc)}

./scripts/setup.sh
# The guest tests boot the default Debian guest; fetch it (cached after the first time).
./scripts/fetch-guest.sh

echo "== build (release: -O2 -g) =="
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build -j"$jobs"
# The Debian system guest's image (tests/debian) is built with popek itself;
# cached after the first time. Without it (no network, say) its tests skip.
./scripts/fetch-debian.sh || echo "test.sh: warning: the Debian system image could not be built; tests/debian will skip"
echo "== tests (release) =="
ctest --test-dir build -j"$jobs" --output-on-failure

if [ "${POPEK_SKIP_ASAN:-0}" != 1 ]; then
  echo "== build (ASan+UBSan) =="
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
        -DPOPEK_SANITIZE=ON >/dev/null
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
