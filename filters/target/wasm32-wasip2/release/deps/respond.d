/work/main/filters/target/wasm32-wasip2/release/deps/respond.d: respond/src/lib.rs

/work/main/filters/target/wasm32-wasip2/release/deps/respond.wasm: respond/src/lib.rs

respond/src/lib.rs:
