#!/bin/bash
# Boots the default Debian guest twice with `popek run --deterministic
# --max-insns N` (stdin from /dev/null) and checks that the two serial logs are
# byte-identical and that they got somewhere (the POPEK-READY marker). The two
# runs may use different engines: time comes from retired instructions, so
# interp and bt must print the same bytes at the same instruction count.
# Usage: deterministic_test.sh POPEK [ENGINE1 ENGINE2 [N]]   (engines default
# to interp interp; N to $POPEK_DET_INSNS or 4500000000, enough to pass the
# marker). Exit 77 (skip) without the guest.
set -uo pipefail

popek="$1"
engines=("${2:-interp}" "${3:-interp}")
insns="${4:-${POPEK_DET_INSNS:-4500000000}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${POPEK_CACHE:-$here/../../cache/guest}"
if [[ ! -f "$cache/vmlinuz" || ! -f "$cache/initrd.img" ]]; then
  echo "guest not fetched ($cache/vmlinuz); run scripts/fetch-guest.sh"
  exit 77
fi

work="$(mktemp -d /tmp/popek-det.XXXXXX)"
trap 'rm -rf "$work"' EXIT

for i in 1 2; do
  t0=$(date +%s.%N)
  "$popek" run --engine "${engines[$((i - 1))]}" --deterministic --max-insns "$insns" --kernel "$cache/vmlinuz" \
    --initrd "$cache/initrd.img" --memory 256M \
    --append "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1" \
    </dev/null >"$work/serial$i.log" 2>"$work/err$i.log"
  rc=$?
  t1=$(date +%s.%N)
  echo "run $i (${engines[$((i - 1))]}): exit status $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s," \
       "$(wc -c <"$work/serial$i.log") bytes of serial output; $(tr -d '\r' <"$work/err$i.log" | head -1)"
  # 8: the instruction limit ended it; 0: the guest powered off first.
  if [[ $rc -ne 8 && $rc -ne 0 ]]; then
    echo "FAIL: unexpected exit status $rc"; cat "$work/err$i.log"; tail -20 "$work/serial$i.log"; exit 1
  fi
done

status=0
if ! grep -q POPEK-READY "$work/serial1.log"; then
  echo "FAIL: no POPEK-READY within $insns instructions; the log ends:"
  tail -5 "$work/serial1.log"
  status=1
fi
if cmp -s "$work/serial1.log" "$work/serial2.log"; then
  echo "ok   the two serial logs are byte-identical ($(wc -l <"$work/serial1.log") lines)"
else
  echo "FAIL: the serial logs differ; first differing line:"
  diff "$work/serial1.log" "$work/serial2.log" | head -6
  cmp "$work/serial1.log" "$work/serial2.log"
  status=1
fi
exit $status
