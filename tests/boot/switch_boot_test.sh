#!/bin/bash
# Engine switching on the default Debian guest: the guest boots, runs two
# commands from the console and powers off, once on bt alone and once handed
# between interp and bt every few milliseconds of guest time (a seeded
# random schedule of 1-5 ms slices: with --deterministic, time is retired
# instructions, so the slices are 1-5 million instructions and both runs
# repeat exactly). The two serial logs must be identical from reset through
# POPEK-READY and the commands' output to power-off (byte for byte up to the
# marker; after it, with the kernel's timestamps masked: console input
# arrives between slices); prints the switches made. Usage: switch_boot_test.sh POPEK [SCHEDULE]. Exit 77 (skip)
# without the guest.
set -uo pipefail
popek="$1"
schedule="${2:-random:21:interp,bt:1ms-5ms}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${POPEK_CACHE:-$here/../../cache/guest}"
if [[ ! -f "$cache/vmlinuz" || ! -f "$cache/initrd.img" ]]; then
  echo "guest not fetched ($cache/vmlinuz); run scripts/fetch-guest.sh"
  exit 77
fi
work="$(mktemp -d /tmp/popek-switch.XXXXXX)"
trap 'rm -rf "$work"' EXIT
printf 'uname -r\necho switched $((6 * 7))\npoweroff -f\n' >"$work/input"
run() {  # NAME OPTIONS...
  local name=$1
  shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$popek" run "$@" --deterministic --stats --max-insns 20000000000 --kernel "$cache/vmlinuz" \
    --initrd "$cache/initrd.img" --memory 256M \
    --append "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1" \
    <"$work/input" >"$work/$name.log" 2>"$work/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  echo "$name: exit status $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s," \
       "$(wc -c <"$work/$name.log") bytes of serial output"
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: $name did not power off"; tail -5 "$work/$name.err"; tail -5 "$work/$name.log"; exit 1
  fi
}
run alone --engine bt
run switched --engine-schedule "$schedule"
grep -E "^ *(switch\.|interp\.insns)" "$work/switched.err" | sed 's/^ */  /'
status=0
for f in alone switched; do
  if ! grep -q POPEK-READY "$work/$f.log" || ! grep -q "switched 42" "$work/$f.log"; then
    echo "FAIL: $f: no POPEK-READY or no command output"; tail -5 "$work/$f.log"; status=1
  fi
done
switches=$(sed -n 's/^ *switch.total *\([0-9]*\)$/\1/p' "$work/switched.err")
if [[ "${switches:-0}" -lt 10 ]]; then
  echo "FAIL: only ${switches:-0} engine switches"; status=1
fi
# Console input reaches the guest between the board's slices, whose ends
# depend on the schedule: from the first command on, the kernel's printk
# timestamps may differ by the instructions in between (not the text).
for f in alone switched; do
  awk '/POPEK-READY/ { typed = 1 } { if (typed) sub(/^\[ *[0-9]+\.[0-9]+\]/, "[time]"); print }' \
    "$work/$f.log" >"$work/$f.cmp"
done
if cmp -s "$work/alone.cmp" "$work/switched.cmp"; then
  echo "ok   the serial logs are identical ($(wc -l <"$work/alone.log") lines; byte for byte up to POPEK-READY," \
       "timestamps after it masked) after $switches switches"
else
  echo "FAIL: the serial logs differ:"
  diff "$work/alone.cmp" "$work/switched.cmp" | head -20
  status=1
fi
exit $status
