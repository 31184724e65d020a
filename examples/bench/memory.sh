#!/usr/bin/env bash
# Memory benchmark: resident memory (RSS, and its anonymous part) of nginx as a reverse
# proxy (master + one worker) and of Sluice (one worker thread), idle after start and
# again after a burst of traffic, with 10 and with ROUTES path routes, in one run on this
# machine. Prints MB and the ratio of each Sluice row to nginx's. Everything binds to
# 127.0.0.1.
#
#   examples/bench/memory.sh [ROUTES] [LOAD_SECONDS]
#
# SLUICE_BIN=path runs another build (a before/after comparison); MIMALLOC_* variables
# reach Sluice's allocator as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUTES=${1:-10000}
LOAD=${2:-3}
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in "$work"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; rm -rf "$work"' EXIT
BACKEND=18090 NGINX_PROXY=18091 SLUICE=18092 ADMIN=18093

# rss_kb PID...: total VmRSS and RssAnon of the processes, in kB.
rss_kb() {
  local rss=0 anon=0 p
  for p in "$@"; do
    rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
    anon=$((anon + $(awk '/^RssAnon/ {print $2}' "/proc/$p/status")))
  done
  echo "$rss $anon"
}

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"

# routes N: N HTTPRoute rules of one path each (`/r0` ... ), 16 rules per route as the
# CRD allows, the last one hit by the load.
routes() {
  python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
for r in range(0, n, 16):
    print(f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{r}, namespace: default}}\nspec:\n  parentRefs: [{{name: bench}}]\n  rules:")
    for i in range(r, min(r + 16, n)):
        print(f"  - matches: [{{path: {{value: /r{i}}}}}]\n    backendRefs: [{{name: backend, port: 80}}]")
    print("---")
PY
}

# measure LABEL URL PID...: "LABEL idle_rss idle_anon loaded_rss loaded_anon" in kB.
measure() {
  local label=$1 url=$2
  shift 2
  sleep 1
  local idle; idle=$(rss_kb "$@")
  wrk -t1 -c32 -d"${LOAD}s" "$url" >/dev/null
  sleep 1
  echo "$label $idle $(rss_kb "$@")"
}

results=$work/results
# nginx: one location per route, as a user would write them.
locations() {
  for i in $(seq 0 $(($1 - 1))); do echo "location = /r$i { proxy_pass http://be; }"; done
}
for n in 10 "$ROUTES"; do
  nginx_conf "proxy$n" "upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PROXY; proxy_http_version 1.1; proxy_set_header Connection ''; $(locations "$n") }"
  master=$(cat "$work/proxy$n.pid")
  measure "nginx-$n" "http://127.0.0.1:$NGINX_PROXY/r$((n - 1))" "$master" $(pgrep -P "$master") >>"$results"
  kill "$master"
  sleep 0.5

  mkdir -p "$work/s$n"
  { sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"; routes "$n"; } >"$work/s$n/config.yaml"
  start_sluice "$work/s$n"
  for _ in $(seq 100); do curl -sf -o /dev/null "127.0.0.1:$SLUICE/r$((n - 1))" && break; sleep 0.1; done
  measure "sluice-$n" "http://127.0.0.1:$SLUICE/r$((n - 1))" "$SLUICE_PID" >>"$results"
  kill "$SLUICE_PID"
  wait "$SLUICE_PID" 2>/dev/null || true
done

echo "RSS after start (idle) and after ${LOAD}s of wrk -c32 (loaded), MB; nginx: master + 1 worker"
python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, *kb = line.split()
    rows[label] = [int(v) / 1024 for v in kb]
print(f"{'':14} {'idle RSS':>9} {'anon':>7} {'loaded RSS':>11} {'anon':>7} {'idle ×nginx':>12} {'loaded ×nginx':>14}")
for label, (idle, ianon, loaded, lanon) in rows.items():
    base = rows.get("nginx-" + label.split("-")[1])
    ratio = f"{idle / base[0]:12.2f} {loaded / base[2]:14.2f}" if base and not label.startswith("nginx") else ""
    print(f"{label:14} {idle:9.1f} {ianon:7.1f} {loaded:11.1f} {lanon:7.1f} {ratio}")
PY
