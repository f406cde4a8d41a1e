#!/usr/bin/env python3
"""The guest's wall clock against the host's over a run with a sleep in it.

    clock_drift_test.py POPEK ENGINE [SECONDS] [popek options...]

Reads the guest's time (busybox `adjtimex`: seconds and microseconds; its
`date` has no %N) between two host timestamps, sleeps SECONDS (default 30)
in the guest with `sleep`, reads it again. The drift is the change of the
guest-minus-host offset; it must stay under 100 ms, and `sleep` must have
taken SECONDS on the host's clock within 100 ms as well. Exit 77 (skip) when
the guest has not been fetched."""
import re, sys, time

import guestlib

popek, engine = sys.argv[1], sys.argv[2]
secs = int(sys.argv[3]) if len(sys.argv) > 3 else 30
extra = sys.argv[4:]
kernel, initrd = guestlib.guest_files()
g = guestlib.Guest(guestlib.popek_argv(popek, engine, kernel, initrd, extra))
print(f"ready marker after {g.wait_ready():.1f} s {' '.join(extra)}")


def sample(cmd="adjtimex"):
    """(guest time, host time at the midpoint, host round trip)."""
    t0 = time.time()
    st, out = g.run(cmd, 120)
    t1 = time.time()
    s = re.search(r"time\.tv_sec:\s*(\d+)", out)
    u = re.search(r"time\.tv_usec:\s*(\d+)", out)
    if st != 0 or not s or not u:
        print("FAIL cannot read the guest's time:\n" + out)
        sys.exit(1)
    return int(s.group(1)) + int(u.group(1)) / 1e6, (t0 + t1) / 2, t1 - t0


sample()  # warm the page cache for adjtimex
g0, h0, r0 = sample()
t0 = time.time()
st, out = g.run(f"sleep {secs}", secs + 120)
slept = time.time() - t0
g1, h1, r1 = sample()
off0, off1 = g0 - h0, g1 - h1
drift = off1 - off0
print(f"offset guest-host at start {off0 * 1e3:+.1f} ms (round trip {r0 * 1e3:.1f} ms), "
      f"after {h1 - h0:.1f} s {off1 * 1e3:+.1f} ms (round trip {r1 * 1e3:.1f} ms)")
print(f"drift {drift * 1e3:+.1f} ms over {h1 - h0:.1f} s; `sleep {secs}` took {slept:.3f} s on the host")
failed = 0
if abs(drift) >= 0.1:
    print("FAIL drift of 100 ms or more")
    failed = 1
if st != 0 or abs(slept - secs) >= 0.1 + max(r0, r1):
    print("FAIL sleep did not take its time")
    failed = 1
code, tail = g.poweroff()
if code != 0:
    print(tail[-2000:])
    failed = 1
sys.exit(failed)
