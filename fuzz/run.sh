#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable
# toolchain (the flags cargo-fuzz passes; no nightly, no cargo-fuzz install) and runs
# each for SECONDS (default 60) from its committed corpus, fuzz/corpus/TARGET.tar.xz
# (one archive rather than thousands of small files).
#
#   fuzz/run.sh [SECONDS]            run every target
#   fuzz/run.sh SECONDS TARGET       run one
#   FUZZ_MERGE=1 fuzz/run.sh ...     then fold new coverage back into the archive
#
# A crash or an input slower than 10 s fails the run and leaves the input under
# target/fuzz/artifacts/TARGET/, printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
targets=${2:-load_translate}
out=$PWD/target/fuzz
# An explicit --target keeps the instrumentation off build scripts, as cargo-fuzz does.
host=$(rustc -vV | sed -n 's/^host: //p')
bin=$out/build/$host/release
mkdir -p "$out"

RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --release --locked --manifest-path fuzz/Cargo.toml --target-dir "$out/build" --target "$host" --bins

for t in $targets; do
  work=$out/corpus/$t
  rm -rf "$work" && mkdir -p "$work" "$out/artifacts/$t"
  tar -C "$work" -xJf "fuzz/corpus/$t.tar.xz"
  echo "fuzzing $t for ${seconds}s from $(ls "$work" | wc -l) corpus inputs"
  if ! "$bin/$t" "$work" -dict=fuzz/yaml.dict -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t/" 2>"$out/$t.log"; then
    tail -40 "$out/$t.log"
    for f in "$out/artifacts/$t"/*; do
      [ -f "$f" ] && echo "input $(basename "$f") (base64): $(base64 -w0 "$f")"
    done
    echo "fuzz target $t failed; the input is in $out/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "$out/$t.log" || true
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    rm -rf "$work.min" && mkdir -p "$work.min"
    "$bin/$t" -set_cover_merge=1 -max_len=65536 "$work.min" "$work" 2>>"$out/$t.log"
    tar -C "$work.min" -cJf "fuzz/corpus/$t.tar.xz" .
    echo "corpus: $(ls "$work.min" | wc -l) inputs"
  fi
done
