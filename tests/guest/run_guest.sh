#!/usr/bin/env bash
# run_guest.sh POPEK ROM EXPECTED_STATUS [POPEK RUN OPTIONS...]: runs a guest
# program (on the engine the options name) and checks its exit status; for PASS
# programs (status 1) the console must say PASS too.
set -u
popek=$1 rom=$2 want=$3
shift 3
# On kvm: skip (exit 77, ctest's SKIP_RETURN_CODE) when KVM is not usable
# here, saying why; a program listed in kvm_known_failures.txt for this
# KVM that fails is skipped with the listed reason.
kvm_flavour=
if [[ " $* " == *" --engine kvm "* || " $* " == *" --engine hybrid "* || ( " $* " == *" --engine-schedule "* && " $* " == *kvm* ) ]]; then
  info=$("$popek" kvm-info 2>&1)
  if [ $? != 0 ]; then
    echo "SKIP: $info"
    exit 77
  fi
  echo "$info"
  kvm_flavour=$(sed -n 's/^kvm: usable (\([a-z_]*\)).*/\1/p' <<<"$info")
fi
known_failure() {
  [ -n "$kvm_flavour" ] || return 1
  local name
  name=$(basename "$rom" .bin)
  reason=$(awk -v f="$kvm_flavour" -v n="$name" '$1 == f && $2 == n { $1 = ""; $2 = ""; sub(/^ +/, ""); print; exit }' \
           "$(dirname "$0")/kvm_known_failures.txt")
  [ -n "$reason" ]
}
out=$("$popek" run --firmware "$rom" --memory 8M --debug-port 0xE9 --max-insns 50000000 "$@" 2>&1)
got=$?
echo "$out"
bad=
if [ "$got" != "$want" ]; then
  bad="exit status $got, expected $want"
elif [ "$want" = 1 ] && ! grep -q '^PASS$' <<<"$out"; then
  bad="no PASS line"
fi
# An engine schedule (--stats): say how many switches were made; with
# instruction slices (interp, bt: deterministic) some must have happened.
if [[ " $* " == *" --engine-schedule "* && " $* " == *" --stats "* && -z "$bad" ]]; then
  switches=$(sed -n 's/^ *switch.total *\([0-9]*\)$/\1/p' <<<"$out")
  echo "run_guest: engine switches: ${switches:-none}"
  [ "${switches:-0}" -gt 0 ] || [ -n "$kvm_flavour" ] || bad="no engine switch was made"
fi
if [ -n "$bad" ]; then
  if known_failure; then
    echo "SKIP: $bad: a known limitation of $kvm_flavour: $reason"
    exit 77
  fi
  echo "run_guest: $bad" >&2
  exit 1
fi
if known_failure; then
  echo "run_guest: note: listed in kvm_known_failures.txt for $kvm_flavour but passed; update the list"
fi
exit 0
