#!/usr/bin/env bash
# What tracing costs: one Sluice (one worker thread) in front of an nginx `return 200`,
# the route through one Wasm filter (headers), measured with tracing off, on (every
# request: a server span and a filter hook span each, exported by OTLP/HTTP to a
# receiver on 127.0.0.1 every 100 ms) and on at a 1% sample; with $SLUICE_BEFORE set,
# also that build (no tracing code) as the baseline of "off". Interleaved over ROUNDS
# rounds; prints the median rps, p99 and CPU microseconds per request of Sluice and
# the ratios to "off", plus the spans the receiver got.
#
#   examples/bench/traces.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-32}
ROUNDS=${3:-3}
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18104 SLUICE=18105 ADMIN=18106 OTLP=18107

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
# The receiver answers every export 200 and counts the bytes it was sent.
python3 - "$OTLP" "$work/otlp-bytes" <<'PY' &
import http.server, sys
total = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global total
        n = int(self.headers.get("content-length", 0))
        total += len(self.rfile.read(n))
        open(sys.argv[2], "w").write(str(total))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY

mkdir -p "$work/sluice"
cp filters/target/wasm32-wasip2/release/headers.wasm "$work/sluice/"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: headers, namespace: default}
spec:
  source: {path: headers.wasm}
  config: {request: {set: {x-a: '1'}}, response: {set: {x-b: '2'}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: headers}}]
    backendRefs: [{name: backend, port: 80}]
YAML
} > "$work/sluice/config.yaml"

# run LABEL ARGS...: prints "LABEL rps p50_ms p99_ms non2xx cpu_us_per_request".
run() {
  local label=$1
  shift
  start_sluice "$work/sluice" --access-log off "$@"
  curl -sf -o /dev/null "127.0.0.1:$SLUICE/" || { echo "$label: not serving" >&2; exit 1; }
  local before; before=$(cpu_ticks "$SLUICE_PID")
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/")
  local ticks=$(( $(cpu_ticks "$SLUICE_PID") - before ))
  kill "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true
  local stats; stats=$(wrk_stats "$label" <<< "$out")
  python3 -c '
import sys
label, rps, p50, p99, bad = sys.argv[1].split()
ticks, secs, hz = int(sys.argv[2]), float(sys.argv[3]), 100
print(label, rps, p50, p99, bad, ticks / hz / (float(rps) * secs) * 1e6)
' "$stats" "$ticks" "$DURATION"
}

otlp=(--otlp-endpoint "http://127.0.0.1:$OTLP" --trace-export-interval 100)
for _ in $(seq "$ROUNDS"); do
  if [ -n "${SLUICE_BEFORE:-}" ]; then SLUICE_BIN=$SLUICE_BEFORE run before; fi
  run off
  run on "${otlp[@]}"
  run sampled "${otlp[@]}" --trace-sample 0.01
done > "$work/results"
echo "OTLP bytes received: $(cat "$work/otlp-bytes" 2>/dev/null || echo 0)"

python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99, bad, cpu = line.split()
    rows.setdefault(label, []).append((float(rps), float(p50), float(p99), int(bad), float(cpu)))
med = lambda label, i: statistics.median(r[i] for r in rows[label])
base = med("off", 0)
base_cpu = med("off", 4)
print(f"{'tracing':8} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'x off':>6} {'cpu us/req':>10} {'+us':>6} {'non-2xx':>7}")
for label in ["before", "off", "on", "sampled"]:
    if label not in rows:
        continue
    cpu = med(label, 4)
    print(f"{label:8} {med(label, 0):9.0f} {med(label, 1):7.3f} {med(label, 2):7.3f} {med(label, 0) / base:6.2f} {cpu:10.2f} {cpu - base_cpu:6.2f} {max(r[3] for r in rows[label]):7d}")
PY
