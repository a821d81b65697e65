#!/usr/bin/env python3
"""Side-by-side load comparison: canaryd vs nginx vs HAProxy on this machine, in one run.

Method (also written to the results):
- One origin pair: nginx `return 200` on two loopback ports (stable, canary), one worker.
- Proxies, each with one worker/thread pinned to core 0 (taskset -c 0), identical 90/10 split,
  access logs off, upstream keep-alive on:
    nginx   : split_clients on $request_id, upstream keepalive, proxy_http_version 1.1, Connection "".
    haproxy : weighted servers 90/10, http-reuse always, nbthread 1.
    canaryd : --workers 1; metrics always on. `canaryd` is the full feature path (4 header/cookie
              rules evaluated, sticky cookie key, 90/10 weights), `canaryd-simple` a single-version route.
- Load generator and origin share core 1 (taskset -c 1).
- Runs are interleaved, the order rotated every round (A B C D, B C D A, ...), and reported as
  median [min-max] over rounds, because the machine is shared and noisy.
- Figures:
    saturated req/s, HTTP/1.1 keep-alive, 64 connections (wrk -t1 -c64)
    proxy CPU microseconds per request: utime+stime of the proxy's processes from /proc/PID/stat
      over the run, divided by the requests completed; the user/kernel split is reported too,
      taken from the same round as the median total so the two parts add up to it (the kernel
      part, loopback TCP on both sides, is nearly the same for every proxy)
    the same two for a new connection per request (wrk with `Connection: close`)
    latency p50/p99/p99.9 at a fixed rate = 50% of nginx's median saturated req/s
      (oha -q RATE --latency-correction), minus the same percentiles measured direct to the origin
    HTTP/2 downstream req/s with h2load -c 10 -m 100 (h2c prior knowledge)
    memory per 10k idle keep-alive connections: in a freshly restarted proxy (a proxy that just
      served the load reuses freed heap, which hid nginx's and HAProxy's cost), open N/2
      connections (one request each, 100 at a time), wait 1 s, then N/2 more and 1 s: the growth of the summed Pss
      (proportional set size, /proc/PID/smaps_rollup) of every process of the proxy (nginx's
      master and workers, HAProxy's, canaryd's one process) over the second batch, scaled to
      10k. Pss, not RSS: pages a master shares with its workers count once, not once per
      process. Socket buffers are kernel memory and count for none.
    TLS (same ECDSA P-256 certificate for every proxy, TLS 1.3, made with openssl):
      full handshakes per second: wrk with `Connection: close` over https (wrk keeps no session,
      so every connection is a full handshake), and CPU per handshake+request
      keep-alive TLS requests per CPU-second: wrk -c64 over https, 1e6 / CPU µs per request

- Two cores (the deployment case; the issue's targets are the one-core figures above): each
  proxy with 2 workers on cores 0-1 (nginx worker_processes 2, HAProxy nbthread 2, canaryd
  --workers 2 with --runtime per-core and with --runtime shared), wrk -t2 -c64 on the same two
  cores (load generator and proxy compete, the same for every proxy): req/s and CPU per request.

Usage: compare.py --canaryd PATH [--quick] [--rounds N] [--duration S] [--out FILE] [--baseline PATH]
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def descendants(pid):
    """pid and all its children (nginx master + worker)."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        kids = []
    for k in kids:
        out += descendants(int(k))
    return out


def cpu_split(pids):
    """(utime, stime) ticks of all of pids."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except FileNotFoundError:
            pass
    return user, system



def pss_bytes(pids):
    """Summed Pss of pids: each page shared by k processes counts 1/k in each, so a master's
    pages shared with its workers count once in all."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Proc:
    def __init__(self, name, argv, port, h2_port, cpu="0", tls_port=None, min_procs=1):
        self.name, self.port, self.h2_port, self.tls_port = name, port, h2_port, tls_port
        self.argv, self.cpu = argv, cpu
        # nginx runs a master and its workers: finding fewer means a process was missed.
        self.min_procs = min_procs
        self.start()

    def start(self):
        self.p = subprocess.Popen(["taskset", "-c", self.cpu] + self.argv, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_port(self.port)
        time.sleep(0.3)

    def restart(self):
        """A fresh process on the same ports (its heap holds nothing freed by earlier loads)."""
        self.stop()
        self.start()

    def pids(self):
        return descendants(self.p.pid)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()


def temp_paths(tmp, prefix):
    """nginx's temp directories, inside our temp dir (the packaged ones need its own user)."""
    return (f"client_body_temp_path {tmp}/{prefix}body; proxy_temp_path {tmp}/{prefix}proxy;\n"
            f"  fastcgi_temp_path {tmp}/{prefix}fcgi; uwsgi_temp_path {tmp}/{prefix}uwsgi; "
            f"scgi_temp_path {tmp}/{prefix}scgi;")


def nginx_origin_conf(tmp, p1, p2):
    return f"""
worker_processes 1;
daemon off;
pid {tmp}/origin.pid;
error_log stderr error;
worker_rlimit_nofile 20000;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  {temp_paths(tmp, "o_")}
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{p1} backlog=4096; location / {{ return 200 "stable\\n"; }} }}
  server {{ listen 127.0.0.1:{p2} backlog=4096; location / {{ return 200 "canary\\n"; }} }}
}}
"""


def make_cert(tmp):
    """ECDSA P-256 certificate for localhost, shared by every proxy."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{tmp}/tls.key", "-out", f"{tmp}/tls.crt", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    with open(f"{tmp}/tls.pem", "w") as f:  # HAProxy wants chain and key in one file
        f.write(open(f"{tmp}/tls.crt").read() + open(f"{tmp}/tls.key").read())


def nginx_proxy_conf(tmp, port, h2, o1, o2, tls_port, workers=1):
    return f"""
worker_processes {workers};
daemon off;
pid {tmp}/proxy{workers}.pid;
error_log stderr error;
worker_rlimit_nofile 20000;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  {temp_paths(tmp, "p_")}
  keepalive_requests 10000000;
  upstream stable {{ server 127.0.0.1:{o1}; keepalive 128; }}
  upstream canary {{ server 127.0.0.1:{o2}; keepalive 128; }}
  split_clients "${{request_id}}" $pool {{ 10% canary; * stable; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    listen 127.0.0.1:{h2} http2;
    listen 127.0.0.1:{tls_port} ssl backlog=4096;
    ssl_certificate {tmp}/tls.crt;
    ssl_certificate_key {tmp}/tls.key;
    ssl_protocols TLSv1.3;
    location / {{
      proxy_pass http://$pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf(port, h2, o1, o2, tls_port, pem, threads=1):
    return f"""
global
  nbthread {threads}
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  bind 127.0.0.1:{h2} proto h2
  bind 127.0.0.1:{tls_port} ssl crt {pem} alpn http/1.1 ssl-min-ver TLSv1.3
  default_backend be
backend be
  balance roundrobin
  server stable 127.0.0.1:{o1} weight 90
  server canary 127.0.0.1:{o2} weight 10
"""


def canaryd_conf(port, admin, o1, o2, full, tls_port=None, tmp=None):
    if full:
        route = f"""
  - name: app
    versions:
      stable: {{ endpoints: ["127.0.0.1:{o1}"] }}
      canary: {{ endpoints: ["127.0.0.1:{o2}"], weight: 10 }}
    rules:
      - {{ to: canary, when: {{ header: {{ name: x-canary, equals: always }} }} }}
      - {{ to: stable, when: {{ header: {{ name: x-canary, equals: never }} }} }}
      - {{ to: canary, when: {{ cookie: {{ name: canary, equals: always }} }} }}
      - {{ to: canary, when: {{ header: {{ name: x-user-group, matches: "^(beta|staff)$" }} }} }}
    sticky:
      key: {{ cookie: session }}
      assign_cookie: canaryd_uid
"""
    else:
        route = f"""
  - name: app
    versions:
      stable: {{ endpoints: ["127.0.0.1:{o1}"] }}
"""
    tls = (f'\n  - {{ address: "127.0.0.1:{tls_port}", tls: {{ cert: "{tmp}/tls.crt", key: "{tmp}/tls.key" }} }}'
           if tls_port else "")
    return f"""listeners:
  - {{ address: "127.0.0.1:{port}" }}{tls}
admin: {{ address: "127.0.0.1:{admin}" }}
routes:{route}"""


def run(cmd, timeout, cores="1"):
    r = subprocess.run(["taskset", "-c", cores] + cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[:500]}")
    return r.stdout


# Every request's cookies: the sticky key `session` (its bucket lands on the canary of the
# 90/10 split) among others, as a browser sends them.
COOKIE = "Cookie: theme=dark; session=4f1c9a7e2b; lang=en"


def wrk(url, duration, close=False, cores="1", cookie=COOKIE):
    cmd = ["wrk", f"-t{len(cores.split(','))}", "-c64", f"-d{duration}s", "-H", cookie,
           "-H", "X-User-Group: customers"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = run(cmd + [url], duration + 30, cores)
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses")
    return reqs, rps, (sock.group(1) if sock else "")


def h2load(url, n):
    out = run(["h2load", "-n", str(n), "-c", "10", "-m", "100", url], 120)
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
    return done, float(m.group(3))


def oha(url, rate, duration, cookie=COOKIE):
    out = run(["oha", "-z", f"{duration}s", "-q", str(rate), "-c", "64", "--latency-correction",
               "--no-tui", "--output-format", "json",
               "-H", cookie, url], duration + 60)
    j = json.loads(out)
    p = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    if bad:
        raise RuntimeError(f"{url}: {bad} non-2xx at fixed rate")
    return p["p50"] * 1e6, p["p99"] * 1e6, p["p99.9"] * 1e6


def open_idle(port, n, group=100):
    """n keep-alive connections that each made one request and read its response, opened
    `group` at a time (the way clients arrive; a proxy's transient per-request memory then
    peaks at a group's worth instead of all n at once)."""
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for start in range(0, n, group):
        batch = []
        for _ in range(min(group, n - start)):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            batch.append(s)
        for s in batch:
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
        socks += batch
    return socks


def idle_memory(proc, n):
    """Memory of idle keep-alive connections, per 10k: the growth of the summed Pss of all the
    proxy's processes while a second batch of n/2 connections opens, in a freshly started proxy
    that already holds a first batch of n/2.

    Fresh, because a proxy that just served the load runs has freed memory in its heap that
    new connections reuse without growing (nginx and HAProxy then showed ~0). The first batch
    absorbs what a process allocates once (pools sized on first use); the second is the
    marginal cost, which is what 10k more connections cost."""
    proc.restart()
    pids = proc.pids()
    if len(pids) < proc.min_procs:
        raise SystemExit(f"{proc.name}: found {len(pids)} processes, expected {proc.min_procs}")
    half = max(n // 2, 1)
    first = open_idle(proc.port, half)
    # Idle for a second before each reading: what an idle connection costs, after whatever
    # a proxy does with one that stopped sending (canaryd gives its buffers back at 250 ms).
    time.sleep(1.0)
    before = pss_bytes(proc.pids())
    second = open_idle(proc.port, half)
    time.sleep(1.0)
    after = pss_bytes(proc.pids())
    for s in first + second:
        s.close()
    time.sleep(0.5)
    return (after - before) * (10_000 / half)


def start_peers(tmp, o1, o2, workers, cpu):
    """nginx and HAProxy in front of the origin pair, with `workers` workers/threads on `cpu`."""
    peers = {}
    p, h, t = free_port(), free_port(), free_port()
    with open(f"{tmp}/proxy{workers}.conf", "w") as f:
        f.write(nginx_proxy_conf(tmp, p, h, o1, o2, t, workers))
    peers["nginx"] = Proc("nginx", ["nginx", "-c", f"{tmp}/proxy{workers}.conf", "-p", tmp, "-e", "stderr"],
                          p, h, cpu=cpu, tls_port=t, min_procs=1 + workers)
    p, h, t = free_port(), free_port(), free_port()
    with open(f"{tmp}/haproxy{workers}.cfg", "w") as f:
        f.write(haproxy_conf(p, h, o1, o2, t, f"{tmp}/tls.pem", workers))
    peers["haproxy"] = Proc("haproxy", ["haproxy", "-f", f"{tmp}/haproxy{workers}.cfg"], p, h, cpu=cpu,
                            tls_port=t)
    return peers


def user_kernel(r, key="cpu"):
    """`user / kernel` µs per request of the round whose total (`r[key]`) is the median (with
    an even count, the lower middle one), so the parts add up to a total that was measured."""
    usr, sys_ = ("usr", "sys") if key == "cpu" else (f"usr_{key}", f"sys_{key}")
    if not r.get(usr):
        return "n/a"
    order = sorted(range(len(r[key])), key=lambda i: r[key][i])
    i = order[(len(order) - 1) // 2]
    return f"{r[usr][i]:.1f} / {r[sys_][i]:.1f}"


def rotated(names, r):
    """Round r's order: the list rotated by r, so no proxy holds the same place in every round
    (with a fixed order, a gap between two builds could be the place, not the build)."""
    names = list(names)
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(xs, unit="", digits=0):
    if not xs:
        return "n/a"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(med(xs))}{unit} [{f.format(min(xs))}–{f.format(max(xs))}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--canaryd", required=True)
    ap.add_argument("--quick", action="store_true", help="seconds, one round: keeps the script from rotting")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    # This sandbox's hard limit on open files is 20,000 per process, so idle memory is measured
    # with 8,000 connections (4,000 measured) and scaled to 10k.
    ap.add_argument("--idle-conns", type=int, default=8_000)
    ap.add_argument("--out", help="write a Markdown report here")
    ap.add_argument("--tls-only", action="store_true", help="only the TLS figures")
    ap.add_argument("--h1-only", action="store_true",
                    help="only HTTP/1.1 CPU per request (keep-alive, new connection each), with --baseline's binary too")
    ap.add_argument("--keepalive-only", action="store_true",
                    help="as --h1-only, keep-alive only (a quick A/B of the request path)")
    ap.add_argument("--h2-only", action="store_true",
                    help="only the HTTP/2 figures (h2load -m 100), with --baseline's binary too")
    ap.add_argument("--memory-only", action="store_true",
                    help="only idle memory, measured in each of the interleaved rounds")
    ap.add_argument("--baseline", help="another canaryd binary (e.g. the previous commit) measured "
                                       "alongside as `canaryd-base`, full feature path: before/after in one run")
    a = ap.parse_args()

    def emit(report):
        """A partial run's report: printed, and written to --out if given."""
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report)
    if a.quick:
        a.rounds, a.duration, a.idle_conns = 1, 2, 1000
    for tool in ["nginx", "haproxy", "wrk", "h2load", "oha", "taskset", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: run benches/load/run.sh, which installs it")

    tmp = tempfile.mkdtemp(prefix="canaryd-load-")
    o1, o2 = free_port(), free_port()
    with open(f"{tmp}/origin.conf", "w") as f:
        f.write(nginx_origin_conf(tmp, o1, o2))
    make_cert(tmp)
    procs = []
    try:
        origin = Proc("origin", ["nginx", "-c", f"{tmp}/origin.conf", "-p", tmp, "-e", "stderr"], o1, None, cpu="1")
        procs.append(origin)
        wait_port(o2)

        targets = {}
        targets.update(start_peers(tmp, o1, o2, workers=1, cpu="0"))
        for name, full in [("canaryd", True), ("canaryd-simple", False)]:
            p, t = free_port(), free_port()
            tls_port = t if name == "canaryd" else None
            with open(f"{tmp}/{name}.yaml", "w") as f:
                f.write(canaryd_conf(p, free_port(), o1, o2, full, tls_port, tmp))
            targets[name] = Proc(name, [a.canaryd, "run", "--workers", "1", "-c", f"{tmp}/{name}.yaml"], p, p,
                                 tls_port=tls_port)
        if a.baseline:
            # The same listeners as `canaryd` (a TLS one too, unused here): an A/B of builds, not
            # of configurations.
            p, t = free_port(), free_port()
            with open(f"{tmp}/canaryd-base.yaml", "w") as f:
                f.write(canaryd_conf(p, free_port(), o1, o2, True, t, tmp))
            targets["canaryd-base"] = Proc("canaryd-base", [a.baseline, "run", "--workers", "1", "-c",
                                                            f"{tmp}/canaryd-base.yaml"], p, p)
        procs += targets.values()

        R = {n: {k: [] for k in ["rps", "cpu", "rps_close", "cpu_close", "h2_rps", "h2_cpu",
                                   "p50", "p99", "p999", "mem", "tls_hs", "tls_hs_cpu", "tls_rps",
                                   "tls_cpu", "usr", "sys", "usr_cpu_close", "sys_cpu_close"]}
             for n in targets}
        tls_targets = ["nginx", "haproxy", "canaryd"]
        direct = {"p50": [], "p99": [], "p999": []}
        h2_targets = ["nginx", "haproxy", "canaryd"] + (["canaryd-base"] if a.baseline else [])

        def measure(name, key_rps, key_cpu, fn, targets=targets, R=R):
            t = targets[name]
            pids = t.pids()
            u0, s0 = cpu_split(pids)
            reqs, rps = fn(t)
            u1, s1 = cpu_split(pids)
            per_req = lambda ticks: ticks / CLK_TCK * 1e6 / max(reqs, 1)
            R[name][key_rps].append(rps)
            R[name][key_cpu].append(per_req(u1 - u0 + s1 - s0))
            if key_cpu == "cpu":
                R[name]["usr"].append(per_req(u1 - u0))
                R[name]["sys"].append(per_req(s1 - s0))
            elif key_cpu == "cpu_close":
                R[name]["usr_cpu_close"].append(per_req(u1 - u0))
                R[name]["sys_cpu_close"].append(per_req(s1 - s0))

        if a.memory_only:
            names = ["nginx", "haproxy", "canaryd"] + (["canaryd-base"] if a.baseline else [])
            for r in range(a.rounds):
                for name in rotated(names, r):
                    R[name]["mem"].append(idle_memory(targets[name], a.idle_conns))
                print(f"round {r + 1}/{a.rounds} idle memory done", file=sys.stderr)
            report = "\n".join(
                [f"## Idle keep-alive memory per 10k connections ({a.idle_conns // 2} + {a.idle_conns // 2}, "
                 f"summed Pss, {a.rounds} interleaved rounds; median [min–max])\n",
                 "| proxy | MiB per 10k | / nginx |", "|---|---|---|"]
                + [f"| {n} | {fmt([m / 1048576 for m in R[n]['mem']], '', 2)} | "
                   f"{med(R[n]['mem']) / med(R['nginx']['mem']):.2f} |" for n in names]) + "\n"
            emit(report)
            return

        # Warm-up: connection pools, page cache, CPU frequency.
        for t in targets.values():
            wrk(f"http://127.0.0.1:{t.port}/", 1)

        def h2_round(r, names):
            for name in rotated(names, r):
                url = f"http://127.0.0.1:{targets[name].h2_port}/"
                n = 20_000 if a.quick else 200_000
                measure(name, "h2_rps", "h2_cpu", lambda t: h2load(url, n))

        def vs(n, k, other):
            """Ratio of the medians of figure `k`, n / other, [min–max of the per-round ratios]."""
            per_round = [x / y for x, y in zip(R[n][k], R[other][k]) if y]
            if not per_round:
                return "n/a"
            return f"{med(R[n][k]) / med(R[other][k]):.2f} [{min(per_round):.2f}–{max(per_round):.2f}]"

        def h1_round(r):
            for name in rotated(targets, r):
                url = f"http://127.0.0.1:{targets[name].port}/"
                measure(name, "rps", "cpu", lambda t: wrk(url, a.duration)[:2])
            if a.keepalive_only:
                return
            for name in rotated(targets, r):
                url = f"http://127.0.0.1:{targets[name].port}/"
                measure(name, "rps_close", "cpu_close", lambda t: wrk(url, a.duration, close=True)[:2])

        if a.h1_only or a.keepalive_only:
            for r in range(a.rounds):
                h1_round(r)
                print(f"round {r + 1}/{a.rounds} HTTP/1.1 done", file=sys.stderr)

            report = "\n".join(
                [f"## HTTP/1.1 CPU per request ({a.rounds} interleaved rounds of {a.duration} s; median [min–max])\n",
                 "| proxy | keep-alive µs | user / kernel | / nginx | new connection µs | user / kernel | / nginx |",
                 "|---|---|---|---|---|---|---|"]
                + [f"| {n} | {fmt(R[n]['cpu'], '', 1)} | {user_kernel(R[n])} | "
                   f"{vs(n, 'cpu', 'nginx')} | {fmt(R[n]['cpu_close'], '', 1)} | "
                   f"{user_kernel(R[n], 'cpu_close')} | "
                   f"{vs(n, 'cpu_close', 'nginx')} |" for n in targets]) + "\n"
            emit(report)
            return

        if a.h2_only:
            names = h2_targets

            for r in range(a.rounds):
                h2_round(r, names)
                print(f"round {r + 1}/{a.rounds} HTTP/2 done", file=sys.stderr)
            report = "\n".join(
                [f"## HTTP/2 downstream (h2load -c 10 -m 100, {a.rounds} interleaved rounds; median [min–max])\n",
                 "| proxy | req/s | CPU µs per request | req/s / HAProxy |", "|---|---|---|---|"]
                + [f"| {n} | {fmt(R[n]['h2_rps'], '', 0)} | {fmt(R[n]['h2_cpu'], '', 1)} | "
                   f"{vs(n, 'h2_rps', 'haproxy')} |" for n in names]) + "\n"
            emit(report)
            return

        for r in range(a.rounds):
            for name in rotated(tls_targets, r):
                url = f"https://127.0.0.1:{targets[name].tls_port}/"
                measure(name, "tls_hs", "tls_hs_cpu", lambda t: wrk(url, a.duration, close=True)[:2])
            for name in rotated(tls_targets, r):
                url = f"https://127.0.0.1:{targets[name].tls_port}/"
                measure(name, "tls_rps", "tls_cpu", lambda t: wrk(url, a.duration)[:2])
            print(f"round {r + 1}/{a.rounds} TLS done", file=sys.stderr)
        if a.tls_only:
            report = render_tls(a, R)
            emit(report)
            return

        for r in range(a.rounds):
            h1_round(r)
            h2_round(r, h2_targets)
            print(f"round {r + 1}/{a.rounds} saturated done", file=sys.stderr)

        rate = int(med(R["nginx"]["rps"]) * 0.5)
        for r in range(a.rounds):
            p = oha(f"http://127.0.0.1:{o1}/", rate, a.duration)
            for k, v in zip(["p50", "p99", "p999"], p):
                direct[k].append(v)
            for name in rotated(targets, r):
                p = oha(f"http://127.0.0.1:{targets[name].port}/", rate, a.duration)
                for k, v in zip(["p50", "p99", "p999"], p):
                    R[name][k].append(v)
            print(f"round {r + 1}/{a.rounds} fixed-rate done", file=sys.stderr)

        # Idle memory in every round too (each reading restarts the proxy fresh), so its
        # ratio has a per-round range like the others.
        for r in range(a.rounds):
            for name in rotated(["nginx", "haproxy", "canaryd"], r):
                R[name]["mem"].append(idle_memory(targets[name], a.idle_conns))

        # Two cores: every proxy with two workers; the load generator shares the cores.
        for t in list(targets.values()):
            t.stop()
        two = start_peers(tmp, o1, o2, workers=2, cpu="0,1")
        for flavor in ["per-core", "shared"]:
            p = free_port()
            with open(f"{tmp}/canaryd-{flavor}.yaml", "w") as f:
                f.write(canaryd_conf(p, free_port(), o1, o2, True, None, tmp))
            two[f"canaryd --runtime {flavor}"] = Proc(
                flavor, [a.canaryd, "run", "--workers", "2", "--runtime", flavor, "-c",
                         f"{tmp}/canaryd-{flavor}.yaml"], p, p, cpu="0,1")
        procs += two.values()
        R2 = {n: {"rps": [], "cpu": [], "usr": [], "sys": []} for n in two}
        for t in two.values():
            wrk(f"http://127.0.0.1:{t.port}/", 1, cores="0,1")
        for r in range(a.rounds):
            for name in rotated(two, r):
                url = f"http://127.0.0.1:{two[name].port}/"
                measure(name, "rps", "cpu", lambda t: wrk(url, a.duration, cores="0,1")[:2], two, R2)
            print(f"round {r + 1}/{a.rounds} two cores done", file=sys.stderr)
        R["two_cores"] = R2

        report = render(a, R, direct, rate, targets)
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def render_tls(a, R):
    def ratio(k, inverse=False):
        c, n = med(R["canaryd"][k]), med(R["nginx"][k])
        return f"{(n / c if inverse else c / n):.2f}"
    lines = ["## TLS (ECDSA P-256, TLS 1.3, one core each)\n",
             f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine()}",
             f"- rounds {a.rounds}, {a.duration}s per run, interleaved; median [min–max]\n",
             "| figure | canaryd / nginx | target |", "|---|---|---|",
             f"| full handshakes per second (new connection per request) | {ratio('tls_hs')} | ≥ 1.0 |",
             f"| keep-alive TLS requests per CPU-second | {ratio('tls_cpu', inverse=True)} | ≥ 1.0 |\n",
             "| proxy | handshakes/s | CPU µs per handshake+request | keep-alive TLS req/s | TLS req per CPU-second |",
             "|---|---|---|---|---|"]
    for name in ["nginx", "haproxy", "canaryd"]:
        r = R[name]
        per_cpu_s = [1e6 / c for c in r["tls_cpu"] if c]
        lines.append(f"| {name} | {fmt(r['tls_hs'])} | {fmt(r['tls_hs_cpu'], '', 1)} | {fmt(r['tls_rps'])} | "
                     f"{fmt(per_cpu_s)} |")
    return "\n".join(lines) + "\n"


def machine():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {os.uname().sysname} {os.uname().release}"


def render(a, R, direct, rate, targets):
    def added(name, k):
        return [x - d for x, d in zip(R[name][k], direct[k])]

    def ratio(k, other, lower_is_better):
        """The ratio of the medians, and [min–max] of the per-round ratios (each round
        measures every proxy once, interleaved) when there is more than one round."""
        c, o = med(R["canaryd"][k]), med(R[other][k])
        if not c or not o or o != o:
            return "n/a"
        per_round = [x / y for x, y in zip(R["canaryd"][k], R[other][k]) if y]
        if len(per_round) > 1:
            return f"{c / o:.2f} [{min(per_round):.2f}–{max(per_round):.2f}]"
        return f"{c / o:.2f}"

    lines = []
    lines.append(f"# Load comparison: canaryd vs nginx vs HAProxy\n")
    lines.append(f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    lines.append(f"- machine: {machine()}")
    extra = " --quick" if a.quick else ""
    if a.baseline:
        extra += " --baseline PATH"
    lines.append(f"- command: `benches/load/run.sh{extra}` "
                 f"(rounds {a.rounds}, {a.duration}s per run, interleaved)")
    if a.baseline:
        lines.append(f"- `canaryd-base`: {a.baseline}, the full feature path, for before/after in the same run")
    lines.append(f"- versions: {tool_versions()}")
    lines.append(f"- fixed rate for latency: {rate} req/s (50% of nginx's median saturated keep-alive req/s)")
    lines.append("- each proxy: one worker pinned to core 0; wrk/oha/h2load and the nginx origin on core 1")
    lines.append(f"- idle memory: fresh proxy, {a.idle_conns // 2} + {a.idle_conns // 2} keep-alive connections (open-file limit), growth of the summed Pss of all the proxy's processes over the second batch, scaled to 10k")
    lines.append("- figures: median [min–max] over rounds; a ratio is the ratio of the medians [min–max of the per-round ratios]\n")
    lines.append("## Ratios (canaryd / peer; < 1 is better for CPU and latency, > 1 for req/s)\n")
    lines.append("| figure | canaryd / nginx | canaryd / HAProxy | target |")
    lines.append("|---|---|---|---|")
    lines.append(f"| CPU µs per request, keep-alive | {ratio('cpu', 'nginx', True)} | {ratio('cpu', 'haproxy', True)} | ≤ 0.85 × nginx, ≤ 1.0 × HAProxy (issue 20) |")
    lines.append(f"| saturated req/s, keep-alive | {ratio('rps', 'nginx', False)} | {ratio('rps', 'haproxy', False)} | ≥ 1.2 × nginx |")
    for k, label in [("p99", "added p99 at fixed rate")]:
        c, n, h = med(added("canaryd", k)), med(added("nginx", k)), med(added("haproxy", k))
        lines.append(f"| {label} | {c / n:.2f} | {c / h:.2f} | ≤ 1.0 × nginx |" if n > 0 and h > 0
                     else f"| {label} | n/a | n/a | ≤ 1.0 × nginx |")
    lines.append(f"| CPU µs per request, new connection each | {ratio('cpu_close', 'nginx', True)} | {ratio('cpu_close', 'haproxy', True)} | ≤ 1.0 × nginx (issue 20) |")
    lines.append(f"| HTTP/2 req/s (h2load -m 100) | {ratio('h2_rps', 'nginx', False)} | {ratio('h2_rps', 'haproxy', False)} | ≥ 1.0 × HAProxy (issue 20) |")
    lines.append(f"| memory per 10k idle connections | {ratio('mem', 'nginx', True)} | {ratio('mem', 'haproxy', True)} | ≤ 1.0 × nginx (issue 20) |")
    full, simple = med(R["canaryd"]["cpu"]), med(R["canaryd-simple"]["cpu"])
    lines.append(f"\nFull feature path (4 rules + sticky + 90/10) vs single-version route, CPU per request: "
                 f"{full:.1f} µs vs {simple:.1f} µs = {100 * (full / simple - 1):+.1f}% (target ≤ +5%)\n")
    lines.append("## Absolute figures\n")
    lines.append("| proxy | keep-alive req/s | CPU µs/req | of which user / kernel | new-conn req/s | CPU µs/req (new conn) | of which user / kernel | h2 req/s | CPU µs/req (h2) | added p50 µs | added p99 µs | added p99.9 µs | Pss per 10k idle conns |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in targets:
        r = R[name]
        mem = fmt([m / 1048576 for m in r["mem"]], " MiB", 1) if r["mem"] else "n/a"
        lat = [fmt(added(name, k)) for k in ["p50", "p99", "p999"]]
        lines.append(f"| {name} | {fmt(r['rps'])} | {fmt(r['cpu'], '', 1)} | {user_kernel(r)} | {fmt(r['rps_close'])} | "
                     f"{fmt(r['cpu_close'], '', 1)} | {user_kernel(r, 'cpu_close')} | {fmt(r['h2_rps'])} | {fmt(r['h2_cpu'], '', 1)} | "
                     f"{lat[0]} | {lat[1]} | {lat[2]} | {mem} |")
    lines.append(f"| direct to origin | | | | | | | | | p50 {fmt(direct['p50'])} | p99 {fmt(direct['p99'])} | p99.9 {fmt(direct['p999'])} | |")
    if "two_cores" in R:
        R2 = R["two_cores"]
        lines.append("\n## Two cores (2 workers each, wrk -t2 on the same two cores)\n")
        lines.append("| proxy | keep-alive req/s | CPU µs/req | of which user / kernel | req/s vs nginx |")
        lines.append("|---|---|---|---|---|")
        for name, r in R2.items():
            vs = med(r["rps"]) / med(R2["nginx"]["rps"]) if R2["nginx"]["rps"] else float("nan")
            lines.append(f"| {name} | {fmt(r['rps'])} | {fmt(r['cpu'], '', 1)} | {user_kernel(r)} | {vs:.2f} |")
    lines.append("\nMethod: see the docstring of benches/load/compare.py.\n")
    return "\n".join(lines) + "\n" + render_tls(a, R)


def tool_versions():
    def v(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    return "; ".join([v(["nginx", "-v"]), v(["haproxy", "-v"]), v(["wrk", "-v"]), v(["oha", "--version"]),
                      v(["h2load", "--version"])])


if __name__ == "__main__":
    main()
