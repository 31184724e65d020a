//! `sluice filter new` as a new user meets it: the crate it writes, in a folder outside
//! the workspace, builds as a component and passes its own harness tests with plain
//! `cargo test`, as docs/filters.md says.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;

// Ignored in a plain `cargo test`: outside the workspace, cargo unifies the
// dependencies' features differently, so the crate's harness tests build the gateway's
// Wasm runtime again (about 135 crates, 7 minutes on 2 cores). `.ci/run` runs it beside
// the conformance suite, which mostly waits; run it alone with
// `cargo test --workspace --test scaffold -- --ignored`.
#[test]
#[ignore = "builds wasmtime again with the new crate's features; .ci/run runs it"]
fn filter_new_writes_a_crate_that_builds_and_passes_its_tests_outside_the_workspace() {
    let dir = TempDir::new("scaffold");
    let krate = dir.0.join("api-key");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["filter", "new", "api-key", "--dir"])
        .arg(&krate)
        .output()
        .expect("run sluice filter new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["Cargo.toml", "src/lib.rs", "tests/filter.rs", "README.md"] {
        assert!(krate.join(f).is_file(), "no {f}");
    }
    // The versions this checkout is tested with (cargo drops the entries the crate
    // does not use), so a new release on the registry cannot change what is tested.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");
    // A target dir of its own under the workspace's (kept between runs): the units
    // differ from the workspace's anyway, and cargo locks a target dir while it builds,
    // which would hold up cargo in the workspace for the whole build. The crate's harness
    // test builds the component into the crate's own target/, as a user's would.
    let target = repo.join("target/scaffold");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The crate asks for its dependencies optimized (`[profile.dev.package."*"]
    // opt-level = 2`, checked below), which makes a user's later runs fast but its first
    // build slow: wasmtime and cranelift at opt-level 2 take most of CI's tail. Built
    // here at opt-level 0, the same crate is checked in about half the time.
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("[profile.dev.package.\"*\"]\nopt-level = 2"),
        "{manifest}"
    );
    let out = Command::new(cargo)
        .args(["test", "--config", "profile.dev.package.\"*\".opt-level=0"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        // The outer build's settings are for this workspace, not the new crate.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO_PKG_NAME")
        .output()
        .expect("run cargo test in the new crate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo test in the new crate failed:\n{text}"
    );
    assert!(
        text.contains("test greets_every_request_and_answers_hello ... ok")
            && text.contains("test refuses_an_empty_greeting_with_its_path ... ok"),
        "{text}"
    );
    // It built a component, not a core module.
    let wasm = krate.join("target/wasm32-wasip2/release/api_key.wasm");
    let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    assert_eq!(&bytes[..4], b"\0asm");
    assert_eq!(
        &bytes[4..8],
        [0x0d, 0x00, 0x01, 0x00],
        "a component's version"
    );
}
