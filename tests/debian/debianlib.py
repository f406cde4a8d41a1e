"""Helpers for the tests and benchmarks on popek's Debian system guest
(scripts/fetch-debian.sh): find the image, give each run its own copy-on-write
overlay, boot to the serial login, log in and drive the shell.

    import debianlib
    img = debianlib.image()                      # exits 77 (skip) if not built
    vm = debianlib.Debian(popek, "bt", img, workdir)
    vm.login()
    status, out = vm.run("uname -a")
    vm.poweroff()
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../boot"))
import guestlib  # noqa: E402

SKIP = 77
APPEND = "root=/dev/vda console=ttyS0"


def cache_dirs():
    guest = os.environ.get("POPEK_CACHE") or os.path.join(os.path.dirname(__file__), "../../cache/guest")
    debian = os.environ.get("POPEK_DEBIAN_CACHE") or os.path.join(os.path.dirname(guest), "debian")
    return os.path.abspath(guest), os.path.abspath(debian)


def image():
    """(kernel, initrd, image, key) of the Debian guest; exits with the skip
    status when scripts/fetch-debian.sh has not built it."""
    guest, debian = cache_dirs()
    files = (os.path.join(guest, "vmlinuz"), os.path.join(guest, "initrd.img"),
             os.path.join(debian, "debian-i386.qcow2"), os.path.join(debian, "id_ed25519"))
    for f in files:
        if not os.path.exists(f):
            print(f"Debian guest not built ({f} is missing); run scripts/fetch-debian.sh")
            sys.exit(SKIP)
    return files


def overlay(popek, base, workdir, name="disk.qcow2"):
    """A qcow2 overlay on the cached image, so that a test never changes it."""
    path = os.path.join(workdir, name)
    subprocess.run([popek, "img", "create", "-f", "qcow2", "-b", base, "-F", "qcow2", path],
                   check=True, stdout=subprocess.DEVNULL)
    return path


class Debian(guestlib.Guest):
    """The Debian guest with its serial console on this process's pipe, on a
    popek engine or (engine "qemu") on qemu-system-i386 -accel tcg."""

    def __init__(self, popek, engine, workdir, memory="1G", extra=(), append=APPEND, echo=False):
        kernel, initrd, base, self.key = image()
        self.popek = popek
        self.disk = overlay(popek, base, workdir)
        self.ssh_port = guestlib.free_port()
        if engine == "qemu":
            # The peer: QEMU's software CPU (TCG) with the same kernel, initramfs,
            # image and devices (virtio-blk, virtio-net on user-mode NAT).
            argv = ["qemu-system-i386", "-accel", "tcg", "-M", "pc", "-m", memory,
                    "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", append,
                    "-drive", f"file={self.disk},if=virtio,format=qcow2",
                    "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                    "-device", "virtio-net-pci,netdev=n0", *extra]
        else:
            argv = [popek, "run", "--engine", engine, "--kernel", kernel, "--initrd", initrd,
                    "--append", append, "--memory", memory, "--drive", f"file={self.disk}",
                    "--netdev", f"user,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22", *extra]
        super().__init__(argv, echo=echo)

    def login(self, timeout=1800):
        """Waits for the serial login prompt and logs in as root (no password);
        returns the seconds from start to the prompt."""
        self.read_until(r"login: ", timeout)
        at_prompt = time.time() - self.t0
        self.send("root\n")
        self.read_until(r"root@[^\r\n]*# ", 300)
        self.send("stty -echo cols 500; export SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb; echo __SHELL''_READY__\n")
        self.read_until(r"__SHELL_READY__", 120)
        return at_prompt

    def poweroff(self, timeout=600):
        """systemd's poweroff; returns (popek's exit status, the last of the output)."""
        return super().poweroff(timeout, "systemctl poweroff")

    def ssh(self, cmd, timeout=300):
        """Runs cmd in the guest over ssh through the host forward; (status, output)."""
        argv = ["ssh", "-i", self.key, "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=60",
                "-o", "LogLevel=ERROR", "root@127.0.0.1", cmd]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr


def stress_ng(vm, spec, seconds, verify=False, timeout=900):
    """Runs one stress-ng stressor alone (spec: "cpu --cpu-method fft") for
    `seconds`; returns (its bogo-ops per second of real time, or None if it
    failed, and its output). With `verify`, --verify and any failure it
    reports also count as failed."""
    name, *opts = spec.split()
    status, out = vm.run(f"stress-ng --{name} 1 {' '.join(opts)}{' --verify' if verify else ''} "
                         f"--timeout {seconds} --metrics-brief 2>&1", timeout)
    # metrics-brief: stressor, bogo ops, real time, usr time, sys time, bogo ops/s (real)
    m = re.search(rf"\b{name}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out)
    bad = (status != 0 or not m or float(m.group(5)) <= 0 or
           (verify and re.search(r"fail|verif.*error", out, re.I)))
    return (None if bad else float(m.group(5))), out


def clean(text):
    """Output without carriage returns and terminal escapes."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
