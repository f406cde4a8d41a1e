#!/usr/bin/env python3
"""Migration benchmark (issue 20): live migration and suspend/resume of the
default Debian guest (scripts/fetch-guest.sh) under popek bt against
qemu-system-i386 -accel tcg, in one run on this machine, one VM (pair) at a time.

Both get the same kernel, initrd, command line (tests/boot/guestlib.APPEND)
and RAM (256M), no disk and no network. QEMU runs the PC without APIC the
other benchmarks use (bench/lib/benchlib.py: -M isapc, -cpu qemu32 with the
features popek's Pentium II lacks switched off), with -vga none: with isapc's
VGA, QEMU 7.2's destination aborts loading the stream (an assertion in
memory_region_set_alias_offset).

Workload (typed into the guest's shell, run in the background so that the
shell stays free): the SHA-256 chain of tests/migration/live_migration_test.py
(h=$(echo "$h$i" | sha256sum ...), each link printed) and, every 20 steps,
the checksum of a 4 MiB tmpfs file followed by its rewrite (`sh -c "yes $i |
head -c 4M > /tmp/m"`: run inline in the background loop, busybox's yes|head
took about 12 s instead of 0.3 s). It runs through every migration, save and restore of a VM's
lineage; at the end it is stopped and everything it printed is checked on
the host: every link right and printed exactly once in order, every tmpfs
checksum right, the final hash right. A wrong or missing result is a FAIL.

Phases, QEMU first (its default migration parameters are read there and
popek's downtime-limit is set to QEMU's, 300 ms; both parameter sets are
printed), then popek:
  live     boot, start the workload, then --migrations times: start a
           destination (`--incoming tcp:127.0.0.1:PORT` / `-incoming tcp:...`),
           QMP `migrate` on the source, poll `query-migrate` until completed,
           wait until the destination runs, quit the source, let the guest run
           --interval seconds. Figures: downtime, total-time, ram.transferred,
           dirty-sync-count (passes), as query-migrate reports them.
  save     --save-runs times: save the running guest to a file and quit
           (popek: `migrate file:PATH`, which stops the VM; QEMU 7.2 has no
           file: URI, so `stop` then `migrate exec:cat > PATH`, as libvirt
           saves), then start a new VM from it (`--incoming file:PATH` /
           `-incoming "exec:cat PATH"`, QEMU then `cont`, its guest having been
           saved stopped) and time, from starting the process, until the guest's
           shell answers a command. Figures: save time (QMP total-time, and wall
           time of the whole save), file size, resume time.

Prints a table: downtime median and worst, total time, bytes and passes
medians for each and popek/QEMU ratios, the workload's steps per second over
the whole run (how fast each guest ran, and so dirtied memory), the goals of issue 20 (popek's median
downtime <= QEMU's median, and <= 50 ms) as met or NOT met, then the
suspend/resume figures. A failed migration, save or restore is a FAIL (with
what happened), never a figure.

Usage: bench/migration/run.py [--migrations N] [--save-runs N] [--interval S]
                              [--only popek|qemu] [--popek PATH] [--keep-logs DIR]
Exit status 0 when every migration, save and restore completed and every
checksum was right (goals met or not), 1 otherwise, 2 on bad usage.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "boot"))
import benchlib as B  # noqa: E402
import guestlib  # noqa: E402

GOAL_DOWNTIME_MS = 50       # issue 20: popek's median downtime
QEMU_DEFAULT_DOWNTIME = 300  # QEMU's default downtime-limit (ms), if QEMU is not run
MEM = 4 << 20                # the tmpfs file the workload rewrites
# No display adapter: with isapc's default VGA, QEMU 7.2's destination aborts
# while loading the stream (memory_region_set_alias_offset: Assertion
# `mr->alias' failed). The guest uses only the serial console (and popek has
# no VGA either).
QEMU_EXTRA = ["-vga", "none"]


# ---------------------------------------------------------------- QMP
class Qmp:
    """A QMP client on a unix socket for both popek and QEMU (lines ending in
    \\n or \\r\\n; events kept aside)."""

    def __init__(self, path, timeout=20):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.buf = b""
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError(f"no QMP greeting: {greeting}")
        self.ok("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line.decode())

    def cmd(self, name, arguments=None):
        req = {"execute": name}
        if arguments is not None:
            req["arguments"] = arguments
        self.s.sendall(json.dumps(req).encode() + b"\n")
        while True:
            m = self._read()
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def ok(self, name, arguments=None):
        r = self.cmd(name, arguments)
        if "return" not in r:
            raise RuntimeError(f"{name}: {r.get('error', r)}")
        return r["return"]

    def close(self):
        self.s.close()


# ---------------------------------------------------------------- one VM
class Vm:
    """One popek or QEMU process: its console (stdout, read by a thread so the
    guest never blocks on a full pipe), its stderr, its control socket."""
    seq = 0

    def __init__(self, kind, ctx, incoming=None):
        Vm.seq += 1
        self.kind = kind
        self.ctx = ctx
        self.name = f"{kind}{Vm.seq}"
        self.sock = os.path.join(ctx.work, f"{self.name}.qmp")
        self.addr = None
        argv = ctx.argv(kind, self.sock)
        if kind == "popek":
            if incoming == "tcp":
                argv += ["--incoming", "tcp:127.0.0.1:0"]
            elif incoming:
                argv += ["--incoming", incoming]
        else:
            if incoming == "tcp":
                self.addr = f"tcp:127.0.0.1:{guestlib.free_port()}"
                argv += ["-incoming", self.addr]
            elif incoming:
                argv += ["-incoming", incoming]
        self.argv = argv
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""
        self.err = b""
        self.cv = threading.Condition()
        self.eof = 0
        self.readers = [threading.Thread(target=self._read, args=(self.p.stdout, "out"), daemon=True),
                        threading.Thread(target=self._read, args=(self.p.stderr, "err"), daemon=True)]
        for t in self.readers:
            t.start()
        ctx.vms.append(self)
        if kind == "popek" and incoming == "tcp":
            m = self.wait(rb"waiting for a migration on (tcp:\S+)", 30, stream="err")
            self.addr = m.group(1).decode()
        self.q = None
        end = time.monotonic() + 30
        while self.q is None:
            try:
                self.q = Qmp(self.sock)
            except (OSError, ConnectionError, ValueError):
                if time.monotonic() > end or self.p.poll() is not None:
                    raise RuntimeError(f"{self.name}: no control socket (exit status {self.p.poll()}): "
                                       f"{self.tail()}")
                time.sleep(0.02)

    def _read(self, f, which):
        while True:
            chunk = os.read(f.fileno(), 65536)
            with self.cv:
                if not chunk:
                    self.eof += 1
                    self.cv.notify_all()
                    return
                if which == "out":
                    self.out += chunk
                else:
                    self.err += chunk
                self.cv.notify_all()
            if self.ctx.keep:
                with open(os.path.join(self.ctx.keep, f"{self.name}.{which}"), "ab") as log:
                    log.write(chunk)

    def wait(self, pattern, timeout, start=0, stream="out"):
        """The first match of pattern in stdout (or stderr) from `start`; raises on timeout or exit."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                m = rx.search(self.out if stream == "out" else self.err, start)
                if m:
                    return m
                if self.eof == 2:
                    raise RuntimeError(f"{self.name} ended (status {self.p.poll()}) before {pattern!r}: "
                                       f"{self.tail()}")
                if time.monotonic() > end:
                    raise RuntimeError(f"{self.name}: no {pattern!r} within {timeout} s: {self.tail()}")
                self.cv.wait(0.1)

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def text(self):
        with self.cv:
            return self.out.decode(errors="replace")

    def tail(self):
        with self.cv:
            return (f"console ...{self.out[-300:].decode(errors='replace')!r}; "
                    f"stderr ...{self.err[-300:].decode(errors='replace')!r}")

    def status(self):
        return self.q.ok("query-status")["status"]

    def wait_status(self, want, timeout):
        end = time.monotonic() + timeout
        while True:
            st = self.status()
            if st in want:
                return st
            if time.monotonic() > end:
                raise RuntimeError(f"{self.name}: status {st}, not {'/'.join(want)}, after {timeout} s")
            time.sleep(0.005)

    def quit(self):
        try:
            self.q.cmd("quit")
        except (OSError, ConnectionError, ValueError):
            pass
        self.end(30)

    def end(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        for t in self.readers:
            t.join(5)
        if self.q:
            self.q.close()
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.end(10)

    def ping(self, timeout):
        """Types a command; returns when the guest's shell has answered it."""
        Vm.seq += 1
        tag = Vm.seq
        self.send(f"echo PONG{tag}_$((6*7))\n")
        self.wait(rf"PONG{tag}_42".encode(), timeout)


class Ctx:
    def __init__(self, args, popek, kernel, initrd, work):
        self.args = args
        self.popek = popek
        self.kernel = kernel
        self.initrd = initrd
        self.work = work
        self.keep = args.keep_logs
        self.vms = []

    def argv(self, kind, sock):
        if kind == "popek":
            return guestlib.popek_argv(self.popek, "bt", self.kernel, self.initrd,
                                       ["--qmp", f"unix:{sock}"], memory=self.args.memory)
        return (["qemu-system-i386", "-accel", "tcg", *B.QEMU_MACHINE, "-cpu", self.args.qemu_cpu,
                 *QEMU_EXTRA, "-m", self.args.memory, "-nographic", "-no-reboot", "-kernel", self.kernel,
                 "-initrd", self.initrd, "-append", guestlib.APPEND, "-qmp", f"unix:{sock},server=on,wait=off"])


# ---------------------------------------------------------------- workload
def workload_line(seed):
    """The guest's background loop: a SHA-256 chain (each link printed) and a
    tmpfs file checked and rewritten every 20 steps, until /tmp/stop exists."""
    return (f'rm -f /tmp/m /tmp/stop; (h={seed}; i=0; while [ ! -e /tmp/stop ]; do '
            f'h=$(echo "$h$i" | sha256sum | cut -c1-64); '
            f'if [ $((i%20)) -eq 0 ]; then echo "M $i $(cat /tmp/m 2>/dev/null | sha256sum | cut -c1-64)"; '
            f'sh -c "yes $i | head -c {MEM} > /tmp/m"; fi; '
            f'echo "S $i $h"; i=$((i+1)); done; echo "R $i $h") &\n')


def mem_sum(i):
    data = (f"{i}\n".encode() * (MEM // 2 + 1))[:MEM]
    return hashlib.sha256(data).hexdigest()


def verify(text, seed):
    """Checks everything the workload printed (the lineage's consoles, in
    order); returns (steps, '' or what is wrong)."""
    r = re.search(r"\bR (\d+) ([0-9a-f]{64})", text)
    if not r:
        return 0, "no final line from the workload"
    n = int(r.group(1))
    links = guestlib.sha256_chain(seed, n)
    steps = [(int(i), h) for i, h in re.findall(r"\bS (\d+) ([0-9a-f]{64})\b", text)]
    if [i for i, _ in steps] != list(range(n)):
        missing = sorted(set(range(n)) - {i for i, _ in steps})
        return n, (f"steps printed {len(steps)} times for {n} steps (not each once in order; "
                   f"missing {missing[:5]})")
    bad = [i for i, h in steps if h != links[i]]
    if bad:
        return n, f"wrong links at steps {bad[:5]}"
    if n and r.group(2) != links[-1]:
        return n, f"final hash {r.group(2)}, expected {links[-1]}"
    for i, h in re.findall(r"\bM (\d+) ([0-9a-f]{64})\b", text):
        i = int(i)
        want = mem_sum(i - 20) if i else hashlib.sha256(b"").hexdigest()
        if h != want:
            return n, f"tmpfs checksum at step {i}: {h}, expected {want}"
    return n, ""


# ---------------------------------------------------------------- phases
def poll_migration(vm, timeout):
    end = time.monotonic() + timeout
    while True:
        info = vm.q.ok("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() > end:
            try:
                vm.q.cmd("migrate_cancel")
            except (OSError, ConnectionError, ValueError):
                pass
            info["status"] = f"not completed after {timeout} s ({info.get('status')}; cancelled)"
            return info
        time.sleep(0.01)


def boot(kind, ctx, res):
    t0 = time.monotonic()
    vm = Vm(kind, ctx)
    vm.wait(rb"POPEK-READY", ctx.args.timeout)
    vm.send("stty -echo; echo __SHELL''_READY__\n")
    vm.wait(rb"__SHELL_READY__", 120)
    res["boot"] = time.monotonic() - t0
    return vm


def live_phase(kind, ctx, res, downtime_limit=None):
    """Boots, starts the workload, migrates back and forth; fills res."""
    args = ctx.args
    res.update(migrations=[], lineage=[], saves=[])
    vm = boot(kind, ctx, res)
    if downtime_limit is not None:
        vm.q.ok("migrate-set-parameters", {"downtime-limit": downtime_limit})
    res["params"] = vm.q.ok("query-migrate-parameters")
    res["seed"] = f"{kind}-{os.getpid()}"
    start = len(vm.out)
    vm.send(workload_line(res["seed"]))
    vm.wait(rb"\bS 0 ", 60, start)
    res["work_t0"] = time.monotonic()
    res["lineage"].append((vm, start))
    B.log(f"{kind}: booted in {res['boot']:.1f} s, workload running; parameters "
          f"{json.dumps(res['params'], sort_keys=True)}")
    for k in range(args.migrations):
        time.sleep(args.interval)
        rec = {}
        dst = None
        try:
            dst = Vm(kind, ctx, incoming="tcp")
            t = time.monotonic()
            vm.q.ok("migrate", {"uri": dst.addr})
            info = poll_migration(vm, args.migration_timeout)
            rec["wall"] = time.monotonic() - t
            if info.get("status") != "completed":
                rec["fail"] = f"{info.get('status')}: {info.get('error-desc', '')}".strip(": ")
            else:
                dst.wait_status(("running",), 60)
                ram = info.get("ram", {})
                rec.update(downtime=info.get("downtime"), total=info.get("total-time"),
                           bytes=ram.get("transferred"), passes=ram.get("dirty-sync-count"),
                           setup=info.get("setup-time"))
        except Exception as e:  # noqa: BLE001 (any trouble is this migration's FAIL)
            rec["fail"] = f"{type(e).__name__}: {e}"
        if "fail" in rec:
            B.log(f"{kind} migration {k + 1}: FAIL: {rec['fail']}")
            if dst:
                dst.kill()
            res["migrations"].append(rec)
            try:
                st = vm.status()
            except Exception as e:  # noqa: BLE001
                st = f"no answer ({e})"
            if st != "running":
                res["fatal"] = f"after failed migration {k + 1} the source is {st}"
                break
            continue
        vm.quit()
        vm = dst
        res["lineage"].append((vm, 0))
        res["migrations"].append(rec)
        B.log(f"{kind} migration {k + 1}: downtime {rec['downtime']} ms, total {rec['total']} ms, "
              f"{rec['bytes'] / 1e6:.1f} MB, {rec['passes']} passes (setup {rec['setup']} ms, "
              f"wall {rec['wall']:.2f} s)")
    return vm


def save_phase(kind, vm, ctx, res):
    """Saves the running guest to a file and resumes it, --save-runs times."""
    args = ctx.args
    for k in range(args.save_runs):
        time.sleep(args.interval)
        path = os.path.join(ctx.work, f"{kind}-save{k}.img")
        rec = {}
        new = None
        try:
            t = time.monotonic()
            if kind == "popek":
                vm.q.ok("migrate", {"uri": f"file:{path}"})
            else:
                vm.q.ok("stop")
                vm.q.ok("migrate", {"uri": f"exec:cat > {path}"})
            info = poll_migration(vm, args.migration_timeout)
            rec["save_wall"] = time.monotonic() - t
            if info.get("status") != "completed":
                raise RuntimeError(f"save {info.get('status')}: {info.get('error-desc', '')}")
            rec["save"] = info.get("total-time")
            rec["size"] = os.path.getsize(path)
            vm.quit()
            if kind == "popek":
                new = Vm(kind, ctx, incoming=f"file:{path}")
            else:
                new = Vm(kind, ctx, incoming=f"exec:cat {path}")
                new.wait_status(("paused", "postmigrate"), 120)
                new.q.ok("cont")
            new.ping(60)
            rec["resume"] = time.monotonic() - new.t0
            vm = new
            res["lineage"].append((vm, 0))
            os.unlink(path)
        except Exception as e:  # noqa: BLE001
            rec["fail"] = f"{type(e).__name__}: {e}"
            B.log(f"{kind} save/restore {k + 1}: FAIL: {rec['fail']}")
            res["saves"].append(rec)
            if new:
                new.kill()
            res["fatal"] = f"save/restore {k + 1} failed"
            return None
        res["saves"].append(rec)
        B.log(f"{kind} save {k + 1}: {rec['save']} ms (wall {rec['save_wall'] * 1e3:.0f} ms), "
              f"{rec['size'] / 1e6:.1f} MB; resumed and answering after {rec['resume'] * 1e3:.0f} ms")
    return vm


def finish(kind, vm, res):
    """Stops the workload, checks everything it printed across the lineage."""
    try:
        vm.send("touch /tmp/stop\n")
        last, start = res["lineage"][-1]
        vm.wait(rb"\bR \d+ [0-9a-f]{64}", 120, start)
        res["work_s"] = time.monotonic() - res["work_t0"]
        text = "".join(v.text()[s:] for v, s in res["lineage"])
        res["steps"], res["check"] = verify(text, res["seed"])
    except Exception as e:  # noqa: BLE001
        res["steps"], res["check"] = 0, f"{type(e).__name__}: {e}"
    B.log(f"{kind}: workload {res['steps']} steps, " + (f"FAIL: {res['check']}" if res["check"] else "all right"))
    vm.quit()


def run_kind(kind, ctx, downtime_limit=None):
    res = {"kind": kind}
    vm = None
    try:
        vm = live_phase(kind, ctx, res, downtime_limit)
        if "fatal" not in res:
            vm = save_phase(kind, vm, ctx, res)
        if vm is not None:
            finish(kind, vm, res)
    except Exception as e:  # noqa: BLE001
        res["fatal"] = f"{type(e).__name__}: {e}"
        B.log(f"{kind}: FAIL: {res['fatal']}")
    for v in ctx.vms:
        v.kill()
    ctx.vms.clear()
    return res


# ---------------------------------------------------------------- report
def failed(res):
    """'' when every migration, save and restore completed and the workload's
    results are right; otherwise what went wrong."""
    why = []
    if res.get("fatal"):
        why.append(res["fatal"])
    nf = sum("fail" in m for m in res.get("migrations", []))
    if nf:
        why.append(f"{nf} of {len(res['migrations'])} migrations failed")
    if res.get("check") is None and not res.get("fatal"):
        why.append("workload not checked")
    elif res.get("check"):
        why.append(f"workload: {res['check']}")
    return "; ".join(why)


def summary(res):
    """Medians and worsts of a phase, or None values when it failed."""
    ms = res.get("migrations", [])
    ok = [m for m in ms if "fail" not in m]
    saves = [s for s in res.get("saves", []) if "fail" not in s]
    s = {"fail": failed(res), "n": len(ms)}
    if s["fail"] or not ok:
        return s
    s.update(dt_med=B.median(m["downtime"] for m in ok), dt_max=max(m["downtime"] for m in ok),
             tot_med=B.median(m["total"] for m in ok), tot_max=max(m["total"] for m in ok),
             by_med=B.median(m["bytes"] for m in ok), pass_med=B.median(m["passes"] for m in ok),
             pass_rng=(min(m["passes"] for m in ok), max(m["passes"] for m in ok)))
    if saves:
        s.update(save_med=B.median(x["save"] for x in saves), save_wall=B.median(x["save_wall"] for x in saves),
                 size_med=B.median(x["size"] for x in saves), resume_med=B.median(x["resume"] for x in saves))
    return s


def cell(s, key, spec, scale=1.0, unit=""):
    if s is None:
        return "not run"
    if s["fail"]:
        return "FAIL"
    v = s.get(key)
    return "-" if v is None else f"{format(v * scale, spec)}{unit}"


def report(args, note, results):
    P = summary(results["popek"]) if "popek" in results else None
    Q = summary(results["qemu"]) if "qemu" in results else None

    def rat(key):
        if not P or not Q or P["fail"] or Q["fail"]:
            return "-"
        return B.fmt_ratio(B.ratio(P.get(key), Q.get(key)))

    print()
    print(f"Live migration: {args.migrations} migrations back and forth between two VMs on this host, "
          f"guest running the SHA-256 + tmpfs workload; figures from query-migrate")
    print(note)
    for kind in ("qemu", "popek"):
        if kind in results and results[kind].get("params"):
            p = results[kind]["params"]
            keep = {k: p[k] for k in sorted(p) if k in ("downtime-limit", "max-bandwidth", "x-popek-max-passes",
                                                      "multifd-channels", "compress-level", "xbzrle-cache-size",
                                                      "throttle-trigger-threshold", "cpu-throttle-initial",
                                                      "announce-initial")}
            print(f"{'popek' if kind == 'popek' else 'QEMU'} migration parameters: {json.dumps(keep)}")
    print()
    rows = [
        ["downtime median", cell(P, "dt_med", ".0f", unit=" ms"), cell(Q, "dt_med", ".0f", unit=" ms"), rat("dt_med")],
        ["downtime worst", cell(P, "dt_max", ".0f", unit=" ms"), cell(Q, "dt_max", ".0f", unit=" ms"), rat("dt_max")],
        ["total time median", cell(P, "tot_med", ".0f", unit=" ms"), cell(Q, "tot_med", ".0f", unit=" ms"),
         rat("tot_med")],
        ["total time worst", cell(P, "tot_max", ".0f", unit=" ms"), cell(Q, "tot_max", ".0f", unit=" ms"),
         rat("tot_max")],
        ["bytes sent median", cell(P, "by_med", ".1f", 1e-6, " MB"), cell(Q, "by_med", ".1f", 1e-6, " MB"),
         rat("by_med")],
        ["passes median (range)",
         "-" if not P or P["fail"] else f"{P['pass_med']:g} ({P['pass_rng'][0]}-{P['pass_rng'][1]})",
         "-" if not Q or Q["fail"] else f"{Q['pass_med']:g} ({Q['pass_rng'][0]}-{Q['pass_rng'][1]})", ""],
        ["save time median (QMP)", cell(P, "save_med", ".0f", unit=" ms"), cell(Q, "save_med", ".0f", unit=" ms"),
         rat("save_med")],
        ["save, wall (command to completed)", cell(P, "save_wall", ".0f", 1e3, " ms"),
         cell(Q, "save_wall", ".0f", 1e3, " ms"), rat("save_wall")],
        ["saved file size median", cell(P, "size_med", ".1f", 1e-6, " MB"), cell(Q, "size_med", ".1f", 1e-6, " MB"),
         rat("size_med")],
        ["resume: start to shell answer", cell(P, "resume_med", ".0f", 1e3, " ms"),
         cell(Q, "resume_med", ".0f", 1e3, " ms"), rat("resume_med")],
    ]
    for kind, S in (("popek", P), ("qemu", Q)):
        if kind in results:
            r = results[kind]
            rows.append([f"workload checked ({kind})",
                         "FAIL" if r.get("check") or r.get("check") is None else f"right, {r['steps']} steps",
                         "", ""])
    rate = {k: (r["steps"] / r["work_s"] if not r.get("check") and r.get("work_s") else None)
            for k, r in results.items()}
    rows.append(["workload steps/s (guest speed)", B.fmt(rate.get("popek"), ".1f"), B.fmt(rate.get("qemu"), ".1f"),
                 B.fmt_ratio(B.ratio(rate.get("popek"), rate.get("qemu")))])
    B.table(rows, ["", "popek bt", "QEMU tcg", "popek/QEMU"], ["<", ">", ">", ">"])
    print()
    if P and not P["fail"] and Q and not Q["fail"]:
        g1 = B.goal(P["dt_med"], "<=", Q["dt_med"])
    else:
        g1 = "NOT met (a run failed)" if (P and P["fail"]) or (Q and Q["fail"]) else "not measured"
    g2 = B.goal(P["dt_med"], "<=", GOAL_DOWNTIME_MS) if P and not P["fail"] else (
        "NOT met (a run failed)" if P else "not measured")
    print(f"goal: popek's median downtime <= QEMU's median: {g1}")
    print(f"goal: popek's median downtime <= {GOAL_DOWNTIME_MS} ms: {g2}")
    print("(the workload's steps/s: how fast the guest ran, and so dirtied memory, on each over the whole run)")
    print("(downtime: popek from stopping the guest to the destination's acknowledgement; QEMU from stopping "
          "it to the source having sent the last data, before any answer)")
    for kind in ("popek", "qemu"):
        if kind not in results:
            continue
        r = results[kind]
        why = failed(r)
        if why:
            print(f"{kind} FAILED: {why}")
        for i, m in enumerate(r.get("migrations", [])):
            if "fail" in m:
                print(f"  {kind} migration {i + 1}: FAIL: {m['fail']}")
        for i, sv in enumerate(r.get("saves", [])):
            if "fail" in sv:
                print(f"  {kind} save/restore {i + 1}: FAIL: {sv['fail']}")
        ok = [m for m in r.get("migrations", []) if "fail" not in m]
        if ok:
            print(f"{kind} each migration, downtime ms: " + " ".join(str(m["downtime"]) for m in ok))
            print(f"{kind} each migration, total ms:    " + " ".join(str(m["total"]) for m in ok))
    return any(failed(r) for r in results.values())


def main():
    ap = argparse.ArgumentParser(prog="bench/migration/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--migrations", type=int, default=20, help="live migrations per VMM (default: %(default)s)")
    ap.add_argument("--save-runs", type=int, default=3, help="saves and restores per VMM (default: %(default)s)")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="seconds the guest runs on each VM before it moves on (default: %(default)s)")
    ap.add_argument("--only", choices=["popek", "qemu"], help="measure only one VMM")
    ap.add_argument("--popek", help="popek binary (default: $POPEK, else the newest build*/popek)")
    ap.add_argument("--memory", default=B.MEMORY, help="guest RAM (default: %(default)s)")
    ap.add_argument("--qemu-cpu", default=B.QEMU_CPU, help="QEMU -cpu model (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to boot to the shell (default: %(default)s)")
    ap.add_argument("--migration-timeout", type=float, default=120,
                    help="seconds one migration or save may take before it counts as failed (default: %(default)s)")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep every VM's console and stderr in DIR")
    args = ap.parse_args()
    if args.migrations < 1 or args.save_runs < 0:
        ap.error("--migrations must be >= 1, --save-runs >= 0")
    kernel, initrd = (os.path.join(B.GUEST_CACHE, f) for f in ("vmlinuz", "initrd.img"))
    if not (os.path.isfile(kernel) and os.path.isfile(initrd)):
        B.die(f"the default guest is not fetched ({kernel}); run scripts/fetch-guest.sh")
    kinds = [args.only] if args.only else ["qemu", "popek"]
    if "qemu" in kinds and not shutil.which("qemu-system-i386"):
        B.die("qemu-system-i386 is not installed (apt-get install qemu-system-x86); or --only popek")
    popek = B.find_popek(args.popek) if "popek" in kinds else None
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)
        args.keep_logs = os.path.abspath(args.keep_logs)

    load = " ".join(open("/proc/loadavg").read().split()[:3])
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    git = subprocess.run(["git", "-C", B.REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    qver = (subprocess.run(["qemu-system-i386", "--version"], capture_output=True, text=True).stdout.splitlines()
            or ["?"])[0] if "qemu" in kinds else ""
    note = (f"host: {model}, {os.cpu_count()} CPUs, load {load} at start; repo at {git}\n"
            f"guest: {args.memory} RAM, no disk, append '{guestlib.APPEND}'\n"
            + (f"popek: {popek} run --engine bt\n" if popek else "")
            + (f"QEMU: {qver}: qemu-system-i386 -accel tcg {' '.join(B.QEMU_MACHINE)} -cpu {args.qemu_cpu} "
               f"{' '.join(QEMU_EXTRA)}"
               if qver else ""))
    for line in note.strip().splitlines():
        B.log(line)

    work = tempfile.mkdtemp(prefix="popek-migbench-")
    ctx = Ctx(args, popek, kernel, initrd, work)
    results = {}
    t0 = time.monotonic()
    try:
        downtime = QEMU_DEFAULT_DOWNTIME
        if "qemu" in kinds:
            results["qemu"] = run_kind("qemu", ctx)
            downtime = results["qemu"].get("params", {}).get("downtime-limit", QEMU_DEFAULT_DOWNTIME)
        if "popek" in kinds:
            results["popek"] = run_kind("popek", ctx, downtime_limit=downtime)
    finally:
        for v in ctx.vms:
            v.kill()
        shutil.rmtree(work, ignore_errors=True)
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    note += f"\n{time.monotonic() - t0:.0f} s in all; load {load} at the end"
    bad = report(args, note.replace("\n\n", "\n").strip(), results)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
