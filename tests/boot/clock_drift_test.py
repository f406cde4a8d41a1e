#!/usr/bin/env python3
"""The guest's wall clock against the host's over a run with a sleep in it.

    clock_drift_test.py POPEK ENGINE [SECONDS] [popek options...]

Reads the guest's time (busybox `adjtimex`: seconds and microseconds; its
`date` has no %N) between two host timestamps, sleeps SECONDS (default 30)
in the guest with `sleep`, reads it again (guestlib.clock_drift). The drift is
the change of the guest-minus-host offset; it must stay under 100 ms, and
`sleep` must have taken SECONDS on the host's clock within 100 ms as well.
Exit 77 (skip) when the guest has not been fetched."""
import sys

import guestlib

popek, engine = sys.argv[1], sys.argv[2]
secs = int(sys.argv[3]) if len(sys.argv) > 3 else 30
extra = sys.argv[4:]
kernel, initrd = guestlib.guest_files()
g = guestlib.Guest(guestlib.popek_argv(popek, engine, kernel, initrd, extra))
print(f"ready marker after {g.wait_ready():.1f} s {' '.join(extra)}")
failed, lines = guestlib.clock_drift(g, secs)
print("\n".join(lines))
code, tail = g.poweroff()
if code != 0:
    print(tail[-2000:])
    failed += 1
sys.exit(1 if failed else 0)
