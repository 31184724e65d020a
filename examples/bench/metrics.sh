#!/usr/bin/env bash
# What a /metrics scrape costs with many route rules: Sluice with PATHS rules (one
# path each, 16 per HTTPRoute), first with one rule used, then with USED rules used
# (one request each). Prints the body size, line count and the median of SCRAPES
# scrape times (curl's time_total, on 127.0.0.1) for each.
#
#   examples/bench/metrics.sh [PATHS] [USED] [SCRAPES]
set -euo pipefail
cd "$(dirname "$0")/../.."
PATHS=${1:-10000}
USED=${2:-1000}
SCRAPES=${3:-21}
source examples/bench/lib.sh
bench_setup headers

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18094 SLUICE=18095 ADMIN=18096

nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
mkdir -p "$work/sluice"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  python3 - "$PATHS" <<'PY'
import sys
n = int(sys.argv[1])
for r in range((n + 15) // 16):
    print("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute")
    print(f"metadata: {{name: r{r}, namespace: default}}")
    print("spec:\n  parentRefs: [{name: bench}]\n  rules:")
    for i in range(r * 16, min(n, r * 16 + 16)):
        print(f"  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]")
        print("    backendRefs: [{name: backend, port: 80}]")
    print("---")
PY
} > "$work/sluice/config.yaml"
start_sluice "$work/sluice"

# scrape LABEL: size, lines and the median scrape time.
scrape() {
  curl -s "127.0.0.1:$ADMIN/metrics" > "$work/metrics.txt"
  local times
  times=$(for _ in $(seq "$SCRAPES"); do
    curl -s -o /dev/null -w '%{time_total}\n' "127.0.0.1:$ADMIN/metrics"
  done | sort -n)
  local median
  median=$(echo "$times" | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)] * 1000}')
  printf '%-22s %9s bytes %7s lines  scrape median %s ms\n' "$1" \
    "$(wc -c < "$work/metrics.txt")" "$(wc -l < "$work/metrics.txt")" "$median"
}

curl -s -o /dev/null "127.0.0.1:$SLUICE/p0"
scrape "$PATHS rules, 1 used"
for i in $(seq 0 $((USED - 1))); do printf "url = \"http://127.0.0.1:%s/p%s\"\noutput = \"/dev/null\"\n" "$SLUICE" "$i"; done > "$work/urls"
curl -s --parallel --parallel-max 16 -K "$work/urls"
scrape "$PATHS rules, $USED used"
