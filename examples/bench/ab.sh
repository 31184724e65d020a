#!/usr/bin/env bash
# Before and after: two Sluice builds serve the same routes side by side (/ with no
# filter, /b the built-in header modifiers, /f1 and /f3 one and three `headers` Wasm
# filters, and, when asked for, /f1x3: one `headers` filter doing /f3's three filters'
# work, the most composing them into one call could save), measured in turns on each
# path. Prints, per path, the medians of each
# build's rps and CPU µs per request, and B's ratio and CPU difference to A; each
# measurement's line also splits the CPU by thread name (the worker, the Wasm epoch
# clock, ...). Everything binds to 127.0.0.1.
#
#   examples/bench/ab.sh BIN_A BIN_B [SECONDS] [ROUNDS] [PATH...]
#
# Copy a build aside before changing the code (cp target/release/sluice /tmp/before),
# then compare: examples/bench/ab.sh /tmp/before target/release/sluice 5 5
# The backend and both gateways (one worker each) share CPU 0, wrk runs on CPU 1. On
# this shared 2-core machine the same build against itself differs by up to 0.9 µs
# per request over 2 rounds of 3 s, and by up to 0.6 µs over 3 rounds of 4 s: take
# 5 rounds or more before believing a difference under 1 µs.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 2 ]; then
  echo "usage: $0 BIN_A BIN_B [SECONDS] [ROUNDS] [PATH...]" >&2
  exit 2
fi
A=$(realpath "$1") B=$(realpath "$2")
DURATION=${3:-5}
ROUNDS=${4:-5}
shift $(($# < 4 ? $# : 4))
if [ $# -gt 0 ]; then PATHS=("$@"); else PATHS=(/ /b /f1 /f3); fi
CONNS=50
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18180 PORT_A=18181 PORT_B=18183
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"

gateway() { # DIR PORT
  mkdir -p "$1"
  headers_filters "$1"
  # /f1x3: one `headers` filter doing the work of /f3's three, what those three would
  # cost composed into one call per hook, at best.
  cat >> "$1/filters.yaml" <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: h123, namespace: default}
spec:
  source: {path: headers.wasm}
  config:
    request: {set: {x-bench-1: "1", x-bench-2: "1", x-bench-3: "1"}, remove: [x-none-1, x-none-2, x-none-3]}
    response: {set: {x-served-1: "1", x-served-2: "1", x-served-3: "1"}}
---
YAML
  {
    sluice_config "[{name: http, port: $2, protocol: HTTP}]"
    header_routes # also defines header_ext, used below
    cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: composed, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - matches: [{path: {value: /f1x3}}]
    filters: [$(header_ext 123)]
    backendRefs: [{name: backend, port: 80}]
YAML
  } > "$1/config.yaml"
}
gateway "$work/a" $PORT_A
gateway "$work/b" $PORT_B
ADMIN=18182 SLUICE_BIN=$A start_sluice "$work/a"
PID_A=$SLUICE_PID
ADMIN=18184 SLUICE_BIN=$B start_sluice "$work/b"
PID_B=$SLUICE_PID
# Each path answers 200 on both, and a filter path with the filters' response header.
for p in "${PATHS[@]}"; do
  for port in $PORT_A $PORT_B; do
    head=$(curl -s -D - -o /dev/null "http://127.0.0.1:$port$p")
    grep -q '^HTTP/1.1 200' <<<"$head" || { echo "$p on port $port: not 200: $head" >&2; exit 1; }
    if [[ $p == /f* ]] && ! grep -qi '^x-served-1: 1' <<<"$head"; then
      echo "$p on port $port: no x-served-1 from its filter: $head" >&2
      exit 1
    fi
  done
done
for p in "$(cat "$work/backend.pid")" $(pgrep -P "$(cat "$work/backend.pid")"); do
  taskset -pc 0 "$p" >/dev/null
done
for t in /proc/$PID_A/task/* /proc/$PID_B/task/*; do taskset -pc 0 "${t##*/}" >/dev/null; done

# CPU ticks by thread name: "name ticks" lines, sorted by name.
threads() {
  for t in /proc/"$1"/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}

one() { # LABEL PORT PID PATH
  local out n rps
  taskset -c 1 wrk -t1 -c$CONNS -d1s "http://127.0.0.1:$2$4" >/dev/null
  threads "$3" > "$work/t0"
  out=$(taskset -c 1 wrk -t1 -c$CONNS -d"${DURATION}s" "http://127.0.0.1:$2$4")
  threads "$3" > "$work/t1"
  n=$(echo "$out" | grep -oP '\d+(?= requests in)')
  rps=$(echo "$out" | grep -oP 'Requests/sec:\s+\K[\d.]+')
  join "$work/t0" "$work/t1" | awk -v n="$n" -v l="$1" -v p="$4" -v rps="$rps" -v hz="$(getconf CLK_TCK)" '
    {d = ($3 - $2) / hz * 1e6 / n; tot += d; if (d > 0) s = s sprintf(" %s=%.2f", $1, d)}
    END {printf "%s %s %d %.2f%s\n", l, p, rps, tot, s}'
}

for _ in $(seq "$ROUNDS"); do
  for p in "${PATHS[@]}"; do
    one A $PORT_A "$PID_A" "$p"
    one B $PORT_B "$PID_B" "$p"
  done
done | tee "$work/out.txt"

python3 - "$work/out.txt" "$A" "$B" "$DURATION" "$ROUNDS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    runs[(f[0], f[1])].append((float(f[2]), float(f[3])))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
print(f"wrk -t1 -c50 -d{sys.argv[4]}s on CPU 1, one worker each on CPU 0 with the backend; "
      f"medians of {sys.argv[5]} rounds")
for path in dict.fromkeys(k[1] for k in runs):
    a, b = runs[("A", path)], runs[("B", path)]
    ra, ca = (statistics.median(x[i] for x in a) for i in (0, 1))
    rb, cb = (statistics.median(x[i] for x in b) for i in (0, 1))
    print(f"{path:5} A {ra:8.0f} rps {ca:6.2f} µs/req | B {rb:8.0f} rps {cb:6.2f} µs/req "
          f"| B/A rps x{rb / ra:.3f}, CPU {cb - ca:+.2f} µs")
PY
