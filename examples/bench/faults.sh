#!/usr/bin/env bash
# Fault matrix: a healthy route measured alone, then beside each fault: a Wasm filter
# that traps, loops to its 10 s limit, grows memory past its limit or panics (under
# load on its own route), 1,000 slowloris connections, 1,000 request bodies sent a byte
# a second, 5,000 idle connections, and 100 clients that request a large response and
# never read it. Each row gives the healthy route's rps and p99, the healthy requests
# that failed (non-2xx and socket errors; it should be 0), Sluice's RSS, and the slowest
# of the /readyz probes sent five times a second meanwhile. Sluice runs with 2 workers;
# everything is on 127.0.0.1.
#
#   examples/bench/faults.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-16}
source examples/bench/lib.sh
bench_setup misbehave
# The floods below hold thousands of sockets in this shell's children.
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18090 SLUICE=18092 ADMIN=18093

head -c $((8 << 20)) /dev/zero > "$work/large.bin"
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location /large { alias $work/large.bin; } location / { return 200 'ok'; } }"

mkdir -p "$work/sluice"
cp filters/target/wasm32-wasip2/release/misbehave.wasm "$work/sluice/"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  for mode in trap loop grow panic; do
    limits="{memory: 4Mi, timeout: 20ms}"
    [ "$mode" = loop ] && limits="{timeout: 10s}"
    cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: $mode, namespace: default}
spec:
  source: {path: misbehave.wasm}
  config: {mode: $mode, path: /$mode}
  limits: $limits
---
YAML
  done
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: faults, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - backendRefs: [{name: backend, port: 80}]
YAML
  for mode in trap loop grow panic; do
    cat <<YAML
  - matches: [{path: {value: /$mode}}]
    filters: [{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: $mode}}]
    backendRefs: [{name: backend, port: 80}]
YAML
  done
} > "$work/sluice/config.yaml"
SLUICE_LOG=error ./target/release/sluice run "$work/sluice" --workers 2 --admin 127.0.0.1:$ADMIN \
  --max-connections 20000 --access-log off &
SLUICE_PID=$!
for _ in $(seq 100); do curl -sf -o /dev/null 127.0.0.1:$ADMIN/readyz && break; sleep 0.1; done

# flood MODE N SECONDS: holds N connections to Sluice that misbehave in MODE.
flood() {
  python3 - "$1" "$2" "$3" "$SLUICE" <<'PY' &
import socket, sys, time
mode, n, secs, port = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
socks, end = [], time.time() + secs
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        continue
    if mode == "slowloris":
        s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")
    elif mode == "slowbody":
        s.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
    elif mode == "nonreading":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /large HTTP/1.1\r\nHost: h\r\n\r\n")
    socks.append(s)
while time.time() < end:
    if mode in ("slowloris", "slowbody"):
        for s in socks:
            try:
                s.sendall(b"x")
            except OSError:
                pass
    time.sleep(1)
PY
}

# measure LABEL [FAULT_PID]: the healthy route under wrk, and /readyz five times a
# second, while the current fault runs; FAULT_PID is a wrk on the faulty route, whose
# rps (in $work/fault.out) goes in the row.
measure() {
  (for _ in $(seq $((DURATION * 5))); do
    curl -s -o /dev/null -m 5 -w '%{time_total}\n' "127.0.0.1:$ADMIN/readyz"; sleep 0.2
  done) > "$work/readyz" &
  local probe=$!
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$SLUICE/")
  wait "$probe" || true
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$SLUICE_PID/status")
  local ready; ready=$(sort -g "$work/readyz" | tail -1)
  local faulty=""
  if [ -n "${2:-}" ]; then wait "$2" || true; faulty=$(cat "$work/fault.out"); fi
  python3 - "$1" "$rss" "${ready:-nan}" "$faulty" <<PY
import re, sys
label, rss, ready = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) * 1000
faulty = re.search(r"Requests/sec:\s+([\d.]+)", sys.argv[4])
faulty = f"{float(faulty.group(1)):.0f}" if faulty else "-"
text = """$out"""
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v or "")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p99m = re.search(r"99%\s+(\S+)", text)
p99 = ms(p99m.group(1) if p99m else None)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
print(f"{label:28} {rps:9.0f} {p99:8.2f} {failed:7d} {rss / 1024:8.1f} {ready:10.1f} {faulty:>12}")
PY
}

echo "healthy route: wrk -t1 -c$CONNS -d${DURATION}s; sluice --workers 2; RSS at the end of each row"
printf '%-28s %9s %8s %7s %8s %10s %12s\n' fault rps "p99 ms" failed "RSS MB" "readyz max ms" "faulty rps"
measure "none"
for mode in trap loop grow panic; do
  # The faulty route's own load; its rps goes beside the healthy route's.
  wrk -t1 -c4 -d"$((DURATION + 1))s" "http://127.0.0.1:$SLUICE/$mode" > "$work/fault.out" 2>&1 &
  fault_pid=$!
  sleep 0.5
  measure "filter $mode (4 conns)" "$fault_pid"
done
flood slowloris 1000 "$((DURATION + 2))"; sleep 1; measure "slowloris x1000"; wait $! || true
flood slowbody 1000 "$((DURATION + 2))"; sleep 1; measure "slow bodies x1000"; wait $! || true
flood idle 5000 "$((DURATION + 2))"; sleep 2; measure "idle connections x5000"; wait $! || true
flood nonreading 100 "$((DURATION + 2))"; sleep 1; measure "non-reading x100 (8 MiB)"; wait $! || true
measure "none (after)"
