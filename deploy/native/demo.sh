#!/usr/bin/env bash
# The docker-compose demo without Docker: two demo backends, canaryd and Prometheus (Debian's
# `prometheus` package), all on loopback.
#
#   deploy/native/demo.sh           start everything and walk through it; Ctrl-C stops all
#   deploy/native/demo.sh --check   the same walkthrough with assertions, then exit 0 or 1
#                                    (tests/native_demo.rs runs this)
#
# CANARYD_BIN picks the binary (default: target/debug/canaryd, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECK=0; [ "${1:-}" = "--check" ] && CHECK=1

need() { command -v "$1" >/dev/null || { echo "demo.sh: $1 is required (apt-get install $2)" >&2; exit 2; }; }
need curl curl
need prometheus prometheus
need python3 python3
BIN=${CANARYD_BIN:-target/debug/canaryd}
[ -x "$BIN" ] || cargo build --quiet

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STABLE=$(free_port); CANARY=$(free_port); PROXY=$(free_port); ADMIN=$(free_port); PROM=$(free_port)
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
wait_url() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; fail "$1 never answered"; }

"$BIN" backend --name stable --listen "127.0.0.1:$STABLE" >/dev/null 2>&1 & PIDS+=($!)
"$BIN" backend --name canary --listen "127.0.0.1:$CANARY" >/dev/null 2>&1 & PIDS+=($!)
cat > "$DIR/canaryd.yaml" <<YAML
listeners:
  - address: 127.0.0.1:$PROXY
admin:
  address: 127.0.0.1:$ADMIN
proxy:
  version_header: true
routes:
  - name: demo
    versions:
      stable: { endpoints: ["127.0.0.1:$STABLE"] }
      canary: { endpoints: ["127.0.0.1:$CANARY"], weight: 10 }
    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
YAML
"$BIN" check "$DIR/canaryd.yaml" >/dev/null
"$BIN" run --config "$DIR/canaryd.yaml" 2>"$DIR/canaryd.log" & PIDS+=($!)
cp deploy/prometheus/rules.yml "$DIR/rules.yml"
cat > "$DIR/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [rules.yml]
scrape_configs:
  - job_name: canaryd
    static_configs: [{ targets: ["127.0.0.1:$ADMIN"] }]
YAML
prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
  --web.listen-address="127.0.0.1:$PROM" --log.level=warn >/dev/null 2>&1 & PIDS+=($!)

wait_url "http://127.0.0.1:$ADMIN/readyz"
wait_url "http://127.0.0.1:$PROM/-/ready"
echo "canaryd on http://127.0.0.1:$PROXY (admin :$ADMIN), Prometheus on http://127.0.0.1:$PROM"

split() { # N requests over one keep-alive connection → "stable canary" counts
  local urls=() out s c
  for _ in $(seq "$1"); do urls+=("http://127.0.0.1:$PROXY/"); done
  out=$(curl -fs -w '\n' "${urls[@]}") || fail "a request failed"
  s=$(grep -cx stable <<<"$out" || true); c=$(grep -cx canary <<<"$out" || true)
  [ $((s + c)) = "$1" ] || fail "bad answers: $((s + c)) of $1 were stable or canary"
  echo "$s $c"
}

# 2000 requests: at 10 % the canary count has mean 200 and sd 13.4, so 140..260 (±4.5 sd)
# passes a right split but never a doubled (400) or halved (100) one; at 50 %: 900..1100.
echo "1. 2000 requests at the configured 10% canary:"
read -r S C < <(split 2000); echo "   stable $S, canary $C"
[ "$CHECK" = 0 ] || { [ "$C" -ge 140 ] && [ "$C" -le 260 ]; } || fail "canary share $C/2000 is not about 10%"

echo "2. the header rule: x-canary: always"
[ "$(curl -fs -H 'x-canary: always' "http://127.0.0.1:$PROXY/")" = canary ] || fail "header rule"
echo "   canary"

echo "3. change the weight live to 50% through the admin API:"
curl -fs -XPUT "http://127.0.0.1:$ADMIN/api/v1/routes/demo/weights" -d '{"canary": 50}' | tr -d '\n '; echo
read -r S C < <(split 2000); echo "   stable $S, canary $C"
[ "$CHECK" = 0 ] || { [ "$C" -ge 900 ] && [ "$C" -le 1100 ]; } || fail "canary share $C/2000 is not about 50%"

echo "4. Prometheus sees the new weight and per-version traffic:"
prom() { curl -fs "http://127.0.0.1:$PROM/api/v1/query" --data-urlencode "query=$1" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
W=none; T=none
for _ in $(seq 100); do
  W=$(prom 'canaryd_route_weight{route="demo",version="canary"}')
  T=$(prom 'sum(canaryd_requests_total{route="demo"})')
  [ "$W" = 50 ] && [ "$T" = 4001 ] && break
  sleep 0.2
done
echo "   canaryd_route_weight{version=\"canary\"} = $W; requests seen = $T"
[ "$CHECK" = 0 ] || { [ "$W" = 50 ] && [ "$T" = 4001 ]; } || fail "Prometheus saw weight $W and $T requests"

if [ "$CHECK" = 1 ]; then
  echo "native demo: all checks passed"
  exit 0
fi
echo "Running; try: curl -s http://127.0.0.1:$PROXY/ ; curl -s http://127.0.0.1:$ADMIN/metrics | grep canaryd_ ; Ctrl-C to stop."
wait
