#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a noisy shared machine
# where wall-clock and CPU-time figures swing by ±20 % between runs.
#
#   benches/callgrind/run.sh BIN [BIN...]     e.g. target/release/canaryd /tmp/old/canaryd
#   NEW_CONN=1 benches/callgrind/run.sh BIN   the same with a new connection per request
#   H2=1 benches/callgrind/run.sh BIN         the same over HTTP/2 (h2c prior knowledge):
#                                             h2load, 10 connections, 100 streams each
#   TLS=1 benches/callgrind/run.sh BIN        the same over TLS 1.3 (self-signed P-256), ALPN
#                                             http/1.1: curl, one keep-alive connection
#   TLS=1 NO_ALPN=1 benches/callgrind/run.sh BIN   the same, the client offering no ALPN
#
# For each binary and each config (full feature path: 4 rules + sticky cookie + 90/10; simple:
# one version), canaryd runs under `valgrind --tool=callgrind` with --workers 1 in front of two
# `canaryd backend` origins, oha sends 1000 and then (in a fresh process) 6000 keep-alive
# requests with 8 connections, and the figure is (Ir(6000) - Ir(1000)) / 5000: start-up and
# shutdown cancel out. Profiles stay in target/callgrind/ for callgrind_annotate.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v oha >/dev/null || cargo install --locked --quiet oha
[ -z "${H2:-}" ] || command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
out=$(cd "$(dirname "$0")/../.." && pwd)/target/callgrind
mkdir -p "$out"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
o1=$(port); o2=$(port)
CANARYD_LOG=warn "$1" backend --name stable --listen "127.0.0.1:$o1" >/dev/null 2>&1 & b1=$!
CANARYD_LOG=warn "$1" backend --name canary --listen "127.0.0.1:$o2" >/dev/null 2>&1 & b2=$!
trap 'kill $b1 $b2 2>/dev/null || true' EXIT
sleep 0.5

listener() { # $1 = port
  if [ -n "${TLS:-}" ]; then
    echo "listeners: [{ address: \"127.0.0.1:$1\", tls: { cert: \"$out/cert.pem\", key: \"$out/key.pem\" } }]"
  else
    echo "listeners: [{ address: \"127.0.0.1:$1\" }]"
  fi
}
if [ -n "${TLS:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
fi

config() { # $1 = port, $2 = full|simple
  listener "$1"
  if [ "$2" = full ]; then cat <<Y
routes:
  - name: app
    versions:
      stable: { endpoints: ["127.0.0.1:$o1"] }
      canary: { endpoints: ["127.0.0.1:$o2"], weight: 10 }
    rules:
      - { to: canary, when: { header: { name: x-canary, equals: always } } }
      - { to: stable, when: { header: { name: x-canary, equals: never } } }
      - { to: canary, when: { cookie: { name: canary, equals: always } } }
      - { to: canary, when: { header: { name: x-user-group, matches: "^(beta|staff)$" } } }
    sticky:
      key: { cookie: session }
      assign_cookie: canaryd_uid
Y
  else cat <<Y
routes:
  - name: app
    versions:
      stable: { endpoints: ["127.0.0.1:$o1"] }
Y
  fi
}

printf '%-40s %-7s %s\n' binary config "instructions per request"
i=0
for bin in "$@"; do
  i=$((i + 1))
  for conf in full simple; do
    declare -A ir=()
    for n in 1000 6000; do
      p=$(port)
      config "$p" "$conf" > "$out/c.yaml"
      file="$out/cg.$i.$conf.$n"
      CANARYD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$bin" run --workers 1 -c "$out/c.yaml" >/dev/null 2>&1 & pid=$!
      scheme=http; [ -z "${TLS:-}" ] || scheme=https
      for _ in $(seq 300); do curl -sk -o /dev/null "$scheme://127.0.0.1:$p/" && break; sleep 0.2; done
      if [ -n "${TLS:-}" ]; then
        # One connection, requests in sequence (curl offers ALPN; oha offers none).
        for _ in $(seq "$n"); do printf 'url = "https://127.0.0.1:%s/"\noutput = "/dev/null"\n' "$p"; done > "$out/urls"
        curl -sk --http1.1 ${NO_ALPN:+--no-alpn} -H "Cookie: theme=dark; session=4f1c9a7e2b; lang=en" \
          -H "X-User-Group: customers" -K "$out/urls" >/dev/null 2>&1
      elif [ -n "${H2:-}" ]; then
        h2load -n "$n" -c 10 -m 100 -H "Cookie: theme=dark; session=4f1c9a7e2b; lang=en" \
          -H "X-User-Group: customers" "http://127.0.0.1:$p/" >/dev/null 2>&1
      else
        oha --no-tui -n "$n" -c 8 ${NEW_CONN:+--disable-keepalive} -H "Cookie: theme=dark; session=4f1c9a7e2b; lang=en" \
          -H "X-User-Group: customers" "http://127.0.0.1:$p/" >/dev/null 2>&1
      fi
      kill -TERM "$pid"; wait "$pid" || true
      ir[$n]=$(grep -E '^summary:' "$file" | awk '{print $2}')
    done
    printf '%-40s %-7s %d\n' "$bin" "$conf" $(( (ir[6000] - ir[1000]) / 5000 ))
  done
done
