#!/usr/bin/env python3
"""Live migration (pre-copy over TCP) of the default Debian guest between
two popeks on this machine, back and forth MIGRATIONS times (env
POPEK_MIGRATIONS, default 20), while the guest computes a SHA-256 chain in a
busy shell loop, writes each link to a qcow2 virtio disk (dd conv=fsync) and
every 20 steps checks, then rewrites, a 4 MiB tmpfs file (its checksum is
printed: the host knows what it must be). One leg runs on interp (its dirty
tracking), the rest on bt. Every checksum must be right, every step printed
exactly once across the processes, every link on the disk, the image clean.
Each migration's downtime, total time and bytes are printed.

The network (--netdev user with a hostfwd): meanwhile the guest fetches a
12 MiB file from a host HTTP server (paced at 512 KB/s, so that it spans
several migrations) with busybox `wget -c`, and after every migration the
host fetches a page from the guest's httpd through the hostfwd port, which
the destination has bound at the switch-over. libslirp does not carry NAT'd
TCP connections across (slirp_state_save keeps only DHCP leases, the IP id
and callback-backed guestfwd sockets; the host end of a NAT'd connection is
the source's socket): the destination resets the guest's connection at once
(never a silent stall: checked), and the guest resumes the transfer where it
stopped (HTTP Range). The file's MD5 must be right; the resets are printed.

Faults: the destination killed (SIGKILL) during pre-copy (the source keeps
running, then migrates again fine); migrate_cancel during pre-copy; a destination that takes the whole
stream but never acknowledges (the source runs on); that stream, truncated
and bit-flipped, given to a fresh destination (it refuses, exit 125, without
running the guest); the complete stream while the source still holds the
image's lock (refused: locked); the complete stream to a destination with
other devices (no --netdev; refused, naming the difference); a destination
whose hostfwd port another process holds (it refuses after the stream, naming
the port; the source binds its own again and runs on); the migration
connection cut (a proxy between the two popeks closes it) at random points
(the source keeps running, status failed; the destination refuses, exit 125,
without running the guest).
Exit 77 (skip) when the guest has not been fetched.

Usage: live_migration_test.py POPEK [SEED]"""
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "qmp"))
sys.path.insert(0, os.path.join(here, "..", "boot"))
import guestlib  # noqa: E402
from qmplib import Client, Failures  # noqa: E402

popek = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
rng = random.Random(seed)
MIGRATIONS = int(os.environ.get("POPEK_MIGRATIONS", "20"))
kernel, initrd = guestlib.guest_files()
print(f"seed {seed}, {MIGRATIONS} migrations", flush=True)
T0 = time.time()
failures = Failures()
runs = []  # per migration: dict of figures


check = failures.check


work = tempfile.mkdtemp(prefix="popek-mig-")
img = os.path.join(work, "disk.qcow2")
subprocess.run([popek, "img", "create", img, "64M"], check=True, stdout=subprocess.DEVNULL)
FWD = guestlib.free_port()
disk_devices = ["--drive", f"file={img}"]
devices = [*disk_devices, "--netdev", f"user,hostfwd=tcp:127.0.0.1:{FWD}-:8080"]
nodes = []
BLOB = random.Random(seed).randbytes(12 << 20)
BLOB_MD5 = hashlib.md5(BLOB).hexdigest()
httpd = guestlib.serve_blob(BLOB, rate=512 * 1024)
hostfwd_ok = []  # per migration: the guest's httpd answered through the forward
nudged = []  # per node before a migration: connections it reset after its own restore


class Node:
    """One popek: its console output (read by a thread, so that the guest
    never blocks on a full pipe) and its control socket."""
    seq = 0

    def __init__(self, engine, incoming=False, extra=(), disk=True, devs=None):
        Node.seq += 1
        self.engine = engine
        self.sock = os.path.join(work, f"qmp{Node.seq}")
        argv = guestlib.popek_argv(popek, engine, kernel, initrd,
                                   [*((devices if devs is None else devs) if disk else []), "--qmp",
                                    f"unix:{self.sock}", *extra,
                                    *(["--incoming", "tcp:127.0.0.1:0"] if incoming else [])])
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = b""
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        nodes.append(self)
        self.addr = None
        if incoming:
            m = self.wait(rb"waiting for a migration on (tcp:\S+)", 20)
            self.addr = m.group(1).decode()
        self.c = None
        end = time.time() + 20
        while self.c is None:
            try:
                self.c = Client(f"unix:{self.sock}")
            except OSError:
                if time.time() > end or self.p.poll() is not None:
                    raise SystemExit(f"no control socket: {self.out[-2000:]!r}")
                time.sleep(0.05)

    def _read(self):
        while True:
            chunk = os.read(self.p.stdout.fileno(), 65536)
            with self.cv:
                if not chunk:
                    self.eof = True
                    self.cv.notify_all()
                    return
                self.out += chunk
                self.cv.notify_all()

    def wait(self, pattern, timeout, start=0):
        rx = re.compile(pattern)
        end = time.time() + timeout
        with self.cv:
            while True:
                m = rx.search(self.out, start)
                if m:
                    return m
                if getattr(self, "eof", False) or time.time() > end:
                    print(self.out[-3000:].decode(errors="replace"))
                    raise SystemExit(f"timeout or end of output waiting for {pattern!r}")
                self.cv.wait(0.2)

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def text(self):
        with self.cv:
            return self.out.decode(errors="replace")

    def end(self, timeout=60):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.reader.join(5)
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.end()


def wait_migration(c, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        info = c.ok("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.02)
    raise SystemExit("migration did not end")


def migrate(src, engine):
    """Migrates src's guest to a new popek on `engine`; returns the new node."""
    nudged.append(src.c.ok("query-popek-stats").get("virtio-net0.backend.restored_connection_resets", 0))
    dst = Node(engine, incoming=True)
    t = time.time()
    r = src.c.cmd("migrate", {"uri": dst.addr})
    check(r == {"return": {}}, f"migrate: {r}")
    info = wait_migration(src.c)
    wall = time.time() - t
    if not check(info.get("status") == "completed", f"migration {len(runs) + 1}: {info}"):
        raise SystemExit(dst.text()[-2000:])
    st = src.c.ok("query-status")
    check(st["status"] == "postmigrate", f"source after migration: {st}")
    dst.wait(rb"the guest runs", 30)
    src.c.ok("quit")
    check(src.end() == 0, f"source exit status {src.p.returncode}")
    so = re.search(r"popek: migration switch-over: ([^\n]*)", src.text())
    do = re.search(r"popek: migration stream received ([^\n]*)", dst.text())
    if os.environ.get("POPEK_MIGRATION_VERBOSE") and so and do:
        print(f"    source: {so.group(1).strip()}\n    destination: {do.group(1).strip()}", flush=True)
    try:  # the hostfwd port, bound by the destination at the switch-over
        with urllib.request.urlopen(f"http://127.0.0.1:{FWD}/", timeout=10) as r:
            hostfwd_ok.append(b"served-by-the-guest" in r.read())
    except OSError as e:
        hostfwd_ok.append(False)
        print(f"  hostfwd after migration {len(runs) + 1}: {e}", flush=True)
    ram = info["ram"]
    runs.append({"downtime": info["downtime"], "total": info["total-time"], "bytes": ram["transferred"],
                 "passes": ram["dirty-sync-count"], "wall": wall})
    print(f"  migration {len(runs)} {src.engine}->{engine}: downtime {info['downtime']} ms, total "
          f"{info['total-time']} ms, {ram['transferred'] / 1e6:.1f} MB, {ram['dirty-sync-count']} passes",
          flush=True)
    return dst




MEM = 4 << 20


def mem_sum(i):
    data = (f"{i}\n".encode() * (MEM // 2 + 1))[:MEM]
    return hashlib.sha256(data).hexdigest()


def workload(s, n, base):
    return (f'rm -f /tmp/m; h={s}; i=0; while [ $i -lt {n} ]; do h=$(echo "$h$i" | sha256sum | cut -c1-64); '
            f'echo "$h" | dd of=/dev/vda bs=512 seek=$(({base}+i)) conv=fsync 2>/dev/null; '
            f'if [ $((i%20)) -eq 0 ]; then echo "M $i $(cat /tmp/m 2>/dev/null | sha256sum | cut -c1-64)"; '
            f'yes $i | head -c {MEM} > /tmp/m; fi; '
            f'echo "S$i"; i=$((i+1)); done; echo "R $h"\n')


def chain_text(parts):
    text = "".join(parts)
    return re.sub(r"popek: [^\n]*\n", "", text)


def verify_chain(text, s, n, what):
    links = guestlib.sha256_chain(s, n)
    got = re.search(r"R ([0-9a-f]{64})", text)
    check(got and got.group(1) == links[-1], f"{what}: checksum {got and got.group(1)}, expected {links[-1]}")
    steps = [int(x) for x in re.findall(r"\bS(\d+)\b", text)]
    check(steps == list(range(n)), f"{what}: steps printed {len(steps)}, want 0..{n - 1} once each in order")
    for i, h in re.findall(r"\bM (\d+) ([0-9a-f]{64})", text):
        i = int(i)
        want = mem_sum(i - 20) if i else hashlib.sha256(b"").hexdigest()
        check(h == want, f"{what}: tmpfs checksum at step {i}: {h}, expected {want}")
    return links


try:
    vm = Node("bt")
    vm.wait(rb"POPEK-READY", 300)
    vm.send("stty -echo; echo __SHELL''_READY__\n")
    vm.wait(rb"__SHELL_READY__", 60)
    vm.send("mkdir -p /tmp/www && echo served-by-the-guest > /tmp/www/index.html && httpd -p 8080 -h /tmp/www\n")
    vm.send(guestlib.resumable_fetch(f"http://10.0.2.2:{httpd.server_address[1]}/blob", len(BLOB)))
    chains = {}
    chain_no = 0
    engines = ["interp" if k == 3 else "bt" for k in range(1, MIGRATIONS + 1)]
    k = 0
    while k < MIGRATIONS:
        s, n, base = f"seed{chain_no}", 300, chain_no * 1000
        start = len(vm.out)
        vm.send(workload(s, n, base))
        parts = []
        while k < MIGRATIONS:
            time.sleep(rng.uniform(0.3, 1.5) if vm.engine == "bt" else 1.0)
            with vm.cv:
                done = re.compile(rb"R [0-9a-f]{64}").search(vm.out, start) is not None
            if done:
                break
            parts.append(vm.out[start:].decode(errors="replace"))  # (the rest after quit, below)
            old = vm
            vm = migrate(vm, engines[k])
            parts[-1] = old.out[start:].decode(errors="replace")
            start = 0
            k += 1
        if vm.engine != "bt":  # an interp leg ends with the next migration; finish on bt
            old = vm
            vm = migrate(vm, "bt")
            parts.append(old.out[start:].decode(errors="replace"))
            start = 0
        m = vm.wait(rb"R [0-9a-f]{64}", 600, start)
        parts.append(vm.out[start:m.end()].decode(errors="replace"))
        chains[base] = verify_chain(chain_text(parts), s, n, f"chain {chain_no}")
        print(f"  chain {chain_no}: {n} steps checked", flush=True)
        chain_no += 1

    # The transfer from the host: resumed after the switches, whole.
    def all_text():
        return "".join(nd.text() for nd in nodes)

    end = time.time() + 300
    while "WDONE" not in all_text() and time.time() < end:
        time.sleep(0.5)
    txt = all_text()
    done = re.search(r"WDONE ([0-9a-f]{32})", txt)
    check(done and done.group(1) == BLOB_MD5,
          f"guest's copy of the host file: md5 {done and done.group(1)}, expected {BLOB_MD5}")
    resumed = [s_ for s_ in httpd.starts if s_ > 0]
    # (ash's job-control message at the end quotes the command: count the lines the loop prints.)
    stalls = len(re.findall(r"WSTALL \d+", txt))
    resets = len(re.findall(r"WEND \d+", txt)) - 1  # (the last: done)
    print(f"  host file (12 MiB) in the guest: md5 {'right' if done and done.group(1) == BLOB_MD5 else 'WRONG'}; "
          f"{len(httpd.starts)} requests, {len(resumed)} resumed mid-file: wget reset {resets} times, stalled "
          f"{stalls} times; connections popek reset after each restore: {nudged}", flush=True)
    check(stalls == 0, f"the guest's transfer stalled {stalls} times (its connection gone without a reset)")
    if os.environ.get("POPEK_MIGRATION_VERBOSE"):
        for i, nd in enumerate(nodes):
            print(f"    node {i} ({nd.engine}): " + " ".join(re.findall(r"W(?:STALL|END|DONE) \w+", nd.text())))
        print(f"    requests from offsets {httpd.starts}")
    check(len(resumed) >= 1 and sum(nudged) >= 1,
          "the transfer spanned a migration: popek reset the connection and the guest resumed the transfer")
    check(all(hostfwd_ok) and len(hostfwd_ok) == len(runs),
          f"hostfwd answered after {sum(hostfwd_ok)} of {len(runs)} migrations")
    print(f"  hostfwd: the guest's httpd answered through 127.0.0.1:{FWD} after {sum(hostfwd_ok)} of "
          f"{len(runs)} migrations", flush=True)

    # --- faults ---
    # 1: the destination killed during pre-copy (bandwidth limited so that it is).
    vm.c.ok("migrate-set-parameters", {"max-bandwidth": 8_000_000})
    dst = Node("bt", incoming=True)
    vm.c.ok("migrate", {"uri": dst.addr})
    time.sleep(rng.uniform(0.2, 1.5))
    st1 = vm.c.ok("query-migrate")["status"]
    dst.p.send_signal(signal.SIGKILL)
    dst.end()
    info = wait_migration(vm.c)
    check(st1 == "active" and info["status"] == "failed",
          f"SIGKILL of the destination: status {st1} then {info['status']}")
    check(vm.c.ok("query-status")["status"] == "running", "the source runs on after the destination died")
    print(f"  destination killed during pre-copy: source {info['status']} ({info.get('error-desc')}), running",
          flush=True)
    # 1b: migrate_cancel during pre-copy: the source runs on; the destination
    # (its stream cut) refuses and ends.
    dst = Node("bt", incoming=True)
    vm.c.ok("migrate", {"uri": dst.addr})
    time.sleep(rng.uniform(0.2, 1.0))
    vm.c.ok("migrate_cancel")
    info = wait_migration(vm.c)
    check(info["status"] == "cancelled", f"migrate_cancel: {info['status']}")
    check(vm.c.ok("query-status")["status"] == "running", "the source runs on after migrate_cancel")
    code = dst.end(30)
    check(code == 125 and "the guest runs" not in dst.text(), f"destination of a cancelled migration: {code}")
    print(f"  migrate_cancel: source {info['status']}, running; destination exit {code}: "
          f"{dst.text().strip().splitlines()[-1]}", flush=True)
    vm.c.ok("migrate-set-parameters", {"max-bandwidth": 0})

    # 2: a destination that takes the whole stream and never answers.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    got = bytearray()

    def sink():
        conn, _ = lsock.accept()
        conn.settimeout(1.5)
        try:
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                got.extend(b)
        except socket.timeout:
            pass
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    vm.c.ok("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    info = wait_migration(vm.c)
    th.join()
    lsock.close()
    check(info["status"] == "failed", f"no acknowledgement: {info['status']}")
    check(vm.c.ok("query-status")["status"] == "running", "the source runs on without an acknowledgement")
    try:  # it had let its hostfwd port go at the switch-over, and bound it again
        with urllib.request.urlopen(f"http://127.0.0.1:{FWD}/", timeout=10) as r:
            fwd_back = b"served-by-the-guest" in r.read()
    except OSError:
        fwd_back = False
    check(fwd_back, "after the failed switch-over the source serves its hostfwd port again")
    print(f"  no acknowledgement: source {info['status']} ({info.get('error-desc')}), running, hostfwd "
          f"{'answers' if fwd_back else 'DEAD'}; stream {len(got) / 1e6:.1f} MB", flush=True)

    # 3: that stream, damaged, to fresh destinations: refused, the guest never runs.
    def feed(blob, pattern, what, devs=None):
        d = Node("bt", incoming=True, devs=devs)
        host, port = d.addr[4:].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as c:
            try:
                c.sendall(blob)
                c.shutdown(socket.SHUT_WR)
                c.settimeout(20)
                reply = c.recv(4096)
            except OSError:
                reply = b""
        code = d.end(60)
        out = d.text()
        check(code == 125 and re.search(pattern, out) and "the guest runs" not in out,
              f"{what}: status {code}, {out[-300:]!r}")
        print(f"  {what}: exit {code}: {out.strip().splitlines()[-1]}", flush=True)

    feed(bytes(got[: len(got) * 2 // 3]), r"unexpected end", "truncated stream")
    flipped = bytearray(got)
    flipped[rng.randrange(64, len(flipped) - 64)] ^= 1 << rng.randrange(8)
    feed(bytes(flipped), r"checksum mismatch|corrupt|no section", "bit-flipped stream")
    feed(bytes(got), r"locked by another process", "complete stream, image still locked by the source")
    feed(bytes(got), r"saved VM has 1 virtio-net card, this command line has 0 \(--netdev\)",
         "complete stream, destination without the network card", devs=disk_devices)

    # 3b: the migration connection cut at random points (a proxy closes it
    # after N bytes): the source runs on, the destination refuses.
    def cut_at(limit):
        dst = Node("bt", incoming=True)
        dhost, dport = dst.addr[4:].rsplit(":", 1)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        passed = [0]

        def proxy():
            a, _ = ls.accept()
            b = socket.create_connection((dhost, int(dport)))
            try:
                while passed[0] < limit:
                    chunk = a.recv(min(1 << 16, limit - passed[0]))
                    if not chunk:
                        break
                    b.sendall(chunk)
                    passed[0] += len(chunk)
            except OSError:
                pass
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                x.close()

        th = threading.Thread(target=proxy)
        th.start()
        vm.c.ok("migrate", {"uri": f"tcp:127.0.0.1:{ls.getsockname()[1]}"})
        info = wait_migration(vm.c)
        th.join(30)
        ls.close()
        code = dst.end(60)
        out = dst.text()
        running = vm.c.ok("query-status")["status"] == "running"
        check(info["status"] == "failed" and running, f"cut after {passed[0]} bytes: source {info['status']}, "
                                                      f"running {running}")
        check(code == 125 and "the guest runs" not in out,
              f"cut after {passed[0]} bytes: destination exit {code}: {out[-300:]!r}")
        print(f"  connection cut after {passed[0]} of ~{len(got)} bytes: source {info['status']} "
              f"({info.get('error-desc')}), running; destination exit {code}: "
              f"{out.strip().splitlines()[-1]}", flush=True)

    # 3c: a destination that cannot bind its hostfwd port (another process
    # holds it): it refuses after the whole stream, naming the port; the
    # source takes its own port back and runs on.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    bport = busy.getsockname()[1]
    dst = Node("bt", incoming=True, devs=[*disk_devices, "--netdev", f"user,hostfwd=tcp:127.0.0.1:{bport}-:8080"])
    vm.c.ok("migrate", {"uri": dst.addr})
    info = wait_migration(vm.c)
    code = dst.end(60)
    busy.close()
    out = dst.text()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{FWD}/", timeout=10) as r:
            fwd_back = b"served-by-the-guest" in r.read()
    except OSError:
        fwd_back = False
    running = vm.c.ok("query-status")["status"] == "running"
    check(info["status"] == "failed" and f"port {bport}" in info.get("error-desc", "") and running and fwd_back,
          f"destination's hostfwd port busy: source {info['status']} ({info.get('error-desc')}), running {running}, "
          f"hostfwd {fwd_back}")
    check(code == 125 and f"port {bport}" in out and "the guest runs" not in out,
          f"destination's hostfwd port busy: destination exit {code}: {out[-300:]!r}")
    print(f"  destination's hostfwd port busy: source {info['status']} ({info.get('error-desc')}), running, "
          f"hostfwd {'answers' if fwd_back else 'DEAD'}; destination exit {code}", flush=True)

    cut_at(rng.randrange(16, 4096))  # in the "machine" section or the first RAM
    for _ in range(3):
        cut_at(rng.randrange(len(got) // 20, len(got) * 9 // 10))

    # 4: a later migration succeeds.
    vm = migrate(vm, "bt")
    s, n, base = "after-faults", 60, chain_no * 1000
    start = len(vm.out)
    vm.send(workload(s, n, base))
    m = vm.wait(rb"R [0-9a-f]{64}", 600, start)
    chains[base] = verify_chain(chain_text([vm.out[start:m.end()].decode(errors="replace")]), s, n, "after faults")

    vm.send("poweroff -f\n")
    check(vm.end(120) == 0, f"poweroff exit status {vm.p.returncode}")

    raw = os.path.join(work, "disk.raw")
    subprocess.run([popek, "img", "convert", "-O", "raw", img, raw], check=True)
    with open(raw, "rb") as f:
        data = f.read()
    for base, links in chains.items():
        bad = [i for i, h in enumerate(links) if data[(base + i) * 512:(base + i) * 512 + 65] != (h + "\n").encode()]
        check(not bad, f"disk blocks at {base}: {len(bad)} of {len(links)} links wrong")
    r = subprocess.run([popek, "img", "check", img], capture_output=True, text=True)
    check(r.returncode == 0, f"popek img check: {r.returncode} {r.stdout} {r.stderr}")
    if shutil.which("qemu-img"):
        r = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
        check(r.returncode == 0, f"qemu-img check: {r.returncode} {r.stdout} {r.stderr}")
finally:
    for nd in nodes:
        nd.kill()

if runs:
    dts = [r["downtime"] for r in runs]
    tot = [r["total"] for r in runs]
    by = [r["bytes"] for r in runs]
    print(f"{len(runs)} migrations (256 MiB guest): downtime median {statistics.median(dts)} ms, worst {max(dts)} ms; "
          f"total time median {statistics.median(tot)} ms, worst {max(tot)} ms; sent median "
          f"{statistics.median(by) / 1e6:.1f} MB, worst {max(by) / 1e6:.1f} MB; passes "
          f"{min(r['passes'] for r in runs)}-{max(r['passes'] for r in runs)}; {time.time() - T0:.0f} s in all",
          flush=True)
shutil.rmtree(work, ignore_errors=True)
if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("all passed")
