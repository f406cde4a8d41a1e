"""Shared pieces of popek's guest benchmarks (bench/boot, bench/cpu, bench/bt).

One place for: where things are (repo, guest cache, popek binary), the guest
configuration every figure uses (kernel command line, memory, QEMU's machine),
running one guest under popek or QEMU while timestamping its serial console
lines on the host, and the statistics and table printing.

Conventions: an "engine" is a popek engine name (`interp`, `bt`, ...) or
`qemu` (qemu-system-i386 -accel tcg); a popek engine name with `-noacpi`
(`bt-noacpi`) is that engine on the board without ACPI (`--no-acpi`), to
measure what ACPI costs. The guest runs the program named by
`popek.run=PATH` on its kernel command line after printing POPEK-READY, then
powers off (scripts/fetch-guest.sh, /init).
"""
import argparse
import glob
import math
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
GUEST_CACHE = os.environ.get("POPEK_CACHE") or os.path.join(REPO, "cache", "guest")
# Built artefacts of the benchmarks (never committed: cache/ is ignored).
BENCH_CACHE = os.environ.get("POPEK_BENCH_CACHE") or os.path.join(REPO, "cache", "bench")

APPEND = "console=ttyS0 quiet cryptomgr.notests noisapnp panic=-1"
# Issue 19's "plain" command line: the kernel's crypto self-tests and ISA PnP
# probe run (kernel-mode compute). panic=-1 only makes a failed boot end.
APPEND_PLAIN = "console=ttyS0 quiet panic=-1"
MEMORY = "256M"
READY = "POPEK-READY"
# The kernel's last line when `poweroff -f` halts the machine (isapc has no
# ACPI, so QEMU does not exit by itself; popek exits with status 0).
OFF_RX = re.compile(r"reboot: (System halted|Power down)")
# /init's line when the popek.run= program has ended, just before `poweroff -f`.
RUN_DONE_RX = re.compile(r"popek: \S+ exited with status (\d+), powering off")
POWEROFF_GRACE = 30  # seconds from that line to the power-off before giving up
# QEMU's PC without APIC (as in scripts/qemu-ref.sh), with the CPUID features
# popek's Pentium II model lacks switched off, so the guest kernel and libc
# (glibc picks string functions by CPUID) run the same code under both.
QEMU_MACHINE = ["-M", "isapc"]
QEMU_CPU = "qemu32,-apic,-pae,-mce,-fxsr,-sse,-sse2,-pni,-hypervisor"
ALL_ENGINES = ["bt", "interp", "kvm", "qemu", "qemu-kvm"]
# The peers: QEMU's software CPU (TCG), and QEMU on KVM (for popek's kvm engine
# on a host whose KVM is fast: `--engines kvm,qemu-kvm`).
QEMU_PEERS = ("qemu", "qemu-kvm")


def is_qemu(engine):
    return engine in QEMU_PEERS
NOACPI = "-noacpi"  # suffix: the engine with --no-acpi
NOPV = "-nopv"      # suffix: the engine with --no-paravirt (no kvm-clock)
NOX87 = "-nox87"    # suffix: bt with --bt-no-inline-x87 (every x87 instruction a callout)
SUFFIX_FLAGS = {NOACPI: "--no-acpi", NOPV: "--no-paravirt", NOX87: "--bt-no-inline-x87"}


def _split_engine(engine):
    """(base engine, popek flags its suffixes ask for), e.g. bt-nopv-noacpi."""
    flags = []
    changed = True
    while changed:
        changed = False
        for suf, flag in SUFFIX_FLAGS.items():
            if engine.endswith(suf):
                engine = engine[: -len(suf)]
                flags.insert(0, flag)
                changed = True
    return engine, flags


def base_engine(engine):
    return _split_engine(engine)[0]


def engine_flags(engine):
    return _split_engine(engine)[1]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg, status=2):
    log(msg)
    sys.exit(status)


# ---------------------------------------------------------------- arguments
def add_common_args(ap, runs=3, engines=ALL_ENGINES, timeout="900"):
    ap.add_argument("--engines", default=",".join(engines),
                    help="comma-separated engines to measure: popek engines (bt, interp) "
                         "and qemu, popek's with suffixes -nopv (--no-paravirt) and -noacpi "
                         "(default: %(default)s; engines popek lacks are skipped)")
    ap.add_argument("--runs", type=int, default=runs, help="runs per engine (default: %(default)s)")
    ap.add_argument("--popek", help="popek binary (default: $POPEK, else the newest build*/popek that is not a sanitizer build)")
    ap.add_argument("--timeout", type=float, help=f"seconds per guest run (default: {timeout})")
    ap.add_argument("--memory", default=MEMORY, help="guest RAM (default: %(default)s)")
    ap.add_argument("--qemu-cpu", default=QEMU_CPU, help="QEMU -cpu model (default: %(default)s)")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep every serial log and stderr in DIR")


def find_popek(path=None):
    path = path or os.environ.get("POPEK")
    if path:
        if not os.access(path, os.X_OK):
            die(f"{path} is not an executable popek")
        return os.path.realpath(path)
    cands = [p for p in glob.glob(os.path.join(REPO, "build*", "popek")) if os.access(p, os.X_OK)]
    if not cands:
        die("no popek built (build*/popek); build one or pass --popek PATH")

    def sanitized(p):
        """A build tree configured with POPEK_SANITIZE (scripts/test.sh's build-asan): it measures ASan."""
        try:
            with open(os.path.join(os.path.dirname(p), "CMakeCache.txt")) as f:
                return any(line.strip() in ("POPEK_SANITIZE:BOOL=ON", "POPEK_SANITIZE:UNINITIALIZED=ON") for line in f)
        except OSError:
            return False

    plain = [p for p in cands if not sanitized(p)]
    if not plain:
        log(f"warning: only sanitizer builds found; measuring {max(cands, key=os.path.getmtime)}")
    return max(plain or cands, key=os.path.getmtime)


def popek_engines(popek):
    """Engine names popek's `run --help` lists for --engine."""
    out = subprocess.run([popek, "run", "--help"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "--engine" in line:
            desc = line.split("--engine", 1)[1]
            return set(re.findall(r"\b(interp|bt|kvm)\b", desc))
    return {"interp"}


def select_engines(args):
    """Parses --engines; returns (engines available, popek path or None)."""
    want = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in want:
        if base_engine(e) not in ALL_ENGINES or (is_qemu(base_engine(e)) and not is_qemu(e)):
            die(f"unknown engine '{e}' (known: {', '.join(ALL_ENGINES)}, and popek's with the "
                f"suffixes {' '.join(SUFFIX_FLAGS)})")
    popek = None
    known = set()
    have = []
    if any(not is_qemu(e) for e in want):
        popek = find_popek(args.popek)
        known = popek_engines(popek)
        for e in want:
            if not is_qemu(e) and base_engine(e) not in known:
                log(f"{popek} has no --engine {e} (its help lists: {', '.join(sorted(known))}); skipped")
    for e in want:
        if e == "qemu-kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            log("no usable /dev/kvm; qemu-kvm skipped")
        elif is_qemu(e):
            if shutil.which("qemu-system-i386"):
                have.append(e)
            else:
                log("qemu-system-i386 is not installed; qemu skipped")
        elif base_engine(e) in known:
            have.append(e)
    if not have:
        die("no engine left to measure")
    return have, popek


def check_guest():
    """The default guest's kernel and initrd; its /init must know popek.run=."""
    for f in ("vmlinuz", "initrd.img"):
        if not os.path.isfile(os.path.join(GUEST_CACHE, f)):
            die(f"{GUEST_CACHE}/{f} missing; run scripts/fetch-guest.sh")
    initrd = os.path.join(GUEST_CACHE, "initrd.img")
    import gzip
    try:
        knows = b"popek.run=" in gzip.open(initrd).read()
    except OSError:
        knows = True  # not gzip: cannot tell, try it
    if not knows:
        die(f"{initrd} predates the popek.run= option of /init; run scripts/fetch-guest.sh")
    return os.path.join(GUEST_CACHE, "vmlinuz"), initrd


def machine_note(args, popek=None, append=None):
    """Lines saying where and with what the figures were measured."""
    load = open("/proc/loadavg").read().split()[:3]
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    note = (f"host: {model}, {os.cpu_count()} CPUs, load {' '.join(load)}; repo at {git}\n"
            f"guest: {args.memory} RAM, append '{append or APPEND} popek.run=...'; "
            f"QEMU: qemu-system-i386 -accel tcg {' '.join(QEMU_MACHINE)} -cpu {args.qemu_cpu}")
    if popek:
        note += f"\npopek: {popek}"
    return note


def compiler():
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "gcc ?"


# ---------------------------------------------------------------- one guest run
def guest_cmd(engine, popek, kernel, initrd, append, memory, qemu_cpu):
    if is_qemu(engine):
        accel = "kvm" if engine == "qemu-kvm" else "tcg"
        return (["qemu-system-i386", "-accel", accel] + QEMU_MACHINE +
                ["-cpu", qemu_cpu, "-m", memory, "-nographic", "-no-reboot",
                 "-kernel", kernel, "-initrd", initrd, "-append", append])
    return [popek, "run", "--engine", base_engine(engine), "--kernel", kernel, "--initrd", initrd,
            "--append", append, "--memory", memory, "--stats"] + engine_flags(engine)


class GuestRun:
    """The result of one guest run. Times are seconds from starting the process."""
    engine = ""
    ready = None     # POPEK-READY line seen
    off = None       # the kernel's power-off line seen
    run_done = None  # /init's line saying the popek.run= program ended
    run_status = None  # ... and its exit status
    exited = None    # the process ended (QEMU: killed after `off`)
    status = None    # exit status (popek: 0 after a power-off)
    timed_out = False
    lines = ()       # [(t, text)] serial console lines, \r stripped
    stderr = ""
    cpu = None       # user + system CPU seconds of the process
    mips = None      # popek --stats: guest MIPS over the whole run
    insns = None     # popek --stats: guest instructions over the whole run

    def ok(self):
        return self.ready is not None and self.off is not None and not self.timed_out

    def trouble(self):
        """What went wrong, or '' for a clean run."""
        tail = "; ".join(t.strip() for _, t in self.lines[-12:] if t.strip() and READY not in t)[-300:]
        if self.timed_out and self.run_done is not None:
            return f"no power-off within {POWEROFF_GRACE} s of the program's end (console ends: {tail})"
        if self.timed_out:
            return "timed out"
        if self.ready is None:
            return f"no {READY} (exit status {self.status})"
        if self.off is None:
            return f"no power-off (exit status {self.status}; console ends: {tail})"
        if not is_qemu(self.engine) and self.status != 0:
            return f"popek exited with status {self.status} after the power-off"
        return ""


def run_guest(engine, popek, kernel, initrd, args, run_path, append_extra="", keep=None, append_base=None):
    """Boots one guest whose /init runs `run_path` then powers off; returns a GuestRun."""
    append = f"{append_base or APPEND} popek.run={run_path}{(' ' + append_extra) if append_extra else ''}"
    cmd = guest_cmd(engine, popek, kernel, initrd, append, args.memory, args.qemu_cpu)
    r = GuestRun()
    r.engine = engine
    lines = []
    errtmp = tempfile.TemporaryFile()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errtmp)
    fd = p.stdout.fileno()
    # The serial log is written as lines arrive, so a long run can be watched.
    serial = open(keep + ".serial", "w", buffering=1) if keep else None
    buf = b""
    deadline = t0 + args.timeout
    eof = False
    while not eof:
        now = time.monotonic()
        if now > deadline:
            r.timed_out = True
            break
        rd, _, _ = select.select([fd], [], [], min(0.5, deadline - now))
        if not rd:
            continue
        chunk = os.read(fd, 65536)
        t = time.monotonic() - t0
        if not chunk:
            eof = True
        buf += chunk
        parts = buf.split(b"\n")
        buf = parts.pop() if not eof else b""
        for raw in parts:
            text = raw.decode("utf-8", "replace").replace("\r", "")
            lines.append((t, text))
            if serial:
                serial.write(f"{t:10.3f} {text}\n")
            if r.ready is None and READY in text:
                r.ready = t
            if r.ready is not None and r.off is None and OFF_RX.search(text):
                r.off = t
            m = RUN_DONE_RX.search(text) if r.run_done is None else None
            if m:
                r.run_done, r.run_status = t, int(m.group(1))
                deadline = min(deadline, time.monotonic() + POWEROFF_GRACE)
        if r.off is not None and is_qemu(engine):
            break  # QEMU halts without exiting
    # QEMU halts without exiting, and anything past its time is stopped; popek
    # exits by itself after the power-off (given 30 s).
    # (os.kill, not Popen.terminate/kill: those poll, and would reap the child
    # before wait4 can read its CPU time.)
    def signal(sig):
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
    if is_qemu(engine) or r.timed_out or r.off is None:
        signal(15)
    grace = time.monotonic() + 30
    while True:
        pid, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(st)
            r.cpu = ru.ru_utime + ru.ru_stime
            break
        if time.monotonic() > grace:
            signal(9)
            grace = float("inf")
        time.sleep(0.01)
    r.exited = time.monotonic() - t0
    r.status = p.returncode
    p.stdin.close()
    p.stdout.close()
    errtmp.seek(0)
    r.stderr = errtmp.read().decode("utf-8", "replace")
    errtmp.close()
    r.lines = lines
    m = re.search(r"statistics \(([0-9.]+) s wall, ([0-9.]+) guest MIPS\)", r.stderr)
    if m:
        r.mips = float(m.group(2))
        r.insns = float(m.group(1)) * r.mips * 1e6
    if keep:
        serial.close()
        with open(keep + ".err", "w") as f:
            f.write(" ".join(cmd) + "\n" + r.stderr)
    trouble = r.trouble()
    if trouble:
        log(f"{engine}: {trouble}")
        if r.ready is None:
            for _, text in lines[-8:]:
                log(f"  | {text}")
            for text in r.stderr.strip().splitlines()[:3]:
                log(f"  stderr: {text}")
    return r


def keep_path(args, name):
    if not args.keep_logs:
        return None
    os.makedirs(args.keep_logs, exist_ok=True)
    return os.path.join(args.keep_logs, name)


# ---------------------------------------------------------------- statistics
def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def fmt_pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def goal(value, op, target):
    """'met' / 'not met' for a measured value against a goal; '-' if unmeasured."""
    if value is None:
        return "not measured"
    ok = value <= target if op == "<=" else value >= target
    return "met" if ok else "NOT met"


def table(rows, header, align=None):
    """Prints rows (lists of strings) under header with columns padded to fit."""
    cols = len(header)
    width = [max(len(str(r[i])) for r in [header] + rows) for i in range(cols)]
    align = align or ["<"] + [">"] * (cols - 1)
    def line(r):
        return "  ".join(f"{str(r[i]):{align[i]}{width[i]}}" for i in range(cols)).rstrip()
    print(line(header))
    print("  ".join("-" * w for w in width))
    for r in rows:
        print(line(r))


# ---------------------------------------------------------------- initramfs
def newc(entries):
    """A newc cpio archive of entries [(path, mode, data)]; data None for a directory.
    Owner root, mtime 0: the same entries give the same bytes."""
    out = bytearray()
    def put(name, mode, data, ino):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
    for i, (path, mode, data) in enumerate(entries):
        if data is None:
            put(path, 0o040000 | mode, b"", 1000 + i)
        else:
            put(path, 0o100000 | mode, data, 1000 + i)
    put("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def extend_initrd(base, out, entries):
    """Writes `out`: the initramfs `base` followed by a gzip'd newc archive of
    `entries` (the kernel unpacks concatenated archives in order, later files
    winning). Returns out."""
    import gzip
    data = open(base, "rb").read()
    extra = gzip.compress(newc(entries), compresslevel=6, mtime=0)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.write(b"\0" * (-len(data) % 4))
        f.write(extra)
    os.replace(tmp, out)
    return out
