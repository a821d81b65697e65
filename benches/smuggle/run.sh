#!/usr/bin/env bash
# Request-smuggling scan of canaryd with smugglex (crates.io), all on loopback.
#
#   benches/smuggle/run.sh            # build canaryd (dev profile), scan, exit 1 on any finding
#
# Starts two `canaryd backend` origins and canaryd in front of them (90/10 split), then runs
# every smugglex check that applies to a cleartext target (cl-te, te-cl, te-te, h2c, cl-edge,
# cl-0, 0-cl, parser-discrepancy; h2-downgrade needs https) plus its mutation fuzzing. The JSON
# report goes to target/smugglex.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v smugglex >/dev/null || cargo install --locked smugglex
cargo build --quiet --bin canaryd
bin=target/debug/canaryd

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(port); p2=$(port); pp=$(port)
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

export CANARYD_LOG=warn
"$bin" backend --name stable --listen "127.0.0.1:$p1" & pids+=($!)
"$bin" backend --name canary --listen "127.0.0.1:$p2" & pids+=($!)
cat > "$dir/canaryd.yaml" <<YAML
listeners: [{ address: "127.0.0.1:$pp" }]
routes:
  - name: app
    versions:
      stable: { endpoints: ["127.0.0.1:$p1"] }
      canary: { endpoints: ["127.0.0.1:$p2"], weight: 10 }
YAML
"$bin" run --config "$dir/canaryd.yaml" & pids+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$pp/" >/dev/null 2>&1 && break
    sleep 0.1
done

checks=cl-te,te-cl,te-te,h2c,cl-edge,cl-0,0-cl,parser-discrepancy
echo "smugglex $(smugglex --version 2>&1 | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -1) against canaryd on 127.0.0.1:$pp ($checks, --fuzz)"
status=0
smugglex "http://127.0.0.1:$pp/" --checks "$checks" --fuzz --timeout 3 --no-color \
    --json -o target/smugglex.json >"$dir/out.txt" 2>&1 || status=$?
python3 - target/smugglex.json <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["results"]:
    for c in r["checks"]:
        print(f"  {c['check_type']:<20} vulnerable={c['vulnerable']}")
s = doc["summary"]
print(f"vulnerable checks: {s['vulnerable_checks']} of {s['total_checks']}")
sys.exit(1 if s["vulnerable_checks"] else 0)
PY
