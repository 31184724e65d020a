/work/main/filters/target/wasm32-wasip2/release/hello.wasm: /work/main/filters/hello/src/lib.rs /work/main/sdk/src/lib.rs /work/main/wit/filter.wit
