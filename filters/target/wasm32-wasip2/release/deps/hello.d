/work/main/filters/target/wasm32-wasip2/release/deps/hello.d: hello/src/lib.rs

/work/main/filters/target/wasm32-wasip2/release/deps/hello.wasm: hello/src/lib.rs

hello/src/lib.rs:
