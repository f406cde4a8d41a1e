"""Shared helpers for the whole-system tests: find the default Debian guest
(scripts/fetch-guest.sh), boot it headless under popek, and drive its shell
over the serial console (stdin/stdout of `popek run`).

    import guestlib
    kernel, initrd = guestlib.guest_files()        # exits 77 (skip) if absent
    g = guestlib.Guest(guestlib.popek_argv(popek, "interp", kernel, initrd, ["--stats"]))
    g.wait_ready()
    status, out = g.run("uname -a")
    code, tail = g.poweroff()
"""
import os
import re
import select
import subprocess
import sys
import time

SKIP = 77
APPEND = "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1"


def guest_files():
    """(kernel, initrd) of the default guest; exits with the skip status if absent."""
    cache = os.environ.get("POPEK_CACHE") or os.path.join(os.path.dirname(__file__), "../../cache/guest")
    kernel, initrd = os.path.join(cache, "vmlinuz"), os.path.join(cache, "initrd.img")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        print(f"guest not fetched ({kernel}); run scripts/fetch-guest.sh")
        sys.exit(SKIP)
    return kernel, initrd


def popek_argv(popek, engine, kernel, initrd, extra=(), memory="256M", append=APPEND):
    return [popek, "run", "--engine", engine, "--kernel", kernel, "--initrd", initrd,
            "--append", append, "--memory", memory, *extra]


class Guest:
    """A guest whose console is this process's pipe."""

    def __init__(self, argv, echo=False):
        self.argv = argv
        self.echo = echo
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.buf = b""
        self.log = b""
        self.t0 = time.time()
        self.seq = 0

    def _fill(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            return True
        chunk = os.read(self.p.stdout.fileno(), 65536)
        if not chunk:
            return False
        if self.echo:
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        self.buf += chunk
        self.log += chunk
        return True

    def read_until(self, pattern, timeout):
        """Consumes output up to and including the first match of pattern."""
        end = time.time() + timeout
        rx = re.compile(pattern.encode())
        while time.time() < end:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out.decode(errors="replace")
            if not self._fill(0.5):
                break
        print(self.log.decode(errors="replace")[-4000:])
        raise SystemExit(f"timeout or end of output waiting for {pattern!r}")

    def send(self, text):
        try:
            self.p.stdin.write(text.encode())
            self.p.stdin.flush()
        except BrokenPipeError:
            while self._fill(0.5):
                pass
            print(self.log.decode(errors="replace")[-4000:])
            raise SystemExit(f"popek is gone (exit status {self.p.wait()}) before {text.strip()!r} was sent")

    def wait_ready(self, timeout=1500):
        """Waits for the POPEK-READY marker and the shell prompt; returns the seconds taken."""
        self.read_until(r"POPEK-READY", timeout)
        ready = time.time() - self.t0
        # No echo: output is then exactly what the commands print (a long
        # echoed command line would wrap, with the terminal's escapes in it).
        # The quotes keep the echo of this line from matching the marker.
        self.send("stty -echo; echo __SHELL''_READY__\n")
        self.read_until(r"__SHELL_READY__", 120)
        return ready

    def run(self, cmd, timeout=120):
        """Runs a shell command line; returns (exit status, output)."""
        self.seq += 1
        tag = f"__END{os.getpid() % 1000}_{self.seq}__"
        self.send(cmd + f"; echo {tag}$?\n")
        # (Were the command echoed, its tag is not followed by digits.)
        out = self.read_until(re.escape(tag) + r"(\d+)", timeout)
        status = int(re.search(re.escape(tag) + r"(\d+)", out).group(1))
        text = out[: out.rfind(tag)]
        # Drop the prompt before the output.
        return status, re.sub(r"^[\r\n]*[^\r\n]*?[#$] ", "", text, count=1)

    def poweroff(self, timeout=120, command="poweroff -f"):
        """`command` (default `poweroff -f`) in the guest; returns (popek's exit
        status, the last of the output)."""
        self.send(command + "\n")
        try:
            rest, _ = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            raise SystemExit(f"{command} did not end popek")
        self.log += rest
        return self.p.returncode, (self.buf + rest).decode(errors="replace")

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


def guest_time(g, timeout=120):
    """(guest wall time, host time at the midpoint, host round trip), read with
    busybox `adjtimex` (seconds and microseconds; its `date` has no %N);
    raises RuntimeError when it cannot be read."""
    t0 = time.time()
    st, out = g.run("adjtimex", timeout)
    t1 = time.time()
    s = re.search(r"time\.tv_sec:\s*(\d+)", out)
    u = re.search(r"time\.tv_usec:\s*(\d+)", out)
    if st != 0 or not s or not u:
        raise RuntimeError(f"cannot read the guest's time: {out[-300:]}")
    return int(s.group(1)) + int(u.group(1)) / 1e6, (t0 + t1) / 2, t1 - t0


def clock_drift(g, secs):
    """The guest's wall clock against the host's over `sleep SECS` in the guest:
    reads the guest's time (busybox `adjtimex`: seconds and microseconds) between
    two host timestamps before and after. Returns (failures, report lines): the
    drift (change of the guest-minus-host offset) must stay under 100 ms, and
    `sleep` must have taken SECS on the host's clock within 100 ms as well."""
    def sample():
        try:
            return guest_time(g)
        except RuntimeError:
            return None

    sample()  # warm the page cache for adjtimex
    a = sample()
    t0 = time.time()
    st, _ = g.run(f"sleep {secs}", secs + 120)
    slept = time.time() - t0
    b = sample()
    if a is None or b is None:
        return 1, ["FAIL cannot read the guest's time"]
    (g0, h0, r0), (g1, h1, r1) = a, b
    off0, off1 = g0 - h0, g1 - h1
    drift = off1 - off0
    lines = [f"offset guest-host at start {off0 * 1e3:+.1f} ms (round trip {r0 * 1e3:.1f} ms), "
             f"after {h1 - h0:.1f} s {off1 * 1e3:+.1f} ms (round trip {r1 * 1e3:.1f} ms)",
             f"drift {drift * 1e3:+.1f} ms over {h1 - h0:.1f} s; `sleep {secs}` took {slept:.3f} s on the host"]
    failures = 0
    if abs(drift) >= 0.1:
        lines.append("FAIL drift of 100 ms or more")
        failures += 1
    if st != 0 or abs(slept - secs) >= 0.1 + max(r0, r1):
        lines.append("FAIL sleep did not take its time")
        failures += 1
    return failures, lines


def sha256_chain(seed, n):
    """The n links the guest's `h=$(echo "$h$i" | sha256sum ...)` loop makes
    from `seed` (tests/snapshot, tests/migration)."""
    import hashlib
    h, links = seed, []
    for i in range(n):
        h = hashlib.sha256(f"{h}{i}\n".encode()).hexdigest()
        links.append(h)
    return links


def free_port():
    """A TCP port on the host's loopback that nothing listens on (now)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_directory(path):
    """Serves `path` over HTTP on the host's loopback from a thread (quietly).
    Returns the server; .server_address[1] is its port, .shutdown() stops it."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=path, **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def serve_blob(data, rate=0):
    """Serves `data` at /blob over HTTP on the host's loopback from threads,
    with Range requests (bytes=N-, answered 206), so that `wget -c` resumes;
    `rate` (bytes/s per connection, 0: no limit) paces the answer. Returns the
    server; .server_address[1] is its port, .starts the offsets asked for (one
    per request), .shutdown() stops it."""
    import http.server
    import re as re_
    import threading

    starts = []

    class Blob(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path != "/blob":
                self.send_error(404)
                return
            start = 0
            m = re_.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if m:
                start = int(m.group(1))
            starts.append(start)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if m else 200)
            if m:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            chunk = 16384
            t0 = time.time()
            sent = 0
            try:
                for off in range(start, len(data), chunk):
                    self.wfile.write(data[off:off + chunk])
                    sent += min(chunk, len(data) - off)
                    if rate:
                        ahead = sent / rate - (time.time() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            except OSError:
                pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blob)
    httpd.daemon_threads = True
    httpd.starts = starts
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def resumable_fetch(url, size, path="/tmp/blob", tag="W", stall_s=3):
    """A guest shell line (run in the background) that fetches url into path
    with busybox `wget -c` until it holds `size` bytes, then prints
    "<tag>DONE <md5>". Each time wget ends ("<tag>END <bytes>": done, or its
    connection reset, as popek does to the guest's NAT'd connections after a
    migration, libslirp not carrying them) it is resumed where it stopped. A
    transfer that does not grow for stall_s seconds (a connection gone that the
    guest was never told about) is killed ("<tag>STALL <bytes>") and resumed."""
    return (f'(rm -f {path}; touch {path}; while [ $(wc -c < {path}) -lt {size} ]; do rm -f /tmp/{tag}.done; '
            f'(wget -c -q -O {path} {url} 2>/dev/null; touch /tmp/{tag}.done) & last=-1; '
            f's=; k=0; while [ ! -e /tmp/{tag}.done ]; do sleep 0.5; n=$(wc -c < {path}); '
            f'if [ "$n" = "$last" ]; then k=$((k+1)); else k=0; fi; last=$n; '
            f'if [ $k -ge {2 * stall_s} ]; then killall -q wget; echo "{tag}STALL $n"; s=1; break; fi; done; '
            f'[ -z "$s" ] && echo "{tag}END $(wc -c < {path})"; sleep 0.3; done; '
            f'echo "{tag}DONE $(md5sum < {path} | cut -c1-32)") &\n')
