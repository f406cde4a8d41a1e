#!/usr/bin/env python3
"""ACPI power-off with the default Debian guest (issue 20):

1. QMP system_powerdown presses the ACPI power button: POWERDOWN at once; the
   guest's button driver reports KEY_POWER, its acpid runs /etc/acpi/power-
   button, which powers off through \\_S5; SHUTDOWN {"guest": true} comes after
   POWERDOWN and popek exits 0. Before that, the guest's kernel log has no ACPI
   errors or warnings and shows the power button.
2. The guest's own `poweroff -f` under ACPI writes S5 to PM1_CNT: exit 0,
   popek says "ACPI S5".
3. (bt only) --no-acpi: system_powerdown is an error, the guest runs on and
   powers off by halting, exit 0.
4. The button pressed while the VM is stopped, the VM saved (migrate to
   file:) and resumed from the file on the other engine: the pending press
   (PM1 status and enable, the SCI) comes through, the guest powers off.
Exit 77 (skip) when the guest has not been fetched.

Usage: powerdown_test.py POPEK [ENGINE]"""
import os
import re
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "boot"))
import guestlib  # noqa: E402
from qmplib import Client, Failures  # noqa: E402

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "bt"
kernel, initrd = guestlib.guest_files()
failures = Failures()
check = failures.check
T0 = time.time()
ACPI_TROUBLE = re.compile(r"ACPI (BIOS )?(Error|Warning)|ACPI Exception")
tmp = tempfile.mkdtemp(prefix="popek-powerdown-")


def boot(extra):
    sock = os.path.join(tmp, f"qmp{len(os.listdir(tmp))}")
    g = guestlib.Guest(guestlib.popek_argv(popek, engine, kernel, initrd, ["--qmp", f"unix:{sock}", *extra]))
    g.wait_ready()
    return g, Client(f"unix:{sock}")


def finish(g, timeout=120):
    try:
        rest, _ = g.p.communicate(timeout=timeout)
    except Exception:
        g.kill()
        raise
    g.log += rest
    return g.p.returncode, g.log.decode(errors="replace")


# --- 1. system_powerdown ---------------------------------------------------------
g, c = boot([])
try:
    status, log = g.run("dmesg")
    trouble = [l for l in log.splitlines() if ACPI_TROUBLE.search(l)]
    check(status == 0 and not trouble, f"ACPI trouble in the guest's kernel log: {trouble}")
    check("ACPI: PM: (supports S0 S5)" in log, "the kernel sees \\_S5")
    status, out = g.run("ls /sys/bus/acpi/devices/; cat /proc/interrupts | grep acpi; pidof acpid")
    check("LNXPWRBN:00" in out and re.search(r"^ *9:.*acpi", out, re.M) and status == 0,
          f"power button, SCI on IRQ 9, acpid running: {out!r}")
    t = time.time()
    check(c.ok("system_powerdown") == {}, "system_powerdown answers {}")
    c.wait_event("POWERDOWN")
    e = c.wait_event("SHUTDOWN", timeout=120)
    print(f"system_powerdown to SHUTDOWN: {time.time() - t:.2f} s", flush=True)
    check(e.get("data") == {"guest": True, "reason": "guest-shutdown"}, f"SHUTDOWN {e}")
    check(c.events == [] or all(x["event"] != "POWERDOWN" for x in c.events), "one POWERDOWN")
    code, log = finish(g)
    check(code == 0, f"exit status after system_powerdown: {code}")
    check("popek: power button pressed, powering off" in log, "the guest's acpid handler ran")
    check("guest powered off (ACPI S5)" in log, "powered off through S5")
finally:
    g.kill()

# --- 2. the guest's own poweroff under ACPI -------------------------------------
g, c = boot([])
try:
    code, log = g.poweroff()
    check(code == 0, f"exit status after poweroff -f: {code}")
    check("guest powered off (ACPI S5)" in log, f"poweroff -f went through S5: {log[-300:]!r}")
    e = c.wait_event("SHUTDOWN", timeout=10)
    check(e.get("data") == {"guest": True, "reason": "guest-shutdown"}, f"SHUTDOWN {e}")
finally:
    g.kill()

# --- 3. --no-acpi: the board as before ACPI --------------------------------------
if engine == "bt":
    g, c = boot(["--no-acpi"])
    try:
        r = c.cmd("system_powerdown")
        check(r.get("error", {}).get("class") == "GenericError", f"system_powerdown with --no-acpi: {r}")
        status, out = g.run("echo still-here")
        check(status == 0 and "still-here" in out, "the guest runs after a refused system_powerdown")
        code, log = g.poweroff()
        check(code == 0 and "halted with interrupts disabled" in log, f"--no-acpi poweroff: {code} {log[-200:]!r}")
    finally:
        g.kill()

# --- 4. a press pending across suspend/resume ------------------------------------
g, c = boot([])
try:
    c.ok("stop")
    c.wait_event("STOP")
    check(c.ok("system_powerdown") == {}, "system_powerdown while stopped")
    c.wait_event("POWERDOWN")
    saved = os.path.join(tmp, "pressed.popek")
    check(c.cmd("migrate", {"uri": f"file:{saved}"}) == {"return": {}}, "migrate to file")
    c.ok("quit")
    g.p.communicate(timeout=60)
finally:
    g.kill()
other = "interp" if engine == "bt" else "bt"
sock = os.path.join(tmp, "qmp-resumed")
g = guestlib.Guest(guestlib.popek_argv(popek, other, kernel, initrd,
                                       ["--qmp", f"unix:{sock}", "--incoming", f"file:{saved}"]))
try:
    code, log = finish(g)
    check(code == 0 and "popek: power button pressed, powering off" in log and "ACPI S5" in log,
          f"resumed on {other}, the pending press powers off: {code} {log[-300:]!r}")
finally:
    g.kill()

print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failures, {time.time() - T0:.1f} s")
sys.exit(1 if failures else 0)
