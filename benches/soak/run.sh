#!/usr/bin/env bash
# Soak test of canaryd (issue #13, part 3): leaks and lost requests under mixed traffic and faults.
#   benches/soak/run.sh                       30 min (builds target/debug/canaryd with cargo)
#   benches/soak/run.sh --quick               1 min: every fault path once or more; RSS goal only reported
#   benches/soak/run.sh --canaryd PATH --out REPORT.md [--duration S]
# Method (soak.py): on loopback only, with ephemeral ports, canaryd (a private copy of the binary)
# fronts a stable origin (HTTP/1.1, WebSocket echo, gRPC) and a canary origin (HTTP/1.1, gRPC)
# that runs as its own process, on routes `web` (/), `ws` (/ws/) and `grpc` (the gRPC service,
# protocol h2c), each canary weighted 20 % with `fallback: true`. For the whole run, at ~230
# requests/s in all: HTTP/1.1 keep-alive (GET and 1 KiB POST) and one connection per request, h2c
# prior knowledge, HTTP/1.1 and h2 over TLS (plain and TLS listeners), a WebSocket echo over each
# listener and a gRPC bidirectional stream (one message a second, all three pinned to stable by a
# header rule), gRPC unary calls (split by weight). Every 5 s the config file is rewritten (temp +
# rename; canary weight 20 <-> 25 and a rule added/removed) and checked to have applied through the
# admin API; half-way between, a runtime weight change or override reset through the admin API.
# Every 2 min (--quick: 20 s) the canary origin is SIGKILLed and restarted on the same ports 10 s
# (--quick: 5 s) later. A fault window runs from a kill to 10 s after the restart. Every 10 s:
# canaryd's VmRSS, threads, CPU time, fds classified via /proc (downstream / upstream sockets /
# the rest), and gauges from /metrics. Goals: 0 failed requests outside fault windows, 0 stream
# failures, every reload applied, RSS growth after warm-up (10 %, >= 60 s; --quick 15 s) <= 5 MiB
# (not enforced in --quick), fd growth 0 (fds not held by live connections: end, after every
# client closed, vs. first sample after warm-up) and no connection left open, exit 0 on SIGTERM.
# Exit 1 when an enforced goal fails, 2 when the harness breaks. Not part of CI's test run.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v openssl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
python3 -c "import grpc, websockets, httpx, h2" 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check grpcio websockets 'httpx[http2]'
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# soak.py builds target/debug/canaryd (cargo build --locked --quiet) unless --canaryd is given.
exec python3 benches/soak/soak.py "$@"
