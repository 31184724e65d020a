#!/usr/bin/env bash
# What a shared kv store costs: one Sluice (one worker thread) in front of an nginx
# `return 200`, with the ratelimit filter (one kv increment per request, a limit never
# reached) keeping its kv in memory, then in a Redis on 127.0.0.1 (spec.kv.redis), and
# without the filter; interleaved over ROUNDS rounds. Prints the median rps and p50/p99
# of each at CONNECTIONS connections and at one (the latency a kv call adds), and the
# ratios to "memory".
#
#   examples/bench/kv.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-32}
ROUNDS=${3:-3}
source examples/bench/lib.sh
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
bench_setup ratelimit

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18094 SLUICE=18095 ADMIN=18096 REDIS=18097

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > /dev/null &
for _ in $(seq 50); do redis-cli -p $REDIS ping >/dev/null 2>&1 && break; sleep 0.1; done

# config DIR KV_YAML FILTERS: a folder with the route, through FILTERS (a YAML flow list).
config() {
  mkdir -p "$1"
  cp filters/target/wasm32-wasip2/release/ratelimit.wasm "$1/"
  {
    sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
    cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: limit, namespace: default}
spec:
  source: {path: ratelimit.wasm}
  config: {requests: 4000000000, windowSeconds: 3600}
$2
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - backendRefs: [{name: backend, port: 80}]
    filters: $3
YAML
  } > "$1/config.yaml"
}
limit='[{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: limit}}]'
config "$work/memory" "" "$limit"
config "$work/redis" "  kv: {redis: {url: 'redis://127.0.0.1:$REDIS'}}" "$limit"
config "$work/none" "" "[]"

# run LABEL DIR: prints "LABEL CONNS rps p50_ms p99_ms non2xx" at $CONNS and at 1.
run() {
  start_sluice "$2"
  curl -sf -o /dev/null "127.0.0.1:$SLUICE/" || { echo "$1: not serving" >&2; exit 1; }
  for c in "$CONNS" 1; do
    wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/" | wrk_stats "$1 $c"
  done
  kill "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true
}

for _ in $(seq "$ROUNDS"); do
  run memory "$work/memory"
  run redis "$work/redis"
  run none "$work/none"
done > "$work/results"
echo "redis keys: $(redis-cli -p $REDIS --scan --pattern 'sluice:kv:*' | wc -l) (the filter's counter)"

python3 - "$work/results" "$CONNS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, conns, rps, p50, p99, bad = line.split()
    rows.setdefault((label, conns), []).append((float(rps), float(p50), float(p99), int(bad)))
med = lambda key, i: statistics.median(r[i] for r in rows[key])
print(f"{'kv':8} {'conns':>5} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'x memory':>8} {'non-2xx':>7}")
for conns in [sys.argv[2], "1"]:
    base = med(("memory", conns), 0)
    for label in ["none", "memory", "redis"]:
        k = (label, conns)
        print(f"{label:8} {conns:>5} {med(k, 0):9.0f} {med(k, 1):7.3f} {med(k, 2):7.3f} {med(k, 0) / base:8.2f} {max(r[3] for r in rows[k]):7d}")
one = lambda label: 1000 / med((label, "1"), 0)
print(f"added per request at 1 connection: redis {one('redis') - one('memory'):.3f} ms over memory, memory {one('memory') - one('none'):.3f} ms over no filter")
PY
