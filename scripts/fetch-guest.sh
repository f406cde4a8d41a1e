#!/bin/bash
# Fetch popek's default guest: Debian 12's stock i686 kernel and busybox-static
# (i386), downloaded with `apt-get download` (never installed), plus an
# initramfs built here whose /init mounts proc/sys/devtmpfs, prints POPEK-READY
# and gives a shell on the console. With ACPI (a power button in
# /sys/bus/acpi) it runs busybox's acpid, which powers off when the button is
# pressed (QMP system_powerdown, on popek or QEMU).
#
# Output (in $POPEK_CACHE, default <repo>/cache/guest, which git ignores):
#   vmlinuz      the kernel (bzImage)
#   initrd.img   the initramfs (newc cpio, gzip; reproducible bytes)
#   VERSION      the kernel version, e.g. 6.1.0-50-686
#
# Idempotent: downloaded packages and their extraction are reused; the initramfs
# is rebuilt when this script, the kernel or busybox changes.
# Usage: scripts/fetch-guest.sh [--force]   (--force rebuilds the initramfs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
repo="$(cd "$here/.." && pwd)"
CACHE="${POPEK_CACHE:-$repo/cache/guest}"
META_PKG="linux-image-686:i386"
BUSYBOX_PKG="busybox-static:i386"
# Virtio drivers carried in the initramfs (loaded only when a virtio PCI device
# exists: popek run --drive/--netdev/--rng). Missing ones (built in, or absent in this kernel) are skipped.
VIRTIO_MODULES="virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev
  virtio_blk virtio_net net_failover failover virtio_rng virtio_console"
# Debian builds ext4 (which also mounts ext2/ext3) as a module; loaded only when
# a virtio-blk disk exists, so that /dev/vda can be mounted at /mnt.
DISK_MODULES="crc32c_generic ext4"
# The ACPI power button driver (reports KEY_POWER on an input device) and the
# input event interface busybox acpid reads it from; loaded only when ACPI
# shows a power button.
ACPI_MODULES="evdev button"

force=0
[[ "${1:-}" == "--force" ]] && force=1

say() { echo "fetch-guest: $*"; }
die() { echo "fetch-guest: error: $*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed (needed: $2)"; }
need dpkg "architecture setup and package extraction"
need apt-get "downloading Debian packages"
need apt-cache "resolving the kernel package name"
need cpio "building the initramfs"
need gzip "compressing the initramfs"
need sha256sum "tracking changes"

mkdir -p "$CACHE/debs"
cd "$CACHE"

# --- 1. dpkg must know i386 -----------------------------------------------------
apt_updated=0
apt_update() {
  say "running apt-get update (an error about i386 security lists is harmless)"
  apt-get update -q >/dev/null 2>"$CACHE/apt-update.log" ||
    say "apt-get update reported errors (see $CACHE/apt-update.log); continuing"
  apt_updated=1
}
if ! dpkg --print-foreign-architectures | grep -qx i386 &&
   [[ "$(dpkg --print-architecture)" != i386 ]]; then
  say "adding the i386 architecture to dpkg"
  dpkg --add-architecture i386 || die "dpkg --add-architecture i386 failed (are you root?)"
  apt_update
fi

# --- 2. resolve the kernel package behind the metapackage ------------------------
resolve_kernel_pkg() {
  apt-cache depends "$META_PKG" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ :]*\)\(:i386\)\{0,1\}$/\1/p' | head -n1
}
kpkg="$(resolve_kernel_pkg || true)"
if [[ -z "$kpkg" && $apt_updated -eq 0 ]]; then
  apt_update
  kpkg="$(resolve_kernel_pkg || true)"
fi
if [[ -z "$kpkg" ]]; then
  # Offline, or the lists lost i386: fall back to what is already cached.
  cached="$(ls debs/linux-image-*-686_*_i386.deb 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$cached" ]] || die "cannot resolve the package behind $META_PKG (apt-cache depends found nothing; is the network up and i386 in apt's lists?)"
  kpkg="$(basename "$cached" | cut -d_ -f1)"
  say "cannot resolve $META_PKG now; using cached $kpkg"
fi
say "kernel package: $kpkg:i386"

# --- 3. download (never install) -------------------------------------------------
# Returns the path of the cached .deb for package $1 (no arch suffix), downloading
# it if needed.
fetch_deb() {
  local pkg="$1" deb
  deb="$(ls "debs/${pkg}_"*_i386.deb 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -z "$deb" ]]; then
    say "downloading $pkg:i386 with apt-get download" >&2
    (cd debs && apt-get download -q "$pkg:i386" >"../download-$pkg.log" 2>&1) ||
      { cat "download-$pkg.log" >&2; die "apt-get download $pkg:i386 failed (network? apt lists?)"; }
    deb="$(ls "debs/${pkg}_"*_i386.deb 2>/dev/null | sort -V | tail -n1 || true)"
    [[ -n "$deb" ]] || die "apt-get download $pkg:i386 reported success but no .deb is in $CACHE/debs"
  else
    say "cached: $deb" >&2
  fi
  echo "$deb"
}
kdeb="$(fetch_deb "$kpkg")"
bdeb="$(fetch_deb busybox-static)"

# --- 4. extract ------------------------------------------------------------------
# extract DEB DIR: unpack once; a stamp names the .deb that was unpacked.
extract() {
  local deb="$1" dir="$2"
  if [[ -f "$dir/.extracted" && "$(cat "$dir/.extracted")" == "$(basename "$deb")" ]]; then
    return
  fi
  say "extracting $(basename "$deb")"
  rm -rf "$dir"
  mkdir -p "$dir"
  dpkg-deb -x "$deb" "$dir" || die "dpkg-deb -x $deb failed (corrupt download? delete it and rerun)"
  basename "$deb" >"$dir/.extracted"
}
extract "$kdeb" kernel-root
extract "$bdeb" busybox-root

kimg="$(ls kernel-root/boot/vmlinuz-* 2>/dev/null | head -n1 || true)"
[[ -n "$kimg" ]] || die "$kdeb holds no /boot/vmlinuz-*"
kver="${kimg##*/vmlinuz-}"
bb="busybox-root/bin/busybox"
[[ -x "$bb" ]] || die "$bdeb holds no /bin/busybox"
moddir="$CACHE/kernel-root/lib/modules/$kver"
[[ -d "$moddir/kernel" ]] || die "$kdeb has no modules for $kver"

cp -f "$kimg" vmlinuz.tmp && mv -f vmlinuz.tmp vmlinuz
echo "$kver" >VERSION.tmp && mv -f VERSION.tmp VERSION
say "kernel version: $kver ($(stat -c %s vmlinuz) bytes)"

# --- 5. the initramfs --------------------------------------------------------------
stamp="$(cat "$self" "$kdeb" "$bdeb" | sha256sum | cut -d' ' -f1)"
if [[ $force -eq 0 && -f initrd.img && -f initrd.stamp && "$(cat initrd.stamp)" == "$stamp" ]]; then
  say "initramfs is up to date: $CACHE/initrd.img"
  say "ready: vmlinuz initrd.img VERSION in $CACHE"
  exit 0
fi

say "building the initramfs"
root="$CACHE/initramfs.tmp"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,newroot,tmp,root,etc,run,var/log}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"

# The applet list is taken from busybox itself when this host can run i386
# binaries (natively or through qemu-i386); otherwise /init makes the links at
# boot (busybox --install -s).
applets="$("$bb" --list-full 2>/dev/null || true)"
if [[ -z "$applets" ]] && command -v qemu-i386 >/dev/null 2>&1; then
  applets="$(qemu-i386 "$bb" --list-full 2>/dev/null || true)"
fi
if [[ -n "$applets" ]]; then
  while read -r a; do
    [[ -z "$a" || "$a" == bin/busybox ]] && continue
    mkdir -p "$root/$(dirname "$a")"
    ln -sf /bin/busybox "$root/$a"
  done <<<"$applets"
  say "busybox: $(wc -l <<<"$applets") applet links"
else
  say "this host cannot run the i386 busybox; links are made by /init at boot"
fi
ln -sf busybox "$root/bin/sh"

# Virtio modules and their dependencies. A .deb ships no modules.dep (depmod
# runs at install time, and this host may have no kmod), so the dependencies
# are read from each module's own .modinfo section ("depends=a,b").
declare -A modpath=()
while IFS= read -r f; do
  n="${f##*/}"; n="${n%.ko*}"; n="${n//-/_}"
  modpath["$n"]="${f#"$moddir"/}"
done < <(find "$moddir/kernel" -name '*.ko*' | LC_ALL=C sort)
mod_deps() {  # names of the modules that module $1 depends on
  local f="$moddir/${modpath[$1]}" cat=cat
  case "$f" in *.xz) cat="xz -dc" ;; *.zst) cat="zstd -qdc" ;; *.gz) cat="gzip -dc" ;; esac
  $cat "$f" | tr '\0' '\n' | grep -a -m1 '^depends=' | cut -d= -f2 | tr ',' ' ' | tr '-' '_'
}
mdst="$root/lib/modules/$kver"
mkdir -p "$mdst"
: >"$mdst/modules.dep"
declare -A copied=()
# add_group FILE MODULE...: copy the modules and their dependencies, and list
# them in load order (dependencies first) in $mdst/FILE.
add_group() {
  local file="$1" m p dst d dp deps
  shift
  declare -gA visited=()
  order=()
  : >"$mdst/$file"
  for m in "$@"; do
    if [[ -n "${modpath[$m]:-}" ]]; then
      visit "$m"
    elif grep -q "/${m}.ko" "$moddir/modules.builtin" 2>/dev/null; then
      say "module $m is built into the kernel"
    else
      say "module $m: not in this kernel, skipped"
    fi
  done
  for m in "${order[@]}"; do
    p="${modpath[$m]}"
    dst="${p%.xz}"; dst="${dst%.zst}"; dst="${dst%.gz}"
    echo "$dst" >>"$mdst/$file"
    [[ -n "${copied[$m]:-}" ]] && continue
    copied["$m"]=1
    mkdir -p "$mdst/$(dirname "$dst")"
    case "$p" in
      *.xz) xz -dc "$moddir/$p" >"$mdst/$dst" ;;
      *.zst) zstd -qdc "$moddir/$p" >"$mdst/$dst" ;;
      *.gz) gzip -dc "$moddir/$p" >"$mdst/$dst" ;;
      *) cp "$moddir/$p" "$mdst/$dst" ;;
    esac
    deps=""
    for d in $(mod_deps "$m"); do
      [[ -n "${modpath[$d]:-}" ]] || continue
      dp="${modpath[$d]}"; dp="${dp%.xz}"; dp="${dp%.zst}"; dp="${dp%.gz}"
      deps="$deps $dp"
    done
    echo "$dst:$deps" >>"$mdst/modules.dep"
  done
  say "modules for $file: ${order[*]}"
}
visit() {  # depth-first: dependencies before the module
  local m="$1" d
  [[ -n "${visited[$m]:-}" ]] && return
  visited["$m"]=1
  for d in $(mod_deps "$m"); do
    [[ -n "${modpath[$d]:-}" ]] && visit "$d"
  done
  order+=("$m")
}
# shellcheck disable=SC2086
add_group load-order $VIRTIO_MODULES
# shellcheck disable=SC2086
add_group load-order-disk $DISK_MODULES
# shellcheck disable=SC2086
add_group load-order-acpi $ACPI_MODULES

cat >"$root/init" <<EOF
#!/bin/sh
# popek default guest /init (generated by scripts/fetch-guest.sh)
KVER=$kver
EOF
cat >>"$root/init" <<'EOF'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=${TERM:-linux}
/bin/busybox mount -t proc proc /proc
# Applet links (busybox --install needs /proc/self/exe); skipped when the
# initramfs already has them.
[ -e /bin/mount ] || /bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs -o mode=755 dev /dev
mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620 devpts /dev/pts 2>/dev/null
hostname popek

# The ACPI power button (Linux's fixed-feature LNXPWRBN device): its driver
# turns a press into KEY_POWER, busybox acpid runs /etc/acpi/power-button.
if [ -d /sys/bus/acpi/devices/LNXPWRBN:00 ] && [ -f /lib/modules/$KVER/load-order-acpi ]; then
  while read -r m; do
    insmod /lib/modules/$KVER/$m >/dev/null 2>&1
  done </lib/modules/$KVER/load-order-acpi
  # Not when handing over to a root file system (root=): its own init (systemd's
  # logind) answers the button there, and acpid would outlive switch_root.
  case " $(cat /proc/cmdline) " in
    *" root="*) ;;
    *) acpid -l /var/log/acpid.log -p /run/acpid.pid ;;
  esac
fi

# Virtio drivers, only when a virtio PCI device (vendor 0x1af4) exists.
for v in /sys/bus/pci/devices/*/vendor; do
  if [ -r "$v" ] && [ "$(cat "$v")" = 0x1af4 ]; then
    if [ -f /lib/modules/$KVER/load-order ]; then
      while read -r m; do
        insmod /lib/modules/$KVER/$m >/dev/null 2>&1
      done </lib/modules/$KVER/load-order
    fi
    break
  fi
done
# A virtio-blk disk (device id 0x1001 legacy, 0x1042 modern): wait briefly for
# its node, then mount it.
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor 2>/dev/null)" = 0x1af4 ]; then
    case "$(cat $d/device)" in 0x1001|0x1042)
      while read -r m; do
        insmod /lib/modules/$KVER/$m >/dev/null 2>&1
      done </lib/modules/$KVER/load-order-disk
      i=0; while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do usleep 100000; i=$((i+1)); done
      break ;;
    esac
  fi
done
# root=DEV on the kernel command line (DEV: /dev/vdX, LABEL=L or UUID=U) makes
# this initramfs a distribution's: mount DEV (read-only unless "rw" is given),
# move /dev, /proc, /sys and /run there, and hand over to its init (init=PATH,
# default /sbin/init). Without root=, the first disk is mounted at /mnt.
rootdev=""; rootmode=ro; rootinit=/sbin/init; rootfstype=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) rootdev="${arg#root=}" ;;
    rootfstype=*) rootfstype="-t ${arg#rootfstype=}" ;;
    rw) rootmode=rw ;;
    ro) rootmode=ro ;;
    init=*) rootinit="${arg#init=}" ;;
  esac
done
if [ -n "$rootdev" ]; then
  case "$rootdev" in
    LABEL=*|UUID=*)
      i=0; while ! dev=$(findfs "$rootdev" 2>/dev/null) && [ $i -lt 30 ]; do usleep 100000; i=$((i+1)); done ;;
    /dev/*)
      dev="$rootdev"; i=0; while [ ! -b "$dev" ] && [ $i -lt 30 ]; do usleep 100000; i=$((i+1)); done ;;
    *) dev="" ;;
  esac
  if [ -z "$dev" ] || [ ! -b "$dev" ]; then
    echo "popek: root=$rootdev: no such block device (is the disk given with --drive?); starting a shell"
  elif ! mount $rootfstype -o "$rootmode" "$dev" /newroot; then
    echo "popek: root=$rootdev: cannot mount $dev; starting a shell"
  elif [ ! -x "/newroot$rootinit" ] && [ ! -L "/newroot$rootinit" ]; then
    echo "popek: root=$rootdev: no $rootinit on $dev; starting a shell"
    umount /newroot
  else
    mkdir -p /newroot/run
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
    for m in /dev /proc /sys /run; do mount --move $m /newroot$m; done
    exec switch_root /newroot "$rootinit"
  fi
elif [ -b /dev/vda ]; then
  mount /dev/vda /mnt 2>/dev/null || mount -o ro /dev/vda /mnt 2>/dev/null
fi
ifconfig lo 127.0.0.1 up 2>/dev/null
# A virtio-net card (device id 0x1000 transitional, 0x1041 modern): bring eth0
# up and configure it by DHCP (/etc/udhcpc/default.script); with popek's or
# QEMU's user-mode network that is 10.0.2.15, gateway and host 10.0.2.2.
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor 2>/dev/null)" = 0x1af4 ]; then
    case "$(cat $d/device)" in 0x1000|0x1041)
      i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 20 ]; do usleep 100000; i=$((i+1)); done
      udhcpc -i eth0 -n -q -t 5 -T 1 >/dev/null 2>&1 || echo "popek: no DHCP answer on eth0"
      break ;;
    esac
  fi
done

echo "POPEK-READY"
# popek.run=PATH on the kernel command line (used by bench/): run the program
# PATH instead of the shell, then power off. Without it, nothing changes.
run=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in popek.run=*) run="${arg#popek.run=}" ;; esac
done
if [ -n "$run" ]; then
  "$run"
  echo "popek: $run exited with status $?, powering off"
  poweroff -f
fi
# A controlling tty on the console, so job control and ctrl-c work.
setsid cttyhack sh -l
echo "popek: shell exited, powering off"
poweroff -f
EOF
chmod 755 "$root/init"
cat >"$root/etc/profile" <<'EOF'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
PS1='popek:\w# '
cd /root
EOF
mkdir -p "$root/etc/udhcpc"
cat >"$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc's event script: configure the interface, default route and DNS from
# the lease ($interface, $ip, $subnet, $router, $dns, $domain come from udhcpc).
case "$1" in
  deconfig)
    ifconfig "$interface" 0.0.0.0 up
    ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
      while route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do route add default gw "$r" dev "$interface"; break; done
    fi
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for s in $dns; do echo "nameserver $s" >>/etc/resolv.conf; done
    ;;
esac
exit 0
EOF
chmod 755 "$root/etc/udhcpc/default.script"
# busybox acpid: KEY_POWER maps to the event "PWRF" (its built-in map); this
# action file says what runs for it (a path relative to /etc/acpi).
echo "PWRF power-button" >"$root/etc/acpid.conf"
mkdir -p "$root/etc/acpi"
cat >"$root/etc/acpi/power-button" <<'EOF'
#!/bin/sh
# Run by acpid when the ACPI power button is pressed (QMP system_powerdown).
# PID 1 is /init, a shell that handles no poweroff signal: power off here,
# after writing back what a mounted disk holds.
echo "popek: power button pressed, powering off" >/dev/console
sync
if grep -q ' /mnt ' /proc/mounts; then
  umount /mnt 2>/dev/null || mount -o remount,ro /mnt 2>/dev/null
fi
poweroff -f
EOF
chmod 755 "$root/etc/acpi/power-button"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

# Reproducible archive: sorted names, fixed owner, no timestamps in gzip.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc --owner=0:0 --reproducible) | gzip -9 -n >initrd.img.tmp ||
  die "building the initramfs failed"
mv -f initrd.img.tmp initrd.img
echo "$stamp" >initrd.stamp
rm -rf "$root"
say "initramfs: $CACHE/initrd.img ($(stat -c %s initrd.img) bytes)"
say "ready: vmlinuz initrd.img VERSION in $CACHE"
