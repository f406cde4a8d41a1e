#!/usr/bin/env python3
"""The control socket with the default Debian guest: stop/cont leave no jump
in the guest's clock (its uptime advances by the running time only), the
statistics while Linux runs, system_reset reboots the guest (RESET event, POPEK-READY again),
and `poweroff -f` in the guest ends with SHUTDOWN {"guest": true}.
Exit 77 (skip) when the guest has not been fetched.

Usage: qmp_guest_test.py POPEK [ENGINE]"""
import os
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
T0 = time.time()


check = failures.check


def uptime(g):
    status, out = g.run("cat /proc/uptime")
    return float(out.split()[0])


sock = os.path.join(tempfile.mkdtemp(prefix="popek-qmp-guest-"), "qmp")
g = guestlib.Guest(guestlib.popek_argv(popek, engine, kernel, initrd, ["--qmp", f"unix:{sock}"]))
try:
    g.wait_ready()
    c = Client(f"unix:{sock}")
    check(c.ok("query-status")["status"] == "running", "running after boot")

    # Paused for 2 s: the guest's uptime advances by about the running time.
    u0, h0 = uptime(g), time.time()
    c.ok("stop")
    c.wait_event("STOP")
    time.sleep(2.0)
    c.ok("cont")
    c.wait_event("RESUME")
    u1, h1 = uptime(g), time.time()
    print(f"host {h1 - h0:.2f} s, guest uptime {u1 - u0:.2f} s across a 2 s stop", flush=True)
    check(0 < u1 - u0 < (h1 - h0) - 1.5, f"guest clock jumped over the pause: host {h1 - h0:.2f} s, guest {u1 - u0:.2f} s")

    stats = c.ok("query-popek-stats")
    check(stats.get("cpu.instructions", 0) > 10**7 and stats.get("irq.0", 0) > 0,
          f"stats while Linux runs: {dict(list(stats.items())[:8])}")

    # (system_powerdown: tests/qmp/powerdown_test.py.)

    # system_reset: the machine is rebuilt and Linux boots again.
    c.ok("system_reset")
    e = c.wait_event("RESET")
    check(e.get("data", {}).get("reason") == "host-qmp-system-reset", f"RESET {e}")
    g.wait_ready()
    status, out = g.run("echo after-reset")
    check(status == 0 and "after-reset" in out, "the shell works after system_reset")
    check(uptime(g) < 30, "uptime starts again after system_reset")

    # The guest powers off: SHUTDOWN from the guest, exit status 0.
    g.send("poweroff -f\n")
    e = c.wait_event("SHUTDOWN", timeout=60)
    check(e.get("data") == {"guest": True, "reason": "guest-shutdown"}, f"SHUTDOWN {e}")
    check(g.p.wait(timeout=60) == 0, f"exit status {g.p.returncode}")
    check(not os.path.exists(sock), "socket removed at exit")
finally:
    if g.p.poll() is None:
        g.p.kill()
        g.p.wait()

print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failures, {time.time() - T0:.1f} s")
sys.exit(1 if failures else 0)
