#!/usr/bin/env bash
# stop_test.sh POPEK ROM ENGINE: runs a guest that spins forever, sends
# SIGINT once it runs, and expects popek to stop within 5 s with status 10
# (on kvm: the signal kicks the vCPU out of KVM_RUN). Skips (77) on kvm where
# KVM is not usable.
set -u
popek=$1 rom=$2 engine=$3
if [ "$engine" = kvm ]; then
  info=$("$popek" kvm-info 2>&1) || { echo "SKIP: $info"; exit 77; }
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$popek" run --engine "$engine" --firmware "$rom" --memory 8M --debug-port 0xE9 >"$out" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q "spin: running" "$out" && break
  sleep 0.1
done
if ! grep -q "spin: running" "$out"; then
  kill -KILL $pid; cat "$out"; echo "stop_test: the guest did not start"; exit 1
fi
sleep 0.3
kill -INT $pid
for _ in $(seq 50); do
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
if kill -0 $pid 2>/dev/null; then
  kill -KILL $pid; cat "$out"; echo "stop_test: popek did not stop within 5 s of SIGINT"; exit 1
fi
wait $pid
rc=$?
cat "$out"
[ $rc = 10 ] || { echo "stop_test: exit status $rc, expected 10"; exit 1; }
exit 0
