#!/usr/bin/env bash
# What hyper's HTTP/1.1 server costs per request, against a hand-written loop doing the
# same work (peers/h1-server-cost), and against nginx (`return 200`, one worker): each
# serves `200 ok` pinned to CPU 0 (the Rust ones on one current-thread runtime, as a
# Sluice worker), wrk -t1 -c50 on CPU 1, in turns; prints each one's medians of rps and
# of user and system CPU µs per request (from /proc), and the difference to `auto` (how
# Sluice's listeners serve today). `raw` against `auto` bounds what serving client
# connections without hyper could save per request; nginx against `auto` is the whole
# server side's gap, kernel and wake-ups included.
#
#   examples/bench/h1cost.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
ROUNDS=${2:-5}
CARGO_TARGET_DIR=target/bench/peers cargo build -q --release \
  --manifest-path examples/bench/peers/h1-server-cost/Cargo.toml
BIN=target/bench/peers/release/h1-server-cost
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
source examples/bench/lib.sh
MODES=(auto h1 raw nginx)
port=18400
declare -A PORT PID
nginx_conf nginx "server { listen 127.0.0.1:18409; location / { return 200 'ok'; } }"
PORT[nginx]=18409
PID[nginx]=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
taskset -pc 0 "${PID[nginx]}" > /dev/null
for m in auto h1 raw; do
  port=$((port + 1))
  PORT[$m]=$port
  taskset -c 0 "$BIN" "$m" "$port" &
  PID[$m]=$!
done
sleep 0.5
for r in $(seq "$ROUNDS"); do
  for m in "${MODES[@]}"; do
    url=http://127.0.0.1:${PORT[$m]}/
    taskset -c 1 wrk -t1 -c50 -d1s "$url" > /dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/${PID[$m]}/stat")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" "$url")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/${PID[$m]}/stat")
    n=$(echo "$out" | grep -oP '\d+(?= requests in)')
    echo "$r $m $n $((u1 - u0)) $((s1 - s0))" >> "$work/out.txt"
  done
done
python3 - "$work/out.txt" "$DURATION" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
secs, hz = float(sys.argv[2]), float(sys.argv[3])
by = {}
for r, m, n, u, s in rows:
    n = int(n)
    by.setdefault(m, []).append((n / secs, int(u) / hz * 1e6 / n, int(s) / hz * 1e6 / n))
med = lambda v, i: statistics.median(x[i] for x in v)
base = med(by["auto"], 1) + med(by["auto"], 2)
print(f"pinned to CPU 0, wrk -t1 -c50 -d{secs:g}s on CPU 1; medians of {len(by['auto'])} rounds")
for m, v in by.items():
    u, s = med(v, 1), med(v, 2)
    print(f"{m:5s} {med(v, 0):9.0f} rps  user {u:5.2f} + sys {s:5.2f} = {u + s:5.2f} µs/req  ({u + s - base:+.2f} µs against auto)")
PY
