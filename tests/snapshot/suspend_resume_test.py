#!/usr/bin/env python3
"""Suspend/resume of the default Debian guest (QMP migrate to file:, then
popek run --incoming file:). One guest lives through a chain of saves at
random points while it computes a SHA-256 chain in a busybox shell loop and
writes each link to a qcow2 virtio disk (dd conv=fsync): resumed on the same
engine (bt -> bt), on the other (bt -> interp, for a short remainder, and
interp -> bt). Each computation must end with the checksum the host computes,
print every step exactly once across the processes, and leave the disk
holding every link; the image must pass `popek img check` (and `qemu-img
check` when installed). Also: the guest clock does not jump over the time
the VM was saved; a command line with other devices or RAM, a truncated and
a bit-flipped file are refused with a clear message. A VM with --netdev
user (and a hostfwd) is saved and resumed on the other engine: the guest keeps
its address, fetches from a host server again, and the host reaches its httpd
through the forwarded port. Prints save/restore times and the file size.
Exit 77 (skip) when the guest has not been fetched.

Usage: suspend_resume_test.py POPEK [SEED]"""
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
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
kernel, initrd = guestlib.guest_files()
print(f"seed {seed}", flush=True)
T0 = time.time()
failures = Failures()
timings = []  # (save ms, file bytes, restore ms)


check = failures.check


work = tempfile.mkdtemp(prefix="popek-snap-")
img = os.path.join(work, "disk.qcow2")
subprocess.run([popek, "img", "create", img, "64M"], check=True, stdout=subprocess.DEVNULL)
sock = os.path.join(work, "qmp")
devices = ["--drive", f"file={img}"]


def argv(engine, extra=()):
    return guestlib.popek_argv(popek, engine, kernel, initrd, [*devices, "--qmp", f"unix:{sock}", *extra])


class Vm:
    """One popek process of the chain: its console and its control socket."""

    def __init__(self, engine, incoming=None):
        self.engine = engine
        extra = ["--incoming", f"file:{incoming}"] if incoming else []
        self.g = guestlib.Guest(argv(engine, extra))
        self.restore_ms = None
        if incoming:
            out = self.g.read_until(r"resumed from \S+ in \d+ ms[^\n]*\n", 60)
            self.restore_ms = int(re.search(r"in (\d+) ms", out).group(1))
        self.c = None
        end = time.time() + 20
        while self.c is None:
            try:
                self.c = Client(f"unix:{sock}")
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(0.05)

    def save(self, path):
        """migrate to file:path, quit; returns the console output not read yet."""
        r = self.c.cmd("migrate", {"uri": f"file:{path}"})
        check(r == {"return": {}}, f"migrate: {r}")
        info = self.c.ok("query-migrate")
        check(info.get("status") == "completed", f"query-migrate: {info}")
        st = self.c.ok("query-status")
        check(st == {"running": False, "singlestep": False, "status": "postmigrate"}, f"query-status: {st}")
        self.c.ok("quit")
        rest, _ = self.g.p.communicate(timeout=60)
        check(self.g.p.returncode == 0, f"popek after migrate+quit: exit status {self.g.p.returncode}")
        timings.append([info.get("total-time"), os.path.getsize(path), None])
        return (self.g.buf + rest).decode(errors="replace")




def workload(s, n, base):
    return (f'h={s}; i=0; while [ $i -lt {n} ]; do h=$(echo "$h$i" | sha256sum | cut -c1-64); '
            f'echo "$h" | dd of=/dev/vda bs=512 seek=$(({base}+i)) conv=fsync 2>/dev/null; '
            f'echo "S$i"; i=$((i+1)); done; echo "R $h"\n')


def check_steps(text, n, what):
    steps = [int(x) for x in re.findall(r"\bS(\d+)\b", text)]
    if steps != list(range(n)):
        k = next((k for k, v in enumerate(steps) if v != k), len(steps))
        at = text.find(f"S{k - 1}")
        print(f"  {what}: output around step {k}: {text[max(0, at - 100):at + 200]!r}", flush=True)
    check(steps == list(range(n)), f"{what}: steps printed {len(steps)} (want 0..{n - 1} once each, in order)"
          + (f"; first wrong at {next((k for k, v in enumerate(steps) if v != k), len(steps))}" if steps != list(range(n)) else ""))


def run_chain(vm, s, n, base, plan, what):
    """Runs the workload through the plan: a list of (engine to resume on,
    when to save: ("time", seconds) or ("step", k)); returns the last VM."""
    links = guestlib.sha256_chain(s, n)
    vm.g.buf = b""
    vm.g.send(workload(s, n, base))
    text = ""
    for k, (engine, when) in enumerate(plan):
        if when[0] == "time":
            time.sleep(when[1])
        else:
            text += vm.g.read_until(rf"\bS{when[1]}\b", 600)
        path = os.path.join(work, f"{what}-{k}.popek")
        text += vm.save(path)
        last = max([int(x) for x in re.findall(r"\bS(\d+)\b", text)] or [-1])
        print(f"  {what}: saved on {vm.engine} at step {last}"
              f" ({timings[-1][0]} ms, {timings[-1][1] / 1e6:.1f} MB), resuming on {engine}", flush=True)
        vm = Vm(engine, path)
        timings[-1][2] = vm.restore_ms
    if not re.search(r"R [0-9a-f]{64}", text):  # (the last save may come after the end)
        text += vm.g.read_until(r"R [0-9a-f]{64}", 600)
    # popek's own messages ("quit from the control socket") may cut a guest line.
    text = re.sub(r"popek: [^\n]*\n", "", text)
    got = re.search(r"R ([0-9a-f]{64})", text).group(1)
    check(got == links[-1], f"{what}: checksum {got}, expected {links[-1]}")
    check_steps(text, n, what)
    return vm, links


try:
    vm = Vm("bt")
    vm.g.wait_ready()
    all_links = {}

    # 1: bt -> bt at four random points.
    n = 1000  # about 5 s on bt
    vm, all_links[0] = run_chain(vm, "alpha", n, 0, [("bt", ("time", rng.uniform(0.05, 1.2))) for _ in range(4)],
                                 "bt-bt")
    # 2: bt -> interp near the end, then interp -> bt after a few steps.
    n = 400
    k = rng.randrange(n - 30, n - 12)
    vm, all_links[1000] = run_chain(vm, "beta", n, 1000,
                                    [("interp", ("step", k)), ("bt", ("step", k + rng.randrange(2, 6)))],
                                    "bt-interp-bt")
    # 3: bt -> bt at three random points.
    n = 600
    vm, all_links[2000] = run_chain(vm, "gamma", n, 2000, [("bt", ("time", rng.uniform(0.05, 1.0))) for _ in range(3)],
                                    "bt-bt-2")

    # The guest clock across a save, a 2 s wait and a resume: no jump.
    vm.g.buf = b""
    st, out = vm.g.run("cat /proc/uptime")
    u0 = float(out.split()[0])
    path = os.path.join(work, "idle.popek")
    vm.save(path)
    time.sleep(2.0)
    vm = Vm("bt", path)
    timings[-1][2] = vm.restore_ms
    st, out = vm.g.run("cat /proc/uptime")
    u1 = float(out.split()[0])
    print(f"  guest uptime {u0:.2f} -> {u1:.2f} s across save, 2 s wait, resume", flush=True)
    check(0 <= u1 - u0 < 1.5, f"guest clock jumped across the save: {u0} -> {u1}")

    st, out = vm.g.run("echo still-alive")
    check(st == 0 and "still-alive" in out, "the shell works after the resumes")
    code, _ = vm.g.poweroff()
    check(code == 0, f"poweroff exit status {code}")

    # The disk holds every link of every computation.
    raw = os.path.join(work, "disk.raw")
    subprocess.run([popek, "img", "convert", "-O", "raw", img, raw], check=True)
    with open(raw, "rb") as f:
        data = f.read()
    for base, links in all_links.items():
        bad = [i for i, h in enumerate(links) if data[(base + i) * 512:(base + i) * 512 + 65] != (h + "\n").encode()]
        check(not bad, f"disk blocks at {base}: {len(bad)} of {len(links)} links wrong (first {bad[:3]})")
    r = subprocess.run([popek, "img", "check", img], capture_output=True, text=True)
    check(r.returncode == 0, f"popek img check: {r.returncode} {r.stdout} {r.stderr}")
    if shutil.which("qemu-img"):
        r = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
        check(r.returncode == 0, f"qemu-img check: {r.returncode} {r.stdout} {r.stderr}")

    # Refusals: another machine, a damaged file; a VM with a network card.
    def refused(extra_argv, pattern, what, file=path, memory="256M"):
        p = subprocess.run(guestlib.popek_argv(popek, "bt", kernel, initrd, [*extra_argv, "--incoming", f"file:{file}"],
                                               memory=memory),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        msg = (p.stdout + p.stderr).strip().splitlines()
        check(p.returncode == 125 and re.search(pattern, p.stderr), f"{what}: status {p.returncode}, {msg[-1:]}")
        print(f"  {what}: {msg[-1] if msg else ''}", flush=True)

    refused([], r"saved VM has 1 virtio-blk disk, this command line has 0", "no --drive")
    refused(devices, r"256 MiB of RAM, this command line has 128 MiB", "other RAM size", memory="128M")
    refused([*devices, "--rng"], r"virtio-rng", "an extra device")
    refused([*devices, "--no-acpi"], r"saved VM has ACPI, this command line has --no-acpi", "--no-acpi")
    with open(path, "rb") as f:
        blob = f.read()
    cut = os.path.join(work, "cut.popek")
    with open(cut, "wb") as f:
        f.write(blob[: len(blob) * 2 // 3])
    refused(devices, r"unexpected end", "truncated file", cut)
    flipped = os.path.join(work, "flip.popek")
    b = bytearray(blob)
    b[rng.randrange(64, len(b) - 64)] ^= 1 << rng.randrange(8)
    with open(flipped, "wb") as f:
        f.write(b)
    refused(devices, r"checksum mismatch in section '[a-z0-9-]+'|corrupt|no section", "bit-flipped file", flipped)

    # A VM with --netdev user: saved and resumed; its network works after
    # (DHCP address kept, a new connection to the host, the hostfwd port
    # bound again by the resumed popek).
    fwd = guestlib.free_port()
    blob = random.Random(seed).randbytes(256 << 10)
    httpd = guestlib.serve_blob(blob)
    url = f"http://10.0.2.2:{httpd.server_address[1]}/blob"
    netdev = ["--netdev", f"user,hostfwd=tcp:127.0.0.1:{fwd}-:8080", "--qmp", f"unix:{sock}"]
    net = guestlib.Guest(guestlib.popek_argv(popek, "bt", kernel, initrd, netdev))
    net.wait_ready(300)
    want = hashlib.md5(blob).hexdigest()
    st, out = net.run(f"wget -q -O /tmp/b {url} && md5sum /tmp/b && mkdir -p /tmp/www && "
                      "echo served-by-the-guest > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
    check(st == 0 and want in out, f"--netdev: fetch before the save: {st} {out!r}")
    c = None
    end = time.time() + 20
    while c is None:
        try:
            c = Client(f"unix:{sock}")
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.05)
    npath = os.path.join(work, "net.popek")
    r = c.cmd("migrate", {"uri": f"file:{npath}"})
    check(r == {"return": {}} and c.ok("query-migrate")["status"] == "completed", f"migrate with --netdev: {r}")
    c.ok("quit")
    net.p.communicate(timeout=30)
    net = guestlib.Guest(guestlib.popek_argv(popek, "interp", kernel, initrd, [*netdev, "--incoming", f"file:{npath}"]))
    net.send("echo __RESUMED''_NET__\n")
    net.read_until(r"__RESUMED_NET__", 60)
    st, out = net.run(f"ifconfig eth0 | grep -o 'inet addr:[0-9.]*'; rm /tmp/b; wget -q -O /tmp/b {url} && md5sum /tmp/b")
    check(st == 0 and want in out and "10.0.2.15" in out, f"--netdev: after the resume: {st} {out!r}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{fwd}/", timeout=10) as rr:
            body = rr.read()
    except OSError as e:
        body = repr(e).encode()
    check(b"served-by-the-guest" in body, f"--netdev: hostfwd after the resume: {body[:200]!r}")
    print(f"  --netdev user: saved and resumed (bt -> interp); address kept, host fetch md5 "
          f"{'right' if want in out else 'WRONG'}, hostfwd {'answers' if b'served' in body else 'FAILS'}", flush=True)
    code, _ = net.poweroff()
    check(code == 0, f"--netdev: poweroff after the resume: {code}")
    httpd.shutdown()
finally:
    if "vm" in globals():
        vm.g.kill()
    if "net" in globals():
        net.kill()

saves = [t[0] for t in timings]
sizes = [t[1] for t in timings]
restores = [t[2] for t in timings if t[2] is not None]
print(f"default guest (256 MiB RAM): {len(timings)} saves; save {min(saves)}-{max(saves)} ms, "
      f"file {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB, restore {min(restores)}-{max(restores)} ms; "
      f"{time.time() - T0:.0f} s in all", flush=True)
shutil.rmtree(work, ignore_errors=True)
if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("all passed")
