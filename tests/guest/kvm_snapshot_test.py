#!/usr/bin/env python3
"""kvm_snapshot_test.py POPEK ROM: the CpuState is exact between engines.
sum.asm runs on kvm; it is saved mid-way (QMP stop, migrate file:, quit)
and finished from that file on interp and on kvm. Both outputs (the part
before the save plus the rest) must equal one uninterrupted interp run.
Skips (77) where KVM is not usable."""
import os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "qmp"))
from qmplib import Client  # noqa: E402

popek, rom = sys.argv[1], sys.argv[2]
info = subprocess.run([popek, "kvm-info"], capture_output=True, text=True)
if info.returncode != 0:
    print("SKIP: " + (info.stdout + info.stderr).strip())
    sys.exit(77)
print(info.stdout.strip())
base = [popek, "run", "--firmware", rom, "--memory", "8M", "--debug-port", "0xE9"]


def run(extra):
    p = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout


want_rc, want = run(["--engine", "interp"])
print(f"interp alone: status {want_rc}, {want!r}")
failed = 0
with tempfile.TemporaryDirectory() as work:
    sock = os.path.join(work, "qmp.sock")
    snap = os.path.join(work, "vm.popek")
    out_path = os.path.join(work, "out")
    with open(out_path, "w") as out:
        p = subprocess.Popen(base + ["--engine", "kvm", "--qmp", f"unix:{sock},server,wait=off"],
                             stdout=out, stderr=subprocess.PIPE, text=True)
        end = time.time() + 30
        while time.time() < end and open(out_path).read().count(".") < 3:
            time.sleep(0.05)  # until three rounds of 32768 are done
        c = Client(f"unix:{sock}")
        c.ok("stop")
        r = c.cmd("migrate", {"uri": f"file:{snap}"})
        assert r == {"return": {}}, r
        c.ok("quit")
        p.wait(timeout=30)
    before = open(out_path).read()
    print(f"kvm before the save: {before!r}")
    if "PASS" in before or before.count(".") >= 9:
        print("FAIL: the program ended before it was saved (nothing tested)")
        sys.exit(1)
    for engine in ("interp", "kvm"):
        rc, rest = run(["--engine", engine, "--incoming", f"file:{snap}"])
        ok = rc == want_rc and before + rest == want
        print(f"{'ok  ' if ok else 'FAIL'} resumed on {engine}: status {rc}, {rest!r}")
        failed += not ok
sys.exit(1 if failed else 0)
