/work/main/filters/target/wasm32-wasip2/release/deps/sluice_sdk-f852040316a8f958.d: /work/main/sdk/src/lib.rs /work/main/wit/filter.wit

/work/main/filters/target/wasm32-wasip2/release/deps/libsluice_sdk-f852040316a8f958.rlib: /work/main/sdk/src/lib.rs /work/main/wit/filter.wit

/work/main/filters/target/wasm32-wasip2/release/deps/libsluice_sdk-f852040316a8f958.rmeta: /work/main/sdk/src/lib.rs /work/main/wit/filter.wit

/work/main/sdk/src/lib.rs:
/work/main/wit/filter.wit:
