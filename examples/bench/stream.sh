#!/usr/bin/env bash
# Streamed bodies (filter API 0.2): a SIZE upload (default 1 GiB) through a route with
# the body-hash filter (SHA-256 of the body, chunk by chunk, sent on as a trailer),
# through a route whose filter streams the body and passes every chunk untouched
# (sub-filter, which the upload's content type does not concern: the cost of
# streaming alone), and through a route without filters, ROUNDS times each,
# alternating. Prints per upload the MB/s and how far the gateway's RSS rose above
# where it stood before the upload (sampled every 20 ms), then the medians and the
# ratios to the plain route.
#
#   [SLUICE_BIN=PATH] examples/bench/stream.sh [SIZE_MIB] [ROUNDS] [WORKERS]
#
# SLUICE_BIN runs another build as the gateway (a copy made before a change), to
# compare two builds run after run.
# The backend is `sluice echo`, which counts the body and drops it as it comes; curl
# uploads from a file (`-T`, with its content-length). Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${1:-1024}
ROUNDS=${2:-3}
WORKERS=${3:-2}
source examples/bench/lib.sh
bench_setup body-hash
cargo build --release --target wasm32-wasip2 --manifest-path filters/Cargo.toml -p sub-filter >&2

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
BACKEND=18100 SLUICE=18101 ADMIN=18102

./target/release/sluice echo --listen 127.0.0.1:$BACKEND >/dev/null 2>&1 &
head -c $((SIZE << 20)) /dev/urandom > "$work/upload"

mkdir -p "$work/sluice"
cp filters/target/wasm32-wasip2/release/{body_hash,sub_filter}.wasm "$work/sluice/"
ext() { echo "{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: $1}}"; }
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  cat <<YAML
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: hash, namespace: default}
spec: {source: {path: body_hash.wasm}}
---
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: pass, namespace: default}
spec:
  source: {path: sub_filter.wasm}
  config: {replace: [{from: "x", to: "y"}], direction: request}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules:
  - matches: [{path: {value: /hash}}]
    filters: [$(ext hash)]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {value: /pass}}]
    filters: [$(ext pass)]
    backendRefs: [{name: backend, port: 80}]
  - backendRefs: [{name: backend, port: 80}]
YAML
} > "$work/sluice/config.yaml"
SLUICE_LOG=warn "${SLUICE_BIN:-./target/release/sluice}" run "$work/sluice" --workers "$WORKERS" --admin 127.0.0.1:$ADMIN --access-log off &
SLUICE_PID=$!
for _ in $(seq 100); do curl -sf -o /dev/null 127.0.0.1:$ADMIN/readyz && break; sleep 0.1; done

# upload PATH: prints "MB/s rss_rise_MiB" for one upload. The RSS is sampled every
# 20 ms by one Python process for the whole upload: a shell loop forking awk and sleep
# 50 times a second took 7% of the machine's CPU from the upload it measured.
# busy: the machine's busy CPU time so far, in seconds (all cores, from /proc/stat).
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {print ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat; }

upload() {
  local before cpu0
  before=$(awk '/^VmRSS/ {print $2}' "/proc/$SLUICE_PID/status")
  cpu0=$(busy)
  curl -s -o "$work/answer" -w '%{size_upload} %{time_total}\n' -T "$work/upload" \
    "http://127.0.0.1:$SLUICE$1" > "$work/curl" &
  local curl_pid=$!
  local rise
  rise=$(python3 - "$SLUICE_PID" "$curl_pid" "$before" <<'PY'
import os, sys, time
def rss():
    with open(f"/proc/{sys.argv[1]}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
before = peak = int(sys.argv[3])
while os.path.exists(f"/proc/{sys.argv[2]}") and open(f"/proc/{sys.argv[2]}/stat").read().split()[2] != "Z":
    peak = max(peak, rss())
    time.sleep(0.02)
print((peak - before) / 1024)
PY
)
  wait $curl_pid
  grep -q "\"bodyLength\":$((SIZE << 20))" "$work/answer" || { echo "upload to $1 incomplete: $(head -c 300 "$work/answer")" >&2; exit 1; }
  awk -v r="$rise" -v c="$(awk -v a="$cpu0" -v b="$(busy)" 'BEGIN {print b - a}')" \
    '{printf "%.0f %.1f %.2f %.2f\n", $1 / $2 / 1e6, r, c, c / $2}' "$work/curl"
}

upload / >/dev/null   # warm-up: connections, the filter's first instance
upload /hash >/dev/null
upload /pass >/dev/null
echo "upload of ${SIZE} MiB, $WORKERS gateway workers: route MB/s rss_rise_MiB cpu_s busy_cores (of $(nproc))"
for i in $(seq "$ROUNDS"); do
  echo "plain $(upload /)" | tee -a "$work/plain"
  echo "body-hash $(upload /hash)" | tee -a "$work/hash"
  echo "pass-through $(upload /pass)" | tee -a "$work/pass"
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
p=$(awk '{print $2}' "$work/plain" | median)
h=$(awk '{print $2}' "$work/hash" | median)
t=$(awk '{print $2}' "$work/pass" | median)
rise=$(cat "$work/hash" "$work/pass" | awk '{print $3}' | sort -n | tail -1)
ratio() { awk -v a="$1" -v b="$p" 'BEGIN {printf "%.2f", a / b}'; }
echo "median MB/s: plain $p, body-hash $h (x$(ratio "$h")), pass-through $t (x$(ratio "$t")); largest RSS rise through a filter: $rise MiB"
# The floor the hash sets: digesting the body costs CPU time that no design avoids. When
# the plain upload already keeps every core busy (client, gateway and backend share
# them), the body-hash upload needs the plain upload's CPU time plus the digest's, so
# its ratio cannot pass plain_cpu / (plain_cpu + digest_cpu).
digest=$( { /usr/bin/time -f '%U' openssl dgst -sha256 "$work/upload" >/dev/null; } 2>&1 | awk '{print $1}')
pc=$(awk '{print $4}' "$work/plain" | median)
pb=$(awk '{print $5}' "$work/plain" | median)
awk -v d="$digest" -v c="$pc" -v b="$pb" -v n="$(nproc)" 'BEGIN {
  printf "CPU: the plain upload keeps %.2f of %d cores busy (%.2f s); openssl dgst -sha256 digests the file in %.2f s of CPU: with every core busy, body-hash can reach at most x%.2f\n", b, n, c, d, c / (c + d) }'
