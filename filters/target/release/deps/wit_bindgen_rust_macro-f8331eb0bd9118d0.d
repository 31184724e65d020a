/work/main/filters/target/release/deps/wit_bindgen_rust_macro-f8331eb0bd9118d0.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wit-bindgen-rust-macro-0.63.0/src/lib.rs

/work/main/filters/target/release/deps/libwit_bindgen_rust_macro-f8331eb0bd9118d0.so: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wit-bindgen-rust-macro-0.63.0/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wit-bindgen-rust-macro-0.63.0/src/lib.rs:

# env-dep:DEBUG_OUTPUT_DIR=/work/main/filters/target/release/build/wit-bindgen-rust-macro-ac84a9fe7afac542/out
