#!/usr/bin/env python3
"""Boots the default Debian guest with popek's console on a pseudo-terminal, as
a person at a terminal would: types a command into the guest shell one key at a
time, checks the answer, asks for popek's status line with Ctrl-A S, quits with
Ctrl-A X (exit status 10), and checks that popek put the terminal mode back.
Exit 77 (skip) when the guest has not been fetched (scripts/fetch-guest.sh)."""
import os, pty, re, select, signal, sys, termios, time

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "interp"
cache = os.environ.get("POPEK_CACHE") or os.path.join(os.path.dirname(__file__), "../../cache/guest")
kernel, initrd = os.path.join(cache, "vmlinuz"), os.path.join(cache, "initrd.img")
if not (os.path.exists(kernel) and os.path.exists(initrd)):
    print(f"guest not fetched ({kernel}); run scripts/fetch-guest.sh")
    sys.exit(77)

master, slave = pty.openpty()
before = termios.tcgetattr(slave)
lflag_before = before[3]
if not (lflag_before & termios.ECHO and lflag_before & termios.ICANON):
    # A fresh pty starts cooked; make sure, so the check at the end means something.
    before[3] |= termios.ECHO | termios.ICANON
    termios.tcsetattr(slave, termios.TCSANOW, before)
    before = termios.tcgetattr(slave)

argv = [popek, "run", "--engine", engine, "--kernel", kernel, "--initrd", initrd,
        "--append", "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1",
        "--memory", "256M"]
pid = os.fork()
if pid == 0:
    try:
        os.close(master)
        os.setsid()
        import fcntl
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        os.execv(popek, argv)
    finally:
        os._exit(127)

buf = b""
t0 = time.time()


def fail(msg):
    print(buf.decode(errors="replace")[-3000:])
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass
    raise SystemExit("FAIL: " + msg)


def read_until(pattern, timeout, soft=False):
    """Reads from the pty until pattern matches what came since the last match.
    soft: on timeout return None instead of failing the whole test."""
    global buf
    end = time.time() + timeout
    rx = re.compile(pattern.encode())
    while True:
        m = rx.search(buf)
        if m:
            out, buf = buf[:m.end()], buf[m.end():]
            return out.decode(errors="replace")
        if time.time() > end:
            if soft:
                return None
            fail(f"timeout waiting for {pattern!r}")
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: popek closed the terminal
                chunk = b""
            if not chunk:
                fail(f"popek closed the terminal while waiting for {pattern!r}")
            buf += chunk


def type_keys(text, delay=0.05):
    for ch in text:
        os.write(master, ch.encode())
        time.sleep(delay)


read_until(r"serial console on this terminal", 30)
# popek is now in raw mode: no local echo, no line editing by the host tty.
during = termios.tcgetattr(slave)
if during[3] & (termios.ECHO | termios.ICANON):
    fail("popek did not put the terminal in raw mode")
read_until(r"POPEK-READY", 1500)
print(f"ready marker after {time.time() - t0:.1f} s")
failed = 0
# The prompt has no newline after it: a console that only flushes its output
# at line ends never shows it (nor the echo of what is typed).
if read_until(r"popek:~# ", 30, soft=True) is None:
    print("FAIL the shell prompt 'popek:~# ' did not appear on the terminal within 30 s")
    failed += 1
else:
    print("ok   shell prompt shown")
# busybox's line editor asks the terminal for the cursor position (ESC [ 6 n);
# nobody answers here, and it carries on without.
time.sleep(0.5)
type_keys("echo $((6*7))")
type_keys("\r")   # Enter on a terminal in raw mode is CR; the guest tty maps it
out = read_until(r"\n42\r*\n", 120)
print("ok   typed `echo $((6*7))`, got 42")

type_keys("\x01s", 0.1)
line = read_until(r"popek: \d+ instructions, eip [0-9a-f]{4}:[0-9a-f]{8}, cpl \d.*virtual time", 30)
print("ok   Ctrl-A S: " + re.search(r"popek: \d+ instructions.*virtual time", line).group(0))

# The guest is still alive after the status line.
type_keys("echo still-$((1+1))\r")
read_until(r"\nstill-2\r*\n", 60)
print("ok   guest still answers after the status line")

type_keys("\x01x", 0.1)
end = time.time() + 60
status = None
while time.time() < end:
    r, _, _ = select.select([master], [], [], 0.2)
    if r:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            chunk = b""
        buf += chunk
    wpid, st = os.waitpid(pid, os.WNOHANG)
    if wpid == pid:
        status = st
        break
if status is None:
    fail("Ctrl-A X did not end popek")
code = os.waitstatus_to_exitcode(status)
print(f"popek exit status {code} after {time.time() - t0:.1f} s")
if code != 10:
    print(f"FAIL expected exit status 10 (quit from the console), got {code}")
    print(buf.decode(errors="replace")[-1500:])
    failed += 1
after = termios.tcgetattr(slave)
if after != before:
    names = ["iflag", "oflag", "cflag", "lflag", "ispeed", "ospeed", "cc"]
    diff = [n for n, a, b in zip(names, before, after) if a != b]
    print(f"FAIL terminal mode not restored: {diff} differ")
    failed += 1
elif not (after[3] & termios.ECHO and after[3] & termios.ICANON):
    print("FAIL ECHO/ICANON not set after popek exited")
    failed += 1
else:
    print("ok   terminal mode restored (ECHO, ICANON back)")
sys.exit(1 if failed else 0)
