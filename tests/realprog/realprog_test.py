#!/usr/bin/env python3
"""Real user programs in the default Debian guest, on popek's engines.

The C programs next to this file (each checking its own results and ending
with "OK <name>" or "FAIL <name> ...") are built `gcc -m32 -O2 -static` into
cache/realprog, added to a copy of the guest's initramfs with a script per
size profile (/rp/run-full, /rp/run-small), and run at boot (kernel option
popek.run=/rp/run-PROFILE; the guest powers off after).

Modes:
  compare   the full-size set on bt with the user window claimed at once
            (--bt-user-window-claim 0), on bt as it comes by default, on bt
            with the window claimed at once and capped at 256 pages (so the
            large working sets overflow it: clears and refills), and on
            interp: every program must print OK, and each program's output
            must be identical on every engine.
  lockstep  the small-size set on bt in lockstep with the interpreter
            (--lockstep --deterministic --bt-user-window-claim 0): every
            program prints OK and no divergence stops the run.

A program that does not finish within its time (per engine) fails the test
naming it. Exit status 77 (skip) without the guest (scripts/fetch-guest.sh)
or without a compiler for static i386 programs (gcc-multilib: scripts/setup.sh).

Usage: realprog_test.py POPEK compare|lockstep [--only hs,tf] [--engines bt,interp,...]
                        [--profile full|small] [--cap PAGES] [--keep-logs DIR]
"""
import argparse
import gzip
import os
import re
import select
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.realpath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(REPO, "tests", "boot"))
sys.path.insert(0, os.path.join(REPO, "bench", "lib"))
import guestlib  # noqa: E402
import benchlib  # noqa: E402

SKIP = 77
CACHE = os.environ.get("POPEK_REALPROG_CACHE") or os.path.join(REPO, "cache", "realprog")
CFLAGS = ["-m32", "-O2", "-static", "-Wall"]

# name: (argument for the full set, argument for the small set). The full set
# runs on every engine (the heap sort's 2.5 M words take about 20 s on interp);
# the small one is for lockstep.
PROGRAMS = {
    "hs":     ("2500000", "400000"),
    "churn":  ("3", "1"),
    "mprot":  ("4", "2"),
    "cow":    ("16", "8"),
    "mremap": ("4", "2"),
    "fmap":   ("4", "2"),
    "tf":     ("", ""),
    "fp":     ("40", "6"),
}
PROFILES = {"full": 0, "small": 1}
# Seconds a program may run (generous: a loaded CI host): the guest kills it
# with `timeout` after LIMIT guest seconds (with --deterministic, a guest
# second is 10^9 instructions, about 15 s of lockstep); popek is stopped if a
# program has not ended HOST seconds after it began, or the boot or the gap
# between programs takes more than BOOT seconds.
LIMITS = {  # kind: (LIMIT, HOST, BOOT)
    "bt": (60, 120, 120),
    "interp": (400, 480, 600),
    "lockstep": (20, 600, 900),
}
POWEROFF_GRACE = 60
KERNEL_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\]")  # printk lines (not program output)


def say(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- building
def check_compiler():
    """Exits with the skip status if gcc cannot build a static i386 program."""
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <stdio.h>\nint main(void) { puts(\"x\"); return 0; }\n")
        try:
            p = subprocess.run(["gcc", *CFLAGS, "-o", os.path.join(tmp, "t"), src],
                               capture_output=True, text=True)
        except FileNotFoundError:
            say("SKIP: gcc is not installed (scripts/setup.sh installs gcc and gcc-multilib)")
            sys.exit(SKIP)
        if p.returncode != 0:
            say("SKIP: gcc cannot build static i386 programs (gcc -m32 -static; install "
                "gcc-multilib: scripts/setup.sh):\n" + p.stderr.strip()[-600:])
            sys.exit(SKIP)


def build(names):
    """Builds each program into CACHE/bin (when its source is newer); returns {name: path}."""
    bindir = os.path.join(CACHE, "bin")
    os.makedirs(bindir, exist_ok=True)
    header = os.path.join(HERE, "rp.h")
    out = {}
    for name in names:
        src = os.path.join(HERE, name + ".c")
        exe = os.path.join(bindir, name)
        newest = max(os.path.getmtime(src), os.path.getmtime(header), os.path.getmtime(__file__))
        if not (os.path.exists(exe) and os.path.getmtime(exe) >= newest):
            # Built under a private name, then renamed: concurrent tests share CACHE.
            tmp = f"{exe}.{os.getpid()}.tmp"
            p = subprocess.run(["gcc", *CFLAGS, "-o", tmp, src, "-lm"], capture_output=True, text=True)
            if p.returncode != 0:
                say(f"FAIL: building {name}.c:\n{p.stderr}")
                sys.exit(1)
            os.replace(tmp, exe)
        out[name] = exe
    return out


def run_script(names, profile):
    """The guest's /rp/run-PROFILE: each program between begin/end marker lines."""
    col = PROFILES[profile]
    lines = ["#!/bin/sh", "# generated by tests/realprog/realprog_test.py",
             "mkdir -p /tmp/rp && cd /tmp/rp || exit 1"]
    for name in names:
        arg = PROGRAMS[name][col]
        # rp_limit (seconds) comes from the kernel command line (the kernel hands
        # unknown name=value options to /init as environment).
        lines += [f"echo rp-begin {name}",
                  f"timeout -s KILL ${{rp_limit:-600}} /rp/{name} {arg} 2>&1",
                  f"echo rp-end {name} $?"]
    lines.append("echo rp-all-done")
    return ("\n".join(lines) + "\n").encode()


def make_initrd(base, exes, tag):
    names = list(exes)
    entries = [("rp", 0o755, None)]
    entries += [(f"rp/{n}", 0o755, open(exes[n], "rb").read()) for n in names]
    entries += [(f"rp/run-{p}", 0o755, run_script(names, p)) for p in PROFILES]
    return benchlib.extend_initrd(base, os.path.join(CACHE, f"initrd-{tag}.img"), entries)


# ---------------------------------------------------------------- one guest run
class Run:
    def __init__(self, label):
        self.label = label
        self.lines = []       # [(t, text)]
        self.outputs = {}     # program -> [lines]
        self.status = {}      # program -> exit status
        self.seconds = {}     # program -> host seconds
        self.problems = []
        self.wall = 0.0
        self.stderr = ""


def run_guest(popek, engine_label, argv_extra, kernel, initrd, names, profile, keep):
    """Boots the guest running /rp/run-PROFILE; returns a Run."""
    r = Run(engine_label)
    lockstep = "--lockstep" in argv_extra
    slow = lockstep or "interp" in argv_extra  # the interpreter's pace
    limit, host_limit, boot_limit = LIMITS["lockstep" if lockstep else ("interp" if slow else "bt")]
    append = f"{guestlib.APPEND} popek.run=/rp/run-{profile} rp_limit={limit}"
    argv = [popek, "run", "--kernel", kernel, "--initrd", initrd, "--append", append,
            "--memory", "256M", "--stats", *argv_extra]
    say(f"== {engine_label}: popek run {' '.join(argv_extra)} (popek.run=/rp/run-{profile})")
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    fd = p.stdout.fileno()
    serial = open(keep + ".serial", "w", buffering=1) if keep else None
    deadline = t0 + boot_limit
    current, began, cur_out = None, None, []
    done = False
    buf = b""
    eof = False
    while not eof:
        now = time.monotonic()
        if now > deadline:
            if current:
                r.problems.append(f"{current} did not finish within {deadline - began:.0f} s "
                                  f"(last lines: {' | '.join(cur_out[-4:])[-300:]})")
            elif done:
                r.problems.append(f"no power-off within {POWEROFF_GRACE} s of the end of the set")
            else:
                r.problems.append(f"timed out after {now - t0:.0f} s before the set began or between programs")
            break
        rd, _, _ = select.select([fd], [], [], min(0.5, max(0.0, deadline - now)))
        if not rd:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            eof = True
        buf += chunk
        parts = buf.split(b"\n")
        buf = parts.pop() if not eof else b""
        t = time.monotonic() - t0
        for raw in parts:
            text = raw.decode("utf-8", "replace").replace("\r", "")
            r.lines.append((t, text))
            if serial:
                serial.write(f"{t:9.3f} {text}\n")
            m = re.match(r"rp-begin (\S+)$", text)
            if m:
                current, began, cur_out = m.group(1), time.monotonic(), []
                deadline = began + host_limit
                continue
            m = re.match(r"rp-end (\S+) (\d+)$", text)
            if m and m.group(1) == current:
                r.outputs[current] = cur_out
                r.status[current] = int(m.group(2))
                r.seconds[current] = time.monotonic() - began
                current = None
                deadline = time.monotonic() + boot_limit
                continue
            if text == "rp-all-done":
                done = True
                deadline = time.monotonic() + POWEROFF_GRACE
                continue
            if current is not None and not KERNEL_LINE.match(text):
                cur_out.append(text)
    try:
        p.wait(timeout=0 if not eof else 30)  # after a power-off, popek ends by itself
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    r.wall = time.monotonic() - t0
    err.seek(0)
    r.stderr = err.read().decode("utf-8", "replace")
    err.close()
    if serial:
        serial.close()
        with open(keep + ".err", "w") as f:
            f.write(" ".join(argv) + "\n" + r.stderr)
    if not r.problems and not done:
        r.problems.append(f"popek ended (exit status {p.returncode}) before the set was done"
                          + (f"; {current} was running" if current else ""))
    elif not r.problems and p.returncode != 0:
        r.problems.append(f"popek exit status {p.returncode} after the set")
    if lockstep and "lockstep:" in r.stderr + "\n".join(t for _, t in r.lines):
        r.problems.append("lockstep divergence")
    for name in names:
        if name in r.status:
            out = r.outputs[name]
            last = out[-1] if out else ""
            if r.status[name] == 137:
                r.problems.append(f"{name} did not finish: killed by the guest's timeout after "
                                  f"{r.seconds[name]:.0f} s (last lines: {' | '.join(out[-3:])[-300:]})")
            elif r.status[name] != 0 or last != f"OK {name}":
                r.problems.append(f"{name}: exit status {r.status[name]}, last line {last!r}")
    return r


def report(r, names):
    times = ", ".join(f"{n} {r.seconds[n]:.1f}" for n in names if n in r.seconds)
    say(f"{r.label}: {r.wall:.1f} s wall; per program (s): {times}")
    m = re.search(r"statistics \(([0-9.]+) s wall, ([0-9.]+) guest MIPS\)", r.stderr)
    if m:
        say(f"{r.label}: {m.group(2)} guest MIPS over the run")
    for line in r.stderr.splitlines():
        if re.match(r"\s*(mmu\.window_(claims|clears|evicted|churn|refused)|lockstep\.instructions)\b", line):
            say(f"  {line.strip()}")
    for name in names:
        for line in r.outputs.get(name, []):
            if line.startswith("FAIL") or line.startswith("  "):
                say(f"  {line}")
    if r.problems:
        for pr in r.problems:
            say(f"FAIL {r.label}: {pr}")
        if "lockstep divergence" in r.problems:
            text = r.stderr + "\n".join(t for _, t in r.lines)
            say("\n".join(text[text.index("lockstep:"):].splitlines()[:40]))
        elif not r.outputs or any("popek ended" in pr or "timed out" in pr for pr in r.problems):
            say("console ends:\n" + "\n".join(t for _, t in r.lines[-15:]))
            say("stderr ends:\n" + "\n".join(r.stderr.strip().splitlines()[-8:]))
    else:
        say(f"ok   {r.label}: every program printed OK")


def compare(runs, names):
    """Each program's output must be the same on every run; returns the number of differences."""
    ref = runs[0]
    diffs = 0
    for other in runs[1:]:
        for name in names:
            a, b = ref.outputs.get(name), other.outputs.get(name)
            if a is None or b is None or 137 in (ref.status.get(name), other.status.get(name)):
                continue  # already reported as not finished
            if a != b:
                diffs += 1
                say(f"FAIL {name}: output differs between {ref.label} and {other.label}")
                for i in range(max(len(a), len(b))):
                    la = a[i] if i < len(a) else "<none>"
                    lb = b[i] if i < len(b) else "<none>"
                    if la != lb:
                        say(f"  line {i + 1}: {ref.label}: {la!r}")
                        say(f"  line {i + 1}: {other.label}: {lb!r}")
                        break
    if diffs == 0 and len(runs) > 1:
        say(f"ok   outputs identical on {', '.join(r.label for r in runs)} "
            f"({sum(len(ref.outputs.get(n, [])) for n in names)} lines)")
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("popek")
    ap.add_argument("mode", choices=["compare", "lockstep"])
    ap.add_argument("--only", help="comma-separated programs (default: all)")
    ap.add_argument("--engines", default="bt-claim0,bt,bt-cap,interp",
                    help="compare mode: runs among bt-claim0, bt, bt-cap, bt-nowindow, interp "
                         "(default: %(default)s)")
    ap.add_argument("--profile", choices=list(PROFILES),
                    help="program sizes (default: full for compare, small for lockstep)")
    ap.add_argument("--cap", type=int, help="lockstep mode: --bt-user-window-cap PAGES too")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep each run's serial log and stderr in DIR")
    args = ap.parse_args()
    names = list(PROGRAMS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        for n in names:
            if n not in PROGRAMS:
                sys.exit(f"unknown program {n} (programs: {', '.join(PROGRAMS)})")
    kernel, base = guestlib.guest_files()  # exits 77 without the guest
    try:
        if b"popek.run=" not in gzip.open(base).read():
            say(f"SKIP: {base} predates /init's popek.run= option; run scripts/fetch-guest.sh")
            sys.exit(SKIP)
    except OSError:
        pass
    check_compiler()
    exes = build(names)
    initrd = make_initrd(base, exes, args.mode)
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)

    def keep(label):
        return os.path.join(args.keep_logs, label.replace(" ", "_")) if args.keep_logs else None

    t0 = time.monotonic()
    runs = []
    if args.mode == "compare":
        configs = {"bt-claim0": ("bt claim0", ["--engine", "bt", "--bt-user-window-claim", "0"]),
                   "bt": ("bt", ["--engine", "bt"]),
                   "bt-cap": ("bt cap256", ["--engine", "bt", "--bt-user-window-claim", "0",
                                            "--bt-user-window-cap", "256"]),
                   "bt-nowindow": ("bt nowindow", ["--engine", "bt", "--bt-no-user-window"]),
                   "interp": ("interp", ["--engine", "interp"])}
        for e in [e.strip() for e in args.engines.split(",") if e.strip()]:
            if e not in configs:
                sys.exit(f"unknown engine {e} (known: {', '.join(configs)})")
            label, extra = configs[e]
            runs.append(run_guest(args.popek, label, extra, kernel, initrd, names, args.profile or "full",
                                  keep(label)))
            report(runs[-1], names)
    else:
        label = "bt lockstep"
        extra = ["--engine", "bt", "--lockstep", "--deterministic", "--bt-user-window-claim", "0"]
        if args.cap:
            label += f" cap{args.cap}"
            extra += ["--bt-user-window-cap", str(args.cap)]
        runs.append(run_guest(args.popek, label, extra, kernel, initrd, names, args.profile or "small",
                              keep(label)))
        report(runs[-1], names)
    failed = sum(len(r.problems) for r in runs) + compare(runs, names)
    say(f"{'FAIL' if failed else 'ok  '} realprog {args.mode}: {failed} problem(s), "
        f"{time.monotonic() - t0:.0f} s in all")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
