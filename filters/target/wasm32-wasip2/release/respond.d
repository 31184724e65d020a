/work/main/filters/target/wasm32-wasip2/release/respond.wasm: /work/main/filters/respond/src/lib.rs /work/main/sdk/src/lib.rs /work/main/wit/filter.wit
