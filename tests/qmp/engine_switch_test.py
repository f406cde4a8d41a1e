#!/usr/bin/env python3
"""x-popek-set-engine and x-popek-query-engine: a ROM that counts in a loop
forever starts on bt; the control socket moves it to interp (and to kvm and
back where KVM is usable, else says it skipped that part), the query says
which engine runs it, the guest goes on after each switch (its instruction
count grows), the statistics count the switches per pair, and bad requests
get errors. Usage: engine_switch_test.py POPEK"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmplib import Client, Failures  # noqa: E402

popek = sys.argv[1]
failures = Failures()
check = failures.check
tmp = tempfile.mkdtemp(prefix="popek-switch-")
rom = bytearray(4096)
rom[0:3] = bytes([0x40, 0xEB, 0xFD])  # F000:F000: inc ax; jmp short back
rom[0xFF0:0xFF3] = bytes([0xE9, 0x0D, 0xF0])
rom_path = os.path.join(tmp, "loop.rom")
with open(rom_path, "wb") as f:
    f.write(rom)
sock = os.path.join(tmp, "popek.qmp")
p = subprocess.Popen([popek, "run", "--engine", "bt", "--firmware", rom_path, "--memory", "8M",
                      "--qmp", f"unix:{sock},server,wait=off"], stderr=subprocess.PIPE, text=True)
for _ in range(200):
    if os.path.exists(sock):
        break
    time.sleep(0.05)
c = Client(f"unix:{sock}")


def insns():
    return c.ok("query-popek-stats")["cpu.instructions"]


def runs_on(engine, counts=True):
    q = c.ok("x-popek-query-engine")
    check(q["engine"] == engine, f"query-engine says {q['engine']}, expected {engine}")
    if counts:
        a = insns()
        time.sleep(0.2)
        b = insns()
        check(b > a, f"the guest runs on {engine} (instructions {a} -> {b})")
    return q


q = runs_on("bt")
check(q["engines"] == ["bt"] and q["switches"] == 0 and not q["hybrid"], f"at start: {q}")
check(c.ok("x-popek-set-engine", {"engine": "interp"}) == {}, "set-engine interp")
q = runs_on("interp")
check(q["switches"] == 1 and sorted(q["engines"]) == ["bt", "interp"], f"after one switch: {q}")
r = c.cmd("x-popek-set-engine", {"engine": "qemu"})
check(r.get("error", {}).get("class") == "GenericError" and "unknown engine" in r["error"]["desc"], f"bad engine: {r}")
r = c.cmd("x-popek-set-engine", {})
check("error" in r, f"no engine: {r}")
info = subprocess.run([popek, "kvm-info"], capture_output=True, text=True)
pairs = {"switch.bt_to_interp": 1, "switch.interp_to_bt": 1}
if info.returncode == 0:
    check(c.ok("x-popek-set-engine", {"engine": "kvm"}) == {}, "set-engine kvm")
    runs_on("kvm", counts=False)  # (KVM does not count instructions)
    time.sleep(0.3)
    check(c.ok("x-popek-set-engine", {"engine": "interp"}) == {}, "back to interp")
    runs_on("interp")
    pairs = {"switch.bt_to_interp": 1, "switch.interp_to_kvm": 1, "switch.kvm_to_interp": 1,
             "switch.interp_to_bt": 1}
else:
    print("kvm part skipped: " + (info.stdout + info.stderr).strip())
check(c.ok("x-popek-set-engine", {"engine": "bt"}) == {}, "set-engine bt")
runs_on("bt")
stats = c.ok("query-popek-stats")
for k, v in pairs.items():
    check(stats.get(k) == v, f"{k} = {stats.get(k)}, expected {v}")
print("switches:", {k: v for k, v in stats.items() if k.startswith("switch.")})
c.ok("quit")
p.wait(timeout=30)
sys.exit(1 if failures else 0)
