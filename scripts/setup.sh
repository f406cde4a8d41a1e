#!/usr/bin/env bash
# Installs the Debian 12 packages popek needs to build, test and benchmark.
# Idempotent; run as root (or through sudo). `apt-get update` may print an error
# about i386 security indices on some mirrors: that is harmless and not fatal.
set -uo pipefail

PKGS=(
  # build
  build-essential cmake ninja-build g++ pkg-config
  # libraries popek links
  libcli11-dev libzydis-dev libxbyak-dev libzstd-dev liblz4-dev libslirp-dev zlib1g-dev python3
  nlohmann-json3-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev
  gcc-multilib nasm
  python3-matplotlib  # bench/nano: the bar chart (PNG)
  # peers and tools used by tests only (never part of popek)
  qemu-user qemu-system-x86 qemu-utils
  acpica-tools  # iasl -d checks the ACPI tables (acpi_tables_test; skipped without it)
  # guest fetching and initramfs building
  cpio xz-utils zstd dpkg-dev ca-certificates
  # the Debian system guest (scripts/fetch-debian.sh; tests/debian: ssh)
  debootstrap e2fsprogs openssh-client
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "setup.sh: must run as root (or have sudo) to install packages" >&2; exit 1; fi
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# The default guest is i386 Debian; apt-get download needs the architecture known.
if ! dpkg --print-foreign-architectures | grep -qx i386; then
  echo "setup.sh: adding the i386 architecture to dpkg (for apt-get download of the guest)"
  $SUDO dpkg --add-architecture i386
  need_update=1
fi

if [ ${#missing[@]} -gt 0 ] || [ "${need_update:-0}" = 1 ] || [ "${POPEK_APT_UPDATE:-0}" = 1 ]; then
  echo "setup.sh: apt-get update"
  $SUDO apt-get update || echo "setup.sh: apt-get update reported errors (continuing; i386 security index errors are harmless)"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" || {
    echo "setup.sh: apt-get install failed" >&2; exit 1; }
else
  echo "setup.sh: all packages present"
fi
