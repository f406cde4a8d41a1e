#!/usr/bin/env python3
"""Console input that is all there before the guest boots (a script piped
into `popek run`, then end of input) reaches the guest's shell whole: popek
holds it until the guest raises RTS (Linux clears the UART's FIFO when it
opens the tty; bytes delivered before would be lost), and a guest halted
while some of it still waits for room in the FIFO is not given up on.
Exit 77 (skip) when the guest has not been fetched."""
import subprocess, sys

import guestlib

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "bt"
kernel, initrd = guestlib.guest_files()
lines = [f"echo piped-{k}-$(({k}*7))" for k in range(1, 9)] + ["poweroff -f"]
p = subprocess.run(guestlib.popek_argv(popek, engine, kernel, initrd),
                   input=("\n".join(lines) + "\n").encode(), stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, timeout=1200)
out = p.stdout.decode(errors="replace").replace("\r", "")
failed = 0
for k in range(1, 9):
    if f"\npiped-{k}-{k * 7}\n" not in out:
        print(f"FAIL: the output of line {k} (piped-{k}-{k * 7}) is missing")
        failed += 1
if p.returncode != 0:
    print(f"FAIL: popek exit status {p.returncode}")
    failed += 1
if failed:
    print(out[-3000:])
else:
    print(f"all {len(lines)} piped lines ran; popek exit status 0")
sys.exit(1 if failed else 0)
