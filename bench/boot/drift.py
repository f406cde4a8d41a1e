#!/usr/bin/env python3
"""Guest clock drift with and without the paravirtual interface (issue 22).

Boots the default guest twice at the same time on one engine, once as popek
runs it by default (kvm-clock) and once with --no-paravirt (the guest
calibrates its TSC against the PIT, or falls back to the PIT clocksource),
and over MINUTES of `sleep INTERVAL` in each guest reads the guest's wall
clock (busybox `adjtimex`: seconds and microseconds, the clock `date` shows;
busybox's date has no %N) between two host timestamps. The drift is the
change of the guest-minus-host offset since the first reading, in ms; each
`sleep`'s duration on the host's clock is checked too. Both guests run side
by side, so the host's load hits them alike.

Usage: bench/boot/drift.py [--engine bt] [--minutes 10] [--interval 60]
                           [--configs pv,nopv] [--popek PATH]
Prints one line per reading and a summary table; exit status 1 if a guest
failed. The absolute offset (not the drift) reflects the RTC's one-second
resolution at boot: see docs/paravirt.md.
"""
import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "boot"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib as B  # noqa: E402
import guestlib  # noqa: E402

CONFIGS = {"pv": ("kvm-clock (default)", []), "nopv": ("--no-paravirt", ["--no-paravirt"])}


def sample(g):
    """(guest wall time, host time at the midpoint, round trip) or raises."""
    return guestlib.guest_time(g, 300)


def measure(name, argv, args, out, lock):
    res = out[name] = {"samples": [], "sleeps": [], "error": None, "clocksource": "?"}
    g = None
    try:
        g = guestlib.Guest(argv)
        ready = g.wait_ready()
        st, cs = g.run("cat /sys/devices/system/clocksource/clocksource0/current_clocksource", 120)
        res["clocksource"] = cs.strip().splitlines()[-1] if cs.strip() else "?"
        with lock:
            B.log(f"{name}: ready after {ready:.1f} s, clocksource {res['clocksource']}")
        sample(g)  # warm the page cache for adjtimex
        g0, h0, r0 = sample(g)
        res["samples"].append((0.0, 0.0, r0))
        n = max(1, round(args.minutes * 60 / args.interval))
        for i in range(n):
            t0 = time.time()
            st, _ = g.run(f"sleep {args.interval}", args.interval + 300)
            res["sleeps"].append(time.time() - t0)
            if st != 0:
                raise RuntimeError(f"sleep {args.interval} exited with status {st}")
            gi, hi, ri = sample(g)
            drift = (gi - hi) - (g0 - h0)
            res["samples"].append((hi - h0, drift, ri))
            with lock:
                B.log(f"{name}: after {hi - h0:7.1f} s drift {drift * 1e3:+8.1f} ms "
                      f"(round trip {ri * 1e3:.1f} ms, sleep took {res['sleeps'][-1]:.3f} s)")
        res["offset0"] = g0 - h0
        code, tail = g.poweroff()
        if code != 0:
            raise RuntimeError(f"power-off: exit status {code}: {tail[-300:]}")
    # guestlib raises SystemExit on a timeout; either is this configuration's failure
    except (Exception, SystemExit) as e:  # noqa: BLE001
        res["error"] = str(e)
        if g:
            g.kill()


def main():
    ap = argparse.ArgumentParser(prog="bench/boot/drift.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="bt", help="popek engine (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=10, help="length of the run (default: %(default)s)")
    ap.add_argument("--interval", type=int, default=60, help="seconds per sleep (default: %(default)s)")
    ap.add_argument("--configs", default="pv,nopv", help="pv (kvm-clock), nopv (default: %(default)s)")
    ap.add_argument("--popek", help="popek binary (default: $POPEK, else the newest build*/popek)")
    args = ap.parse_args()
    popek = B.find_popek(args.popek)
    kernel, initrd = B.check_guest()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            B.die(f"unknown config '{c}' (known: {', '.join(CONFIGS)})")
    out, lock, threads = {}, threading.Lock(), []
    start = time.time()
    for c in configs:
        argv = guestlib.popek_argv(popek, args.engine, kernel, initrd, CONFIGS[c][1])
        t = threading.Thread(target=measure, args=(c, argv, args, out, lock))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    print()
    print(f"Guest clock drift on popek {args.engine}: change of the guest-minus-host wall-clock offset, "
          f"{args.minutes:g} min of `sleep {args.interval}`, configurations side by side "
          f"({time.time() - start:.0f} s wall)")
    load = open("/proc/loadavg").read().split()[:3]
    print(f"host load at the end {' '.join(load)}; popek {popek}")
    rows, failed = [], False
    for c in configs:
        r = out[c]
        if r["error"]:
            failed = True
            rows.append([CONFIGS[c][0], r["clocksource"], "FAIL", "", "", r["error"][:80]])
            continue
        last = r["samples"][-1]
        worst = max(abs(s[1]) for s in r["samples"])
        sleep_err = max(abs(s - args.interval) for s in r["sleeps"])
        rows.append([CONFIGS[c][0], r["clocksource"], f"{last[1] * 1e3:+.1f} ms over {last[0]:.0f} s",
                     f"{worst * 1e3:.1f} ms", f"{sleep_err * 1e3:.0f} ms",
                     f"{r['offset0'] * 1e3:+.0f} ms"])
    B.table(rows, ["configuration", "clocksource", "drift at the end", "largest |drift|",
                   "worst sleep error", "offset at start"], ["<", "<", ">", ">", ">", ">"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
