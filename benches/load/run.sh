#!/usr/bin/env bash
# Load comparison of canaryd against nginx and HAProxy on this machine (method: compare.py).
#   benches/load/run.sh           full run (5 interleaved rounds of 10 s each; ~15 min), writes benches/RESULTS.md
#   benches/load/run.sh --quick   one short round (~1 min), prints only: CI runs this so the script never rots
# Installs what it needs: nginx, haproxy, wrk, h2load (Debian packages), oha (crates.io).
# Sends traffic only to 127.0.0.1, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts the packaged services on install; they are not ours to load.
  (service nginx stop; service haproxy stop) >/dev/null 2>&1 || true
fi
export PATH="$HOME/.cargo/bin:$PATH"
# Default features: oha 1.16 does not compile without its TLS feature.
command -v oha >/dev/null || cargo install --locked --quiet oha

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ "${1:-}" = "--quick" ]; then
  # Checks that the harness still runs end to end; the figures mean nothing (debug build).
  cargo build --locked --quiet
  python3 benches/load/compare.py --canaryd target/debug/canaryd --quick
else
  # The optimised build users run.
  cargo build --release --locked --quiet
  python3 benches/load/compare.py --canaryd target/release/canaryd --out benches/RESULTS.md "$@"
fi
