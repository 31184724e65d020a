/work/main/filters/target/wasm32-wasip2/release/headers.wasm: /work/main/filters/headers/src/lib.rs /work/main/sdk/src/lib.rs /work/main/wit/filter.wit
