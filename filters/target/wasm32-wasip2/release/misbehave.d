/work/main/filters/target/wasm32-wasip2/release/misbehave.wasm: /work/main/filters/misbehave/src/lib.rs /work/main/sdk/src/lib.rs /work/main/wit/filter.wit
