#!/bin/bash
# Build popek's second guest: a Debian 12 (bookworm) i386 system with systemd,
# udev, openssh-server, gcc/make/libc6-dev, python3 with its regression tests
# and stress-ng, as a qcow2 image.
#
# debootstrap's first stage runs on the host (--foreign: it only downloads and
# unpacks); the host cannot run i386 programs, so the second stage (dpkg
# configuring every package) runs inside popek on bt: building the image is
# itself a popek workload. The kernel is the default guest's (fetch-guest.sh);
# its modules are copied into the image and its initramfs mounts root=/dev/vda.
#
# Output (in $POPEK_CACHE/../debian when POPEK_CACHE is set, else
# <repo>/cache/debian; git ignores cache/):
#   debian-i386.qcow2   the image (root file system on /dev/vda, ext4, no partition table)
#   id_ed25519[.pub]    the key root's ssh login accepts
#   src/                what was copied into the image's /root (zlib's Debian source, a .deb)
#   build.log           the second stage's console output
#
# Idempotent: the image is rebuilt only when this script, the kernel or the
# package set changes (--force rebuilds). Downloaded packages stay in debs/.
# Usage: scripts/fetch-debian.sh [--force] [--popek PATH] [--engine bt|interp]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
repo="$(cd "$here/.." && pwd)"
GUEST="${POPEK_CACHE:-$repo/cache/guest}"
OUT="${POPEK_DEBIAN_CACHE:-$(dirname "$GUEST")/debian}"
MIRROR="${POPEK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
SIZE=6G          # the ext4 file system (sparse; the qcow2 holds what is used)
RAM=1G           # guest RAM for the second stage
# The package set (on top of debootstrap's minbase: apt, dpkg, coreutils, ...).
PACKAGES="systemd,systemd-sysv,udev,dbus,openssh-server,procps,iproute2,kmod,
gcc,make,libc6-dev,python3,libpython3.11-testsuite,stress-ng,less,ca-certificates,
iputils-ping,netbase,libc-bin,e2fsprogs"
PACKAGES="$(echo "$PACKAGES" | tr -d ' \n')"
# A real C project from Debian's sources, built in the guest by the tests.
SRC_PKG=zlib
# A .deb the tests install with dpkg -i (no network in the guest needed).
EXTRA_DEB=hello

force=0
popek="$repo/build/popek"
engine=bt
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) force=1 ;;
    --popek) popek="$2"; shift ;;
    --engine) engine="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch-debian: unknown argument '$1' (try --help)" >&2; exit 125 ;;
  esac
  shift
done

say() { echo "fetch-debian: $*"; }
die() { echo "fetch-debian: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed (needed: $2; scripts/setup.sh installs it)"; }
need debootstrap "the first stage of the Debian root file system"
need mke2fs "making the ext4 file system"
need ssh-keygen "the guest's login key"
need dpkg-source "unpacking $SRC_PKG's Debian source"
[[ "$(id -u)" -eq 0 ]] || die "debootstrap must run as root (file owners in the image)"
[[ -x "$popek" ]] || die "no popek at $popek (build it: cmake -S . -B build -G Ninja && ninja -C build)"
for f in vmlinuz initrd.img VERSION; do
  [[ -f "$GUEST/$f" ]] || die "$GUEST/$f is missing: run scripts/fetch-guest.sh first"
done
kver="$(cat "$GUEST/VERSION")"
moddir="$GUEST/kernel-root/lib/modules/$kver"
[[ -d "$moddir" ]] || die "$moddir is missing: run scripts/fetch-guest.sh first"

mkdir -p "$OUT/debs" "$OUT/src"
cd "$OUT"
stamp="$( (cat "$self"; echo "$PACKAGES $SRC_PKG $EXTRA_DEB $kver") | sha256sum | cut -d' ' -f1)"
if [[ $force -eq 0 && -f debian-i386.qcow2 && -f image.stamp && "$(cat image.stamp)" == "$stamp" ]]; then
  say "image is up to date: $OUT/debian-i386.qcow2"
  exit 0
fi
t0=$(date +%s)

# --- 1. sources and extra files, fetched on the host ------------------------------
# A private apt configuration with deb-src lines, so `apt-get source` works
# without touching the host's apt sources.
apt_private=(-o "Dir::Etc::SourceList=$OUT/apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$OUT/apt/lists" -o "Dir::Cache=$OUT/apt/cache" -o "Dir::State::status=/var/lib/dpkg/status"
  -o "APT::Architectures::=i386")
if ! ls src/"$SRC_PKG"-*/configure >/dev/null 2>&1 || ! ls src/"${EXTRA_DEB}"_*_i386.deb >/dev/null 2>&1; then
  mkdir -p apt/lists/partial apt/cache/archives/partial
  cat >apt/sources.list <<EOF
deb $MIRROR $SUITE main
deb-src $MIRROR $SUITE main
EOF
  say "apt-get update (private lists in $OUT/apt)"
  apt-get "${apt_private[@]}" update -q >apt-update.log 2>&1 || { cat apt-update.log >&2; die "apt-get update failed (network?)"; }
fi
if ! ls src/"$SRC_PKG"-*/configure >/dev/null 2>&1; then
  say "downloading the Debian source of $SRC_PKG"
  rm -rf src/"$SRC_PKG"*
  (cd src && apt-get "${apt_private[@]}" source -q --download-only "$SRC_PKG" >../source.log 2>&1) ||
    { cat source.log >&2; die "apt-get source $SRC_PKG failed"; }
  (cd src && dpkg-source --no-check -x "$SRC_PKG"_*.dsc >>../source.log 2>&1) || die "dpkg-source -x failed (see $OUT/source.log)"
fi
srcdir="$(ls -d src/"$SRC_PKG"-*/ | head -n1)"; srcdir="${srcdir%/}"
if ! ls src/"${EXTRA_DEB}"_*_i386.deb >/dev/null 2>&1; then
  say "downloading $EXTRA_DEB:i386"
  (cd src && apt-get "${apt_private[@]}" download -q "$EXTRA_DEB:i386" >../download.log 2>&1) ||
    { cat download.log >&2; die "apt-get download $EXTRA_DEB:i386 failed"; }
fi
[[ -f id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C popek-debian-guest -f id_ed25519

# --- 2. first stage on the host ----------------------------------------------------
root="$OUT/root.tmp"
rm -rf "$root"
say "debootstrap --foreign $SUITE i386 (packages cached in $OUT/debs)"
debootstrap --foreign --arch=i386 --variant=minbase --cache-dir="$OUT/debs" \
  --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >debootstrap.log 2>&1 ||
  { tail -20 debootstrap.log >&2; die "debootstrap (first stage) failed; see $OUT/debootstrap.log"; }

# The kernel's modules (the kernel itself boots from the host side: --kernel).
mkdir -p "$root/usr/lib/modules"
cp -a "$moddir" "$root/usr/lib/modules/"
# Files for the tests.
mkdir -p "$root/root/src" "$root/root/.ssh"
cp -a "$srcdir" "$root/root/src/$SRC_PKG"
cp src/"${EXTRA_DEB}"_*_i386.deb "$root/root/src/"
install -m 600 id_ed25519.pub "$root/root/.ssh/authorized_keys"
chmod 700 "$root/root/.ssh"

# Configuration a fresh install would get from the installer.
echo debian-popek >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-popek\n' >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'EOF'
# popek's Debian guest: the whole disk /dev/vda is the root file system
/dev/vda  /  ext4  errors=remount-ro  0  1
EOF
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"
# systemd's 90 s job timeouts are tuned for hardware: on popek's interpreter
# (about 30x slower than bt) udev announces /dev/ttyS0 and networkd starts
# later than that, and the serial getty's dependency fails. Ten minutes.
mkdir -p "$root/etc/systemd/system.conf.d"
cat >"$root/etc/systemd/system.conf.d/50-popek-slow-cpu.conf" <<'EOF'
[Manager]
DefaultTimeoutStartSec=10min
DefaultDeviceTimeoutSec=10min
EOF
# What the installer writes (pam_env reads it at every login).
mkdir -p "$root/etc/default"
echo "LANG=C.UTF-8" >"$root/etc/default/locale"

# The second stage, run as init by the guest's kernel (init=/popek-stage2).
cat >"$root/popek-stage2" <<EOF
#!/bin/sh
# Run inside popek by scripts/fetch-debian.sh: debootstrap's second stage and
# the configuration that needs the guest's own programs. Prints
# POPEK-STAGE2-OK on success, then powers off.
KVER=$kver
EOF
cat >>"$root/popek-stage2" <<'EOF'
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
# Power off with the reboot system call (systemd is not running: -ff skips it).
off() { sync; mount -o remount,ro / 2>/dev/null; systemctl --force --force poweroff; exit 1; }
fail() { echo "POPEK-STAGE2-FAILED: $*"; off; }
echo "popek-stage2: debootstrap --second-stage"
/debootstrap/debootstrap --second-stage || fail "debootstrap --second-stage (see /debootstrap/debootstrap.log)"
echo "popek-stage2: configuring"
depmod -a "$KVER" || fail depmod
passwd -d root || fail "passwd -d root"
systemctl enable systemd-networkd.service || fail "enabling systemd-networkd"
systemctl enable ssh.service 2>/dev/null || true
ssh-keygen -A || fail "ssh host keys"
apt-get clean
rm -f /popek-stage2
sync
echo "POPEK-STAGE2-OK"
off
EOF
chmod 755 "$root/popek-stage2"

# --- 3. the file system --------------------------------------------------------
say "mke2fs -d (ext4, $SIZE sparse)"
rm -f image.raw
mke2fs -q -t ext4 -L popek-root -d "$root" image.raw "$SIZE" || die "mke2fs failed"
rm -rf "$root"

# --- 4. second stage inside popek ------------------------------------------------
say "second stage inside popek ($engine; progress below; full log in $OUT/build.log)"
t1=$(date +%s)
set +e
"$popek" run --engine "$engine" -m "$RAM" --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.img" \
  --drive "file=$OUT/image.raw,format=raw" \
  --append "console=ttyS0 root=/dev/vda rw init=/popek-stage2 quiet panic=-1" </dev/null 2>&1 |
  tee build.log | grep --line-buffered -E "^popek-stage2|^I: (Configuring|Base system)|POPEK-STAGE2|error|Error"
status=${PIPESTATUS[0]}
set -e
say "second stage: $(( $(date +%s) - t1 )) s"
grep -q POPEK-STAGE2-OK build.log || die "the second stage did not finish (popek exit status $status); see $OUT/build.log"
[[ $status -eq 0 ]] || die "popek ended with status $status after the second stage; see $OUT/build.log"

# --- 5. qcow2 ---------------------------------------------------------------------
say "converting to qcow2"
"$popek" img convert -O qcow2 image.raw debian-i386.qcow2.tmp >/dev/null || die "popek img convert failed"
mv -f debian-i386.qcow2.tmp debian-i386.qcow2
rm -f image.raw
echo "$stamp" >image.stamp
say "ready: $OUT/debian-i386.qcow2 ($(du -h debian-i386.qcow2 | cut -f1) used) in $(( $(date +%s) - t0 )) s"
