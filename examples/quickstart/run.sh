#!/usr/bin/env bash
# Builds Sluice and the hello filter, starts the echo backend on 127.0.0.1:3000 and the
# gateway on 127.0.0.1:8080 with this folder's config. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --bin sluice
cargo build --release --target wasm32-wasip2 --manifest-path filters/Cargo.toml -p hello
mkdir -p examples/quickstart/filters
cp filters/target/wasm32-wasip2/release/hello.wasm examples/quickstart/filters/
./target/release/sluice echo --listen 127.0.0.1:3000 --service echo --pod echo-0 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
./target/release/sluice run examples/quickstart --admin 127.0.0.1:9901
