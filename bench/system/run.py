#!/usr/bin/env python3
"""Macro benchmarks on the Debian system guest (scripts/fetch-debian.sh), one
run each, popek bt against qemu-system-i386 -accel tcg with the same kernel,
initramfs, image and devices (and popek interp for the boot):

  boot     wall time from start to the serial login prompt
  make     zlib's Debian source: ./configure, make -j2, make test (wall time)
  python   python3 -m test over tests/debian/python_tests.txt (wall time)
  stress   stress-ng bogo-ops per second (real time) of fixed stressors,
           each alone for --stress-time seconds; the figure is their geomean

Goal (issue 18): every time <= 0.5x QEMU's, stress-ng >= 2x QEMU's ops/s.
A failed run is reported as FAIL, never as a figure.

Usage: bench/system/run.py [--popek PATH] [--engines bt,qemu,interp]
                           [--parts boot,make,python,stress] [--stress-time S]
                           [--parallel]
"""
import argparse
import math
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../tests/debian"))
import debianlib  # noqa: E402

STRESSORS = ["cpu --cpu-method int32", "cpu --cpu-method fft", "matrix --matrix-method prod",
             "qsort", "hash", "str", "memcpy", "bsearch", "zlib", "fork"]


def measure(popek, engine, parts, stress_time, python_mods):
    """Returns {part: seconds or ops/s} or {part: None} for a failed part."""
    res = {}
    work = tempfile.mkdtemp(prefix=f"popek-bench-system-{engine}-")
    vm = debianlib.Debian(popek, engine, work)
    try:
        res["boot"] = vm.login(timeout=3600)
        print(f"  {engine}: boot to login {res['boot']:.1f} s", flush=True)
        status, _ = vm.run("systemctl is-system-running --wait", 1800)
        if "make" in parts:
            vm.run("cd /root/src/zlib && ./configure >/dev/null && make -s clean >/dev/null 2>&1; cd /", 600)
            t0 = time.time()
            status, out = vm.run("cd /root/src/zlib && make -j2 >/dev/null 2>&1 && make test 2>&1 | grep -c 'test OK'", 7200)
            res["make"] = time.time() - t0 if status == 0 and out.strip().endswith("3") else None  # static, shared, 64-bit
            print(f"  {engine}: make {res['make']}", flush=True)
        if "python" in parts:
            t0 = time.time()
            status, out = vm.run("cd /tmp && python3 -m test -q -j3 " + " ".join(python_mods) + " 2>&1 | tail -3", 10800)
            res["python"] = time.time() - t0 if status == 0 and "Tests result: SUCCESS" in out else None
            print(f"  {engine}: python {res['python']}", flush=True)
        if "stress" in parts:
            rates = []
            for s in STRESSORS:
                rates.append(debianlib.stress_ng(vm, s, stress_time, timeout=600)[0])
            res["stress_parts"] = rates
            res["stress"] = (math.exp(sum(math.log(r) for r in rates) / len(rates))
                             if all(r is not None for r in rates) else None)
            print(f"  {engine}: stress {res['stress']}", flush=True)
        code, _ = vm.poweroff()
        if code != 0:
            print(f"  {engine}: poweroff ended popek with status {code}")
    except SystemExit as e:
        print(f"  {engine}: FAIL ({e})")
    finally:
        vm.kill()
        shutil.rmtree(work, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--popek", default=os.path.join(HERE, "../../build/popek"))
    ap.add_argument("--engines", default="bt,qemu,interp")
    ap.add_argument("--parts", default="boot,make,python,stress")
    ap.add_argument("--stress-time", type=int, default=10)
    ap.add_argument("--parallel", action="store_true",
                    help="run the engines at the same time (each sees the same host load)")
    a = ap.parse_args()
    debianlib.image()
    engines = a.engines.split(",")
    parts = a.parts.split(",")
    with open(os.path.join(HERE, "../../tests/debian/python_tests.txt")) as f:
        mods = [w for line in f for w in line.split("#")[0].split()]
    results = {}
    if a.parallel:
        # All engines at once: on a shared, loaded host each then sees the
        # same load, which keeps the ratios fairer than runs one after another.
        import threading
        print(f"== {', '.join(engines)} side by side ({time.strftime('%H:%M:%S')})", flush=True)
        threads = [threading.Thread(target=lambda e=e: results.__setitem__(
            e, measure(a.popek, e, parts if e != "interp" else ["boot"], a.stress_time, mods))) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for e in engines:
            print(f"== {e} ({time.strftime('%H:%M:%S')})", flush=True)
            # interp: the boot only (minutes of systemd at interpretation speed).
            results[e] = measure(a.popek, e, parts if e != "interp" else ["boot"], a.stress_time, mods)

    def fmt(v, unit):
        return "FAIL" if v is None else (f"{v:.1f} s" if unit == "s" else f"{v:.1f} ops/s")

    print()
    print(f"{'part':<8} " + " ".join(f"{e:>14}" for e in engines) + f" {'bt/qemu':>9}  goal")
    failed = False
    for p in parts:
        unit = "ops/s" if p == "stress" else "s"
        row = []
        for e in engines:
            if p in results[e]:
                row.append(fmt(results[e][p], unit))
                failed |= results[e][p] is None
            else:
                row.append("-")
        bt, q = results.get("bt", {}).get(p), results.get("qemu", {}).get(p)
        if bt is not None and q is not None:
            ratio = bt / q
            met = ratio <= 0.5 if unit == "s" else ratio >= 2.0
            goal = ("<= 0.50x" if unit == "s" else ">= 2.00x") + (" met" if met else " NOT met")
            rs = f"{ratio:.2f}x"
        else:
            rs, goal = "-", "-"
        print(f"{p:<8} " + " ".join(f"{c:>14}" for c in row) + f" {rs:>9}  {goal}")
    if "stress" in parts and "bt" in results and "qemu" in results:
        print("\nstress-ng bogo-ops/s (real time), each stressor alone:")
        for i, s in enumerate(STRESSORS):
            b = results["bt"].get("stress_parts", [None] * len(STRESSORS))[i]
            q = results["qemu"].get("stress_parts", [None] * len(STRESSORS))[i]
            r = f"{b / q:.2f}x" if b and q else "-"
            print(f"  {s:<30} bt {b if b is not None else 'FAIL':>10}  qemu {q if q is not None else 'FAIL':>10}  {r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
