# Shared by the benchmark scripts. The functions that start processes read $work,
# $BACKEND and $ADMIN when they are called.

# bench_setup FILTER: wrk and nginx from Debian when missing, then Sluice (release)
# and the FILTER Wasm filter.
bench_setup() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  cargo build --release --bin sluice >&2
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  cargo build --release --target wasm32-wasip2 --manifest-path filters/Cargo.toml -p "$1" >&2
}

# headers_filters DIR: headers.wasm and the WasmFilters h1, h2 and h3 in DIR. Each
# touches three headers: sets one on the request, removes one, and sets one on the
# response.
headers_filters() {
  cp filters/target/wasm32-wasip2/release/headers.wasm "$1/"
  local i
  for i in 1 2 3; do
    cat >> "$1/filters.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: h$i, namespace: default}
spec:
  source: {path: headers.wasm}
  config: {request: {set: {x-bench-$i: "1"}, remove: [x-none-$i]}, response: {set: {x-served-$i: "1"}}}
---
YAML
  done
}

# header_routes: the HTTPRoute `bench` of the filter comparisons: / with no filter, /b
# the built-in header modifiers doing the `headers` filter's work, /f1 and /f3 that
# filter once and three times (the WasmFilters h1-h3 of headers_filters).
header_routes() {
  header_ext() { echo "{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: h$1}}"; }
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
    filters: [$(header_ext 1)]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /f3}}]
    filters: [$(header_ext 1), $(header_ext 2), $(header_ext 3)]
    backendRefs: [{name: backend, port: 80}]
YAML
}

# nginx_conf NAME BODY: starts an nginx (one worker) with BODY inside `http {}`.
nginx_conf() {
  cat > "$work/$1.conf" <<CONF
worker_processes 1;
daemon on;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  $2
}
CONF
  nginx -c "$work/$1.conf" -p "$work"
}

# nginx_proxy PORT: an nginx (one worker) named `proxy` on 127.0.0.1:PORT, proxying
# everything to $BACKEND over kept-alive HTTP/1.1 connections, as Sluice does.
nginx_proxy() {
  nginx_conf proxy "upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$1; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ''; } }"
}

# backend_route: the HTTPRoute `bench` with one rule, everything to the Service
# `backend`.
backend_route() {
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules: [{backendRefs: [{name: backend, port: 80}]}]
YAML
}

# sluice_config LISTENERS: the GatewayClass, a Gateway `bench` with LISTENERS (YAML
# flow list) on 127.0.0.1, and the Service `backend` pointing at $BACKEND.
sluice_config() {
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: default}
spec:
  gatewayClassName: sluice
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners: $1
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: default, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: $BACKEND}]
endpoints: [{addresses: [127.0.0.1]}]
---
YAML
}

# start_sluice DIR [ARGS...]: one worker thread, waits for /readyz; sets SLUICE_PID.
# $SLUICE_BIN runs another build (a before/after comparison).
# The access log is off (as nginx's is in these benchmarks) unless ARGS turn it on.
start_sluice() {
  local dir=$1
  shift
  [ $# -gt 0 ] || set -- --access-log off
  SLUICE_LOG=warn "${SLUICE_BIN:-./target/release/sluice}" run "$dir" --workers 1 --admin 127.0.0.1:$ADMIN "$@" &
  SLUICE_PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null 127.0.0.1:$ADMIN/readyz && break; sleep 0.1; done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
worker_pid() { pgrep -P "$(cat "$work/$1.pid")" | head -1; }

# wrk_stats LABEL < WRK_OUTPUT: one line "LABEL rps p50_ms p99_ms non2xx" from wrk
# --latency output.
wrk_stats() {
  python3 -c '
import re, sys
text = sys.stdin.read()
def ms(q):
    m = re.search(q + r"\s+([\d.]+)(us|ms|s)\b", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(sys.argv[1], float(rps.group(1)) if rps else 0.0, ms("50%"), ms("99%"), int(bad.group(1)) if bad else 0)
' "$1"
}
