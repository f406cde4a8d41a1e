#!/bin/bash
# Boot benchmark: the default Debian guest (scripts/fetch-guest.sh) under popek's
# interp engine and under QEMU's software CPU (qemu-system-i386 -accel tcg -M
# isapc -cpu qemu32,-apic, the PC without APIC that popek models), same kernel,
# initrd, command line and RAM, in one run on one machine. Measures the wall
# time from start to the POPEK-READY line and to power-off (`poweroff -f` sent
# at the marker), RUNS times each (default 3), and prints medians, the ratio
# popek/QEMU, and popek's guest instructions to the marker and MIPS.
#
# Usage: bench/boot/run.sh [--runs N] [--popek PATH] [--timeout SECONDS]
# Runs one guest at a time. Power-off for QEMU is the moment its log shows
# "reboot: System halted/Power down" (isapc has no ACPI, so QEMU does not exit
# by itself); for popek it is the moment popek exits.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${POPEK_CACHE:-$repo/cache/guest}"
popek="$repo/build-core/popek"
runs=3
timeout=600
append="console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1"
memory=256M
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --popek) popek="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for f in vmlinuz initrd.img; do
  [[ -f "$CACHE/$f" ]] || { echo "bench: $CACHE/$f missing; run scripts/fetch-guest.sh" >&2; exit 2; }
done
[[ -x "$popek" ]] || { echo "bench: $popek not built" >&2; exit 2; }
command -v qemu-system-i386 >/dev/null || { echo "bench: qemu-system-i386 not installed" >&2; exit 2; }

work="$(mktemp -d /tmp/popek-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

popek_cmd=("$popek" run --engine interp --kernel "$CACHE/vmlinuz" --initrd "$CACHE/initrd.img"
           --append "$append" --memory "$memory" --stats)
qemu_cmd=(qemu-system-i386 -accel tcg -M isapc -cpu qemu32,-apic -m "$memory" -nographic -no-reboot
          -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "$append")

# run_one KIND MODE: KIND popek|qemu; MODE full (power off at the marker) or
# marker (popek only: stop popek with SIGTERM at the marker for its statistics).
# Sets R_READY, R_OFF (seconds) and leaves the logs in $work/{serial,err}.log.
run_one() {
  local kind="$1" mode="$2" pid t0 deadline
  rm -f "$work/in"; mkfifo "$work/in"
  : >"$work/serial.log"
  t0=$(now)
  if [[ $kind == popek ]]; then
    "${popek_cmd[@]}" <"$work/in" >"$work/serial.log" 2>"$work/err.log" &
  else
    "${qemu_cmd[@]}" <"$work/in" >"$work/serial.log" 2>"$work/err.log" &
  fi
  pid=$!
  exec 3>"$work/in"
  R_READY=""; R_OFF=""
  deadline=$(awk -v t="$t0" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
  while kill -0 "$pid" 2>/dev/null; do
    if [[ -z "$R_READY" ]] && grep -q POPEK-READY "$work/serial.log"; then
      R_READY=$(sub "$t0" "$(now)")
      if [[ $mode == marker ]]; then kill -TERM "$pid"; break; fi
      sleep 0.3   # let the shell open the console
      printf 'poweroff -f\n' >&3
    fi
    if [[ $kind == qemu && -n "$R_READY" ]] && grep -qE 'reboot: (System halted|Power down)' "$work/serial.log"; then
      R_OFF=$(sub "$t0" "$(now)")
      kill "$pid" 2>/dev/null || true
      break
    fi
    if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
      echo "bench: $kind timed out after ${timeout}s" >&2
      kill "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.01
  done
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  [[ $kind == popek && $mode == full && -z "$R_OFF" && -n "$R_READY" ]] && R_OFF=$(sub "$t0" "$(now)")
  exec 3>&-
  R_RC=$rc
  [[ -n "$R_READY" ]] || { echo "bench: $kind never printed POPEK-READY (status $rc)" >&2; tail -5 "$work/serial.log" >&2; exit 1; }
  if [[ $kind == popek && $mode == full && $rc -ne 0 ]]; then
    echo "bench: popek exited with status $rc after poweroff -f" >&2
  fi
}

stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$work/err.log"; }

declare -a p_ready p_off q_ready q_off p_mips
echo "bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $runs runs each, one guest at a time" >&2
for ((i = 1; i <= runs; i++)); do
  run_one popek full
  p_ready+=("$R_READY"); p_off+=("$R_OFF")
  mips=$(sed -n 's/.*statistics (.* s wall, \([0-9.]*\) guest MIPS).*/\1/p' "$work/err.log")
  p_mips+=("$mips")
  echo "bench: popek run $i: ready $R_READY s, power-off $R_OFF s (status $R_RC), $(stat_of interp.insns) insns, $mips MIPS overall" >&2
  [[ $i == 1 ]] && tr -d '\r' <"$work/serial.log" | grep -iE 'error|fail|warn|bug|oops' >"$work/popek-flags.txt" || true
  run_one qemu full
  q_ready+=("$R_READY"); q_off+=("$R_OFF")
  echo "bench: qemu  run $i: ready $R_READY s, power-off $R_OFF s" >&2
  [[ $i == 1 ]] && tr -d '\r' <"$work/serial.log" | grep -iE 'error|fail|warn|bug|oops' >"$work/qemu-flags.txt" || true
done
# One more popek run stopped at the marker, for the instructions it took.
run_one popek marker
m_insns=$(stat_of interp.insns)
m_wall=$(sed -n 's/.*statistics (\([0-9.]*\) s wall.*/\1/p' "$work/err.log")
m_mips=$(sed -n 's/.*statistics (.* s wall, \([0-9.]*\) guest MIPS).*/\1/p' "$work/err.log")

pr=$(echo "${p_ready[*]}" | median); po=$(echo "${p_off[*]}" | median)
qr=$(echo "${q_ready[*]}" | median); qo=$(echo "${q_off[*]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo
printf '%-44s %14s %14s\n' "median of $runs (wall s)" "to POPEK-READY" "to power-off"
printf '%-44s %14s %14s\n' "popek interp" "$pr" "$po"
printf '%-44s %14s %14s\n' "qemu-system-i386 -accel tcg -M isapc" "$qr" "$qo"
printf '%-44s %14s %14s\n' "ratio popek/QEMU" "$(ratio "$pr" "$qr")" "$(ratio "$po" "$qo")"
echo
echo "popek runs (ready/off s): ${p_ready[*]} / ${p_off[*]}; MIPS over whole runs: ${p_mips[*]}"
echo "qemu  runs (ready/off s): ${q_ready[*]} / ${q_off[*]}"
echo "popek to the marker: $m_insns guest instructions in $m_wall s of popek's own wall time, $m_mips guest MIPS"
if ! diff -q "$work/popek-flags.txt" "$work/qemu-flags.txt" >/dev/null; then
  echo "boot-log lines matching error|fail|warn|bug|oops that differ (< popek, > qemu; timestamps stripped):"
  diff <(sed 's/^\[ *[0-9.]*\] //' "$work/popek-flags.txt") <(sed 's/^\[ *[0-9.]*\] //' "$work/qemu-flags.txt") || true
fi
