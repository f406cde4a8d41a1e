#!/usr/bin/env python3
"""Smoke test of the firmware nanobenchmarks (bench/nano/nano.asm, built with
few iterations): on one engine, the program must PASS, measure the guest TSC
against the PIT (1 GHz on interp and bt, by design) and give every operation a
positive, plausible cost; with --no-paravirt the hypercall must be n/a (and
only it). Keeps the benchmark program from rotting; it measures nothing.

Usage: smoke_test.py POPEK ROM ENGINE [--no-paravirt]
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as nano  # noqa: E402  (parse_fw, FW_OPS)


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        return 2
    popek, rom, engine = sys.argv[1:4]
    extra = sys.argv[4:]
    cmd = [popek, "run", "--firmware", rom, "--memory", "8M", "--debug-port", "0xE9",
           "--engine", engine] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    print(" ".join(cmd))
    print(p.stdout)
    print(p.stderr, file=sys.stderr)
    r = nano.parse_fw(p.stdout)
    bad = []
    if p.returncode != 1 or "PASS" not in p.stdout:
        bad.append(f"exit status {p.returncode}, expected 1 with PASS")
    if not r["end"]:
        bad.append("no nano-end line")
    if r["fault"]:
        bad.append(r["fault"])
    bad += r["errors"]
    mhz = None
    if not r["cal"]:
        bad.append("no TSC calibration")
    else:
        mhz = min(r["cal"])  # as run.py: a stall only lengthens the interval
        print(f"guest TSC: {mhz:.1f} MHz (calibrations: {' '.join(f'{m:.1f}' for m in r['cal'])})")
        # popek's TSC is the virtual clock in ns; all five calibrations can
        # come out long on a very loaded host, never much short
        if not 950 <= mhz <= 1500:
            bad.append(f"guest TSC calibrated at {mhz:.1f} MHz, popek's runs at 1000")
    want_na = {"hypercall"} if "--no-paravirt" in extra else set()
    for op in nano.FW_OPS:
        if op in want_na:
            if op not in r["na"]:
                bad.append(f"{op}: expected n/a without the paravirtual interface, got "
                           f"{r['res'].get(op, 'nothing')}")
            continue
        if op in r["na"]:
            bad.append(f"{op}: n/a ({r['na'][op]})")
            continue
        if op not in r["res"]:
            bad.append(f"{op}: no result")
            continue
        ops, ticks = r["res"][op]
        ns = ticks / ops / (mhz or 1000) * 1e3 if ops else 0
        print(f"{op}: {ops} ops, {ticks} ticks, {ns:.1f} ns each")
        # from a fraction of a ns (a translated loop) to a ms (a loaded host)
        if not (ops > 0 and 0.05 <= ns <= 1e6):
            bad.append(f"{op}: {ops} ops in {ticks} ticks ({ns:g} ns each) is not plausible")
    for b in bad:
        print(f"smoke_test: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
