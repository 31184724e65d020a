#!/usr/bin/env bash
# Memory in Kubernetes mode against file mode: the same ROUTES path routes (16 rules per
# HTTPRoute, as configs.py writes them for compare.sh), the same Gateway, Service and
# EndpointSlice, served by Sluice (one worker) from a folder and from a real API server
# (Debian's etcd and the kube-apiserver `.ci/run` builds into target/tools). Prints each
# mode's resident memory (VmRSS, RssAnon) once the last route answers and 4 s have
# passed (the gateway gives freed memory back a second time 2 s after it applies a
# configuration), its peak (VmHWM), and the ratio of Kubernetes mode to file mode.
#
#   examples/bench/kube_memory.sh [ROUTES]        (default 16000: 1,000 HTTPRoutes)
#
# SLUICE_BIN=path runs another build. It runs in a network namespace of its own
# (`unshare --net`, as the Kubernetes-mode tests do): EndpointSlices may not hold
# loopback addresses, so the backend listens on 198.18.0.1, which that namespace's
# loopback carries. Nothing is reachable from outside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUTES=${1:-16000}
source examples/bench/lib.sh
if [ -z "${SLUICE_BENCH_NETNS:-}" ]; then
  APISERVER=target/tools/kube-apiserver
  [ -x "$APISERVER" ] || { echo "$APISERVER is missing: .ci/run builds it (run it once)" >&2; exit 1; }
  command -v etcd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
  python3 -c 'import yaml' 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null; }
  bench_setup headers
  exec env SLUICE_BENCH_NETNS=1 unshare --net -- bash -c \
    'ip link set lo up && ip addr add 198.18.0.1/16 dev lo && exec "$0" "$@"' "$0" "$@"
fi
APISERVER=target/tools/kube-apiserver
BIN=${SLUICE_BIN:-./target/release/sluice}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in "$work"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done; sleep 0.5; rm -rf "$work"' EXIT
BACKEND=18300 SLUICE=18301 ADMIN=18302 ETCD=18303 ETCD_PEER=18304 API=18305
TOKEN=sluice-bench-admin-token

nginx_conf backend "server { listen 198.18.0.1:$BACKEND; location / { return 200 'ok'; } }"

# The objects, once, for both modes.
mkdir -p "$work/files"
{
  sluice_config "[{name: http, port: $SLUICE, protocol: HTTP}]"
  python3 examples/bench/configs.py routes sluice "$ROUTES" 0 $BACKEND
} | sed 's/endpoints: \[{addresses: \[127.0.0.1\]}\]/endpoints: [{addresses: [198.18.0.1]}]/' \
  > "$work/files/bench.yaml"
grep -q 198.18.0.1 "$work/files/bench.yaml" || { echo "the EndpointSlice was not moved to 198.18.0.1" >&2; exit 1; }
last=/p$((ROUTES - 1))

# measure LABEL PID: "LABEL rss_kb anon_kb hwm_kb" once $last answers 200, 4 s later.
measure() {
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$SLUICE$last")" = 200 ] && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$SLUICE$last")" = 200 ] ||
    { echo "$1: $last never answered 200" >&2; exit 1; }
  sleep 4
  awk -v l="$1" '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} /^VmHWM/ {h = $2} END {print l, r, a, h}' "/proc/$2/status"
}

# File mode.
SLUICE_LOG=warn "$BIN" run "$work/files" --workers 1 --admin 127.0.0.1:$ADMIN --access-log off &
echo $! > "$work/file.pid"
file=$(measure file "$(cat "$work/file.pid")")
kill "$(cat "$work/file.pid")"
wait "$(cat "$work/file.pid")" 2>/dev/null || true

# The control plane: etcd, and kube-apiserver with a token for an admin.
# A CA and a serving certificate it signs (rustls refuses a CA certificate as a server's).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/serving.key" -out "$work/serving.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$work/ext"
openssl x509 -req -in "$work/serving.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/serving.crt" 2>/dev/null
openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
echo "$TOKEN,admin,admin,system:masters" > "$work/tokens.csv"
etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:$ETCD \
  --advertise-client-urls http://127.0.0.1:$ETCD --listen-peer-urls http://127.0.0.1:$ETCD_PEER \
  --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER \
  --initial-cluster default=http://127.0.0.1:$ETCD_PEER > "$work/etcd.log" 2>&1 &
echo $! > "$work/etcd.pid"
"$APISERVER" --etcd-servers=http://127.0.0.1:$ETCD --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 --secure-port=$API \
  --tls-cert-file="$work/serving.crt" --tls-private-key-file="$work/serving.key" \
  --token-auth-file="$work/tokens.csv" --authorization-mode=RBAC \
  --service-account-key-file="$work/sa.pub" --service-account-signing-key-file="$work/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --endpoint-reconciler-type=none \
  --service-cluster-ip-range=10.96.0.0/16 --enable-priority-and-fairness=false \
  > "$work/apiserver.log" 2>&1 &
echo $! > "$work/apiserver.pid"
for _ in $(seq 300); do
  [ "$(curl -s --cacert "$work/ca.crt" -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$API/readyz")" = ok ] && break
  sleep 0.2
done
cat > "$work/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: "https://127.0.0.1:$API", certificate-authority: "$work/ca.crt"}
users:
- name: admin
  user: {token: $TOKEN}
contexts:
- name: bench
  context: {cluster: bench, user: admin}
current-context: bench
YAML

# The CRDs (Gateway API's, as .ci/run installs them, and Sluice's), then the objects.
for f in target/tools/gateway-api-crds/*.yaml; do cat "$f"; echo ---; done > "$work/crds.yaml"
"$BIN" crd >> "$work/crds.yaml"
python3 examples/bench/kube_apply.py "https://127.0.0.1:$API" "$TOKEN" "$work/ca.crt" \
  "$work/crds.yaml" "$work/files/bench.yaml"

KUBECONFIG="$work/kubeconfig" SLUICE_LOG=warn "$BIN" run --kubernetes --identity bench \
  --cache-dir "$work/cache" --workers 1 --admin 127.0.0.1:$ADMIN --access-log off &
echo $! > "$work/kube.pid"
kube=$(measure kubernetes "$(cat "$work/kube.pid")")

echo "$ROUTES routes ($(((ROUTES + 15) / 16)) HTTPRoutes), one worker, MB: mode rss anon peak"
for row in "$file" "$kube"; do
  awk '{printf "%-11s %7.1f %7.1f %7.1f\n", $1, $2 / 1024, $3 / 1024, $4 / 1024}' <<< "$row"
done
awk -v f="$file" -v k="$kube" 'BEGIN {
  split(f, a, " "); split(k, b, " ");
  printf "kubernetes / file: rss x%.2f, anon x%.2f, peak x%.2f\n", b[2] / a[2], b[3] / a[3], b[4] / a[4] }'
