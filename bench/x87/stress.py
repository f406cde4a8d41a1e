#!/usr/bin/env python3
"""stress-ng's floating-point stressors in the Debian system guest
(scripts/fetch-debian.sh) under popek bt with its inline x87, bt with
--bt-no-inline-x87 (every x87 instruction a callout) and QEMU TCG, one engine
after the other: bogo-ops per second (real time) of each stressor alone, run
with --verify (stress-ng checks its own results: a failed verification is a
FAIL, not a figure), and the ratios.

Usage: bench/x87/stress.py [--popek PATH] [--engines bt,bt-nox87,qemu]
                           [--stressors 'cpu --cpu-method fft;...'] [--time S]
Exit status 77 without the Debian image, 1 if a stressor failed anywhere.
"""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "../../tests/debian"))
import debianlib  # noqa: E402

STRESSORS = ["cpu --cpu-method fft", "matrix --matrix-method prod", "cpu --cpu-method float",
             "cpu --cpu-method double", "cpu --cpu-method hyperbolic", "cpu --cpu-method trig",
             "hash", "cpu --cpu-method int32"]
FLAGS = {"bt-nox87": ("bt", ("--bt-no-inline-x87",)), "bt": ("bt", ()), "qemu": ("qemu", ())}


def measure(popek, name, stressors, secs):
    engine, extra = FLAGS[name]
    work = tempfile.mkdtemp(prefix=f"popek-x87-stress-{name}-")
    vm = debianlib.Debian(popek, engine, work, extra=extra)
    rates = {}
    try:
        t = vm.login(timeout=3600)
        print(f"{name}: login after {t:.1f} s", flush=True)
        for s in stressors:
            rates[s], out = debianlib.stress_ng(vm, s, secs, verify=True)
            print(f"{name}: {s}: " + (f"{rates[s]:.2f} bogo-ops/s" if rates[s] else "FAIL\n" + out),
                  flush=True)
        vm.poweroff()
    finally:
        vm.kill()
        shutil.rmtree(work, ignore_errors=True)
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--popek", default=os.path.join(HERE, "../../build/popek"))
    ap.add_argument("--engines", default="bt,bt-nox87,qemu")
    ap.add_argument("--stressors", default=";".join(STRESSORS))
    ap.add_argument("--time", type=int, default=10, help="seconds per stressor (default: %(default)s)")
    a = ap.parse_args()
    debianlib.image()  # (skips without it)
    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in FLAGS:
            sys.exit(f"unknown engine {e} (known: {', '.join(FLAGS)})")
    stressors = [s.strip() for s in a.stressors.split(";") if s.strip()]
    res = {e: measure(os.path.abspath(a.popek), e, stressors, a.time) for e in engines}
    print(f"\nstress-ng --verify, bogo-ops/s (real time), each stressor alone for {a.time} s:")
    cols = engines + [f"{e}/qemu" for e in engines if e != "qemu" and "qemu" in engines]
    print(f"{'stressor':32}" + "".join(f"{c:>14}" for c in cols))
    failed = False
    for s in stressors:
        row = f"{s:32}"
        for e in engines:
            v = res[e].get(s)
            failed |= v is None
            row += f"{v:14.2f}" if v else f"{'FAIL':>14}"
        for e in engines:
            if e != "qemu" and "qemu" in engines:
                v, q = res[e].get(s), res["qemu"].get(s)
                row += f"{v / q:13.2f}x" if v and q else f"{'-':>14}"
        print(row)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
