#!/usr/bin/env bash
# hybrid_test.sh POPEK ROM: hybrid.asm on --engine hybrid must print what it
# prints on the interpreter, and the policy must have moved the guest to bt
# (in an I/O stretch) and back to kvm (in a compute stretch): --stats shows
# hybrid.to_bt and hybrid.to_kvm. Skips (77) where KVM is not usable.
set -u
popek=$1 rom=$2
info=$("$popek" kvm-info 2>&1)
if [ $? != 0 ]; then
  echo "SKIP: $info"
  exit 77
fi
echo "$info"
args=(run --firmware "$rom" --memory 8M --debug-port 0xE9)
want=$("$popek" "${args[@]}" --engine interp 2>/dev/null)
want_rc=$?
out=$("$popek" "${args[@]}" --engine hybrid --stats 2>"${TMPDIR:-/tmp}/hybrid_test.$$")
rc=$?
err=$(cat "${TMPDIR:-/tmp}/hybrid_test.$$")
rm -f "${TMPDIR:-/tmp}/hybrid_test.$$"
echo "$out"
grep -E "hybrid\.|switch\.|kvm\.exits\.io|kvm\.time_in" <<<"$err"
to_bt=$(sed -n 's/^ *hybrid.to_bt *\([0-9]*\)$/\1/p' <<<"$err")
to_kvm=$(sed -n 's/^ *hybrid.to_kvm *\([0-9]*\)$/\1/p' <<<"$err")
bad=
if [ "$rc" != "$want_rc" ] || [ "$out" != "$want" ]; then
  bad="output or status ($rc) differs from the interpreter's ($want_rc): $want"
elif [ "${to_bt:-0}" -lt 1 ] || [ "${to_kvm:-0}" -lt 1 ]; then
  bad="the policy did not move to bt and back (to_bt ${to_bt:-?}, to_kvm ${to_kvm:-?})"
fi
if [ -n "$bad" ]; then
  echo "hybrid_test: $bad" >&2
  exit 1
fi
echo "ok   same output as interp; moved to bt $to_bt times and back to kvm $to_kvm times"
