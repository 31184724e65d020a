#!/usr/bin/env bash
# HTTPS benchmark with h2load: the same nginx `return 200` backend (plain HTTP), behind
# nginx terminating TLS (one worker) and behind Sluice terminating TLS (one worker
# thread), over HTTP/1.1 and over HTTP/2. Prints requests/s, mean latency and proxy CPU
# µs per request, median of ROUNDS interleaved rounds, and Sluice's ratios to nginx.
# Both use the same ECDSA P-256 certificate; TLS 1.3. Everything binds to 127.0.0.1.
#
#   examples/bench/tls.sh [REQUESTS] [CLIENTS] [STREAMS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS=${1:-100000}
CLIENTS=${2:-32}
STREAMS=${3:-10}
ROUNDS=${4:-3}
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || need+=(nginx-light)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bin sluice >&2

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; for p in backend proxy; do [ -f "$work/$p.pid" ] && kill "$(cat "$work/$p.pid")" 2>/dev/null || true; done; rm -rf "$work"' EXIT
BACKEND=18180 NGINX_TLS=18181 SLUICE_TLS=18182 ADMIN=18183

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls.key" \
  -out "$work/tls.crt" -days 2 -subj /CN=bench.example.com -addext subjectAltName=DNS:bench.example.com 2>/dev/null

source examples/bench/lib.sh
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; location / { return 200 'ok'; } }"
nginx_conf proxy "upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_TLS ssl http2; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.3; keepalive_requests 100000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ''; } }"

mkdir -p "$work/sluice"
b64() { base64 -w0 "$1"; }
{
  sluice_config "[{name: https, port: $SLUICE_TLS, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}]"
  cat <<YAML
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: default}
type: kubernetes.io/tls
data: {tls.crt: $(b64 "$work/tls.crt"), tls.key: $(b64 "$work/tls.key")}
---
YAML
  backend_route
} > "$work/sluice/config.yaml"
start_sluice "$work/sluice"

measure() { # label port pid proto(h1|h2)
  local label=$1 port=$2 pid=$3 proto=$4 flags=()
  if [ "$proto" = h1 ]; then flags=(--h1); else flags=(-m "$STREAMS"); fi
  local url="https://127.0.0.1:$port/"
  h2load "${flags[@]}" -n 2000 -c "$CLIENTS" "$url" >/dev/null 2>&1 # warm up
  local c0; c0=$(cpu_ticks "$pid")
  local out; out=$(h2load "${flags[@]}" -n "$REQUESTS" -c "$CLIENTS" "$url" 2>&1)
  local c1; c1=$(cpu_ticks "$pid")
  python3 - "$label" "$((c1 - c0))" "$(getconf CLK_TCK)" "$REQUESTS" <<PY
import re, sys
label, ticks, hz, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
text = """$out"""
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
ok = int(re.search(r"(\d+) succeeded", text).group(1))
st = re.search(r"status codes: (\d+) 2xx", text)
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text).group(1)
unit = {"us": 0.001, "ms": 1, "s": 1000}
m = re.match(r"([\d.]+)(\w+)", mean)
mean_ms = float(m.group(1)) * unit[m.group(2)]
print(f"{label}\t{rps:.0f}\t{mean_ms:.3f}\t{ticks / hz * 1e6 / max(ok, 1):.1f}\t{n - int(st.group(1)) if st else n}")
PY
}

results=$work/results.tsv
: > "$results"
for _ in $(seq "$ROUNDS"); do
  for proto in h1 h2; do
    measure "nginx-$proto" $NGINX_TLS "$(worker_pid proxy)" $proto >> "$results"
    measure "sluice-$proto" $SLUICE_TLS $SLUICE_PID $proto >> "$results"
  done
done

python3 - "$results" "$REQUESTS" "$CLIENTS" "$STREAMS" "$ROUNDS" <<'PY'
import statistics, sys
raw = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
labels = list(dict.fromkeys(r[0] for r in raw))
med = {}
for l in labels:
    rows = [r for r in raw if r[0] == l]
    med[l] = [statistics.median(float(r[i]) for r in rows) for i in range(1, 5)]
print(f"# h2load -n {sys.argv[2]} -c {sys.argv[3]} (h2: -m {sys.argv[4]}), HTTPS TLS 1.3, median of {sys.argv[5]} rounds")
print(f"{'target':<10} {'req/s':>9} {'mean ms':>8} {'CPU us/req':>10} {'non-2xx':>8}")
for l in labels:
    rps, mean, cpu, bad = med[l]
    print(f"{l:<10} {rps:>9.0f} {mean:>8.3f} {cpu:>10.1f} {bad:>8.0f}")
for p in ("h1", "h2"):
    n, s = med[f"nginx-{p}"], med[f"sluice-{p}"]
    print(f"sluice/nginx {p}: req/s x{s[0] / n[0]:.2f}, mean latency x{s[1] / n[1]:.2f}, CPU/req x{s[2] / n[2]:.2f}")
PY
