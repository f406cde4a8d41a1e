#!/usr/bin/env python3
"""Boots the default Debian guest headless under popek, runs commands in its
shell over the serial console, and checks their output. Exit 77 (skip) when
the guest has not been fetched (scripts/fetch-guest.sh)."""
import re, sys

import guestlib

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "interp"
kernel, initrd = guestlib.guest_files()
g = guestlib.Guest(guestlib.popek_argv(popek, engine, kernel, initrd, ["--stats"]))
print(f"ready marker after {g.wait_ready():.1f} s")
checks = [
    ("uname -a", r"Linux .* 6\.1\.0-.*-686 .* i686 GNU/Linux"),
    ("cat /proc/cpuinfo", r"model name\s*:.*"),
    ("cat /proc/interrupts", r"0:\s+\d+\s+XT-PIC\s+timer"),
    ("dmesg | tail -3", r"\S"),
    ("ls -l /", r"proc"),
    ("sleep 1 && echo slept", r"slept"),
    ("date", r"20\d\d"),
    ("i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done; echo count=$i", r"count=10000"),
    ("dd if=/dev/zero bs=1M count=16 2>/dev/null | md5sum", r"2c7ab85a893283e98c931e9511add182"),
]
failed = 0
for cmd, pat in checks:
    st, text = g.run(cmd, 600)
    ok = st == 0 and re.search(pat, text)
    print(("ok   " if ok else "FAIL ") + cmd)
    if not ok:
        print(text[-2000:])
        failed += 1
code, tail = g.poweroff()
print(tail[-1500:])
print(f"popek exit status {code}")
if code != 0:
    # The guest's own last lines (before popek's statistics) say why.
    console = tail.split("popek: statistics")[0]
    print("guest console before the end:\n" + console[-3000:])
    failed += 1
sys.exit(1 if failed else 0)
