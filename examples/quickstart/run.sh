#!/usr/bin/env bash
# Builds Sluice, starts the echo backend on 127.0.0.1:3000 and the gateway on
# 127.0.0.1:8080 with this folder's config. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin sluice
./target/release/sluice echo --listen 127.0.0.1:3000 --service echo --pod echo-0 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
exec_args=(run examples/quickstart --admin 127.0.0.1:9901)
./target/release/sluice "${exec_args[@]}"
