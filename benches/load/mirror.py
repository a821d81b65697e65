#!/usr/bin/env python3
"""What a 100 % mirror costs the primary path: canaryd with and without `mirror`, one run.

Method (also printed with the results):
- The origin pair of compare.py (nginx `return 200`, one worker, core 1).
- Two canaryd processes, --workers 1, pinned to core 0, the full feature path of compare.py
  (4 rules, sticky cookie, 90/10 weights); `canaryd-mirror` adds
  `mirror: { to: canary, percent: 100 }` (every request copied, 10 % of copies compared with
  the primary's answer, the default).
- Interleaved rounds (A B, B A, ...), median [min-max] over rounds:
    CPU µs per request: utime+stime of the proxy over a saturated wrk run (-t1 -c64, core 1)
      divided by the primary requests completed (the copies' work is included: that is the
      point);
    latency p50/p99 at a fixed rate (oha -q RATE --latency-correction, core 1), minus the same
      percentiles direct to the origin: the proxy's added latency.
- The mirror's own counters are read after the run, to show the copies were sent.

Usage: mirror.py --canaryd PATH [--rounds N] [--duration S] [--rate R] [--out FILE]
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402


# A sticky key whose bucket lands on the stable version: a request already routed to the
# shadow is never copied, so compare.py's cookie (a canary user) would copy nothing.
COOKIE = "Cookie: theme=dark; session=a; lang=en"


def conf(port, admin, o1, o2, mirror):
    base = c.canaryd_conf(port, admin, o1, o2, True)
    if mirror:
        base = base.replace("    sticky:", "    mirror: { to: canary, percent: 100 }\n    sticky:")
    return base


def mirror_counts(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'canaryd_mirror_requests_total\{[^}]*result="(\w+)"\} (\d+)', text):
        out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    diffs = sum(int(x) for x in re.findall(r"canaryd_mirror_diffs_total\{[^}]*\} (\d+)", text))
    return out, diffs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--canaryd", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="canaryd-mirror-")
    o1, o2 = c.free_port(), c.free_port()
    with open(f"{tmp}/origin.conf", "w") as f:
        f.write(c.nginx_origin_conf(tmp, o1, o2))
    procs, admins = {}, {}
    try:
        origin = c.Proc("origin", ["nginx", "-c", f"{tmp}/origin.conf", "-p", tmp, "-e", "stderr"],
                        o1, None, cpu="1")
        c.wait_port(o2)
        for name, mirror in [("canaryd", False), ("canaryd-mirror", True)]:
            p, adm = c.free_port(), c.free_port()
            admins[name] = adm
            with open(f"{tmp}/{name}.yaml", "w") as f:
                f.write(conf(p, adm, o1, o2, mirror))
            procs[name] = c.Proc(name, [a.canaryd, "run", "--workers", "1", "-c", f"{tmp}/{name}.yaml"],
                                 p, p)
        R = {n: {"cpu": [], "p50": [], "p99": []} for n in procs}
        direct = {"p50": [], "p99": []}
        names = list(procs)
        for r in range(a.rounds):
            d50, d99, _ = c.oha(f"http://127.0.0.1:{o1}/", a.rate, a.duration, cookie=COOKIE)
            direct["p50"].append(d50)
            direct["p99"].append(d99)
            for name in c.rotated(names, r):
                t = procs[name]
                pids = t.pids()
                u0, s0 = c.cpu_split(pids)
                reqs, _, _ = c.wrk(f"http://127.0.0.1:{t.port}/", a.duration, cookie=COOKIE)
                u1, s1 = c.cpu_split(pids)
                R[name]["cpu"].append((u1 - u0 + s1 - s0) / c.CLK_TCK * 1e6 / max(reqs, 1))
                p50, p99, _ = c.oha(f"http://127.0.0.1:{t.port}/", a.rate, a.duration, cookie=COOKIE)
                R[name]["p50"].append(p50 - d50)
                R[name]["p99"].append(p99 - d99)
        counts, diffs = mirror_counts(admins["canaryd-mirror"])
        med = statistics.median
        lines = [
            "# What a 100 % mirror costs the primary path",
            "",
            __doc__.split("Usage:")[0].strip().split("\n", 1)[1].strip(),
            "",
            f"{a.rounds} rounds of {a.duration} s; fixed rate {a.rate} req/s for latency.",
            "",
            "| | CPU µs / request | added p50 µs | added p99 µs |",
            "|---|---|---|---|",
        ]
        for n in names:
            lines.append(f"| {n} | {c.fmt(R[n]['cpu'], digits=1)} | {c.fmt(R[n]['p50'])} | {c.fmt(R[n]['p99'])} |")
        cpu = med(R["canaryd-mirror"]["cpu"]) / med(R["canaryd"]["cpu"])
        p99 = med(R["canaryd-mirror"]["p99"]) / max(med(R["canaryd"]["p99"]), 1e-9)
        lines += [
            "",
            f"With the mirror: CPU per request x{cpu:.2f}, added p99 x{p99:.2f} "
            f"(target: added p99 at most x1.10).",
            f"Copies: {counts}; comparisons: {diffs}.",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
    finally:
        for p in list(procs.values()) + ([origin] if "origin" in dir() else []):
            p.stop()


if __name__ == "__main__":
    main()
