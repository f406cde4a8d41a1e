#!/usr/bin/env bash
# The README's first command: installs what is missing, builds popek, fetches
# the default Debian i386 guest and boots it. Extra arguments go to `popek run`.
#   scripts/run.sh [--debian] [popek run options...]
# --debian boots the Debian system guest instead (systemd, ssh on host port
# 2222, gcc, python3), building its image first when it is missing
# (scripts/fetch-debian.sh; several minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
debian=0
if [[ "${1:-}" == "--debian" ]]; then debian=1; shift; fi
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build popek
./scripts/fetch-guest.sh
cache=${POPEK_CACHE:-$PWD/cache/guest}
if [[ $debian -eq 1 ]]; then
  ./scripts/fetch-debian.sh
  dcache=${POPEK_DEBIAN_CACHE:-$(dirname "$cache")/debian}
  echo "run.sh: root logs in on this console without a password; or: ssh -p 2222 -i $dcache/id_ed25519 root@127.0.0.1"
  exec ./build/popek run --kernel "$cache/vmlinuz" --initrd "$cache/initrd.img" \
    --append "root=/dev/vda console=ttyS0" --memory 1G \
    --drive "file=$dcache/debian-i386.qcow2" --netdev "user,hostfwd=tcp:127.0.0.1:2222-:22" "$@"
fi
exec ./build/popek run --kernel "$cache/vmlinuz" --initrd "$cache/initrd.img" \
  --append "console=ttyS0" --memory 256M "$@"
