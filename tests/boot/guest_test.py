#!/usr/bin/env python3
"""Boots the default Debian guest headless under popek, runs commands in its
shell over the serial console, and checks their output. Exit 77 (skip) when
the guest has not been fetched (scripts/fetch-guest.sh)."""
import os, subprocess, sys, time, select, re

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "interp"
cache = os.environ.get("POPEK_CACHE") or os.path.join(os.path.dirname(__file__), "../../cache/guest")
kernel, initrd = os.path.join(cache, "vmlinuz"), os.path.join(cache, "initrd.img")
if not (os.path.exists(kernel) and os.path.exists(initrd)):
    print(f"guest not fetched ({kernel}); run scripts/fetch-guest.sh")
    sys.exit(77)

p = subprocess.Popen([popek, "run", "--engine", engine, "--kernel", kernel, "--initrd", initrd,
                      "--append", "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1",
                      "--memory", "256M", "--stats"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
buf = b""
t0 = time.time()

def read_until(pattern, timeout):
    global buf
    end = time.time() + timeout
    rx = re.compile(pattern.encode())
    while time.time() < end:
        m = rx.search(buf)
        if m:
            out, buf = buf[:m.end()], buf[m.end():]
            return out.decode(errors="replace")
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
    print(buf.decode(errors="replace")[-3000:])
    raise SystemExit(f"timeout waiting for {pattern!r}")

def run(cmd, timeout=120):
    tag = f"__END{int(time.time()*1000)%100000}__"
    p.stdin.write((cmd + f"; echo {tag}$?\n").encode())
    p.stdin.flush()
    out = read_until(re.escape(tag) + r"(\d+)", timeout)
    status = int(re.search(re.escape(tag) + r"(\d+)", out).group(1))
    text = out[: out.rfind(tag)]
    return status, text

read_until(r"POPEK-READY", 1500)
ready = time.time() - t0
print(f"ready marker after {ready:.1f} s")
p.stdin.write(b"\n")
p.stdin.flush()
read_until(r"[#$] ", 120)
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
    st, text = run(cmd, 600)
    ok = st == 0 and re.search(pat, text)
    print(("ok   " if ok else "FAIL ") + cmd)
    if not ok:
        print(text[-2000:])
        failed += 1
# sleep 1 really sleeps about a second of guest time
p.stdin.write(b"poweroff -f\n")
p.stdin.flush()
try:
    rest, _ = p.communicate(timeout=120)
except subprocess.TimeoutExpired:
    p.kill()
    raise SystemExit("poweroff -f did not end popek")
tail = (buf + rest).decode(errors="replace")
print(tail[-1500:])
print(f"popek exit status {p.returncode}")
if p.returncode != 0:
    failed += 1
sys.exit(1 if failed else 0)
