#!/usr/bin/env bash
# The README's first command: installs what is missing, builds popek, fetches
# the default Debian i386 guest and boots it. Extra arguments go to `popek run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build popek
./scripts/fetch-guest.sh
cache=${POPEK_CACHE:-$PWD/cache/guest}
exec ./build/popek run --kernel "$cache/vmlinuz" --initrd "$cache/initrd.img" \
  --append "console=ttyS0" --memory 256M "$@"
