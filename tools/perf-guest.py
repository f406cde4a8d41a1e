#!/usr/bin/env python3
"""Attributes perf samples in popek's code cache to guest blocks.

perf does not read JIT maps for memfd-backed code, so this joins
`perf script` output with the /tmp/perf-PID.map that `popek run --bt-perf-map`
writes. Usage: tools/perf-guest.py PERF.DATA MAPFILE [--top N] [--time START,END]
"""
import argparse, bisect, collections, subprocess, sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("data")
ap.add_argument("map")
ap.add_argument("--top", type=int, default=30)
ap.add_argument("--time", help="perf --time range, e.g. 10%%-40%% or START,END")
a = ap.parse_args()

starts, ents = [], []
for line in open(a.map):
    f = line.split()
    if len(f) < 3:
        continue
    lo, size = int(f[0], 16), int(f[1], 16)
    starts.append(lo)
    ents.append((lo, size, f[2]))
order = sorted(range(len(starts)), key=lambda k: starts[k])
starts = [starts[k] for k in order]
ents = [ents[k] for k in order]

cmd = ["perf", "script", "-i", a.data, "-F", "ip,dso"]
if a.time:
    cmd += ["--time", a.time]
out = subprocess.run(cmd, capture_output=True, text=True).stdout
count = collections.Counter()
total = 0
for line in out.splitlines():
    f = line.split()
    if len(f) < 2:
        continue
    total += 1
    if "popek-code-cache" not in line:
        dso = f[1].strip("()").rsplit("/", 1)[-1]
        count["[host] " + dso] += 1
        continue
    ip = int(f[0], 16)
    k = bisect.bisect_right(starts, ip) - 1
    # The newest translation at this address wins (the cache may be reused).
    name = "?"
    while k >= 0 and starts[k] + ents[k][1] > ip:
        name = ents[k][2]
        break
    count[name] += 1
print(f"{total} samples")
for name, n in count.most_common(a.top):
    print(f"{100.0 * n / total:6.2f}%  {name}")
