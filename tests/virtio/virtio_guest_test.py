#!/usr/bin/env python3
"""The paravirtual devices in the Debian guest, in two boots.

Boot 1: a qcow2 disk made by qemu-img (/dev/vda), a read-only raw disk with a
serial number (/dev/vdb) and virtio-rng. mke2fs (busybox's mkfs.ext2) on vda,
files written, sync, power-off; vdb refuses writes; /dev/hwrng gives bytes.
Then `qemu-img check` must be clean and the read-only image unchanged.

Boot 2: the same qcow2 disk and a user-mode network with two host port
forwards. The files read back; eth0 has 10.0.2.15 from DHCP; busybox wget
fetches a file from an HTTP server this test runs on the host's loopback
(through slirp's host address 10.0.2.2); the host reaches a guest httpd and a
guest `nc -l` through the forwards. `qemu-img check` again.

Usage: virtio_guest_test.py POPEK [ENGINE]. Exit 77 (skip) without the guest.
"""
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../boot"))
import guestlib  # noqa: E402

popek = sys.argv[1]
engine = sys.argv[2] if len(sys.argv) > 2 else "interp"
kernel, initrd = guestlib.guest_files()
qemu_img = shutil.which("qemu-img")

failed = 0


def check(ok, what, detail=""):
    global failed
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failed += 1
        if detail:
            print(detail[-3000:])


def expect(g, cmd, pattern=None, status=0, timeout=600):
    st, out = g.run(cmd, timeout)
    ok = st == status and (pattern is None or re.search(pattern, out))
    check(ok, f"{cmd}  (status {st})", out)
    return out


def boot(name, devices):
    argv = guestlib.popek_argv(popek, engine, kernel, initrd, ["--stats", *devices])
    print(" ".join(argv), flush=True)
    g = guestlib.Guest(argv)
    print(f"{name}: ready after {g.wait_ready():.1f} s", flush=True)
    return g


def qemu_img_check(image, when):
    if not qemu_img:
        return
    r = subprocess.run([qemu_img, "check", image], capture_output=True, text=True)
    check(r.returncode == 0 and "No errors" in r.stdout, f"qemu-img check after {when} is clean",
          r.stdout + r.stderr)


def stat_value(log, name):
    m = re.search(r"^\s+" + re.escape(name) + r"\s+(\d+)\s*$", log, re.M)
    return int(m.group(1)) if m else 0


work = tempfile.mkdtemp(prefix="popek-virtio-")
try:
    disk = os.path.join(work, "disk.qcow2")
    if qemu_img:
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
    else:
        print("qemu-img not installed: the disk is made by popek img, and not checked")
        subprocess.run([popek, "img", "create", "-f", "qcow2", disk, "64M"], check=True,
                       stdout=subprocess.DEVNULL)
    ro = os.path.join(work, "ro.raw")
    rnd = random.Random(6)
    ro_data = b"POPEK-RO-DISK\n" + bytes(rnd.getrandbits(8) for _ in range(8 * 1024 * 1024 - 14))
    with open(ro, "wb") as f:
        f.write(ro_data)
    ro_hash = hashlib.sha256(ro_data).hexdigest()

    # ---------------- boot 1 ----------------
    g = boot("boot 1", ["--rng", "--drive", f"file={disk},format=qcow2",
                         "--drive", f"file={ro},format=raw,readonly=on,serial=popek-ro-1"])
    expect(g, "cat /sys/block/vda/size", r"\b131072\b")
    expect(g, "cat /sys/block/vdb/ro /sys/block/vdb/serial", r"1\s+popek-ro-1")
    expect(g, "mke2fs -q /dev/vda && mount /dev/vda /mnt && echo mounted", r"mounted")
    expect(g, "echo hello-from-popek > /mnt/hello.txt && mkdir /mnt/dir && "
              "dd if=/dev/urandom of=/mnt/dir/rand.bin bs=1k count=1536 2>/dev/null && "
              "md5sum /mnt/dir/rand.bin > /mnt/rand.md5 && sync && cat /mnt/rand.md5", r"[0-9a-f]{32}")
    st, out = g.run("cat /mnt/rand.md5")
    rand_md5 = re.search(r"[0-9a-f]{32}", out).group(0)
    # The read-only disk: reads work, writes are refused.
    expect(g, "head -c 13 /dev/vdb; echo", r"POPEK-RO-DISK")
    st, out = g.run("dd if=/dev/zero of=/dev/vdb bs=4k count=1 conv=fsync")
    check(st != 0, f"write to the read-only /dev/vdb fails (status {st})", out)
    st, out = g.run("mount -o rw /dev/vdb /tmp 2>&1; blockdev --getro /dev/vdb")
    check(re.search(r"^1\s*$", out, re.M) is not None, "blockdev --getro /dev/vdb is 1", out)
    # The entropy device.
    expect(g, "cat /sys/class/misc/hw_random/rng_current", r"virtio_rng")
    expect(g, "head -c 4096 /dev/hwrng | wc -c", r"\b4096\b")
    expect(g, "umount /mnt && echo unmounted", r"unmounted")
    code, tail = g.poweroff()
    log1 = g.log.decode(errors="replace") + tail
    check(code == 0, f"boot 1 powered off with status {code}", tail)
    check(stat_value(log1, "virtio-blk0.writes") > 0, "stats: virtio-blk0.writes > 0", log1[-3000:])
    check(stat_value(log1, "virtio-blk0.flushes") > 0, "stats: virtio-blk0.flushes > 0")
    # The guest kernel honours VIRTIO_BLK_F_RO: no write even reaches the device.
    check("virtio-blk1.reads" in log1 and stat_value(log1, "virtio-blk1.writes") == 0,
          "stats: virtio-blk1 (read-only) was read, never written")
    check(stat_value(log1, "virtio-rng0.bytes") >= 4096, "stats: virtio-rng0.bytes >= 4096")
    qemu_img_check(disk, "boot 1")
    with open(ro, "rb") as f:
        check(hashlib.sha256(f.read()).hexdigest() == ro_hash, "the read-only image is unchanged")

    # ---------------- boot 2 ----------------
    www = os.path.join(work, "www")
    os.mkdir(www)
    blob = bytes(rnd.getrandbits(8) for _ in range(300 * 1024))
    with open(os.path.join(www, "blob.bin"), "wb") as f:
        f.write(blob)

    httpd = guestlib.serve_directory(www)
    http_port = httpd.server_address[1]
    fwd_http, fwd_nc = guestlib.free_port(), guestlib.free_port()

    g = boot("boot 2", ["--drive", f"file={disk}", "--netdev",
                        f"user,hostfwd=tcp:127.0.0.1:{fwd_http}-:8080,hostfwd=tcp:127.0.0.1:{fwd_nc}-:7777"])
    expect(g, "cat /mnt/hello.txt", r"hello-from-popek")
    expect(g, "md5sum /mnt/dir/rand.bin", re.escape(rand_md5))
    expect(g, "ifconfig eth0", r"inet addr:10\.0\.2\.15")
    expect(g, "route -n", r"0\.0\.0\.0\s+10\.0\.2\.2")
    want = hashlib.md5(blob).hexdigest()
    expect(g, f"wget -q -O /tmp/blob.bin http://10.0.2.2:{http_port}/blob.bin && md5sum /tmp/blob.bin",
           re.escape(want))
    # Host -> guest through the forwards: a guest httpd, and a guest nc -l.
    expect(g, "mkdir -p /tmp/www && echo served-by-the-guest > /tmp/www/index.html && "
              "httpd -p 8080 -h /tmp/www && echo started", r"started")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{fwd_http}/index.html", timeout=60).read()
        check(b"served-by-the-guest" in body, "host fetched the guest's httpd page through hostfwd",
              repr(body))
    except Exception as e:  # noqa: BLE001
        check(False, "host fetched the guest's httpd page through hostfwd", repr(e))
    # Not a child of the interactive shell: with echo off, busybox ash reads the
    # console without line editing and a finished job's SIGCHLD ends that read.
    g.send("(sleep 600 | nc -l -p 7777 > /tmp/nc.out &)\n")
    time.sleep(3)
    try:
        with socket.create_connection(("127.0.0.1", fwd_nc), timeout=60) as s:
            s.sendall(b"hello-through-hostfwd\n")
        ok = True
    except OSError as e:
        ok = False
        print(e)
    check(ok, "host connected to the guest's nc -l through hostfwd")
    time.sleep(2)
    expect(g, "sleep 1; cat /tmp/nc.out", r"hello-through-hostfwd")
    code, tail = g.poweroff()
    log2 = g.log.decode(errors="replace") + tail
    httpd.shutdown()
    check(code == 0, f"boot 2 powered off with status {code}", tail)
    check(stat_value(log2, "virtio-net0.rx_packets") > 0 and stat_value(log2, "virtio-net0.tx_packets") > 0,
          "stats: virtio-net0 sent and received packets", log2[-3000:])
    qemu_img_check(disk, "boot 2")
finally:
    shutil.rmtree(work, ignore_errors=True)

print(f"{failed} check(s) failed" if failed else "all checks passed")
sys.exit(1 if failed else 0)
