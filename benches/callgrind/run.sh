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
#   PEERS=1 benches/callgrind/run.sh BIN      also nginx and HAProxy under the same client (plain
#                                             HTTP/1.1 or, with H2=1, h2c; not with TLS)
#
# For each binary and each config (full feature path: 4 rules + sticky cookie + 90/10; simple:
# one version), canaryd runs under `valgrind --tool=callgrind` with --workers 1 in front of two
# `canaryd backend` origins, oha sends 1000 and then (in a fresh process) 6000 keep-alive
# requests with 8 connections, and the figure is (Ir(6000) - Ir(1000)) / 5000: start-up and
# shutdown cancel out. Profiles stay in target/callgrind/ for callgrind_annotate. With PEERS=1,
# nginx (one worker, master_process off, upstream keepalive, split_clients 90/10 on $request_id
# for "full") and HAProxy (one thread, http-reuse always, roundrobin 90/10) are counted the same
# way in front of the same origins: what each proxy executes for the same request.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v oha >/dev/null || cargo install --locked --quiet oha
[ -z "${H2:-}" ] || command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
out=$(cd "$(dirname "$0")/../.." && pwd)/target/callgrind
mkdir -p "$out"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
o1=$(port); o2=$(port)
export CANARYD_LOG=warn  # canaryd under callgrind, and the origins
"$1" backend --name stable --listen "127.0.0.1:$o1" >/dev/null 2>&1 & b1=$!
"$1" backend --name canary --listen "127.0.0.1:$o2" >/dev/null 2>&1 & b2=$!
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

drive() { # $1 = port, $2 = requests: the client of every mode
  local p=$1 n=$2 scheme=http
  [ -z "${TLS:-}" ] || scheme=https
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
}

count() { # $1 = profile file, $2 = port, $3 = requests, the rest = the proxy's command:
  # runs it under callgrind while `drive` sends the requests, then prints its instruction count
  local file=$1 p=$2 n=$3 pid
  shift 3
  valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >/dev/null 2>&1 & pid=$!
  drive "$p" "$n"
  kill -TERM "$pid"; wait "$pid" || true
  grep -E '^summary:' "$file" | awk '{print $2}'
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
      ir[$n]=$(count "$out/cg.$i.$conf.$n" "$p" "$n" "$bin" run --workers 1 -c "$out/c.yaml")
    done
    printf '%-40s %-7s %d\n' "$bin" "$conf" $(( (ir[6000] - ir[1000]) / 5000 ))
  done
done

if [ -n "${PEERS:-}" ]; then
  [ -z "${TLS:-}" ] || { echo "PEERS=1 is not measured over TLS" >&2; exit 2; }
  if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    # The packages benches/load/run.sh installs; Debian starts their services, not ours to run.
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light haproxy >/dev/null
    (service nginx stop; service haproxy stop) >/dev/null 2>&1 || true
  fi
  mkdir -p "$out/nginx"
  nginx_conf() { # $1 = port, $2 = full|simple
    local h2=""; [ -z "${H2:-}" ] || h2=" http2"
    local pool="stable"; [ "$2" = simple ] || pool='$pool'
    cat <<C
worker_processes 1; master_process off; daemon off; pid $out/nginx/pid; error_log stderr error;
events { worker_connections 1000; }
http {
  access_log off; keepalive_requests 10000000;
  client_body_temp_path $out/nginx/b; proxy_temp_path $out/nginx/p; fastcgi_temp_path $out/nginx/f;
  uwsgi_temp_path $out/nginx/u; scgi_temp_path $out/nginx/s;
  upstream stable { server 127.0.0.1:$o1; keepalive 128; }
  upstream canary { server 127.0.0.1:$o2; keepalive 128; }
  split_clients "\${request_id}" \$pool { 10% canary; * stable; }
  server { listen 127.0.0.1:$1$h2; location / { proxy_pass http://$pool; proxy_http_version 1.1;
    proxy_set_header Connection ""; } }
}
C
  }
  haproxy_conf() { # $1 = port, $2 = full|simple
    local h2=""; [ -z "${H2:-}" ] || h2=" proto h2"
    local canary="  server canary 127.0.0.1:$o2 weight 10"; [ "$2" = full ] || canary=""
    cat <<C
global
  nbthread 1
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$1$h2
  default_backend be
backend be
  balance roundrobin
  server stable 127.0.0.1:$o1 weight 90
$canary
C
  }
  for peer in nginx haproxy; do
    for conf in full simple; do
      declare -A ir=()
      for n in 1000 6000; do
        p=$(port)
        file="$out/cg.$peer.$conf.$n"
        if [ $peer = nginx ]; then
          nginx_conf "$p" "$conf" > "$out/nginx/n.conf"
          ir[$n]=$(count "$file" "$p" "$n" nginx -c "$out/nginx/n.conf" -p "$out/nginx")
        else
          haproxy_conf "$p" "$conf" > "$out/h.cfg"
          ir[$n]=$(count "$file" "$p" "$n" haproxy -db -f "$out/h.cfg")
        fi
      done
      printf '%-40s %-7s %d\n' "$peer" "$conf" $(( (ir[6000] - ir[1000]) / 5000 ))
    done
  done
fi
