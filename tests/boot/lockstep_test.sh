#!/bin/bash
# Boots the default Debian guest on bt in lockstep with the interpreter, in
# deterministic mode, from reset through the ready marker to power-off
# (popek.run=/bin/true). Any divergence stops popek with both states (exit
# 125). Usage: lockstep_test.sh POPEK. Exit 77 (skip) without the guest.
set -uo pipefail
popek="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${POPEK_CACHE:-$here/../../cache/guest}"
if [[ ! -f "$cache/vmlinuz" || ! -f "$cache/initrd.img" ]]; then
  echo "guest not fetched ($cache/vmlinuz); run scripts/fetch-guest.sh"
  exit 77
fi
work="$(mktemp -d /tmp/popek-lockstep.XXXXXX)"
trap 'rm -rf "$work"' EXIT
t0=$(date +%s.%N)
# (Every process takes bt's user window over at once: its mappings follow
# each fork, exec, copy-on-write and exit.)
"$popek" run --engine bt --lockstep --deterministic --stats --bt-user-window-claim 0 --kernel "$cache/vmlinuz" \
  --initrd "$cache/initrd.img" --memory 256M \
  --append "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1 popek.run=/bin/true" \
  </dev/null >"$work/serial.log" 2>"$work/err.log"
rc=$?
t1=$(date +%s.%N)
echo "exit status $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
grep -E "lockstep\.|bt\.insns|mmu\.window" "$work/err.log" "$work/serial.log" | sed 's/^[^:]*://'
if [[ $rc -ne 0 ]] || ! grep -q POPEK-READY "$work/serial.log"; then
  echo "FAIL: lockstep boot did not reach power-off cleanly"
  grep -A30 "lockstep:" "$work/err.log" "$work/serial.log" | head -40
  tail -5 "$work/serial.log"
  exit 1
fi
echo "ok   no divergence from reset to power-off"
