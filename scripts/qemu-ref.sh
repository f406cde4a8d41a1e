#!/bin/bash
# Boot popek's default guest (scripts/fetch-guest.sh) under QEMU's software CPU:
# the reference for what the guest prints and how long it takes to its ready
# marker. Commands to run in the guest shell are read from stdin (when stdin is
# not a terminal) and sent after POPEK-READY; `poweroff -f` is sent last.
#
# Usage: scripts/qemu-ref.sh [-M isapc|pc] [-m 256M] [--append "..."]
#                            [--timeout SECONDS] [--cpu MODEL] [-- extra qemu args]
#   (-M isapc, the default, uses -cpu qemu32,-apic unless --cpu is given)
#   echo 'uname -a' | scripts/qemu-ref.sh -M pc
# Prints the serial log, then "qemu-ref: ready after N.NNN s" (wall time from
# starting QEMU to the POPEK-READY line, and QEMU's CPU time until then) and
# the total time.
# Exit status: 0 if the marker appeared and the guest ended (powered off,
# halted, or QEMU exited) before the timeout; 1 otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
CACHE="${POPEK_CACHE:-$repo/cache/guest}"
machine=isapc
memory=256M
cpu=""
timeout=120
append="console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1"
extra=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -M|--machine) machine="$2"; shift 2 ;;
    -m|--memory) memory="$2"; shift 2 ;;
    --cpu) cpu="$2"; shift 2 ;;
    --append) append="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "qemu-ref: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

command -v qemu-system-i386 >/dev/null ||
  { echo "qemu-ref: qemu-system-i386 is not installed (apt-get install qemu-system-x86)" >&2; exit 2; }
for f in vmlinuz initrd.img; do
  [[ -f "$CACHE/$f" ]] ||
    { echo "qemu-ref: $CACHE/$f is missing; run scripts/fetch-guest.sh first" >&2; exit 2; }
done

# Commands for the guest shell.
cmds=""
if [[ ! -t 0 ]]; then cmds="$(cat)"; fi

work="$(mktemp -d /tmp/qemu-ref.XXXXXX)"
trap 'rm -rf "$work"' EXIT
log="$work/serial.log"
mkfifo "$work/in"
: >"$log"

args=(-accel tcg -M "$machine" -m "$memory" -nographic -no-reboot
      -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "$append")
# isapc's default CPU is a 486, which Debian's 686 kernel refuses; and a CPU
# with a local APIC on isapc oopses in setup_IO_APIC (SeaBIOS's MP table names
# an IOAPIC isapc lacks). The PC without APIC that popek models is qemu32,-apic.
if [[ -z "$cpu" && "$machine" == isapc ]]; then cpu="qemu32,-apic"; fi
[[ -n "$cpu" ]] && args+=(-cpu "$cpu")
args+=("${extra[@]+"${extra[@]}"}")

echo "qemu-ref: qemu-system-i386 ${args[*]}" >&2
t0=$(date +%s.%N)
qemu-system-i386 "${args[@]}" <"$work/in" >"$log" 2>"$work/qemu.err" &
qpid=$!
exec 3>"$work/in"   # keep QEMU's stdin open until we are done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

ready=""
ready_cpu=""
first=""
ended="qemu exited"
status=1
deadline=$(awk -v t="$t0" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
while kill -0 "$qpid" 2>/dev/null; do
  if [[ -z "$first" ]] && grep -qE '\[ *[0-9]+\.[0-9]{6}\]' "$log"; then
    first=$(elapsed "$t0" "$(now)")
  fi
  if [[ -z "$ready" ]] && grep -q 'POPEK-READY' "$log"; then
    ready=$(elapsed "$t0" "$(now)")
    # QEMU's own CPU time so far (user + system): less sensitive than wall
    # time to other work on a shared host.
    ready_cpu=$(awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$qpid/stat" 2>/dev/null || true)
    # Give the shell a moment to open the console, then send the commands.
    sleep 0.3
    [[ -n "$cmds" ]] && printf '%s\n' "$cmds" >&3
    printf 'poweroff -f\n' >&3
  fi
  # Without ACPI (isapc) `poweroff -f` only halts the CPU: stop QEMU then.
  if [[ -n "$ready" ]] && grep -qE 'reboot: (System halted|Power down)' "$log"; then
    sleep 0.2
    kill "$qpid" 2>/dev/null || true
    ended="guest halted"
    break
  fi
  if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
    echo "qemu-ref: timeout after ${timeout}s; stopping QEMU" >&2
    kill "$qpid" 2>/dev/null || true
    ended="timeout"
    break
  fi
  sleep 0.01
done
wait "$qpid" 2>/dev/null && qrc=0 || qrc=$?
exec 3>&-
total=$(elapsed "$t0" "$(now)")
[[ -z "$ready" ]] && grep -q 'POPEK-READY' "$log" && ready="(missed by polling)"

tr -d '\r' <"$log"
grep -v "terminating on signal" "$work/qemu.err" >"$work/qemu.err2" || true
[[ -s "$work/qemu.err2" ]] && { echo "--- qemu stderr:"; cat "$work/qemu.err2"; }
echo "qemu-ref: machine=$machine cpu=${cpu:-default} memory=$memory append='$append'"
if [[ -n "$ready" ]]; then
  [[ -n "$first" ]] && echo "qemu-ref: first kernel console line after $first s (BIOS, decompression and early setup before it)"
  echo "qemu-ref: ready after $ready s (wall time to POPEK-READY; QEMU CPU time ${ready_cpu:-?} s)"
  [[ "$ended" != timeout ]] && status=0
else
  echo "qemu-ref: POPEK-READY never appeared"
fi
echo "qemu-ref: total $total s, ended: $ended (qemu status $qrc)"
exit $status
