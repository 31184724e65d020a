//! Filters in Python and JavaScript: the wrappers in `sdk/python` and `sdk/js` and their
//! `hello` examples, built into components by componentize-py (PyPI) and
//! componentize-js (npm), which `.ci/run` installs in target/tools/py and
//! target/tools/js; checked with `sluice filter test` as their authors would, attached
//! to a route of a running gateway, and `sluice filter new --lang python|js` projects
//! built and tested as their READMEs say.

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
    componentize(
        &repo().join("sdk/python/examples/hello"),
        &repo().join("wit"),
        &[&site],
        &out,
    );
    out
}

/// `componentize-py -d WIT -w sluice:filter/filter@0.2.0 componentize app -p . -p
/// PATHS... -o OUT`, in `cwd`.
fn componentize(cwd: &Path, wit: &Path, paths: &[&Path], out: &Path) {
    let tool = componentize_py();
    let mut cmd = Command::new(&tool);
    cmd.current_dir(cwd).arg("-d").arg(wit).args([
        "-w",
        "sluice:filter/filter@0.2.0",
        "componentize",
        "app",
        "-p",
        ".",
    ]);
    for p in paths {
        cmd.arg("-p").arg(p);
    }
    let run = cmd
        .arg("-o")
        .arg(out)
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
}

/// `sluice filter test COMPONENT --config C --request R`: exit code, stdout, stderr.
/// The compiled code is cached beside the component (`--cache-dir`), so a second test
/// of the same build skips the compile, which takes seconds for these components.
fn filter_test(wasm: &Path, config: &Path, request: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["filter", "test"])
        .arg(wasm)
        .arg("--config")
        .arg(config)
        .arg("--request")
        .arg(request)
        .arg("--cache-dir")
        .arg(wasm.with_file_name("wasm-cache"))
        .output()
        .expect("sluice filter test");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice filter new --lang python` writes a project that needs only componentize-py:
/// it builds as its README says, passes its own `sluice filter test` case, and a
/// config the filter refuses is reported with the field.
/// The example `wasm` attached as WasmFilter `name` to a route of a running gateway,
/// with `{greeting: from-LANG}`: the backend sees the greeting, the response says
/// which language served it, the filter answers `/hello` itself without calling the
/// backend, and the WasmFilter is Ready.
async fn attached(dir: &TempDir, wasm: &Path, name: &str, lang: &str) {
    let a = echo("a").await;
    let port = free_port();
    std::fs::create_dir_all(dir.0.join("filters")).expect("filters dir");
    std::fs::copy(wasm, dir.0.join(format!("filters/{name}.wasm"))).expect("copy the component");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "filters.yaml",
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  source: {{path: filters/{name}.wasm}}\n  config: {{greeting: from-{lang}}}\n"),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext(name)
        )),
    );
    // The cache `filter_test` filled for this build: the gateway loads the compiled
    // code (its engine settings are part of the cache key) rather than compiling again.
    let cache = wasm.with_file_name("wasm-cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = get(port, "h", "/api").await;
        if r.status == StatusCode::OK || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let greeting = format!("from-{lang}");
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.body, gw.logs());
    assert_eq!(r.seen("x-hello").as_deref(), Some(greeting.as_str()));
    assert_eq!(r.headers["x-served-by"], lang);
    let before = a.id.requests.load(Ordering::Relaxed);
    let r = get(port, "h", "/hello").await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, format!("{greeting}\n"))
    );
    assert_eq!(
        a.id.requests.load(Ordering::Relaxed),
        before,
        "the filter answered; the backend was not called"
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let wf = status_of(&status, "WasmFilter", name);
    assert_eq!(
        condition(&wf["status"]["conditions"], "Ready")["status"],
        "True"
    );
}

#[test]
fn filter_new_python_writes_a_project_that_builds_and_passes_its_test() {
    let dir = TempDir::new("python-new");
    let project = dir.0.join("greet");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["filter", "new", "greet", "--lang", "python", "--dir"])
        .arg(&project)
        .output()
        .expect("sluice filter new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "app.py",
        "sluice_filter/__init__.py",
        "wit/filter.wit",
        "wit/deps/sluice-filter-0.1.0/filter.wit",
        "config.yaml",
        "request.yaml",
        "README.md",
    ] {
        assert!(project.join(f).is_file(), "no {f}");
    }
    let readme = std::fs::read_to_string(project.join("README.md")).expect("README.md");
    assert!(
        readme.contains("componentize app -o greet.wasm"),
        "{readme}"
    );
    let wasm = project.join("greet.wasm");
    componentize(&project, &project.join("wit"), &[], &wasm);
    let (code, out, err) = filter_test(
        &wasm,
        &project.join("config.yaml"),
        &project.join("request.yaml"),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("x-hello: hi"), "{out}");
    dir.write("bad.yaml", "{greeting: ''}\n");
    let (code, _, err) = filter_test(
        &wasm,
        &dir.0.join("bad.yaml"),
        &project.join("request.yaml"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(".greeting: must not be empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_filter_builds_tests_without_rust_and_runs_in_the_gateway() {
    let dir = TempDir::new("python");
    let wasm = build_hello(&dir);
    let example = repo().join("sdk/python/examples/hello");

    // `sluice filter test` on the example's own request file: what a Python author runs.
    let (code, out, err) = filter_test(
        &wasm,
        &example.join("config.yaml"),
        &example.join("request.yaml"),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("x-served-by: python"), "{out}");

    attached(&dir, &wasm, "hello-py", "python").await;
}

/// componentize-js's `node_modules`: `$SLUICE_COMPONENTIZE_JS`, else the one `.ci/run`
/// installs.
fn js_modules() -> PathBuf {
    std::env::var_os("SLUICE_COMPONENTIZE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/js/node_modules"))
}

/// Runs `program args` in `cwd`, and fails the test with its output if it fails.
fn run_in(cwd: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program} ({e})"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed:\n{}{}",
        cwd.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes componentize-js importable from `dir` (what `npm install` would do there).
fn link_modules(dir: &Path) {
    let modules = js_modules();
    assert!(
        modules.join("@bytecodealliance/componentize-js").is_dir(),
        "no componentize-js in {}; .ci/run installs it",
        modules.display()
    );
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).expect("link node_modules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_filter_builds_tests_without_rust_and_runs_in_the_gateway() {
    let dir = TempDir::new("js");
    // The wrapper as npm packs it, beside the example's app.js: componentize-js reads
    // only the files beside the source.
    run_in(
        &dir.0,
        "npm",
        &[
            "pack",
            "-q",
            repo().join("sdk/js").to_str().expect("utf-8"),
            "--pack-destination",
            ".",
        ],
    );
    run_in(&dir.0, "tar", &["xzf", "sluice-filter-0.1.0.tgz"]);
    let build = dir.0.join("build");
    std::fs::create_dir_all(&build).expect("build dir");
    std::fs::copy(
        dir.0.join("package/index.js"),
        build.join("sluice-filter.js"),
    )
    .expect("the packed wrapper has index.js");
    let example = repo().join("sdk/js/examples/hello");
    std::fs::copy(example.join("app.js"), build.join("app.js")).expect("copy app.js");
    link_modules(&build);
    std::fs::write(
        build.join("build.mjs"),
        format!(
            "import {{ componentize }} from \"@bytecodealliance/componentize-js\";\nimport {{ writeFile }} from \"node:fs/promises\";\nconst {{ component }} = await componentize({{ sourcePath: \"app.js\", witPath: {:?}, worldName: \"sluice:filter/filter@0.2.0\", disableFeatures: [\"http\", \"fetch-event\"] }});\nawait writeFile(\"hello.wasm\", component);\n",
            repo().join("wit").display().to_string()
        ),
    )
    .expect("write build.mjs");
    run_in(&build, "node", &["build.mjs"]);
    let wasm = build.join("hello.wasm");

    let (code, out, err) = filter_test(
        &wasm,
        &example.join("config.yaml"),
        &example.join("request.yaml"),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("x-served-by: javascript"), "{out}");

    attached(&dir, &wasm, "hello-js", "javascript").await;
}

/// `sluice filter new --lang js`: `npm run build` (with componentize-js linked where
/// `npm install` would put it) builds it, its own case passes, and a refused config is
/// reported with the field.
#[test]
fn filter_new_js_writes_a_project_that_builds_and_passes_its_test() {
    let dir = TempDir::new("js-new");
    let project = dir.0.join("greet");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["filter", "new", "greet", "--lang", "js", "--dir"])
        .arg(&project)
        .output()
        .expect("sluice filter new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "app.js",
        "sluice-filter.js",
        "build.mjs",
        "package.json",
        "wit/filter.wit",
        "README.md",
    ] {
        assert!(project.join(f).is_file(), "no {f}");
    }
    link_modules(&project);
    run_in(&project, "npm", &["run", "-s", "build"]);
    let wasm = project.join("greet.wasm");
    let (code, out, err) = filter_test(
        &wasm,
        &project.join("config.yaml"),
        &project.join("request.yaml"),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    dir.write("bad.yaml", "{greeting: ''}\n");
    let (code, _, err) = filter_test(
        &wasm,
        &dir.0.join("bad.yaml"),
        &project.join("request.yaml"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(".greeting: must not be empty"), "{err}");
}
