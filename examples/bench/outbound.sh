#!/usr/bin/env bash
# Outbound calls from Wasm filters (filter API 0.2), measured with the ext-authz filter:
#
# 1. Added latency: a route with ext-authz calling an authorization service on
#    loopback (nginx `return 200`) against the same route without it: rps, p50 and p99,
#    and what the filter adds to each.
# 2. Slow calls: SLOW concurrent requests (default 1000) on a route whose
#    authorization service answers after 2 s, while another route without filters is
#    measured: its p99 beside its p99 alone, the gateway's threads before and during,
#    and how many of the slow requests were answered 200. Twice: with the service
#    answering after 1.5 to 2.5 s (uniformly), as a slow service does, so that the
#    measurement is of requests waiting; and after exactly 2 s, where all SLOW
#    connections stay in lockstep and complete within the same millisecond every 2 s,
#    so that the plain route's p99 is the time the gateway takes to finish SLOW
#    requests at once (the filter's work for each, and its second upstream request).
#
#   examples/bench/outbound.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS] [SLOW]
#
# Everything binds to 127.0.0.1. One gateway worker thread, as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-32}
ROUNDS=${3:-3}
SLOW=${4:-1000}
source examples/bench/lib.sh
bench_setup ext-authz

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in backend authz; do [ -f "$work/$p.pid" ] && kill "$(cat "$work/$p.pid")" 2>/dev/null; done; rm -rf "$work"' EXIT
BACKEND=18090 AUTHZ=18091 SLOWAUTHZ=18092 SLUICE=18093 ADMIN=18094

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
nginx_conf authz "server { listen 127.0.0.1:$AUTHZ; location / { return 200; } }"
# An authorization service that answers after 2 s, or after 1.5 to 2.5 s for a path
# that ends in -jitter: asyncio, so it holds every connection open at once.
python3 - "$SLOWAUTHZ" <<'PY' &
import asyncio, random, sys
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            await asyncio.sleep(random.uniform(1.5, 2.5) if path.endswith(b"-jitter") else 2)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await w.drain()
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with s:
        await s.serve_forever()
asyncio.run(main())
PY

mkdir -p "$work/sluice"
cp filters/target/wasm32-wasip2/release/ext_authz.wasm "$work/sluice/"
svc() {
  cat <<YAML
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1-1, namespace: default, labels: {kubernetes.io/service-name: $1}}
addressType: IPv4
ports: [{name: http, port: $2}]
endpoints: [{addresses: [127.0.0.1]}]
---
YAML
}
filter() {
  cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: $1, namespace: default}
spec:
  source: {path: ext_authz.wasm}
  outbound: [{name: authz, backendRef: {name: $2, port: 80}, timeout: 10s}]
---
YAML
}
ext() { echo "{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: $1}}"; }
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  svc authz "$AUTHZ"
  svc slowauthz "$SLOWAUTHZ"
  filter authz authz
  filter slow slowauthz
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /authz}}]
    filters: [$(ext authz)]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: Exact, value: /slow}}, {path: {type: Exact, value: /slow-jitter}}]
    filters: [$(ext slow)]
    backendRefs: [{name: backend, port: 80}]
    timeouts: {request: 30s}
  - matches: [{path: {type: Exact, value: /slow-backend}}, {path: {type: Exact, value: /slow-backend-jitter}}]
    backendRefs: [{name: slowauthz, port: 80}]
    timeouts: {request: 30s}
YAML
} > "$work/sluice/config.yaml"

ulimit -n 65536 2>/dev/null || true
start_sluice "$work/sluice"
curl -sf -o /dev/null "127.0.0.1:$SLUICE/authz" || { echo "the ext-authz route does not answer 200" >&2; exit 1; }

echo "1. ext-authz to an authorization service on loopback, $CONNS connections, median of $ROUNDS"
for _ in $(seq "$ROUNDS"); do
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/" | wrk_stats none
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/authz" | wrk_stats ext-authz
done > "$work/added"
python3 - "$work/added" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99, bad = line.split()
    rows.setdefault(label, []).append((float(rps), float(p50), float(p99), int(bad)))
med = lambda label, i: statistics.median(r[i] for r in rows[label])
print(f"{'route':10} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8}")
for label in ["none", "ext-authz"]:
    print(f"{label:10} {med(label, 0):8.0f} {med(label, 1):7.3f} {med(label, 2):7.3f} {sum(r[3] for r in rows[label]):8}")
print(f"ext-authz adds p50 {med('ext-authz', 1) - med('none', 1):.3f} ms, p99 {med('ext-authz', 2) - med('none', 2):.3f} ms (x{med('ext-authz', 0) / med('none', 0):.2f} rps)")
PY

threads() { awk '/^Threads/ {print $2}' "/proc/$SLUICE_PID/status"; }
# beside PATH LABEL: SLOW requests on PATH for DURATION+4 s; after 3 s, past the
# first answers (where the gateway opens its connections to the backend behind the
# filter, as any proxy does once), the route without filters is measured beside them. Prints its stats, the slow requests' stats,
# their count and the gateway's threads during.
beside() {
  wrk -t2 -c"$SLOW" -d"$((DURATION + 5))s" --timeout 20s --latency "http://127.0.0.1:$SLUICE$1" > "$work/slow" &
  local slow_pid=$!
  sleep 3
  local during; during=$(threads)
  local plain; plain=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/" | wrk_stats "$2")
  wait "$slow_pid"
  echo "$plain $(wrk_stats slow < "$work/slow" | cut -d' ' -f2-) $(grep -oE '[0-9]+ requests in' "$work/slow" | grep -oE '^[0-9]+') $during"
}
echo
echo "2. $SLOW requests waiting on an authorization call (ext-authz), and for comparison on"
echo "   a slow backend without filters; the route without filters measured beside them"
before_threads=$(threads)
alone=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/" | wrk_stats alone)
calls_jitter=$(beside /slow-jitter beside-calls)
backend_jitter=$(beside /slow-backend-jitter beside-backend)
calls=$(beside /slow beside-calls)
backend=$(beside /slow-backend beside-backend)
python3 - "$alone" "$before_threads" "$calls_jitter" "$backend_jitter" "$calls" "$backend" <<'PY'
import sys
alone = sys.argv[1].split()
print(f"{'plain route':40} {'rps':>8} {'p99 ms':>8}   {'slow answered':>13} {'not 2xx':>7} {'slow p50 ms':>11} {'threads':>7}")
print(f"{'alone':40} {float(alone[1]):8.0f} {float(alone[3]):8.2f}   {'':>13} {'':>7} {'':>11} {sys.argv[2]:>7}")
for label, row in [
    ("beside 1.5-2.5 s outbound calls", sys.argv[3]),
    ("beside a 1.5-2.5 s backend, no filter", sys.argv[4]),
    ("beside 2 s outbound calls (lockstep)", sys.argv[5]),
    ("beside a 2 s backend, no filter (lockstep)", sys.argv[6]),
]:
    r = row.split()
    # plain: label rps p50 p99 bad | slow: rps p50 p99 bad | count | threads
    print(f"{label:40} {float(r[1]):8.0f} {float(r[3]):8.2f}   {r[9]:>13} {r[8]:>7} {float(r[6]):11.0f} {r[10]:>7}")
PY
