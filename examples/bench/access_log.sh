#!/usr/bin/env bash
# What the access log costs: one Sluice (one worker thread) in front of an nginx
# `return 200`, measured with the access log off, then on (JSON lines to a file), then
# sampled at 10%, the three interleaved over ROUNDS rounds. Prints the median rps and
# p99 of each and the ratio to "off". Everything binds to 127.0.0.1.
#
#   examples/bench/access_log.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-32}
ROUNDS=${3:-3}
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18084 SLUICE=18085 ADMIN=18086

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
mkdir -p "$work/sluice"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - backendRefs: [{name: backend, port: 80}]
YAML
} > "$work/sluice/config.yaml"

# run LABEL ARGS...: Sluice with ARGS, stdout to a file; prints "LABEL rps p99_ms".
run() {
  local label=$1
  shift
  start_sluice "$work/sluice" "$@" > "$work/access.log"
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/")
  kill "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true
  python3 - "$label" "$(wc -l < "$work/access.log")" <<PY
import re, sys
text = """$out"""
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(sys.argv[1], rps, p99, sys.argv[2])
PY
}

for _ in $(seq "$ROUNDS"); do
  run off
  run json --access-log on --access-log-format json
  run text --access-log on --access-log-format text
  run sampled --access-log 0.1 --access-log-format json
done > "$work/results"

python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p99, lines = line.split()
    rows.setdefault(label, []).append((float(rps), float(p99), int(lines)))
base = statistics.median(r for r, _, _ in rows["off"])
print(f"{'access log':10} {'rps':>9} {'p99 ms':>7} {'x off':>6} {'lines':>9}")
for label in ["off", "json", "text", "sampled"]:
    rps = statistics.median(r for r, _, _ in rows[label])
    p99 = statistics.median(p for _, p, _ in rows[label])
    lines = statistics.median(n for _, _, n in rows[label])
    print(f"{label:10} {rps:9.0f} {p99:7.2f} {rps / base:6.2f} {lines:9.0f}")
PY
