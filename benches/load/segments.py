#!/usr/bin/env python3
"""TCP segments and CPU per keep-alive request, for nginx, HAProxy and canaryd side by side.

    python3 benches/load/segments.py target/release/canaryd [OTHER_CANARYD...]

Each proxy in turn (the load harness's configurations and pinning: one worker on core 0, wrk
and the nginx origin on core 1) serves `wrk -c64 -d5s`; the system-wide `nstat` counters read
before and after are divided by the requests. On loopback every segment's processing is kernel
CPU for someone, so this shows whether a proxy sends more than a request and a response each
side (pure ACKs, split writes). Run it on a quiet machine: the counters are not per process.
"""
import shutil
import subprocess
import sys
import tempfile

import compare as C

KEYS = ["TcpOutSegs", "TcpExtTCPPureAcks", "TcpExtDelayedACKs", "IpExtInOctets"]


def nstat():
    out = subprocess.run(["nstat", "-az"], capture_output=True, text=True, check=True).stdout
    counters = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    tmp = tempfile.mkdtemp(prefix="canaryd-segments-")
    o1, o2 = C.free_port(), C.free_port()
    with open(f"{tmp}/origin.conf", "w") as f:
        f.write(C.nginx_origin_conf(tmp, o1, o2))
    C.make_cert(tmp)
    procs = []
    try:
        procs.append(C.Proc("origin", ["nginx", "-c", f"{tmp}/origin.conf", "-p", tmp, "-e", "stderr"],
                            o1, None, cpu="1"))
        C.wait_port(o2)
        targets = C.start_peers(tmp, o1, o2, workers=1, cpu="0")
        procs += targets.values()
        for i, binary in enumerate(sys.argv[1:]):
            port = C.free_port()
            with open(f"{tmp}/canaryd{i}.yaml", "w") as f:
                f.write(C.canaryd_conf(port, C.free_port(), o1, o2, True))
            targets[binary] = C.Proc(binary, [binary, "run", "--workers", "1", "-c", f"{tmp}/canaryd{i}.yaml"],
                                     port, port)
            procs.append(targets[binary])
        for t in targets.values():  # warm-up: upstream pools, page cache
            C.wrk(f"http://127.0.0.1:{t.port}/", 1)
        print("| proxy | CPU µs/req (user / kernel) | " + " | ".join(KEYS) + " |")
        print("|---" * (len(KEYS) + 2) + "|")
        for name, t in targets.items():
            before, (u0, s0) = nstat(), C.cpu_split(t.pids())
            reqs, _, _ = C.wrk(f"http://127.0.0.1:{t.port}/", 5)
            (u1, s1), after = C.cpu_split(t.pids()), nstat()
            us = lambda ticks: ticks / C.CLK_TCK * 1e6 / reqs
            per = [(after.get(k, 0) - before.get(k, 0)) / reqs for k in KEYS]
            print(f"| {name} | {us(u1 - u0 + s1 - s0):.1f} ({us(u1 - u0):.1f} / {us(s1 - s0):.1f}) | "
                  + " | ".join(f"{v:.3f}" for v in per) + " |")
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
