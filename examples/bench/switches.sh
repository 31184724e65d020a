#!/usr/bin/env bash
# How often the backend preempts the proxy when the two share a core, as in
# compare.sh's one-worker runs: Sluice (one worker) and nginx (one worker) proxy `/`
# to the same nginx backend, in turns, with wrk on CPU 1. Each proxy is measured with
# the backend on its core (CPU 0) and on wrk's (CPU 1). Prints rps, the proxy's CPU
# µs per request, and the proxy's context switches per request that the scheduler
# forced on it (state R when switched out, counted from sched:sched_switch on CPU 0
# for one second), and what took the CPU. Everything binds to 127.0.0.1.
#
#   examples/bench/switches.sh [SECONDS]            (default 4)
#
# SLUICE_BIN=path runs another build. Needs perf (Debian's linux-perf), installed
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-4}
source examples/bench/lib.sh
bench_setup headers
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in "$work"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done; rm -rf "$work"' EXIT
BACKEND=18190 SLUICE=18191 ADMIN=18192 NGINX=18193
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
nginx_proxy $NGINX
mkdir -p "$work/s"
{ sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"; backend_route; } > "$work/s/config.yaml"
start_sluice "$work/s"

# pin PID CPU: every thread of PID (and of its children: nginx's worker) onto CPU.
pin() {
  local p t
  for p in "$1" $(pgrep -P "$1" || true); do
    for t in /proc/"$p"/task/*; do taskset -pc "$2" "${t##*/}" >/dev/null; done
  done
}
pin "$SLUICE_PID" 0
pin "$(cat "$work/proxy.pid")" 0
NGINX_WORKER=$(worker_pid proxy)

printf '%-8s %-14s %8s %9s %11s  %s\n' proxy backend rps "µs/req" "preempt/req" "preempted by (per second)"
for backend_cpu in 0 1; do
  pin "$(cat "$work/backend.pid")" "$backend_cpu"
  for proxy in sluice nginx; do
    if [ $proxy = sluice ]; then pid=$SLUICE_PID port=$SLUICE comm=sluice; else pid=$NGINX_WORKER port=$NGINX comm=nginx; fi
    taskset -c 1 wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null
    before=$(cpu_ticks "$pid")
    taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$port/" > "$work/wrk" & W=$!
    sleep 1
    perf record -q -e sched:sched_switch -C 0 -o "$work/sw.data" -- sleep 1 2>/dev/null
    wait $W
    after=$(cpu_ticks "$pid")
    rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk")
    n=$(awk '/requests in/{print $1}' "$work/wrk")
    # Switches of the proxy's threads out of CPU 0 while runnable (prev_state=R).
    perf script -i "$work/sw.data" -F trace 2>/dev/null |
      sed -nE 's/^prev_comm=([^ ]+) prev_pid=[0-9]+ prev_prio=[0-9]+ prev_state=R\+? ==> next_comm=([^ ]+).*/\1 \2/p' |
      awk -v comm="$comm" 'index($1, comm) == 1 {print $2}' | sort | uniq -c | sort -nr > "$work/by"
    preempt=$(awk '{s += $1} END {print s + 0}' "$work/by")
    by=$(awk '{printf "%s %s, ", $2, $1}' "$work/by" | sed 's/, $//')
    python3 -c 'import sys, os
rps, n, ticks, pre = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / n
print(f"%-8s %-14s %8.0f %9.2f %11.3f  %s" % (sys.argv[5], "CPU " + sys.argv[6] + (" (shared)" if sys.argv[6] == "0" else ""), rps, us, pre / rps, sys.argv[7]))' \
      "$rps" "$n" "$((after - before))" "$preempt" "$proxy" "$backend_cpu" "$by"
  done
done
echo "wrk -t1 -c50 -d${DURATION}s on CPU 1; each proxy has one worker on CPU 0; the backend is one nginx worker"
