#!/usr/bin/env bash
# Throughput benchmark: the same nginx `return 200` backend measured directly, through
# nginx as a reverse proxy (one worker) and through Sluice (one worker thread), in one
# run on this machine; then Sluice routes with 0, 1 and 3 `headers` Wasm filters. Prints
# rps, p50, p99 and proxy CPU µs per request, the ratios to nginx, and the CPU each
# filter adds. Everything binds to 127.0.0.1.
#
#   examples/bench/run.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
#
# Each target is measured ROUNDS times (default 3), the targets interleaved, and the
# median of each column is printed: the machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-6}
CONNS=${2:-32}
ROUNDS=${3:-3}
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; [ -f "$work/proxy.pid" ] && kill "$(cat "$work/proxy.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18080 NGINX_PROXY=18081 SLUICE=18082 ADMIN=18083

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
nginx_proxy $NGINX_PROXY

mkdir -p "$work/sluice"
headers_filters "$work/sluice"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  header_routes
} > "$work/sluice/config.yaml"
start_sluice "$work/sluice"

measure() { # label port pid-of-process-whose-cpu-counts [path]
  local label=$1 port=$2 pid=$3 path=${4:-/}
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port$path" >/dev/null # warm up pools
  local c0; c0=$(cpu_ticks "$pid")
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port$path")
  local c1; c1=$(cpu_ticks "$pid")
  echo "$out" > "$work/$label.wrk"
  python3 - "$label" "$((c1 - c0))" "$(getconf CLK_TCK)" "$work/$label.wrk" <<'PY'
import re, sys
label, ticks, hz, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(path).read()
def ms(v):
    # wrk prints "61.00us", "1.52ms", "2.00s", or "-nan" when it has no sample.
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
pct = lambda q: (lambda m: ms(m.group(1)) if m else float("nan"))(re.search(q + r"\s+(\S+)", text))
p50 = pct("50%")
p99 = pct("99%")
cpu_us = ticks / hz * 1e6 / max(total, 1)
print(f"{label}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu_us:.1f}\t{errors.group(1) if errors else 0}")
PY
}

results=$work/results.tsv
: > "$results"
for _ in $(seq "$ROUNDS"); do
  measure direct $BACKEND "$(worker_pid backend)" >> "$results"
  measure nginx $NGINX_PROXY "$(worker_pid proxy)" >> "$results"
  measure sluice $SLUICE $SLUICE_PID >> "$results"
  measure wasm-0 $SLUICE $SLUICE_PID /f0 >> "$results"
  measure wasm-1 $SLUICE $SLUICE_PID /f1 >> "$results"
  measure wasm-3 $SLUICE $SLUICE_PID /f3 >> "$results"
done

python3 - "$results" "$DURATION" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
raw = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
labels = list(dict.fromkeys(r[0] for r in raw))
rows = []
for label in labels:
    mine = [r for r in raw if r[0] == label]
    rows.append([label] + [str(statistics.median(float(r[i]) for r in mine)) for i in range(1, 6)])
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[2]}s, one proxy worker each, median of {sys.argv[4]} interleaved rounds; "
      "CPU is the proxy's own (the backend's for 'direct')")
print(f"{'target':8} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11} {'non-2xx':>8}")
for r in rows:
    print(f"{r[0]:8} {float(r[1]):9.0f} {float(r[2]):8.3f} {float(r[3]):8.3f} {float(r[4]):11.1f} {float(r[5]):8.0f}")
n = {r[0]: r for r in rows}
s, x = n["sluice"], n["nginx"]
print(f"sluice/nginx: rps x{float(s[1]) / float(x[1]):.2f}, p99 x{float(s[3]) / float(x[3]):.2f}, cpu/req x{float(s[4]) / float(x[4]):.2f}")
w0, w1, w3 = (float(n[k][4]) for k in ("wasm-0", "wasm-1", "wasm-3"))
print(f"Wasm headers filter (request + response hook, 3 headers): +{w1 - w0:.2f} us CPU/request for 1 filter, "
      f"+{(w3 - w0) / 3:.2f} us per filter with 3; rps with 3 filters x{float(n['wasm-3'][1]) / float(n['wasm-0'][1]):.2f} of none")
PY
