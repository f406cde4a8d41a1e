#!/usr/bin/env bash
# run_guest.sh POPEK ROM EXPECTED_STATUS [POPEK RUN OPTIONS...]: runs a guest
# program (on the engine the options name) and checks its exit status; for PASS
# programs (status 1) the console must say PASS too.
set -u
popek=$1 rom=$2 want=$3
shift 3
out=$("$popek" run --firmware "$rom" --memory 8M --debug-port 0xE9 --max-insns 50000000 "$@" 2>&1)
got=$?
echo "$out"
if [ "$got" != "$want" ]; then
  echo "run_guest: exit status $got, expected $want" >&2
  exit 1
fi
if [ "$want" = 1 ] && ! grep -q '^PASS$' <<<"$out"; then
  echo "run_guest: no PASS line" >&2
  exit 1
fi
exit 0
