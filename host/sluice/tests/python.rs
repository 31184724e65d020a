//! Filters in Python: the wrapper in `sdk/python` and its example
//! (`sdk/python/examples/hello`), built into a component by componentize-py from PyPI
//! (`.ci/run` installs it in target/tools/py), checked with `sluice filter test` as a
//! Python author would, and attached to a route of a running gateway.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `componentize-py`: `$SLUICE_COMPONENTIZE_PY`, else the one `.ci/run` installs.
fn componentize_py() -> PathBuf {
    std::env::var_os("SLUICE_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/py/bin/componentize-py"))
}

/// The wrapper as its users get it: a wheel built from a copy of `sdk/python` (pip
/// builds in the source folder), installed into `dir/site`.
fn install_wrapper(dir: &TempDir) -> PathBuf {
    let pip = componentize_py().with_file_name("pip");
    let src = dir.0.join("sdk-python");
    std::fs::create_dir_all(src.join("sluice_filter")).expect("copy folder");
    for f in ["pyproject.toml", "README.md", "sluice_filter/__init__.py"] {
        std::fs::copy(repo().join("sdk/python").join(f), src.join(f))
            .unwrap_or_else(|e| panic!("copy sdk/python/{f}: {e}"));
    }
    let dist = dir.0.join("dist");
    let site = dir.0.join("site");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(&pip)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{} ({e}); .ci/run installs it", pip.display()));
        assert!(
            out.status.success(),
            "pip {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "wheel".as_ref(),
        "-q".as_ref(),
        "--no-deps".as_ref(),
        src.as_os_str(),
        "-w".as_ref(),
        dist.as_os_str(),
    ]);
    let wheel = dist.join("sluice_filter-0.1.0-py3-none-any.whl");
    assert!(wheel.is_file(), "no {}", wheel.display());
    run(&[
        "install".as_ref(),
        "-q".as_ref(),
        "--no-deps".as_ref(),
        "--target".as_ref(),
        site.as_os_str(),
        wheel.as_os_str(),
    ]);
    site
}

/// Builds the example into `dir/hello.wasm`, as docs/filters.md says to, with the
/// wrapper from its wheel.
fn build_hello(dir: &TempDir) -> PathBuf {
    let site = install_wrapper(dir);
    let out = dir.0.join("hello.wasm");
    let tool = componentize_py();
    let run = Command::new(&tool)
        .arg("-d")
        .arg(repo().join("wit"))
        .args([
            "-w",
            "sluice:filter/filter@0.2.0",
            "componentize",
            "app",
            "-p",
        ])
        .arg(repo().join("sdk/python/examples/hello"))
        .arg("-p")
        .arg(&site)
        .arg("-o")
        .arg(&out)
        // Its bytecode caches stay out of the checkout.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}); .ci/run installs it", tool.display()));
    assert!(
        run.status.success(),
        "componentize-py failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_filter_builds_tests_without_rust_and_runs_in_the_gateway() {
    let dir = TempDir::new("python");
    let wasm = build_hello(&dir);
    let example = repo().join("sdk/python/examples/hello");

    // `sluice filter test` on the example's own request file: what a Python author runs.
    let filter_test = |config: &Path, request: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["filter", "test"])
            .arg(&wasm)
            .arg("--config")
            .arg(config)
            .arg("--request")
            .arg(request)
            .output()
            .expect("sluice filter test");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = filter_test(&example.join("config.yaml"), &example.join("request.yaml"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("x-served-by: python"), "{out}");
    // The wrapper's Respond, and a ConfigError with its path.
    dir.write(
        "respond.yaml",
        "request: {path: /hello}\nexpect:\n  respond: {status: 200, headers: {content-type: text/plain}, body: \"hi\\n\"}\n",
    );
    let (code, out, err) = filter_test(&example.join("config.yaml"), &dir.0.join("respond.yaml"));
    assert_eq!(code, Some(0), "{out}{err}");
    dir.write("bad.yaml", "{greeting: ''}\n");
    let (code, _, err) = filter_test(&dir.0.join("bad.yaml"), &example.join("request.yaml"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(".greeting: must not be empty"), "{err}");

    // Attached to a route with an ExtensionRef, like any filter.
    let a = echo("a").await;
    let port = free_port();
    std::fs::create_dir_all(dir.0.join("filters")).expect("filters dir");
    std::fs::copy(&wasm, dir.0.join("filters/hello-py.wasm")).expect("copy the component");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "filters.yaml",
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello-py, namespace: default}\nspec:\n  source: {path: filters/hello-py.wasm}\n  config: {greeting: from-python}\n",
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("hello-py")
        )),
    );
    let cache = dir.0.join("cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = get(port, "h", "/api").await;
        if r.status == StatusCode::OK || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.body, gw.logs());
    assert_eq!(r.seen("x-hello").as_deref(), Some("from-python"));
    assert_eq!(r.headers["x-served-by"], "python");
    let before = a.id.requests.load(Ordering::Relaxed);
    let r = get(port, "h", "/hello").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "from-python\n")
    );
    assert_eq!(
        a.id.requests.load(Ordering::Relaxed),
        before,
        "the filter answered; the backend was not called"
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let wf = status_of(&status, "WasmFilter", "hello-py");
    assert_eq!(
        condition(&wf["status"]["conditions"], "Ready")["status"],
        "True"
    );
}
