#!/usr/bin/env python3
"""Virtualization nanobenchmarks (issue 22), in the layout of Adams & Agesen,
"A Comparison of Software and Hardware Techniques for x86 Virtualization"
(ASPLOS 2006): what each virtualization-sensitive operation costs natively,
under popek's interpreter and binary translator, under QEMU's TCG and under
KVM, in ns per operation (the paper gives CPU cycles on a 3.8 GHz Pentium 4).

Two sets, every figure from a run this script makes:

1. Firmware (bench/nano/nano.asm): a freestanding guest with an IDT, a TSS,
   ring 3 and paging, run with `popek run --firmware` on interp, bt and kvm
   (where /dev/kvm is usable) and with `qemu-system-i386 -accel tcg -bios` on
   QEMU; each operation timed in a loop with the guest's RDTSC. The TSC rate
   is measured by the guest itself against PIT counter 2 (50 ms, read back
   through port 0x61 as Linux's pit_calibrate_tsc does; five times, the
   shortest counts: a guest stalled by a loaded host sees the end late, which
   only lengthens the interval) and printed; popek's
   guest TSC runs at 1 GHz on interp and bt (the virtual clock in ns), so
   that rate converts there and the calibration checks the method; on kvm
   the TSC is the host's (kvm_pvm does not let popek set it) and on QEMU the
   host's too: there the calibrated rate converts. The native
   column is bench/nano/hostnano.c (the same loops in user mode on the host)
   for the operations that exist there.
   An operation that kills the guest is FAIL on interp, bt and QEMU; on kvm it
   is n/a with the fault (KVM here is kvm_pvm, which runs 32-bit kernel code
   in KVM's instruction emulator, see docs/kvm.md); the program is then run
   again without it, so one operation does not cost the others their figures.

2. Linux (bench/nano/linuxnano.c): getppid, a fault on a fresh page, a
   SIGFPE round trip and the paper's forkwait (fork/waitpid pairs, 40,000 at
   --linux-scale 1) in the default guest (cache/guest: Debian's kernel with a
   busybox initramfs, the program built -m32 -static and appended to it; see
   bench/cpu/cpu.py, whose harness this is) on popek bt (interp with
   --linux-engines), QEMU TCG with the same kernel and initramfs, and the
   same source built -m64 on the host. Timed in the guest with
   clock_gettime(CLOCK_MONOTONIC).

Prints both tables with the paper's published figures where known, writes a
bar chart (log scale) as PNG, and exits 1 if a figure failed. Medians of
--runs runs (engines take turns within each round).

Usage: bench/nano/run.py [--runs N] [--scale S] [--kvm-scale S]
                         [--fw-engines interp,bt,kvm,qemu] [--linux-engines bt,qemu]
                         [--linux-scale S] [--no-linux] [--no-firmware]
                         [--png PATH] [--popek PATH] [--timeout S] [--fw-timeout S]
                         [--keep-logs DIR]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "cpu"))
import benchlib as B  # noqa: E402
import cpu as CPU  # noqa: E402  (bench/cpu/cpu.py: build, parse, run_native, run_script)

ASM = os.path.join(HERE, "nano.asm")
GUEST_INC = os.path.join(B.REPO, "tests", "guest")
PIT_HZ = 1193182
POPEK_TSC_MHZ = 1000.0  # interp and bt: the guest TSC counts the virtual clock's ns
FW_OPS = ["loop", "callret", "cpuid", "rdtsc", "in", "crwr", "hypercall", "divzero",
          "syscall", "sysenter", "cr3", "invlpg", "pgfault", "ptemod"]
FW_ENGINES = ["interp", "bt", "kvm", "qemu"]
LINUX_OPS = ["getppid", "pgfault", "sigfpe", "forkwait"]
HOST_OPS = ["loop", "callret", "cpuid", "rdtsc"]  # hostnano.c
# The paper's figures, quoted (native, software VMM, hardware VMM) with their
# unit. Only what a source could be found for: forkwait's three times (the
# whole 40,000 fork/wait pairs) as the paper's section 6 reports them (quoted
# by the lecture notes at scarlet-message-9c2.notion.site, "Meetup 2: CPU
# Virtualization"). The nanobenchmark figure's cycle counts (syscall, in,
# cr8wr, call/ret, pgfault, divzero, ptemod) were not found in the sources
# searchable here and are not given rather than guessed.
PAPER = {("linux", "forkwait"): ("6.0 s", "36.9 s", "106.4 s")}
PAPER_MISSING = "not found (see run.py: PAPER)"
NOTE_FW = {
    "loop": "dec/jnz",
    "callret": "call+ret",
    "cpuid": "leaf 0",
    "in": "port 0x61",
    "crwr": "mov cr0 (paper: cr8)",
    "hypercall": "vmcall",
    "divzero": "ring 3 #DE",
    "syscall": "int 0x80",
    "sysenter": "sysenter/sysexit",
    "cr3": "mov cr3",
    "pgfault": "ring 3 #PF",
    "ptemod": "PTE+invlpg+use",
}


# ---------------------------------------------------------------- firmware
def assemble(scale_pm, skip):
    os.makedirs(B.BENCH_CACHE, exist_ok=True)
    out = os.path.join(B.BENCH_CACHE, f"nano-{scale_pm}-{skip:x}.bin")
    cmd = ["nasm", "-f", "bin", "-w-number-overflow", f"-I{GUEST_INC}/", f"-DSCALE={scale_pm}",
           f"-DSKIP={skip}", "-o", out, ASM]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        B.die(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return out


def fw_cmd(engine, popek, rom):
    if engine == "qemu":
        return ["qemu-system-i386", "-accel", "tcg", "-M", "isapc", "-cpu", "qemu32", "-m", "8M",
                "-display", "none", "-no-reboot", "-bios", rom, "-serial", "none", "-monitor", "none",
                "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0xe9,chardev=dbg",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    return [popek, "run", "--firmware", rom, "--memory", "8M", "--debug-port", "0xE9",
            "--engine", engine]


VECTORS = {0: "#DE", 1: "#DB", 3: "#BP", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF", 10: "#TS",
           11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC"}


def fault_text(line):
    """'nano-fault V A B C' as words: the vector's name and the frame's words."""
    f = line.split()
    if len(f) < 5:
        return line
    v = int(f[1], 16)
    name = VECTORS.get(v, f"vector {v}")
    if v in (8, 10, 11, 12, 13, 14, 17):
        return f"unexpected {name} (error code {int(f[2], 16):#x}) at {int(f[4], 16):#x}:{int(f[3], 16):#x}"
    return f"unexpected {name} at {int(f[3], 16):#x}:{int(f[2], 16):#x}"


def parse_fw(text):
    """{'cal': [TSC MHz of each calibration], 'res': {op: (ops, ticks)}, 'na': {op: reason},
    'started': [ops], 'fault': line or None, 'end': bool, 'errors': [lines]}"""
    r = {"cal": [], "res": {}, "na": {}, "started": [], "fault": None, "end": False, "errors": []}
    for line in text.splitlines():
        f = line.strip().split(None, 3)
        if not f:
            continue
        if f[0] == "nano-cal" and len(f) >= 3 and int(f[1], 16) > 0 and int(f[2], 16) > 0:
            r["cal"].append(int(f[2], 16) / (int(f[1], 16) / PIT_HZ) / 1e6)
        elif f[0] == "nano-start" and len(f) >= 2:
            r["started"].append(f[1])
        elif f[0] == "nano-result" and len(f) >= 4:
            r["res"][f[1]] = (int(f[2], 16), int(f[3], 16))
        elif f[0] == "nano-na" and len(f) >= 2:
            r["na"][f[1]] = line.strip().split(None, 2)[2] if len(f) > 2 else "?"
        elif f[0] == "nano-fault":
            r["fault"] = fault_text(line.strip())
        elif f[0] in ("nano-error", "nano-cal-fail") or line.startswith("check failed"):
            r["errors"].append(line.strip())
        elif f[0] == "nano-end":
            r["end"] = True
    return r


def run_fw_once(engine, popek, scale_pm, timeout, kvm_flavour, keep):
    """Runs the firmware program until every benchmark has a figure, an n/a or
    a FAIL. Returns ({op: ns or None}, {op: 'FAIL (...)' / 'n/a (...)'}, tsc_mhz)."""
    skip = 0
    ns, why = {}, {}
    mhz = None
    cal = [None]
    for attempt in range(len(FW_OPS) + 1):
        rom = assemble(scale_pm, skip)
        cmd = fw_cmd(engine, popek, rom)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
            out, err, status = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, status = f"timed out after {timeout} s", None
        if keep:
            with open(f"{keep}-{attempt}.log", "w") as f:
                f.write(" ".join(cmd) + f"\nexit status {status}\n--- stdout\n{out}\n--- stderr\n{err}\n")
        r = parse_fw(out)
        if r["cal"]:
            # The shortest: a stalled guest (loaded host) sees the PIT's end
            # late and only ever lengthens the interval.
            cal[0] = min(r["cal"])
            # popek's own engines: the guest TSC is the virtual clock in ns
            # (src/machine/clock.h), so its rate is known; the calibration
            # is reported beside it as a check of the method.
            mhz = POPEK_TSC_MHZ if engine in ("interp", "bt") else cal[0]
        for op, reason in r["na"].items():
            why[op] = f"n/a ({reason})"
        ok_exit = status == 1 and "PASS" in out
        if not r["cal"]:
            reason = "; ".join(r["errors"]) or f"no calibration line (exit status {status})"
            return {}, {op: f"FAIL (TSC calibration: {reason})" for op in FW_OPS}, None
        for op, (ops, ticks) in r["res"].items():
            if ops > 0 and ticks > 0:
                ns[op] = ticks / ops / mhz * 1e3
            else:
                why[op] = f"FAIL ({ops} ops in {ticks} ticks)"
        if r["end"] and ok_exit:
            break
        # It died: in the last benchmark started that has no outcome.
        open_ops = [op for op in r["started"] if op not in r["res"] and op not in r["na"]]
        detail = r["fault"] or "; ".join(r["errors"]) or \
            (err.strip().splitlines()[-1] if err.strip() else f"exit status {status}")
        if not open_ops:
            for op in FW_OPS:
                if op not in ns and op not in why:
                    why[op] = f"FAIL (run ended: {detail})"
            break
        op = open_ops[-1]
        if engine == "kvm" and kvm_flavour == "kvm_pvm" and not r["errors"]:
            why[op] = f"n/a (kvm_pvm: {detail})"
        else:
            why[op] = f"FAIL ({detail})"
        skip |= 1 << FW_OPS.index(op)
        B.log(f"{engine}: {op}: {why[op]}; again without it")
    for op in FW_OPS:
        if op not in ns and op not in why:
            why[op] = "FAIL (no result)"
    return ns, why, cal[0]


def kvm_status(popek):
    p = subprocess.run([popek, "kvm-info"], capture_output=True, text=True)
    text = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        return None, text.splitlines()[0] if text else "kvm-info failed"
    m = re.search(r"usable \(([a-z_]+)\)", text)
    return (m.group(1) if m else "?"), text


def run_host(scale, runs):
    exe = os.path.join(B.BENCH_CACHE, "hostnano")
    src = os.path.join(HERE, "hostnano.c")
    cmd = ["gcc", "-m64", "-O2", "-Wall", "-o", exe, src]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        B.die(f"{' '.join(cmd)} failed:\n{p.stderr}")
    res = {op: [] for op in HOST_OPS}
    for _ in range(runs):
        p = subprocess.run([exe, "--scale", str(scale)], capture_output=True, text=True, timeout=600)
        for line in p.stdout.splitlines():
            f = line.split()
            if len(f) == 4 and f[0] == "hostnano" and int(f[2]) > 0:
                res[f[1]].append(float(f[3]) / int(f[2]))
    return res


def host_is_vm():
    try:
        return any(line.startswith("flags") and " hypervisor" in line for line in open("/proc/cpuinfo"))
    except OSError:
        return False


# ---------------------------------------------------------------- report
def fmt_ns(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e4:
        return f"{x / 1e3:.1f} us"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}"


def cell(vals, why):
    if why:
        return "n/a" if why.startswith("n/a") else "FAIL"
    return fmt_ns(B.median(vals)) if vals else "-"


LABEL = {"interp": "popek interp", "bt": "popek bt", "kvm": "popek kvm (kvm_pvm)", "qemu": "QEMU TCG",
         "native": "native (host user mode)"}
COLOR = {"native": "tab:blue", "interp": "tab:orange", "bt": "tab:green", "kvm": "tab:red",
         "qemu": "tab:purple", "paper native": "lightsteelblue", "paper SW VMM": "palegreen",
         "paper HW VMM": "lightsalmon"}
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-matplotlib installs


def chart(path, groups):
    """groups: [(title, ops, cols, {(col, op): ns})]: one log-scale bar chart.
    Drawn by Debian's python3 when this interpreter has no matplotlib (e.g. a
    python3 of pyenv's first on PATH)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if os.path.exists(SYSTEM_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump([[t, ops, cols, [[c, op, v] for (c, op), v in val.items()]]
                           for t, ops, cols, val in groups], f)
            p = subprocess.run([SYSTEM_PYTHON, "-B", os.path.abspath(__file__), "--draw", f.name,
                                "--png", path], capture_output=True, text=True)
            os.unlink(f.name)
            if p.returncode == 0:
                return True
            B.log(f"{SYSTEM_PYTHON} could not draw the chart: {p.stderr.strip()[-300:]}")
        B.log("matplotlib missing (install python3-matplotlib: scripts/setup.sh); no chart written")
        return False
    fig, axes = plt.subplots(len(groups), 1, figsize=(13, 4.8 * len(groups)), squeeze=False)
    for ax, (title, ops, cols, val) in zip(axes[:, 0], groups):
        width = 0.8 / max(1, len(cols))
        for i, c in enumerate(cols):
            xs = [j + (i - (len(cols) - 1) / 2) * width for j in range(len(ops))]
            ys = [val.get((c, op)) or 0 for op in ops]
            bars = ax.bar(xs, [y if y > 0 else float("nan") for y in ys], width, label=LABEL.get(c, c),
                          color=COLOR.get(c), hatch="//" if c.startswith("paper") else None)
            for x, y in zip(xs, ys):
                if not y and not c.startswith("paper"):
                    ax.text(x, 1.2, "n/a", rotation=90, ha="center", va="bottom", fontsize=6,
                            color=bars.patches[0].get_facecolor() if bars.patches else "k")
        ax.set_yscale("log")
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops)
        ax.set_ylabel("ns per operation (log)")
        ax.set_title(title)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=8, ncol=len(cols))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(prog="bench/nano/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (default: %(default)s)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="firmware iterations scale on interp, bt, QEMU and native (default: %(default)s)")
    ap.add_argument("--kvm-scale", type=float, default=0.02,
                    help="firmware iterations scale on kvm, which is slow here (default: %(default)s)")
    ap.add_argument("--fw-engines", default="interp,bt,kvm,qemu",
                    help="engines for the firmware set (default: %(default)s)")
    ap.add_argument("--linux-engines", default="bt,qemu",
                    help="engines for the Linux set: bt, interp, qemu (default: %(default)s)")
    ap.add_argument("--linux-scale", type=float, default=1.0,
                    help="Linux set iterations scale (1: forkwait's 40,000 pairs; default: %(default)s)")
    ap.add_argument("--no-linux", action="store_true", help="firmware set only")
    ap.add_argument("--no-firmware", action="store_true", help="Linux set only")
    ap.add_argument("--png", default=os.path.join(B.BENCH_CACHE, "nano.png"),
                    help="bar chart (default: %(default)s)")
    ap.add_argument("--popek", help="popek binary (default: $POPEK, else the newest build*/popek)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per guest run (default: %(default)s)")
    ap.add_argument("--fw-timeout", type=float, default=600,
                    help="seconds per firmware run (default: %(default)s)")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep every guest's output in DIR")
    ap.add_argument("--draw", metavar="JSON", help=argparse.SUPPRESS)  # chart() through Debian's python3
    args = ap.parse_args()
    if args.draw:
        groups = [(t, ops, cols, {(c, op): v for c, op, v in vals})
                  for t, ops, cols, vals in json.load(open(args.draw))]
        return 0 if chart(args.png, groups) else 1
    if args.runs < 1 or not args.scale > 0 or not args.kvm_scale > 0 or not args.linux_scale > 0:
        B.die("--runs must be >= 1 and the scales > 0")
    popek = B.find_popek(args.popek)
    if not shutil.which("nasm"):
        B.die("nasm is not installed (scripts/setup.sh)")
    # benchlib's guest settings for the Linux set
    args.memory, args.qemu_cpu = B.MEMORY, B.QEMU_CPU
    note = B.machine_note(args, popek)
    for line in note.splitlines():
        B.log(line)

    failed = False
    groups = []
    fw_rows = lin_rows = None
    fw_engines = [e.strip() for e in args.fw_engines.split(",") if e.strip()]
    for e in fw_engines:
        if e not in FW_ENGINES:
            B.die(f"unknown firmware engine '{e}' (known: {', '.join(FW_ENGINES)})")
    # ---- firmware set
    if not args.no_firmware:
        fw_ns = {(c, op): [] for c in ["native"] + fw_engines for op in FW_OPS}
        fw_why = {}
        mhz = {e: [] for e in fw_engines}
        kvm_flavour, kvm_text = (None, None)
        if "kvm" in fw_engines:
            kvm_flavour, kvm_text = kvm_status(popek)
            if kvm_flavour is None:
                for op in FW_OPS:
                    fw_why["kvm", op] = f"n/a (no usable KVM: {kvm_text})"
            else:
                B.log(f"kvm: {kvm_text.splitlines()[0]}")
        if "qemu" in fw_engines and not shutil.which("qemu-system-i386"):
            for op in FW_OPS:
                fw_why["qemu", op] = "n/a (qemu-system-i386 not installed)"
        unavailable = {e for (e, _) in fw_why}
        for rnd in range(args.runs):
            host = run_host(args.scale, 1)
            for op, v in host.items():
                fw_ns["native", op] += v
            for e in fw_engines:
                if e in unavailable:
                    continue
                scale = args.kvm_scale if e == "kvm" else args.scale
                scale_pm = max(1, round(1000 * scale))
                keep = B.keep_path(args, f"nano-{e}-{rnd + 1}")
                ns, why, m = run_fw_once(e, popek, scale_pm, args.fw_timeout, kvm_flavour, keep)
                if m:
                    mhz[e].append(m)
                for op, v in ns.items():
                    fw_ns[e, op].append(v)
                for op, w in why.items():
                    fw_why.setdefault((e, op), w)
                B.log(f"firmware {e} round {rnd + 1}: TSC {B.fmt(m, '.1f')} MHz; " +
                      " ".join(f"{op} {fmt_ns(ns[op])}" for op in FW_OPS if op in ns))
        for op in FW_OPS:
            if op not in HOST_OPS:
                fw_why["native", op] = "n/a (needs ring 0: see the Linux table)"
        cols = ["native"] + fw_engines
        header = ["operation", "what"] + [("popek " + c if c in ("interp", "bt", "kvm") else
                                           "QEMU TCG" if c == "qemu" else c) for c in cols]
        header += ["bt/interp", "bt/QEMU"] if "bt" in cols else []
        header += ["paper: native / SW VMM / HW VMM (cycles)"]
        fw_rows = []
        val = {}
        for op in FW_OPS:
            row = [op, NOTE_FW.get(op, op)]
            for c in cols:
                w = fw_why.get((c, op))
                row.append(cell(fw_ns[c, op], w))
                if not w and fw_ns[c, op]:
                    val[c, op] = B.median(fw_ns[c, op])
                if w and not w.startswith("n/a"):
                    failed = True
            if "bt" in cols:
                row.append(B.fmt_ratio(B.ratio(val.get(("bt", op)), val.get(("interp", op)))))
                row.append(B.fmt_ratio(B.ratio(val.get(("bt", op)), val.get(("qemu", op)))))
            p = PAPER.get(("fw", op))
            row.append(" / ".join(p) if p else PAPER_MISSING if op not in ("loop", "cpuid", "rdtsc",
                                                                             "sysenter", "cr3", "invlpg",
                                                                             "hypercall") else "(not in the paper)")
            fw_rows.append(row)
        groups.append(("Firmware nanobenchmarks (bench/nano/nano.asm), median ns per operation",
                       FW_OPS, cols, val))
        fw_notes = []
        for e in fw_engines:
            if mhz[e]:
                fw_notes.append(f"{e} {B.median(mhz[e]):.1f} MHz" +
                                (" (ns use popek's 1000 by design)" if e in ("interp", "bt") else ""))
        fw_reasons = sorted({(c, w) for (c, op), w in fw_why.items() if w.startswith("n/a") or
                             w.startswith("FAIL")})

    # ---- Linux set
    if not args.no_linux:
        lin_engines = [e.strip() for e in args.linux_engines.split(",") if e.strip()]
        for e in lin_engines:
            if e not in ("bt", "interp", "qemu"):
                B.die(f"unknown Linux engine '{e}' (known: bt, interp, qemu)")
        kernel, base_initrd = B.check_guest()
        exes = CPU.build("", os.path.join(HERE, "linuxnano.c"))
        largs = argparse.Namespace(scale=args.linux_scale, parts="", timeout=args.timeout,
                                   memory=B.MEMORY, qemu_cpu=B.QEMU_CPU, keep_logs=args.keep_logs)
        initrd = B.extend_initrd(base_initrd, os.path.join(B.BENCH_CACHE, "initrd-linuxnano.img"), [
            ("bench", 0o755, None),
            ("bench/cpubench", 0o755, open(exes["i386"], "rb").read()),
            ("bench/run", 0o755, CPU.run_script(largs, 1)),
        ])
        lin_ns = {}
        lin_fail = {}
        iters = {}
        cols = ["native"] + [e for e in lin_engines if e != "qemu" or shutil.which("qemu-system-i386")]
        for rnd in range(args.runs):
            res, f = CPU.run_native(exes["x86_64"], largs, 1, rnd)
            runs = {"native": (res, f)}
            for e in cols[1:]:
                r = B.run_guest(e, popek, B.check_guest()[0], initrd, largs, "/bench/run",
                                keep=B.keep_path(args, f"linux-{e}-{rnd + 1}"))
                res, f = CPU.parse(r.lines, 1)
                if not res:
                    f.append("no result" + (f": {r.trouble()}" if r.trouble() else ""))
                runs[e] = (res, f)
                B.log(f"linux {e} round {rnd + 1}: " + (" ".join(
                    f"{k} {fmt_ns(v[1] / v[0] * 1e9)}" for k, v in res[0].items()) if res else f"FAIL {f}"))
            for c, (res, f) in runs.items():
                if f:
                    lin_fail.setdefault(c, f)
                for run in res:
                    for k, (n, secs, _) in run.items():
                        iters[k] = n
                        lin_ns.setdefault((c, k), []).append(secs / n * 1e9)
        header2 = ["operation", "iters"] + [("popek " + c if c in ("interp", "bt") else
                                             "QEMU TCG" if c == "qemu" else c) for c in cols]
        header2 += [f"{c}/native" for c in cols[1:]]
        header2 += ["bt/QEMU"] if "bt" in cols and "qemu" in cols else []
        header2 += ["paper: native / SW VMM / HW VMM"]
        lin_rows = []
        val = {}
        for op in LINUX_OPS:
            row = [op, str(iters.get(op, "-"))]
            for c in cols:
                if c in lin_fail:
                    row.append("FAIL")
                    failed = True
                    continue
                v = B.median(lin_ns.get((c, op), []))
                val[c, op] = v
                row.append(fmt_ns(v))
            for c in cols[1:]:
                row.append(B.fmt_ratio(B.ratio(val.get((c, op)), val.get(("native", op)))))
            if "bt" in cols and "qemu" in cols:
                row.append(B.fmt_ratio(B.ratio(val.get(("bt", op)), val.get(("qemu", op)))))
            p = PAPER.get(("linux", op))
            row.append(f"{' / '.join(p)} per 40,000 (= {' / '.join(fmt_ns(float(x.split()[0]) / 40000 * 1e9) for x in p)} each)"
                       if p else PAPER_MISSING)
            lin_rows.append(row)
        # the paper's figures where known, as ns per operation (hatched)
        pcols = ["paper native", "paper SW VMM", "paper HW VMM"]
        for op in LINUX_OPS:
            p = PAPER.get(("linux", op))
            if p and op == "forkwait":
                for c, x in zip(pcols, p):
                    val[c, op] = float(x.split()[0]) / 40000 * 1e9
        groups.append(("Linux user space in the guest (bench/nano/linuxnano.c), median ns per operation; "
                       "hatched: the paper's (2006, Pentium 4)", LINUX_OPS,
                       cols + [c for c in pcols if any(k[0] == c for k in val)], val))

    # ---- print
    print()
    print(f"Virtualization nanobenchmarks (issue 22; layout of Adams & Agesen, ASPLOS 2006): "
          f"median of {args.runs} run(s), ns per operation")
    print(note)
    if host_is_vm():
        print("native: this host is itself a virtual machine (CPUID's hypervisor bit is set in "
              "/proc/cpuinfo): its CPUID (and here RDTSC) exit to its own hypervisor, and its system "
              "calls, faults and forks pay for its virtualization too; native is not bare metal")
    if fw_rows is not None:
        print()
        print(f"Firmware set: bench/nano/nano.asm, scale {args.scale:g} (kvm {args.kvm_scale:g}); "
              "ring 0 unless the 'what' column says ring 3; native = host user mode (hostnano.c)")
        B.table(fw_rows, header)
        if fw_notes:
            print("guest TSC calibrated against PIT counter 2 (shortest of 5 x 50 ms): " + "; ".join(fw_notes))
        for c, w in fw_reasons:
            ops = [op for op in FW_OPS if fw_why.get((c, op)) == w]
            print(f"  {c}: {', '.join(ops)}: {w}")
        if "kvm" in fw_engines and kvm_flavour:
            print(f"  kvm: /dev/kvm is {kvm_flavour}" + (": nested, no VT-x/AMD-V; 32-bit kernel code runs in "
                                                        "KVM's instruction emulator (docs/kvm.md), so these "
                                                        "are not hardware-VMM figures" if kvm_flavour == "kvm_pvm"
                                                        else ""))
    if lin_rows is not None:
        print()
        print(f"Linux set: bench/nano/linuxnano.c in the default guest, scale {args.linux_scale:g}; "
              "guest -m32 -static, native -m64 on the host")
        B.table(lin_rows, header2)
        for c, f in lin_fail.items():
            print(f"  {c}: FAIL: {'; '.join(f)}")
    print()
    print("paper: Adams & Agesen, ASPLOS 2006, on a 3.8 GHz Pentium 4 672 (cycles; forkwait in seconds); "
          "only figures a source was found for are quoted")
    if chart(args.png, groups):
        print(f"chart: {args.png}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
