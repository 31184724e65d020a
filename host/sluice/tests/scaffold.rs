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
    if let Some(packages) = std::env::var_os("SLUICE_SCAFFOLD_PACKAGES") {
        use_packages(&krate, Path::new(&packages), &dir.0.join("packages"));
    }
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

/// The crates `cargo package` made (`.ci/run` sets `SLUICE_SCAFFOLD_PACKAGES` to the
/// folder with their `.crate` files): the new crate depends on the SDK and the harness
/// by version alone, as it will once they are on the registry, and a
/// `[patch.crates-io]` points those names at the unpacked packages. So the crate
/// builds from exactly what would be published, with no path into this checkout: a
/// file the packages leave out, or a workspace setting they lean on, fails here.
fn use_packages(krate: &Path, packages: &Path, unpack: &Path) {
    std::fs::create_dir_all(unpack).expect("create the unpack folder");
    let mut patch = String::from("\n[patch.crates-io]\n");
    for name in [
        "sluice-sdk",
        "sluice-harness",
        "sluice-wasm",
        "sluice-ir",
        "sluice-metrics",
    ] {
        let file = packages.join(format!("{name}-0.1.0.crate"));
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&file)
            .arg("-C")
            .arg(unpack)
            .status()
            .expect("run tar");
        assert!(status.success(), "unpacking {}", file.display());
        let dir = unpack.join(format!("{name}-0.1.0"));
        patch += &format!("{name} = {{ path = {:?} }}\n", dir.display().to_string());
    }
    let path = krate.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path).expect("Cargo.toml");
    // `{ version = "0.1.0", path = "<checkout>/sdk" }` -> `"0.1.0"`.
    let mut by_version = String::new();
    for line in manifest.lines() {
        match line.split_once(" = { version = ") {
            Some((name, rest)) if name.starts_with("sluice-") => {
                let version = rest.split(',').next().expect("a version");
                by_version += &format!("{name} = {version}\n");
            }
            _ => by_version += &format!("{line}\n"),
        }
    }
    assert!(!by_version.contains("path ="), "{by_version}");
    std::fs::write(&path, by_version + &patch).expect("write Cargo.toml");
}
