#!/usr/bin/env python3
"""Soak test of canaryd on loopback (issue #13, part 3). Method: see benches/soak/run.sh.

  soak.py [--duration S] [--quick] [--canaryd PATH] [--out FILE]   the soak
  soak.py origin --name N --ports-file F [--http-port P] [--grpc-port P] [--ws]
                                                                   an origin (internal)

Exit code: 0 when every enforced goal passes, 1 when one fails, 2 when the harness itself broke.
The temp dir (config, certificate, canaryd and origin logs) is removed after a pass and kept
otherwise, or always with SOAK_KEEP=1.
"""
import os

# grpcio's fork handlers only print a warning when the soak starts its children (fork with gRPC
# threads running); they are not needed: no child uses the parent's gRPC state.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import collections
import ctypes
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPC_SVC = "canaryd.soak.Echo"
PIN = ("x-soak-pin", "stable")
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Origins (run as subprocesses: `soak.py origin ...`)
# ---------------------------------------------------------------------------------------------

async def _read_chunked(reader):
    n = 0
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return n
        await reader.readexactly(size)
        await reader.readexactly(2)
        n += size


def _origin_http_handler(name):
    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                method, path, _ = line.decode("latin-1").split(" ", 2)
                n = 0
                if "content-length" in headers:
                    n = int(headers["content-length"])
                    await reader.readexactly(n)
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    n = await _read_chunked(reader)
                if path.startswith("/healthz"):
                    body = b"ok\n"
                elif method == "POST":
                    body = f"{name} {n}\n".encode()
                else:
                    body = f"{name}\n".encode()
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n%s"
                    % (len(body), b"connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    return handle


def _start_grpc_origin(name, port):
    import grpc
    from concurrent import futures

    tag = name.encode() + b":"

    def unary(req, ctx):
        return tag + req

    def chat(it, ctx):
        for msg in it:
            yield tag + msg

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SVC, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise OSError(f"gRPC origin could not bind 127.0.0.1:{port}")
    server.start()
    return server, bound


def origin_main(argv):
    p = argparse.ArgumentParser(prog="soak.py origin")
    p.add_argument("--name", required=True)
    p.add_argument("--ports-file", required=True)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--ws", action="store_true", help="also serve a WebSocket echo")
    a = p.parse_args(argv)
    _grpc_server, grpc_port = _start_grpc_origin(a.name, a.grpc_port)

    async def run():
        ports = {"grpc": grpc_port}
        srv = await asyncio.start_server(
            _origin_http_handler(a.name), "127.0.0.1", a.http_port, reuse_address=True, backlog=512
        )
        ports["http"] = srv.sockets[0].getsockname()[1]
        if a.ws:
            from websockets.asyncio.server import serve

            async def echo(ws):
                try:
                    async for msg in ws:
                        await ws.send(msg)
                except Exception:
                    pass

            wss = await serve(echo, "127.0.0.1", 0)
            ports["ws"] = wss.sockets[0].getsockname()[1] if hasattr(wss, "sockets") else \
                list(wss.server.sockets)[0].getsockname()[1]
        tmp = a.ports_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(ports, f)
        os.rename(tmp, a.ports_file)
        await asyncio.Event().wait()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------

CHILDREN = []


def _pdeathsig():
    # Children die with the soak even if it is SIGKILLed.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd, log_path, env=None):
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True, preexec_fn=_pdeathsig,
    )
    log.close()
    CHILDREN.append(proc)
    return proc


def reap_all():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.time() + 5
    for p in CHILDREN:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_outside_ephemeral():
    """A free port below the kernel's ephemeral range, for a server that is killed and restarted
    on the same port: while it is down, an ephemeral port could be taken by any outgoing
    connection (thousands a minute here), and its restart would then fail to bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    import random
    for _ in range(200):
        port = random.randrange(max(1024, lo - 12000), lo)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return free_port()


async def wait_file(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        if proc.poll() is not None:
            return None
        await asyncio.sleep(0.05)
    return None


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client (keep-alive or not, plain or TLS): exact control of connections
# ---------------------------------------------------------------------------------------------

class HttpError(Exception):
    pass


class H1:
    def __init__(self, port, ssl_ctx=None):
        self.port, self.ssl_ctx = port, ssl_ctx
        self.r = self.w = None

    async def open(self):
        self.r, self.w = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ssl_ctx,
            server_hostname="localhost" if self.ssl_ctx else None, limit=1 << 20,
        )

    async def close(self):
        if self.w is not None:
            w, self.r, self.w = self.w, None, None
            w.close()
            try:
                await asyncio.wait_for(w.wait_closed(), 2)
            except Exception:
                pass

    async def request(self, method, path, headers=(), body=b"", close=False):
        """(status, headers dict, body). Closes the connection on error or `Connection: close`."""
        if self.w is None:
            await self.open()
        try:
            head = [f"{method} {path} HTTP/1.1", "host: soak.local"]
            head += [f"{k}: {v}" for k, v in headers]
            if body or method in ("POST", "PUT"):
                head.append(f"content-length: {len(body)}")
            if close:
                head.append("connection: close")
            self.w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await self.w.drain()
            line = await self.r.readline()
            if not line:
                raise HttpError("connection closed before a response")
            parts = line.decode("latin-1").split(" ", 2)
            status = int(parts[1])
            hdrs = {}
            while True:
                h = await self.r.readline()
                if h in (b"\r\n", b"\n"):
                    break
                if not h:
                    raise HttpError("connection closed inside the response head")
                k, _, v = h.decode("latin-1").partition(":")
                hdrs[k.strip().lower()] = v.strip()
            if method == "HEAD" or status in (204, 304):
                data = b""
            elif "content-length" in hdrs:
                data = await self.r.readexactly(int(hdrs["content-length"]))
            elif "chunked" in hdrs.get("transfer-encoding", "").lower():
                chunks = []
                while True:
                    size = int((await self.r.readline()).split(b";")[0].strip(), 16)
                    if size == 0:
                        while (await self.r.readline()) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(await self.r.readexactly(size))
                    await self.r.readexactly(2)
                data = b"".join(chunks)
            else:
                data = await self.r.read()
                close = True
            if close or hdrs.get("connection", "").lower() == "close":
                await self.close()
            return status, hdrs, data
        except BaseException:
            await self.close()
            raise


async def admin_call(port, method, path, body=None, timeout=10):
    """(status, parsed JSON or text) from the admin listener, one connection per call."""
    c = H1(port)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        hdrs = [("content-type", "application/json")] if body is not None else []
        status, _, raw = await asyncio.wait_for(
            c.request(method, path, hdrs, data, close=True), timeout)
    finally:
        await c.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def parse_metrics(text):
    """name -> {labels string -> value}."""
    out = collections.defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)][m.group(2) or ""] = float(m.group(3))
            except ValueError:
                pass
    return out


def msum(metrics, name, label_re=None):
    return sum(v for k, v in metrics.get(name, {}).items() if label_re is None or re.search(label_re, k))


# ---------------------------------------------------------------------------------------------
# /proc: RSS, threads, CPU, and fds by kind
# ---------------------------------------------------------------------------------------------

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
            elif k == "Threads":
                out[k] = int(v)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def fd_breakdown(pid, proxy_ports, origin_ports):
    """Classify canaryd's fds: TCP sockets by local/remote port, everything else by kind."""
    tcp = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    tcp[p[9]] = (lport, rport, TCP_STATES.get(p[3], p[3]))
        except FileNotFoundError:
            pass
    kinds = collections.Counter()
    states = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m and m.group(1) in tcp:
            lport, rport, state = tcp[m.group(1)]
            if state == "LISTEN":
                kinds["listen"] += 1
                continue
            states[state] += 1
            if lport in proxy_ports:
                kinds["downstream"] += 1
            elif rport in origin_ports:
                kinds["upstream"] += 1
            else:
                kinds["other_tcp"] += 1
        elif m:
            kinds["other_socket"] += 1
        elif link.startswith("anon_inode:"):
            kinds[link[len("anon_inode:"):].strip("[]")] += 1
        elif link.startswith("pipe:"):
            kinds["pipe"] += 1
        else:
            kinds["file"] += 1
    total = sum(kinds.values())
    return {"total": total, "kinds": dict(kinds), "states": dict(states),
            "base": total - kinds["downstream"] - kinds["upstream"]}


# ---------------------------------------------------------------------------------------------
# The soak
# ---------------------------------------------------------------------------------------------

CONFIG = """\
# written by benches/soak/soak.py; {note}
listeners:
  - address: 127.0.0.1:{plain}
  - address: 127.0.0.1:{tls}
    tls: {{ cert: {cert}, key: {key} }}
admin:
  address: 127.0.0.1:{admin}
proxy:
  version_header: true
routes:
  - name: web
    match: {{ path_prefix: / }}
    versions:
      stable: {{ endpoints: ["127.0.0.1:{s_http}"] }}
      canary: {{ endpoints: ["127.0.0.1:{c_http}"], weight: {weight} }}
    rules:
      - {{ name: pin, to: stable, when: {{ header: {{ name: x-soak-pin, equals: stable }} }} }}
{extra_rule}    fallback: true
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 5s }}
    health_check: {{ path: /healthz, interval: 2s, timeout: 1s }}
  - name: ws
    match: {{ path_prefix: /ws/ }}
    versions:
      stable: {{ endpoints: ["127.0.0.1:{s_ws}"] }}
      canary: {{ endpoints: ["127.0.0.1:{c_http}"], weight: 20 }}
    rules:
      - {{ name: pin, to: stable, when: {{ header: {{ name: x-soak-pin, equals: stable }} }} }}
    fallback: true
  - name: grpc
    match: {{ path_prefix: /{grpc_svc}/ }}
    versions:
      stable: {{ endpoints: ["127.0.0.1:{s_grpc}"], protocol: h2c }}
      canary: {{ endpoints: ["127.0.0.1:{c_grpc}"], protocol: h2c, weight: 20 }}
    rules:
      - {{ name: pin, to: stable, when: {{ header: {{ name: x-soak-pin, equals: stable }} }} }}
    fallback: true
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 5s }}
"""
EXTRA_RULE = ("      - { name: extra, to: canary, when: { header: "
              "{ name: x-soak-extra, equals: \"1\" } } }\n")


class Stats:
    def __init__(self, canary_times):
        self.ok = 0
        self.fails = []  # (t_start, t_end, error)
        self.versions = collections.Counter()
        self.canary_times = canary_times

    def record(self, t0, t1, err, version=None):
        if err is None:
            self.ok += 1
            if version:
                self.versions[version] += 1
                if version == "canary":
                    self.canary_times.append((t0, t1))
        else:
            self.fails.append((t0, t1, err))


def check_response(status, version_hdr, body, expect=None, post_len=None):
    text = body.decode("utf-8", "replace").strip()
    if status != 200:
        return f"HTTP {status}: {text[:80]!r}", None
    name = text.split(" ")[0] if text else ""
    if name not in ("stable", "canary"):
        return f"unexpected body {text[:80]!r}", None
    if version_hdr != name:
        return f"x-canaryd-version {version_hdr!r} but body from {name}", None
    if expect and name != expect:
        return f"pinned request served by {name}", None
    if post_len is not None and text != f"{name} {post_len}":
        return f"POST body echo {text!r}, sent {post_len} bytes", None
    return None, name


class Soak:
    def __init__(self, args):
        self.a = args
        self.dir = tempfile.mkdtemp(prefix="canaryd-soak-")
        self.stop = asyncio.Event()
        self.stats = collections.OrderedDict()
        self.canary_times = []     # (sent, answered) of each answer from the canary
        self.windows = []          # [kill_t, restart_t or None]
        self.kills = []            # dicts
        self.reloads = {"applied": 0, "failed": 0, "errors": []}
        self.weights = {"ok": 0, "failed": 0, "errors": []}
        self.samples = []
        self.end_sample = None
        self.harness_errors = []
        self.t0 = None
        self.canaryd = None
        self.canary = None
        self.canary_restart_failures = []

    # -- time ---------------------------------------------------------------------------------
    def now(self):
        return time.monotonic() - self.t0

    async def sleep_until(self, t):
        d = t - self.now()
        if d > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), d)
            except asyncio.TimeoutError:
                pass
        return not self.stop.is_set()

    def stat(self, name):
        return self.stats.setdefault(name, Stats(self.canary_times))

    # -- setup --------------------------------------------------------------------------------
    def make_cert(self):
        self.cert, self.key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client_ssl = ssl.create_default_context(cafile=self.cert)
        self.client_ssl_h2 = ssl.create_default_context(cafile=self.cert)
        self.client_ssl_h2.set_alpn_protocols(["h2"])

    async def start_origin(self, name, ws, http_port=0, grpc_port=0):
        pf = os.path.join(self.dir, f"{name}.ports")
        if os.path.exists(pf):
            os.unlink(pf)
        cmd = [sys.executable, os.path.abspath(__file__), "origin", "--name", name, "--ports-file", pf,
               "--http-port", str(http_port), "--grpc-port", str(grpc_port)] + (["--ws"] if ws else [])
        proc = spawn(cmd, os.path.join(self.dir, f"{name}.log"))
        ports = await wait_file(pf, proc, 15)
        if ports is None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            return None, None
        return proc, ports

    def origin_log_tail(self, name):
        try:
            with open(os.path.join(self.dir, f"{name}.log"), errors="replace") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
            return lines[-1][:300] if lines else "(no output)"
        except OSError as e:
            return str(e)

    def write_config(self, weight, extra):
        text = CONFIG.format(
            note=f"canary weight {weight}, extra rule {'on' if extra else 'off'}",
            plain=self.p_plain, tls=self.p_tls, admin=self.p_admin, cert=self.cert, key=self.key,
            s_http=self.sp["http"], s_ws=self.sp["ws"], s_grpc=self.sp["grpc"],
            c_http=self.cp["http"], c_grpc=self.cp["grpc"], grpc_svc=GRPC_SVC,
            weight=weight, extra_rule=EXTRA_RULE if extra else "")
        tmp = os.path.join(self.dir, ".canaryd.yaml.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.config)

    async def start(self):
        self.make_cert()
        self.stable, self.sp = await self.start_origin("stable", ws=True)
        self.canary, self.cp = await self.start_origin(
            "canary", ws=False, http_port=free_port_outside_ephemeral(),
            grpc_port=free_port_outside_ephemeral())
        if not self.stable or not self.canary:
            raise RuntimeError("an origin did not start; see logs in " + self.dir)
        self.origin_ports = {self.sp["http"], self.sp["ws"], self.sp["grpc"],
                             self.cp["http"], self.cp["grpc"]}
        self.config = os.path.join(self.dir, "canaryd.yaml")
        self.canaryd_log = os.path.join(self.dir, "canaryd.log")
        for attempt in range(3):
            self.p_plain, self.p_tls, self.p_admin = free_port(), free_port(), free_port()
            self.weight_file, self.extra = 20, False
            self.write_config(self.weight_file, self.extra)
            chk = subprocess.run([self.bin, "check", self.config], capture_output=True, text=True)
            if chk.returncode != 0:
                raise RuntimeError(f"canaryd check failed:\n{chk.stdout}{chk.stderr}")
            self.check_output = chk.stdout.strip()
            env = dict(os.environ, CANARYD_LOG=os.environ.get("CANARYD_LOG", "info"))
            self.canaryd = spawn([self.bin, "run", "--config", self.config], self.canaryd_log, env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.canaryd.poll() is None:
                try:
                    st, _ = await admin_call(self.p_admin, "GET", "/readyz", timeout=2)
                    if st == 200:
                        return
                except (OSError, asyncio.TimeoutError, HttpError):
                    pass
                await asyncio.sleep(0.1)
            if self.canaryd.poll() is None:
                self.canaryd.kill()
            self.canaryd.wait()
        raise RuntimeError("canaryd did not become ready; log: " + self.canaryd_log)

    # -- drivers ------------------------------------------------------------------------------
    async def paced(self, rate, fn, phase=0.0):
        """Call fn() `rate` times a second (never more than one at a time) until stop."""
        interval = 1.0 / rate
        nxt = self.now() + phase * interval
        while await self.sleep_until(nxt):
            await fn()
            nxt += interval
            if nxt < self.now() - 1:
                nxt = self.now()

    async def drive_h1(self, name, port, ssl_ctx, keepalive, rate, idx):
        st = self.stat(name)
        conn = H1(port, ssl_ctx)
        n = 0

        async def one():
            nonlocal n
            n += 1
            post = keepalive and n % 4 == 0
            pinned = n % 10 == 5
            body = os.urandom(1024) if post else b""
            hdrs = [PIN] if pinned else []
            t0 = self.now()
            c = conn if keepalive else H1(port, ssl_ctx)
            try:
                status, h, data = await asyncio.wait_for(
                    c.request("POST" if post else "GET", f"/soak/{name}/{idx}/{n}", hdrs, body,
                              close=not keepalive), 10)
                err, ver = check_response(status, h.get("x-canaryd-version"), data,
                                          "stable" if pinned else None, len(body) if post else None)
            except Exception as e:
                err, ver = f"{type(e).__name__}: {e}", None
                await c.close()
            st.record(t0, self.now(), err, ver)

        try:
            await self.paced(rate, one, idx / 4)
        finally:
            await conn.close()

    async def drive_h2(self, name, url, verify, tasks, rate):
        import httpx
        st = self.stat(name)
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify, timeout=10,
                                     base_url=url) as client:
            async def worker(idx):
                n = 0

                async def one():
                    nonlocal n
                    n += 1
                    post = n % 5 == 0
                    pinned = n % 10 == 3
                    body = os.urandom(2048) if post else None
                    hdrs = dict([PIN]) if pinned else {}
                    t0 = self.now()
                    try:
                        r = await client.request("POST" if post else "GET", f"/soak/{name}/{idx}/{n}",
                                                 content=body, headers=hdrs)
                        err, ver = check_response(r.status_code, r.headers.get("x-canaryd-version"),
                                                  r.content, "stable" if pinned else None,
                                                  len(body) if post else None)
                        if err is None and r.http_version != "HTTP/2":
                            err = f"spoke {r.http_version}, not HTTP/2"
                    except Exception as e:
                        err, ver = f"{type(e).__name__}: {e}", None
                    st.record(t0, self.now(), err, ver)

                await self.paced(rate, one, idx / tasks)

            await asyncio.gather(*(worker(i) for i in range(tasks)))

    async def drive_ws(self, name, url, ssl_ctx):
        from websockets.asyncio.client import connect
        st = self.stat(name)
        st.connects = 0
        n = 0
        while not self.stop.is_set():
            try:
                kw = {"ssl": ssl_ctx} if ssl_ctx else {}
                async with connect(url, additional_headers=[PIN], open_timeout=10, **kw) as ws:
                    st.connects += 1
                    while await self.sleep_until(self.now() + 1.0):
                        n += 1
                        msg = f"{name} {n} " + "x" * (n % 200)
                        t0 = self.now()
                        try:
                            await ws.send(msg)
                            got = await asyncio.wait_for(ws.recv(), 5)
                            err = None if got == msg else f"echo mismatch: {got[:40]!r}"
                        except Exception as e:
                            err = f"{type(e).__name__}: {e}"
                        st.record(t0, self.now(), err, "stable" if err is None else None)
                        if err:
                            break
            except Exception as e:
                t = self.now()
                st.record(t, t, f"connect: {type(e).__name__}: {e}")
            if not self.stop.is_set():
                await self.sleep_until(self.now() + 1.0)

    async def drive_grpc_stream(self, name):
        import grpc
        st = self.stat(name)
        st.connects = 0
        n = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.p_plain}") as ch:
            chat = ch.stream_stream(f"/{GRPC_SVC}/Chat")
            while not self.stop.is_set():
                call = chat(metadata=(PIN,))
                st.connects += 1
                try:
                    while await self.sleep_until(self.now() + 1.0):
                        n += 1
                        msg = f"{name} {n}".encode()
                        t0 = self.now()
                        try:
                            await call.write(msg)
                            got = await asyncio.wait_for(call.read(), 5)
                            err = None if got == b"stable:" + msg else f"reply {got!r}"
                        except Exception as e:
                            err = f"{type(e).__name__}: {e}"
                        st.record(t0, self.now(), err, "stable" if err is None else None)
                        if err:
                            break
                    if self.stop.is_set():
                        t0 = self.now()
                        await call.done_writing()
                        rest = await asyncio.wait_for(call.read(), 5)
                        code = await call.code()
                        if rest is not grpc.aio.EOF or code != grpc.StatusCode.OK:
                            st.record(t0, self.now(), f"stream end: {code} extra={rest!r}")
                except Exception as e:
                    t = self.now()
                    st.record(t, t, f"stream: {type(e).__name__}: {e}")
                finally:
                    call.cancel()
                if not self.stop.is_set():
                    await self.sleep_until(self.now() + 1.0)

    async def drive_grpc_unary(self, name, rate):
        import grpc
        st = self.stat(name)
        n = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.p_plain}") as ch:
            unary = ch.unary_unary(f"/{GRPC_SVC}/Unary")

            async def one():
                nonlocal n
                n += 1
                msg = f"{name} {n}".encode()
                t0 = self.now()
                ver = None
                try:
                    got = await unary(msg, timeout=10)
                    ver = got.split(b":", 1)[0].decode()
                    err = None if ver in ("stable", "canary") and got == ver.encode() + b":" + msg \
                        else f"reply {got!r}"
                except grpc.aio.AioRpcError as e:
                    err = f"{e.code().name}: {e.details()}"
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"
                st.record(t0, self.now(), err, ver)

            await self.paced(rate, one)

    # -- faults and config changes ------------------------------------------------------------
    async def chaos(self):
        k = 1
        while True:
            t_kill = k * self.a.kill_every
            if t_kill + self.a.down_time + 10 > self.a.duration:
                return
            if not await self.sleep_until(t_kill):
                return
            rec = {"kill": self.now()}
            self.windows.append([rec["kill"], None])
            self.canary.kill()
            self.canary.wait()
            await self.sleep_until(self.now() + self.a.down_time)
            proc = None
            for _ in range(20):
                proc, _ports = await self.start_origin("canary", False, self.cp["http"], self.cp["grpc"])
                if proc:
                    break
                self.canary_restart_failures.append(f"t={self.now():.1f}s: " + self.origin_log_tail("canary"))
                await asyncio.sleep(0.5)
            if proc is None:
                self.harness_errors.append(f"canary origin could not be restarted at t={self.now():.1f}")
                self.windows[-1][1] = self.a.duration
                return
            self.canary = proc
            rec["restart"] = self.now()
            self.windows[-1][1] = rec["restart"]
            self.kills.append(rec)
            k += 1

    async def reloader(self):
        k = 1
        while await self.sleep_until(k * self.a.reload_every):
            k += 1
            weight = 25 if self.weight_file == 20 else 20
            extra = not self.extra
            t = self.now()
            try:
                _, before = await admin_call(self.p_admin, "GET", "/api/v1/reload")
                succ0 = before["reloads_success"]
                self.write_config(weight, extra)
                self.weight_file, self.extra = weight, extra
                ok = False
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    _, route = await admin_call(self.p_admin, "GET", "/api/v1/routes/web")
                    fw = {v["name"]: v.get("file_weight") for v in route["versions"]}
                    names = [r.get("name") for r in route.get("rules", []) if r.get("source") == "file"]
                    if fw.get("canary") == weight and (("extra" in names) == extra):
                        ok = True
                        break
                _, after = await admin_call(self.p_admin, "GET", "/api/v1/reload")
                if ok and after["reloads_success"] > succ0:
                    self.reloads["applied"] += 1
                else:
                    self.reloads["failed"] += 1
                    self.reloads["errors"].append(
                        f"t={t:.1f}s weight {weight}: not applied within 5 s; last_error="
                        f"{json.dumps(after.get('last_error'))[:300]}")
            except Exception as e:
                self.reloads["failed"] += 1
                self.reloads["errors"].append(f"t={t:.1f}s: {type(e).__name__}: {e}")

    async def weight_changer(self):
        # Runtime overrides through the admin API, offset from the file reloads.
        steps = [("PUT", "/api/v1/routes/web/weights", {"canary": 30}),
                 ("PUT", "/api/v1/routes/grpc/weights", {"canary": 35.5}),
                 ("PUT", "/api/v1/routes/web/weights", {"canary": 10.25}),
                 ("DELETE", "/api/v1/routes/web/overrides", None),
                 ("DELETE", "/api/v1/routes/grpc/overrides", None)]
        k = 0
        while await self.sleep_until((k + 0.5) * self.a.reload_every):
            method, path, body = steps[k % len(steps)]
            k += 1
            t = self.now()
            try:
                _, before = await admin_call(self.p_admin, "GET", "/api/v1/reload")
                st, resp = await admin_call(self.p_admin, method, path, body)
                if st == 200 and isinstance(resp, dict) and resp.get("generation", 0) > before["generation"]:
                    self.weights["ok"] += 1
                else:
                    self.weights["failed"] += 1
                    self.weights["errors"].append(f"t={t:.1f}s {method} {path}: {st} {str(resp)[:200]}")
            except Exception as e:
                self.weights["failed"] += 1
                self.weights["errors"].append(f"t={t:.1f}s {method} {path}: {type(e).__name__}: {e}")

    # -- sampling -----------------------------------------------------------------------------
    async def sample(self, label=None):
        pid = self.canaryd.pid
        s = {"t": self.now(), "label": label}
        s.update(proc_status(pid))
        s["fds"] = fd_breakdown(pid, {self.p_plain, self.p_tls, self.p_admin}, self.origin_ports)
        _, text = await admin_call(self.p_admin, "GET", "/metrics")
        m = parse_metrics(text)
        s["open_conns"] = msum(m, "canaryd_open_connections")
        s["in_flight"] = msum(m, "canaryd_in_flight_requests")
        s["generation"] = msum(m, "canaryd_config_generation")
        s["unavailable"] = msum(m, "canaryd_endpoints_unavailable")
        s["fallbacks"] = msum(m, "canaryd_fallback_requests_total")
        s["metrics"] = m
        return s

    async def sampler(self):
        k = 0
        while True:
            if self.canaryd.poll() is not None:
                self.harness_errors.append(f"canaryd exited with {self.canaryd.returncode} at "
                                           f"t={self.now():.1f}s")
                self.stop.set()
                return
            try:
                s = await self.sample()
                self.samples.append(s)
                print(f"[soak] t={s['t']:6.1f}s rss={s['VmRSS'] / MIB:7.2f} MiB fds={s['fds']['total']:4d} "
                      f"(base {s['fds']['base']}, down {s['fds']['kinds'].get('downstream', 0)}, "
                      f"up {s['fds']['kinds'].get('upstream', 0)}) conns={s['open_conns']:.0f} "
                      f"inflight={s['in_flight']:.0f} gen={s['generation']:.0f} "
                      f"ok={sum(x.ok for x in self.stats.values())} "
                      f"fail={sum(len(x.fails) for x in self.stats.values())}",
                      file=sys.stderr, flush=True)
            except Exception as e:
                self.harness_errors.append(f"sample at t={self.now():.1f}s: {type(e).__name__}: {e}")
            k += 1
            # Samples every sample_every s, and a last one just before the drivers stop.
            nxt = k * self.a.sample_every
            if nxt >= self.a.duration - 0.5:
                if self.samples and self.samples[-1]["t"] >= self.a.duration - 1:
                    return
                nxt = self.a.duration - 0.5
            if not await self.sleep_until(nxt):
                return

    # -- run ----------------------------------------------------------------------------------
    async def run(self):
        await self.start()
        tls = self.client_ssl
        self.t0 = time.monotonic()
        plain = f"http://127.0.0.1:{self.p_plain}"
        secure = f"https://127.0.0.1:{self.p_tls}"
        drivers = []
        for i in range(4):
            drivers.append(self.drive_h1("h1-keepalive", self.p_plain, None, True, 20, i))
        for i in range(2):
            drivers.append(self.drive_h1("h1-new-conn", self.p_plain, None, False, 10, i))
        drivers.append(self.drive_h2("h2c", plain, False, 4, 15))
        for i in range(2):
            drivers.append(self.drive_h1("tls-h1-keepalive", self.p_tls, tls, True, 10, i))
        drivers.append(self.drive_h1("tls-h1-new-conn", self.p_tls, tls, False, 4, 0))
        drivers.append(self.drive_h2("tls-h2", secure, self.client_ssl_h2, 2, 10))
        drivers.append(self.drive_ws("ws-echo", f"ws://127.0.0.1:{self.p_plain}/ws/echo", None))
        drivers.append(self.drive_ws("wss-echo", f"wss://127.0.0.1:{self.p_tls}/ws/echo", tls))
        drivers.append(self.drive_grpc_stream("grpc-stream"))
        drivers.append(self.drive_grpc_unary("grpc-unary", 10))
        background = [self.chaos(), self.reloader(), self.weight_changer(), self.sampler()]
        tasks = [asyncio.create_task(c) for c in drivers + background]

        async def guard(coro_task):
            try:
                await coro_task
            except Exception:
                self.harness_errors.append(traceback.format_exc(limit=3))
        guards = [asyncio.create_task(guard(t)) for t in tasks]
        await self.sleep_until(self.a.duration)
        self.stop.set()
        self.t_end = self.now()
        done, pending = await asyncio.wait(guards, timeout=20)
        for t in pending:
            t.cancel()
        if pending:
            self.harness_errors.append(f"{len(pending)} driver(s) did not stop within 20 s")
        # All client connections are closed now. Let canaryd notice, then take the end sample.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = await self.sample("end")
            if s["open_conns"] == 0 and s["fds"]["kinds"].get("downstream", 0) <= 1:  # <=1: our own admin call
                break
            await asyncio.sleep(0.5)
        # Measure /proc with no admin connection open.
        await asyncio.sleep(0.5)
        s2 = await self.sample("end")
        s2["fds"] = fd_breakdown(self.canaryd.pid, {self.p_plain, self.p_tls, self.p_admin}, self.origin_ports)
        self.end_sample = s2
        # Graceful stop: SIGTERM drains and exits 0.
        self.canaryd.send_signal(signal.SIGTERM)
        try:
            self.canaryd_exit = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.canaryd.wait(timeout=40))
        except subprocess.TimeoutExpired:
            self.canaryd_exit = "did not exit within 40 s of SIGTERM"

    # -- report -------------------------------------------------------------------------------
    def in_window(self, t0, t1):
        for k, r in self.windows:
            end = (r if r is not None else self.a.duration) + 10
            if t0 <= end and t1 >= k:
                return True
        return False

    def report(self):
        a = self.a
        L = []
        w = L.append
        warm = [s for s in self.samples if s["t"] >= a.warmup - 0.5]
        first = warm[0] if warm else None
        last = warm[-1] if warm else None
        rss_growth = (last["VmRSS"] - first["VmRSS"]) if first else None
        rss_max = (max(s["VmRSS"] for s in warm) - first["VmRSS"]) if first else None
        end = self.end_sample
        fd_growth = (end["fds"]["base"] - first["fds"]["base"]) if (first and end) else None
        leftover_down = end["fds"]["kinds"].get("downstream", 0) if end else None
        close_wait = end["fds"]["states"].get("CLOSE_WAIT", 0) if end else None

        stream_names = ("ws-echo", "wss-echo", "grpc-stream")
        rows, outside, inside, stream_fails = [], [], 0, 0
        for name, st in self.stats.items():
            fin = [f for f in st.fails if self.in_window(f[0], f[1])]
            fout = [f for f in st.fails if not self.in_window(f[0], f[1])]
            inside += len(fin)
            outside += [(name,) + f for f in fout]
            if name in stream_names:
                stream_fails += len(st.fails)
            total = st.ok + len(st.fails)
            vs = st.versions
            share = f"{vs['stable']} / {vs['canary']}"
            extra = f" ({st.connects} connection(s))" if hasattr(st, "connects") else ""
            rows.append(f"| {name}{extra} | {total} | {st.ok} | {len(fin)} | {len(fout)} | {share} |")
        total_req = sum(st.ok + len(st.fails) for st in self.stats.values())

        verdicts = []

        def goal(name, value, passed, enforced=True):
            res = "PASS" if passed else ("FAIL" if enforced else "not met (reported only)")
            verdicts.append((passed or not enforced))
            w(f"| {name} | {value} | {res} |")

        mode = "quick" if a.quick else "full"
        w(f"# canaryd soak ({mode}, {a.duration:.0f} s)")
        w("")
        w(f"- binary: `{a.canaryd}` ({os.path.getsize(self.bin) / MIB:.0f} MiB), "
          f"workers: canaryd default (one per core, {os.cpu_count()} here)")
        w(f"- ran {self.t_end:.0f} s of traffic, warm-up {a.warmup:.0f} s; canary origin killed every "
          f"{a.kill_every:.0f} s and restarted {a.down_time:.0f} s later; config file rewritten every "
          f"{a.reload_every:.0f} s; a runtime weight change every {a.reload_every:.0f} s (offset by half)")
        w(f"- {total_req} requests/messages ({total_req / max(self.t_end, 1):.0f}/s), "
          f"{len(self.kills)} kills and restarts, {len(self.samples)} samples every {a.sample_every:.0f} s")
        w("")
        w("## Goals")
        w("")
        w("| goal | measured | verdict |")
        w("|---|---|---|")
        goal("failed requests outside fault windows = 0", str(len(outside)), len(outside) == 0)
        goal("WebSocket / gRPC stream failures (pinned to stable) = 0", str(stream_fails), stream_fails == 0)
        goal("config reloads applied, none failed",
             f"{self.reloads['applied']} applied, {self.reloads['failed']} failed",
             self.reloads["failed"] == 0 and self.reloads["applied"] > 0)
        goal("runtime weight changes accepted",
             f"{self.weights['ok']} ok, {self.weights['failed']} failed",
             self.weights["failed"] == 0 and self.weights["ok"] > 0)
        if rss_growth is not None:
            goal("RSS growth after warm-up ≤ 5 MiB",
                 f"{rss_growth / MIB:+.2f} MiB (max {rss_max / MIB:+.2f} MiB; "
                 f"{first['VmRSS'] / MIB:.1f} → {last['VmRSS'] / MIB:.1f} MiB)",
                 rss_growth <= 5 * MIB, enforced=not a.quick)
        else:
            goal("RSS growth after warm-up ≤ 5 MiB", "no sample after warm-up", False)
        if fd_growth is not None:
            goal("fd growth = 0 (fds not held by live connections; no connection left open)",
                 f"{fd_growth:+d} (base {first['fds']['base']} → {end['fds']['base']}); "
                 f"downstream sockets left at end: {leftover_down}",
                 fd_growth == 0 and leftover_down == 0)
        else:
            goal("fd growth = 0", "no sample", False)
        goal("canaryd exits 0 on SIGTERM after the run", str(getattr(self, "canaryd_exit", "?")),
             getattr(self, "canaryd_exit", None) == 0)
        if self.harness_errors:
            goal("harness ran cleanly", f"{len(self.harness_errors)} error(s), see below", False)
        self.passed = all(verdicts)
        w("")
        w(f"**{'PASS' if self.passed else 'FAIL'}**" + (" (RSS goal reported, not enforced, in --quick)"
                                                       if a.quick else ""))
        w("")
        w("## Traffic")
        w("")
        w("A failure is a non-2xx, an exception or timeout (10 s), a body or echo mismatch, a pinned "
          "request served by the canary, or `x-canaryd-version` disagreeing with the origin that "
          "answered. A fault window runs from a kill to 10 s after the restart; a request counts "
          "inside when its [start, end] overlaps a window.")
        w("")
        w("| driver | requests | ok | failed in fault windows | failed outside | ok served stable / canary |")
        w("|---|---:|---:|---:|---:|---|")
        L.extend(rows)
        w("")
        if outside:
            w("Failures outside fault windows (first 15):")
            w("")
            for name, t0, t1, err in outside[:15]:
                w(f"- t={t0:.2f}–{t1:.2f}s {name}: {err}")
            w("")
        if inside:
            errs = collections.Counter()
            for name, st in self.stats.items():
                for f in st.fails:
                    if self.in_window(f[0], f[1]):
                        errs[f"{name}: {re.sub(r'[0-9]{4,}', 'N', f[2])[:120]}"] += 1
            w("Failures inside fault windows, by kind:")
            w("")
            for k, v in errs.most_common(10):
                w(f"- {v} × {k}")
            w("")
        w("## Faults")
        w("")
        w("Canary answers to requests sent while it was down must be 0 (a kill is real); \"canary serves again\" "
          "is the first answer from the canary after the restart (outlier ejection 5 s, health check "
          "every 2 s, then probation).")
        w("")
        w("| kill at | restarted at | window ends | failures in window | canary answers while down | "
          "canary serves again |")
        w("|---:|---:|---:|---:|---:|---:|")
        for k, r in self.windows:
            n = sum(1 for st in self.stats.values() for f in st.fails
                    if f[0] <= (r or a.duration) + 10 and f[1] >= k)
            if r is None:
                w(f"| {k:.1f} s | never | end | {n} | | |")
                continue
            down = sum(1 for t0, t1 in self.canary_times if t0 > k and t1 < r)
            back = [t1 for t0, t1 in self.canary_times if t1 > r]
            back = f"+{min(back) - r:.1f} s" if back else "not before the end"
            w(f"| {k:.1f} s | {r:.1f} s | {r + 10:.1f} s | {n} | {down} | {back} |")
        if self.canary_restart_failures:
            w(f"\nThe canary origin needed {len(self.canary_restart_failures)} extra start attempt(s) "
              f"(it is retried every 0.5 s on the same ports); the first failures:")
            w("")
            for e in self.canary_restart_failures[:3]:
                w(f"- {e}")
        w("")
        w("## Config changes")
        w("")
        w(f"- file reloads (web canary weight 20 ↔ 25 and a rule added/removed, written to a temp file "
          f"and renamed; applied = `file_weight` and rules visible in `GET /api/v1/routes/web` and "
          f"`reloads_success` up, within 5 s): {self.reloads['applied']} applied, "
          f"{self.reloads['failed']} failed")
        for e in self.reloads["errors"][:10]:
            w(f"  - {e}")
        w(f"- runtime changes (`PUT …/weights`, `DELETE …/overrides` on routes web and grpc; accepted = "
          f"200 with a higher generation): {self.weights['ok']} ok, {self.weights['failed']} failed")
        for e in self.weights["errors"][:10]:
            w(f"  - {e}")
        if end:
            m = end["metrics"]
            w(f"- canaryd at the end: generation {msum(m, 'canaryd_config_generation'):.0f}, "
              f"reloads success {msum(m, 'canaryd_config_reloads_total', 'success'):.0f} / "
              f"failure {msum(m, 'canaryd_config_reloads_total', 'failure'):.0f}")
        w("")
        w("## Samples")
        w("")
        w("fds: total = base + downstream + upstream sockets; base is everything else (listeners, "
          "epoll/eventfd, files, other sockets). conns / in-flight: `canaryd_open_connections`, "
          "`canaryd_in_flight_requests`; unavail: `canaryd_endpoints_unavailable`; "
          "fallbacks: `canaryd_fallback_requests_total`.")
        w("")
        w("| t (s) | RSS (MiB) | threads | CPU (s) | fds | base | down | up | conns | in-flight | "
          "generation | unavail | fallbacks |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in self.samples + ([end] if end else []):
            k = s["fds"]["kinds"]
            tag = " (end, idle)" if s is end else (" (warm-up)" if s["t"] < a.warmup - 0.5 else "")
            w(f"| {s['t']:.0f}{tag} | {s['VmRSS'] / MIB:.2f} | {s['Threads']} | {s['cpu_s']:.1f} | "
              f"{s['fds']['total']} | {s['fds']['base']} | {k.get('downstream', 0)} | {k.get('upstream', 0)} | "
              f"{s['open_conns']:.0f} | {s['in_flight']:.0f} | {s['generation']:.0f} | "
              f"{s['unavailable']:.0f} | {s['fallbacks']:.0f} |")
        w("")
        w("## Method of the memory and fd figures")
        w("")
        w(f"- RSS: `VmRSS` of the canaryd process; growth = last sample under load − first sample at or "
          f"after warm-up (t ≥ {a.warmup:.0f} s); max = highest such sample − that first one. Peak "
          f"(`VmHWM`) at the end: {end['VmHWM'] / MIB:.2f} MiB." if end else "- RSS: no end sample")
        if end and first:
            w(f"- fds: every fd of canaryd classified from `/proc/PID/fd` and `/proc/net/tcp`: downstream "
              f"(local port a canaryd listener), upstream (remote port an origin), base (the rest). "
              f"Live connections vary with load, so growth = base at the end − base at the first sample "
              f"after warm-up ({first['fds']['base']} → {end['fds']['base']}), and the end sample is taken "
              f"after every driver stopped and closed its connections, when downstream sockets must be 0 "
              f"(found {leftover_down}). Upstream pool connections at the end: "
              f"{end['fds']['kinds'].get('upstream', 0)} (idle pool, closed after 90 s idle); TCP states "
              f"at the end: {end['fds']['states'] or 'none'} (CLOSE_WAIT {close_wait}). "
              f"fd kinds at the end: {end['fds']['kinds']}.")
        w("")
        if end:
            m = end["metrics"]
            w("## canaryd counters at the end")
            w("")
            codes = collections.Counter()
            for k, v in m.get("canaryd_requests_total", {}).items():
                c = re.search(r'code="(\d+)"', k)
                codes[c.group(1) if c else "?"] += int(v)
            w(f"- requests by status: {dict(sorted(codes.items()))}")
            for name in ("canaryd_upstream_errors_total", "canaryd_endpoint_ejections_total",
                         "canaryd_fallback_requests_total", "canaryd_retries_total",
                         "canaryd_grpc_responses_total"):
                vals = {k: int(v) for k, v in m.get(name, {}).items() if v}
                w(f"- `{name}`: {vals if vals else 0}")
            w("")
        try:
            with open(self.canaryd_log, errors="replace") as f:
                log = f.read().splitlines()
            levels = collections.Counter()
            samples = collections.OrderedDict()
            for line in log:
                m = re.search(r"\b(ERROR|WARN)\b", line)
                if m:
                    levels[m.group(1)] += 1
                    key = re.sub(r"\d+", "N", re.sub(r"^\S+\s+", "", line))[:140]
                    samples.setdefault(key, 0)
                    samples[key] += 1
            w("## canaryd log")
            w("")
            w(f"{len(log)} lines, {levels['WARN']} WARN, {levels['ERROR']} ERROR. Kinds of WARN/ERROR "
              f"(digits as N):")
            w("")
            for k, v in list(samples.items())[:12]:
                w(f"- {v} × `{k}`")
            w("")
        except OSError:
            pass
        if self.harness_errors:
            w("## Harness errors")
            w("")
            for e in self.harness_errors[:10]:
                w("```\n" + e.strip()[:1500] + "\n```")
            w("")
        return "\n".join(L)


def build_default_binary():
    subprocess.run(["cargo", "build", "--locked", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "debug", "canaryd")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "origin":
        return origin_main(sys.argv[2:])
    p = argparse.ArgumentParser(description="canaryd soak test (see benches/soak/run.sh)")
    p.add_argument("--duration", type=float, help="seconds of traffic (default 1800; --quick: 60)")
    p.add_argument("--quick", action="store_true",
                   help="60 s, canary killed every 20 s: every fault path runs; RSS goal only reported")
    p.add_argument("--canaryd", help="binary to test (default: cargo build --locked, target/debug/canaryd)")
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--kill-every", type=float, help="seconds between canary kills (120; --quick: 20)")
    p.add_argument("--down-time", type=float, help="seconds the canary stays dead (10; --quick: 5)")
    p.add_argument("--reload-every", type=float, default=5.0, help="seconds between config rewrites (5)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (10)")
    a = p.parse_args()
    a.duration = a.duration or (60.0 if a.quick else 1800.0)
    a.kill_every = a.kill_every or (20.0 if a.quick else 120.0)
    a.down_time = a.down_time or (5.0 if a.quick else 10.0)
    a.warmup = 15.0 if a.quick else max(60.0, a.duration / 10)
    if not a.canaryd:
        a.canaryd = build_default_binary()
    for tool in ("openssl",):
        if not shutil.which(tool):
            sys.exit(f"soak: {tool} not found (benches/soak/run.sh installs it)")

    soak = Soak(a)
    # A private copy: target/ may be rebuilt while the soak runs.
    soak.bin = os.path.join(soak.dir, "canaryd")
    shutil.copy2(a.canaryd, soak.bin)

    async def runner():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await soak.run()

    rc = 2
    try:
        asyncio.run(runner())
        report = soak.report()
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        rc = 0 if soak.passed else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted", file=sys.stderr)
        rc = 130
    except Exception:
        traceback.print_exc()
        print(f"soak: harness failure; logs in {soak.dir}", file=sys.stderr)
    finally:
        reap_all()
        try:
            os.unlink(soak.bin)  # the private copy of the binary (~150 MiB for a debug build)
        except OSError:
            pass
    if rc == 0 and not os.environ.get("SOAK_KEEP"):
        shutil.rmtree(soak.dir, ignore_errors=True)
    elif os.path.isdir(soak.dir):
        print(f"soak: logs kept in {soak.dir}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
