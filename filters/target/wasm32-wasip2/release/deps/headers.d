/work/main/filters/target/wasm32-wasip2/release/deps/headers.d: headers/src/lib.rs

/work/main/filters/target/wasm32-wasip2/release/deps/headers.wasm: headers/src/lib.rs

headers/src/lib.rs:
