#!/usr/bin/env bash
# One worker against two, for nginx and two Sluice builds, in interleaved rounds: each
# system with one worker (it and the backend pinned to CPU 1, `wrk -t1 -c50` to CPU 0)
# and with two (nothing pinned, `wrk -t2 -c50`), as compare.sh's plain and workers
# scenarios run them. Prints each measurement (round, system and workers, rps, CPU
# µs per request over all of the system's threads, wrk's p50 and p99 in ms), then per
# system the medians and the gain of two workers over one. Everything binds to
# 127.0.0.1.
#
#   examples/bench/workers.sh BIN_A BIN_B [SECONDS] [ROUNDS]
#
# Copy a build aside before changing the code (cp target/release/sluice /tmp/before),
# then: examples/bench/workers.sh /tmp/before target/release/sluice 5 5
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 2 ]; then
  echo "usage: $0 BIN_A BIN_B [SECONDS] [ROUNDS]" >&2
  exit 2
fi
OLD=$(realpath "$1") NEW=$(realpath "$2") DUR=${3:-5} ROUNDS=${4:-5}
source examples/bench/lib.sh
bench_setup headers
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in "$work"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"' EXIT
BACKEND=18400
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
for n in 1 2; do
  sed "s/worker_processes 1;/worker_processes $n;/" > "$work/ng$n.conf" <<CONF
worker_processes 1;
daemon on;
pid $work/ng$n.pid;
error_log $work/ng$n.err warn;
events { worker_connections 4096; }
http { access_log off;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:1841$n; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ''; } } }
CONF
  nginx -c "$work/ng$n.conf" -p "$work"
done
port=18420
declare -A PORT PIDS
for b in a b; do for n in 1 2; do
  port=$((port+1)); d="$work/$b$n"; mkdir -p "$d"
  { sluice_config "[{name: http, port: $port, protocol: HTTP}]"; backend_route; } > "$d/c.yaml"
  bin=$OLD; [ $b = b ] && bin=$NEW
  SLUICE_LOG=warn $bin run "$d" --workers $n --admin 127.0.0.1:$((port+100)) --access-log off &
  PIDS[$b$n]=$!; PORT[$b$n]=$port
done; done
PORT[nginx1]=18411 PORT[nginx2]=18412
sleep 2
PIDS[nginx1]="$(cat $work/ng1.pid) $(pgrep -P $(cat $work/ng1.pid) | tr '\n' ' ')"
PIDS[nginx2]="$(cat $work/ng2.pid) $(pgrep -P $(cat $work/ng2.pid) | tr '\n' ' ')"
taskset -pc 1 $(cat $work/backend.pid) >/dev/null; for p in $(pgrep -P $(cat $work/backend.pid)); do taskset -pc 1 $p >/dev/null; done
ticks() { local t=0; for p in $1; do for tk in /proc/$p/task/*/stat; do t=$((t + $(awk '{print $14+$15}' $tk))); done; done; echo $t; }
for r in $(seq $ROUNDS); do
  for s in nginx a b; do for n in 1 2; do
    k=$s$n; url=http://127.0.0.1:${PORT[$k]}/
    if [ $n = 1 ]; then for p in ${PIDS[$k]}; do for t in /proc/$p/task/*; do taskset -pc 1 ${t##*/} >/dev/null; done; done; load="taskset -c 0 wrk -t1 -c50"; else load="wrk -t2 -c50"; fi
    $load -d1s $url >/dev/null
    t0=$(ticks "${PIDS[$k]}")
    out=$($load -d${DUR}s --latency $url)
    t1=$(ticks "${PIDS[$k]}")
    req=$(echo "$out" | awk '/requests in/ {print $1}')
    read -r _ rps p50 p99 _ < <(echo "$out" | wrk_stats -)
    echo "$r $k $rps $(python3 -c "print(round(($t1-$t0)/$(getconf CLK_TCK)*1e6/$req,2))") $p50 $p99" | tee -a "$work/results"
  done; done
done
echo "system workers: median rps, CPU µs/request, p99 ms; gain of two workers over one"
python3 - "$work/results" <<'PY'
import collections, statistics as st, sys
rps, cpu, p99 = (collections.defaultdict(list) for _ in range(3))
for line in open(sys.argv[1]):
    _, k, r, c, _, q = line.split()
    rps[k].append(float(r)); cpu[k].append(float(c)); p99[k].append(float(q))
m = lambda d, k: st.median(d[k])
for s in ("nginx", "a", "b"):
    one, two = m(rps, s + "1"), m(rps, s + "2")
    print(f"{s:6} 1: {one:8.0f} {m(cpu, s + '1'):6.2f} {m(p99, s + '1'):5.2f}   2: {two:8.0f} {m(cpu, s + '2'):6.2f} {m(p99, s + '2'):5.2f}   gain x{two / one:.3f}")
print(f"b / a with two workers: rps x{m(rps, 'b2') / m(rps, 'a2'):.3f}, p99 x{m(p99, 'b2') / m(p99, 'a2'):.3f}")
print(f"two workers, p99 over nginx's: a x{m(p99, 'a2') / m(p99, 'nginx2'):.2f}, b x{m(p99, 'b2') / m(p99, 'nginx2'):.2f}")
PY
