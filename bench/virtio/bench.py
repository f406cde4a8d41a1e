#!/usr/bin/env python3
"""Paravirtual I/O throughput: popek's engines next to qemu-system-i386 (TCG)
with virtio devices, in one run.

For each engine the default Debian guest boots once with a raw disk
(/dev/vda), a fresh qcow2 disk (/dev/vdb) and a user-mode (slirp) network, and
its shell runs, --runs times each:

  raw write    dd if=/dev/zero of=/dev/vda bs=1M count=N oflag=direct
  raw read     dd if=/dev/vda of=/dev/null bs=1M count=N iflag=direct
  qcow2 write  the same on /dev/vdb (the first run allocates clusters)
  qcow2 read
  tcp h->g     wget -O /dev/null from an HTTP server on the host's loopback (10.0.2.2)
  tcp g->h     the host fetches a file from the guest's busybox httpd through a
               host port forward (timed on the host, first request byte to last
               response byte); busybox nc would measure its own 1 KiB copy loop

Other times are the guest's own (adjtimex before and after, microseconds);
both VMMs keep guest time on the host's clock. The table shows the best of the runs
in MB/s (10^6 bytes per second) and popek/QEMU ratios.

QEMU runs `-M pc` (isapc has no PCI) with popek's CPU model (no APIC), so its
virtio devices interrupt through the 8259 as popek's do; cache=writeback on
both sides (popek's default: FLUSH = fdatasync).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "boot"))
import benchlib as bl  # noqa: E402
import guestlib  # noqa: E402

TESTS = ["raw write", "raw read", "qcow2 write", "qcow2 read", "tcp host->guest", "tcp guest->host"]


def guest_seconds(g, cmd, timeout):
    """Runs cmd in the guest between two adjtimex readings; returns (seconds, status)."""
    st, out = g.run(f"adjtimex | grep tv_; {cmd} >/dev/null 2>&1; echo rc=$?; adjtimex | grep tv_",
                    timeout)
    secs = [int(x) for x in re.findall(r"time\.tv_sec:\s*(\d+)", out)]
    usecs = [int(x) for x in re.findall(r"time\.tv_usec:\s*(\d+)", out)]
    rc = re.search(r"rc=(\d+)", out)
    if len(secs) != 2 or len(usecs) != 2 or not rc:
        bl.log(f"could not time `{cmd}`: {out[-500:]!r}")
        return None, -1
    return (secs[1] - secs[0]) + (usecs[1] - usecs[0]) / 1e6, int(rc.group(1))


def host_fetch_seconds(port, nbytes, timeout):
    """Fetches /blob from the guest's httpd through the forward; returns seconds or None."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=timeout) as r:
            n = 0
            while True:
                d = r.read(1 << 20)
                if not d:
                    break
                n += len(d)
    except OSError as e:
        bl.log(f"host fetch from the guest failed: {e}")
        return None
    secs = time.monotonic() - t0
    if n != nbytes:
        bl.log(f"host fetched {n} of {nbytes} bytes from the guest")
        return None
    return secs


def measure(engine, args, popek, kernel, initrd, work, http_port):
    raw = os.path.join(work, f"{engine}.raw")
    qcow = os.path.join(work, f"{engine}.qcow2")
    size = f"{args.disk_mb + 16}M"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, size], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, size], check=True)
    fwd = guestlib.free_port()
    if engine == "qemu":
        argv = (["qemu-system-i386", "-accel", "tcg", "-M", "pc", "-cpu", args.qemu_cpu, "-m", args.memory,
                 "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", bl.APPEND,
                 "-drive", f"file={raw},format=raw,if=virtio,cache=writeback",
                 "-drive", f"file={qcow},format=qcow2,if=virtio,cache=writeback",
                 "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{fwd}-:8080",
                 "-device", "virtio-net-pci,netdev=n0"])
    else:
        argv = guestlib.popek_argv(popek, engine, kernel, initrd, [
            "--stats", "--drive", f"file={raw},format=raw", "--drive", f"file={qcow},format=qcow2",
            "--netdev", f"user,hostfwd=tcp:127.0.0.1:{fwd}-:8080"], memory=args.memory)
    bl.log(f"{engine}: {' '.join(argv)}")
    g = guestlib.Guest(argv)
    results = {t: [] for t in TESTS}
    try:
        bl.log(f"{engine}: ready after {g.wait_ready(args.timeout):.1f} s")
        st, out = g.run("ifconfig eth0")
        if "10.0.2.15" not in out:
            bl.log(f"{engine}: eth0 has no DHCP address: {out!r}")
        n = args.disk_mb
        net_bytes = args.net_mb * 1000000
        st, out = g.run(f"mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1000000 count={args.net_mb} "
                        "2>/dev/null && httpd -p 8080 -h /tmp/www && echo serving", args.timeout)
        if "serving" not in out:
            bl.log(f"{engine}: the guest's httpd did not start: {out!r}")
        cmds = {
            "raw write": (f"dd if=/dev/zero of=/dev/vda bs=1M count={n} oflag=direct", n << 20),
            "raw read": (f"dd if=/dev/vda of=/dev/null bs=1M count={n} iflag=direct", n << 20),
            "qcow2 write": (f"dd if=/dev/zero of=/dev/vdb bs=1M count={n} oflag=direct", n << 20),
            "qcow2 read": (f"dd if=/dev/vdb of=/dev/null bs=1M count={n} iflag=direct", n << 20),
            "tcp host->guest": (f"wget -q -O /dev/null http://10.0.2.2:{http_port}/blob", net_bytes),
            "tcp guest->host": (None, net_bytes),
        }
        for r in range(args.runs):
            for t in TESTS:
                cmd, nbytes = cmds[t]
                if cmd is None:
                    secs = host_fetch_seconds(fwd, nbytes, args.timeout)
                    rc = 0 if secs else 1
                else:
                    secs, rc = guest_seconds(g, cmd, args.timeout)
                if rc != 0 or not secs:
                    bl.log(f"{engine}: {t} failed (status {rc})")
                    continue
                mbs = nbytes / secs / 1e6
                results[t].append(mbs)
                bl.log(f"{engine}: run {r + 1}: {t}: {mbs:.1f} MB/s ({secs:.3f} s)")
        try:
            code, tail = g.poweroff(120)
            if code != 0 and engine != "qemu":
                bl.log(f"{engine}: exit status {code} after power-off")
        except SystemExit as e:  # the figures are taken; note it and go on
            bl.log(f"{engine}: {e}")
            tail = ""
        stats = (g.log.decode(errors="replace") + tail)
        if args.keep_logs:
            with open(bl.keep_path(args, f"virtio-{engine}.log"), "w") as f:
                f.write(stats)
    finally:
        g.kill()
    return {t: (max(v) if v else None) for t, v in results.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bl.add_common_args(ap, runs=2)
    ap.add_argument("--disk-mb", type=int, default=64, help="MiB per dd (default: %(default)s)")
    ap.add_argument("--net-mb", type=int, default=32, help="MB per TCP transfer (default: %(default)s)")
    args = ap.parse_args()
    if args.timeout is None:
        args.timeout = 900.0
    if not shutil.which("qemu-img"):
        bl.die("qemu-img is not installed (it makes the disk images); apt-get install qemu-utils")
    engines, popek = bl.select_engines(args)
    kernel, initrd = guestlib.guest_files()

    work = tempfile.mkdtemp(prefix="popek-virtio-bench-")
    www = os.path.join(work, "www")
    os.mkdir(www)
    with open(os.path.join(www, "blob"), "wb") as f:
        f.write(os.urandom(args.net_mb * 1000000))

    httpd = guestlib.serve_directory(www)
    res = {}
    try:
        for e in engines:
            res[e] = measure(e, args, popek, kernel, initrd, work, httpd.server_address[1])
    finally:
        httpd.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"virtio throughput, MB/s (best of {args.runs}); dd {args.disk_mb} MiB with O_DIRECT, "
          f"TCP {args.net_mb} MB through user-mode networking")
    note = bl.machine_note(args, popek).replace("-M isapc", "-M pc").replace(" popek.run=...", "")
    print("\n".join(l for l in note.splitlines() if not l.startswith("guest:")))
    print(f"guest: {args.memory} RAM, append '{bl.APPEND}'; QEMU: qemu-system-i386 -accel tcg -M pc "
          f"-cpu {args.qemu_cpu}, virtio-blk-pci (cache=writeback) and virtio-net-pci on -netdev user")
    popek_engines = [e for e in engines if e != "qemu"]
    header = ["test"] + [("popek " + e if e != "qemu" else "qemu TCG") for e in engines]
    if "qemu" in engines:
        header += [f"{e}/qemu" for e in popek_engines]
    rows = []
    for t in TESTS:
        row = [t] + [bl.fmt(res[e][t], ".1f") for e in engines]
        if "qemu" in engines:
            row += [bl.fmt_ratio(bl.ratio(res[e][t], res["qemu"][t])) for e in popek_engines]
        rows.append(row)
    print()
    bl.table(rows, header)


if __name__ == "__main__":
    main()
