//! Wasm filters end to end: WasmFilter objects, ExtensionRefs, the real binary, the
//! filters of `filters/` built for wasm32-wasip2, real sockets and clients.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

fn wasm_filter(name: &str, file: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  source: {{path: filters/{file}.wasm}}\n{extra}"
    )
}

async fn setup(tag: &str, filters: &[String], rules: &str) -> (Echo, u16, TempDir, Sluice) {
    setup_with(tag, filters, rules, &[]).await
}

async fn setup_with(
    tag: &str,
    filters: &[String],
    rules: &str,
    args: &[&str],
) -> (Echo, u16, TempDir, Sluice) {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    install_filters(
        &dir,
        &[
            "headers",
            "respond",
            "hello",
            "misbehave",
            "request_id",
            "json_redact",
            "ext_authz",
            "jwt",
            "body_hash",
            "sub_filter",
            "tee",
            "ratelimit",
        ],
    );
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write("filters.yaml", &filters.join("---\n"));
    dir.write("routes.yaml", &route(rules));
    let cache = dir.0.join("cache");
    let mut all = vec!["--cache-dir", cache.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let gw = Sluice::start(&dir.0, &all).await;
    (a, port, dir, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_filters_run_in_order_with_builtin_filters_and_answer_directly() {
    let filters = [
        wasm_filter(
            "headers",
            "headers",
            "  config: {request: {set: {x-wasm: 'yes'}, remove: [x-first]}, response: {set: {x-wasm-resp: 'yes'}}}\n",
        ),
        wasm_filter(
            "maintenance",
            "respond",
            "  config: {status: 503, headers: {retry-after: '30'}, body: \"down\\n\"}\n",
        ),
    ];
    let rules = format!(
        "  - matches: [{{path: {{value: /down}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - filters:\n    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-first, value: '1'}}, {{name: x-kept, value: '1'}}]}}}}\n    - {}\n    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-wasm-resp, value: builtin}}]}}}}\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("maintenance"),
        ext("headers")
    );
    let (a, port, _dir, gw) = setup("wasm-basic", &filters, &rules).await;

    let r = get(port, "h", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.seen("x-wasm").as_deref(), Some("yes"));
    assert_eq!(
        r.seen("x-first"),
        None,
        "the Wasm filter ran after the built-in one and removed its header"
    );
    assert_eq!(r.seen("x-kept").as_deref(), Some("1"));
    // Response side runs in reverse: the built-in modifier (listed last) first, then Wasm.
    assert_eq!(r.headers["x-wasm-resp"], "yes");

    let before = a.id.requests.load(Ordering::Relaxed);
    let r = get(port, "h", "/down").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "down\n")
    );
    assert_eq!(r.headers["retry-after"], "30");
    assert_eq!(
        a.id.requests.load(Ordering::Relaxed),
        before,
        "the backend was not called"
    );

    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let wf = status_of(&status, "WasmFilter", "headers");
    assert_eq!(wf["status"]["conditions"][1]["type"], "Ready");
    assert_eq!(wf["status"]["conditions"][1]["status"], "True");
    assert!(
        wf["status"]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"sluice_wasm_calls_total{filter="default/headers"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sluice_wasm_instances{filter="default/headers"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_filters_apply_their_policy_and_leave_everything_else_unaffected() {
    let limits = "  limits: {memory: 4Mi, timeout: 20ms}\n";
    let filters = [
        wasm_filter(
            "trap",
            "misbehave",
            &format!("  config: {{mode: trap, path: /trap}}\n{limits}"),
        ),
        wasm_filter(
            "loop",
            "misbehave",
            &format!("  config: {{mode: loop, path: /loop}}\n{limits}"),
        ),
        wasm_filter(
            "grow",
            "misbehave",
            &format!("  config: {{mode: grow, path: /grow}}\n{limits}"),
        ),
        wasm_filter(
            "panic",
            "misbehave",
            &format!("  config: {{mode: panic, path: /panic}}\n{limits}"),
        ),
        wasm_filter(
            "open",
            "misbehave",
            &format!("  config: {{mode: trap, path: /open}}\n  failurePolicy: FailOpen\n{limits}"),
        ),
        wasm_filter("rejected", "misbehave", "  config: {mode: reject-config}\n"),
        wasm_filter("sandbox", "misbehave", "  config: {mode: sandbox}\n"),
        wasm_filter(
            "fine",
            "headers",
            "  config: {request: {set: {x-fine: '1'}}}\n",
        ),
    ];
    let mut rules = String::new();
    for name in [
        "trap", "loop", "grow", "panic", "open", "rejected", "sandbox",
    ] {
        rules.push_str(&format!(
            "  - matches: [{{path: {{value: /{name}}}}}, {{path: {{value: /{name}-other}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext(name)
        ));
    }
    rules.push_str(&format!(
        "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("fine")
    ));
    let (_a, port, _dir, gw) = setup("wasm-faults", &filters, &rules).await;

    // Traffic on a healthy route keeps flowing while the bad filters fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let background = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = send(&c, "GET", port, "h", "/healthy", &[]).await;
                if r.status == StatusCode::OK && r.seen("x-fine").as_deref() == Some("1") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    for name in ["trap", "loop", "grow", "panic"] {
        let t = Instant::now();
        let r = get(port, "h", &format!("/{name}")).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{name}: FailClosed answers 500"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            t.elapsed()
        );
        // The same filter on another path still works: the failed instance was replaced.
        let r = get(port, "h", &format!("/{name}-other")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{name}: a fresh instance serves the next request"
        );
        assert_eq!(r.seen("x-misbehave").as_deref(), Some("passed"));
    }
    let r = get(port, "h", "/open").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "FailOpen skips the failing filter"
    );
    let r = get(port, "h", "/rejected").await;
    assert_eq!(
        r.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a filter that refused its config fails its rule"
    );

    stop.store(true, Ordering::Relaxed);
    background.await.expect("background client");
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "requests on the healthy route failed"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        admin_get(gw.admin, "/healthz").await.expect("admin").0,
        StatusCode::OK,
        "the gateway is up"
    );

    let metrics = gw.admin("/metrics").await;
    for (name, kind) in [
        ("trap", "trap"),
        ("loop", "timeout"),
        ("grow", "memory"),
        ("panic", "trap"),
        ("open", "trap"),
    ] {
        let line =
            format!(r#"sluice_wasm_errors_total{{filter="default/{name}",kind="{kind}"}} 1"#);
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    assert!(
        metrics.contains(r#"sluice_wasm_failopen_skips_total{filter="default/open"} 1"#),
        "{metrics}"
    );
    assert!(
        gw.logs().contains("panicking on purpose"),
        "the guest's panic message is logged"
    );
    // println! and eprintln! in a filter go to the gateway's log, with the filter's name.
    assert_eq!(get(port, "h", "/sandbox").await.status, StatusCode::OK);
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("misbehave: printed to stdout")
                && l.contains("INFO")
                && l.contains("default/sandbox"))
            && logs
                .lines()
                .any(|l| l.contains("misbehave: printed to stderr") && l.contains("WARN")),
        "{logs}"
    );

    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let wf = &status_of(&status, "WasmFilter", "rejected")["status"];
    assert_eq!(wf["conditions"][1]["reason"], "InvalidConfig");
    assert_eq!(wf["configErrors"][0]["path"], ".mode");
    assert_eq!(wf["configErrors"][1]["path"], ".path");
    let route = &status_of(&status, "HTTPRoute", "r")["status"]["parents"][0]["conditions"][1];
    assert_eq!(route["status"], "False");
    assert_eq!(route["reason"], "FilterNotReady");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_filter_config_or_source_swaps_it_without_failing_a_request() {
    let config = |v: u32| {
        wasm_filter(
            "h",
            "headers",
            &format!("  config: {{request: {{set: {{x-version: '{v}'}}}}}}\n"),
        )
    };
    let rules = format!(
        "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("h")
    );
    let (_a, port, dir, gw) = setup("wasm-swap", &[config(0)], &rules).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = send(&c, "GET", port, "h", "/", &[]).await;
                // Every answer comes through a filter: the headers one, or (after the
                // source changes) the hello one.
                if r.status == StatusCode::OK
                    && (r.seen("x-version").is_some() || r.seen("x-hello").is_some())
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Waits until the filter answers with `header: value`. (Not by counting reloads: on
    // a loaded machine one write's file events can be split over two reloads.)
    let serving = |header: &'static str, value: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(port, "h", "/").await.seen(header).as_deref() != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{header}: {value} not served within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    for (v, want) in [(1, "1"), (2, "2"), (3, "3")] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        dir.write("filters.yaml", &config(v));
        serving("x-version", want).await;
    }
    assert!(
        gw.metric("sluice_config_reloads_total{result=\"ok\"}")
            .await
            >= 3
    );
    // Now another component under the same WasmFilter name.
    dir.write(
        "filters.yaml",
        &wasm_filter("h", "hello", "  config: {greeting: swapped}\n"),
    );
    serving("x-hello", "swapped").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the swaps"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert_eq!(
        get(port, "h", "/").await.seen("x-hello").as_deref(),
        Some("swapped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_filters_are_cached_on_disk_by_digest() {
    let rules = format!(
        "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("h")
    );
    let (_a, port, dir, gw) = setup("wasm-cache", &[wasm_filter("h", "hello", "")], &rules).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-hello").as_deref(),
        Some("world")
    );
    let cached: Vec<_> = std::fs::read_dir(dir.0.join("cache"))
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let digest =
        sluice_wasm::sha256_hex(&std::fs::read(dir.0.join("filters/hello.wasm")).expect("wasm"));
    assert!(
        cached[0].starts_with(&digest),
        "{} is named by the component's digest",
        cached[0]
    );
    assert!(gw.logs().contains("compiled Wasm component"));
    // The filter's own metric, through the metrics import.
    assert_eq!(get(port, "h", "/hello").await.body, "hello, world\n");
    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"sluice_filter_greetings_total{filter="default/h"} 1"#),
        "{metrics}"
    );
    drop(gw);

    // A restart loads the precompiled artifact instead of compiling.
    let cache = dir.0.join("cache");
    let again = Sluice::start(
        Path::new(&dir.0),
        &["--cache-dir", cache.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-hello").as_deref(),
        Some("world")
    );
    assert!(
        !again.logs().contains("compiled Wasm component"),
        "restart recompiled:\n{}",
        again.logs()
    );
}

/// A real HTTPS server on 127.0.0.1 with a certificate for `localhost`, signed by a CA
/// made here. Serves `bytes` at every path and counts requests.
async fn https_server(bytes: Vec<u8>, dir: &Path) -> (u16, std::path::PathBuf, Arc<AtomicU64>) {
    let ca = TestCa::new();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write ca");
    let config = ca.server_config(&["localhost"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicU64::new(0));
    let (bytes, counter) = (bytes::Bytes::from(bytes), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, bytes, counter) = (acceptor.clone(), bytes.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let body = http_body_util::Full::new(bytes.clone());
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_file, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sources_are_downloaded_verified_and_cached() {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("wasm-url");
    install_filters(&dir, &["headers", "respond", "hello", "misbehave"]);
    let wasm = std::fs::read(dir.0.join("filters/hello.wasm")).expect("hello.wasm");
    let sha = sluice_wasm::sha256_hex(&wasm);
    let (https, ca, hits) = https_server(wasm, &dir.0).await;
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    let url = format!("https://localhost:{https}/hello.wasm");
    dir.write(
        "filters.yaml",
        &format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: remote, namespace: default}}\nspec:\n  source: {{url: '{url}', sha256: {sha}}}\n  config: {{greeting: remote}}\n---\napiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: tampered, namespace: default}}\nspec:\n  source: {{url: '{url}', sha256: {}}}\n",
            "0".repeat(64)
        ),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - matches: [{{path: {{value: /bad}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("tampered"),
            ext("remote")
        )),
    );
    let cache = dir.0.join("cache");
    let args = ["--cache-dir", cache.to_str().expect("utf-8")];
    let gw = Sluice::start_with_env(&dir.0, &args, &[("SSL_CERT_FILE", &ca)]).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-hello").as_deref(),
        Some("remote")
    );
    assert_eq!(
        get(port, "h", "/bad").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let tampered = &status_of(&status, "WasmFilter", "tampered")["status"]["conditions"][1];
    assert_eq!(tampered["reason"], "DigestMismatch", "{tampered}");
    let remote = &status_of(&status, "WasmFilter", "remote")["status"];
    assert_eq!(remote["digest"], format!("sha256:{sha}"));
    drop(gw);

    // Restarted, the verified component comes from the download cache: no request is
    // made for it (the tampered one is fetched again, and refused again).
    let before = hits.load(Ordering::Relaxed);
    let again = Sluice::start_with_env(&dir.0, &args, &[("SSL_CERT_FILE", &ca)]).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-hello").as_deref(),
        Some("remote")
    );
    assert_eq!(
        hits.load(Ordering::Relaxed),
        before + 1,
        "only the unverifiable source was fetched again"
    );
    drop(again);
}

#[test]
fn the_quickstart_config_loads_and_every_object_is_accepted() {
    let dir = TempDir::new("quickstart");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    for entry in std::fs::read_dir(&src).expect("examples/quickstart") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, dir.0.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    install_filters(&dir, &["headers", "respond", "hello", "misbehave"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&dir.0)
        .output()
        .expect("run sluice check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_norway::from_str(&text).expect("check prints YAML");
    let mut conditions = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Array(c)) = m.get("conditions") {
                    out.extend(c.iter().cloned());
                }
                m.values().for_each(|x| collect(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    collect(&v["statuses"], &mut conditions);
    assert!(conditions.len() > 10, "{text}");
    for c in &conditions {
        // Conflicted is the one condition whose healthy value is False.
        let healthy = if c["type"] == "Conflicted" {
            "False"
        } else {
            "True"
        };
        assert_eq!(c["status"], healthy, "{c}");
    }
    assert!(
        text.contains("reason: Loaded"),
        "the hello filter loads:\n{text}"
    );
}

/// `sluice check` gates a pipeline: a filter that refuses its config makes it exit 1,
/// naming the WasmFilter and the route with the reason; `--cache-dir` is where the
/// compiled filter goes.
#[test]
fn check_exits_1_when_a_filter_is_not_ready_and_takes_a_cache_dir() {
    let dir = TempDir::new("check-not-ready");
    let cache = TempDir::new("check-cache");
    install_filters(&dir, &["misbehave"]);
    dir.write("gw.yaml", &gateway_yaml(free_port(), None));
    dir.write(
        "filters.yaml",
        &wasm_filter("refuses", "misbehave", "  config: {mode: reject-config}\n"),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("refuses")
        )),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&dir.0)
        .arg("--cache-dir")
        .arg(&cache.0)
        .output()
        .expect("run sluice check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("WasmFilter default/refuses: Ready is False (InvalidConfig)")
            && err.contains("reject-config always refuses its config"),
        "{err}"
    );
    // The route that uses it, and its backend that does not exist.
    assert!(
        err.contains("HTTPRoute default/r (gw): ResolvedRefs is False"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colour codes into a pipe: {err:?}"
    );
    let cached = std::fs::read_dir(&cache.0)
        .expect("the cache dir")
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"));
    assert!(cached, "the compiled filter is cached in --cache-dir");
}

/// `sluice check` loads and configures a filter whose kv is in Redis without reaching
/// Redis (none runs here): the WasmFilter is Ready.
#[test]
fn check_accepts_a_filter_whose_kv_is_in_redis_without_connecting() {
    let dir = TempDir::new("check-redis");
    install_filters(&dir, &["ratelimit"]);
    dir.write("gw.yaml", &gateway_yaml(free_port(), None));
    dir.write("svc.yaml", &service_yaml_port("a", free_port(), None));
    dir.write(
        "filters.yaml",
        &wasm_filter(
            "limit",
            "ratelimit",
            &format!(
                "  config: {{requests: 10, windowSeconds: 60}}\n  kv: {{redis: {{url: 'redis://127.0.0.1:{}'}}}}\n",
                free_port()
            ),
        ),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("limit")
        )),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&dir.0)
        .output()
        .expect("run sluice check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// A filter that loops for as long as it may (10 s, the largest `limits.timeout`) holds
/// no worker: with as many looping calls as the gateway has workers, another route and
/// the admin API still answer at once, and the loop is cut by its own running time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_filter_holds_no_worker_and_stalls_no_other_route_or_the_admin_api() {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("wasm-loop-workers");
    install_filters(&dir, &["misbehave"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "filters.yaml",
        &wasm_filter(
            "loop",
            "misbehave",
            "  config: {mode: loop, path: /loop}\n  limits: {timeout: 10s}\n",
        ),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - matches: [{{path: {{value: /loop}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - backendRefs: [{{name: a, port: 80}}]\n",
            ext("loop")
        )),
    );
    let gw = Sluice::start(&dir.0, &["--workers", "2"]).await;

    let started = Instant::now();
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(port, "h", "/loop").await.status }))
        .collect();
    // Both workers' worth of guests are spinning now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let t = Instant::now();
        let (status, _) = admin_get(gw.admin, "/readyz").await.expect("admin");
        assert_eq!(status, StatusCode::OK);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/readyz took {:?} while filters loop",
            t.elapsed()
        );
        let t = Instant::now();
        let r = get(port, "h", "/healthy").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a route without the filter took {:?} while filters loop",
            t.elapsed()
        );
    }
    for l in loops {
        assert_eq!(
            l.await.expect("loop request"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the looping filter is cut at its limit (FailClosed)"
        );
    }
    // The budget is the guest's own running time: not cut early for having waited.
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "cut after {:?}, before its 10 s",
        started.elapsed()
    );
    let metrics = gw.admin("/metrics").await;
    let line = r#"sluice_wasm_errors_total{filter="default/loop",kind="timeout"} 2"#;
    assert!(metrics.contains(line), "missing {line}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_fails_on_every_request_cannot_flood_the_log() {
    let (_a, port, _dir, gw) = setup_with(
        "wasm-log-budget",
        &[wasm_filter(
            "panic",
            "misbehave",
            "  config: {mode: panic, path: /panic}\n",
        )],
        &format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("panic")
        ),
        &["--filter-log-lines", "3"],
    )
    .await;
    // 40 failing calls over two seconds or more: each would log the guest's panic and
    // the gateway's line about the failure.
    let start = Instant::now();
    for _ in 0..40 {
        assert_eq!(
            get(port, "h", "/panic").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs() + 2;
    let logs = gw.logs();
    let written = logs.matches("panicking on purpose").count() as u64;
    assert!(written >= 1, "the first failures are logged\n{logs}");
    assert!(
        written <= 3 * seconds,
        "{written} panic lines in {seconds} s with a budget of 3 a second\n{logs}"
    );
    assert!(
        logs.contains("log lines of this filter were dropped"),
        "the drops are reported\n{logs}"
    );
    let dropped = gw
        .metric(r#"sluice_wasm_log_lines_dropped_total{filter="default/panic"}"#)
        .await;
    assert!(dropped >= 40, "{dropped} lines dropped");
}

/// Filter API 0.2's request context through the gateway: each of many concurrent
/// requests gets back its own id, which only the context carries from `on-request` to
/// `on-response` (the pool hands the two hooks to whichever instances are free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filters_request_context_follows_its_request_under_concurrency() {
    let (_a, port, _dir, gw) = setup(
        "wasm-context",
        &[wasm_filter("rid", "request_id", "")],
        &format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("rid")
        ),
    )
    .await;
    let c = client();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let own = format!("client-{i}");
                // Every other request brings its own id; the rest get one made.
                let headers: Vec<(&str, &str)> = if i % 2 == 0 {
                    vec![("x-request-id", own.as_str()), ("x-echo-delay-ms", "20")]
                } else {
                    vec![("x-echo-delay-ms", "20")]
                };
                let r = send(&c, "GET", port, "h", &format!("/{i}"), &headers).await;
                (i, own, r)
            })
        })
        .collect();
    let mut made = std::collections::HashSet::new();
    for call in calls {
        let (i, own, r) = call.await.expect("request");
        assert_eq!(r.status, StatusCode::OK);
        let returned = r.headers["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        let seen = r.seen("x-request-id").expect("the backend got an id");
        assert_eq!(
            returned, seen,
            "request {i}: the response carries the id the backend saw"
        );
        if i % 2 == 0 {
            assert_eq!(returned, own, "request {i} kept its own id");
        } else {
            assert!(made.insert(returned), "request {i}: made ids are unique");
        }
    }
    assert_eq!(made.len(), 32);
    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"sluice_wasm_errors_total{filter="default/rid",kind="trap"} 0"#),
        "{metrics}"
    );
}

/// The access log: one JSON line per request on stdout, with the route, the endpoint,
/// bytes both ways, durations, each Wasm filter's outcome and the client's trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_an_access_log_line_with_its_filters_outcomes() {
    let (a, port, _dir, gw) = setup_with(
        "access-log",
        &[
            wasm_filter("rid", "request_id", ""),
            wasm_filter(
                "boom",
                "misbehave",
                "  config: {mode: trap, path: /boom}\n  failurePolicy: FailOpen\n",
            ),
        ],
        &format!(
            "  - name: main\n    filters: [{}, {}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("rid"),
            ext("boom")
        ),
        &["--access-log", "on", "--access-log-format", "json"],
    )
    .await;
    let c = client();
    let body = "hello";
    let resp = c
        .request(
            http::Request::post(format!("http://127.0.0.1:{port}/boom?token=secret"))
                .header("host", "h")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let sent = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes()
        .len();
    let other = get(port, "nowhere.example", "/x").await;
    assert_eq!(other.status, StatusCode::OK);

    // The writer thread flushes when its queue is empty; give it a moment.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = gw.access_log().lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/boom", "the query is not logged");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "default/r");
    assert_eq!(first["rule"], "main");
    assert_eq!(first["backend"], "default/a:80");
    assert_eq!(first["endpoint"], a.addr.to_string());
    assert_eq!(first["bytes_in"], body.len());
    assert_eq!(first["bytes_out"], sent);
    assert!(
        first["duration_ms"].as_f64().expect("duration")
            >= first["upstream_ms"].as_f64().expect("upstream")
    );
    assert_eq!(
        first["filters"],
        serde_json::json!([
            {"filter": "default/rid", "outcome": "continue"},
            {"filter": "default/boom", "outcome": "skipped", "error": "trap"},
        ])
    );
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        first["time"].as_str().expect("time").ends_with('Z'),
        "{first}"
    );
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("a JSON line");
    assert_eq!(second["trace_id"], serde_json::Value::Null);
    assert_eq!(gw.metric("sluice_access_log_lines_total").await, 2);
    assert_eq!(gw.metric("sluice_access_log_dropped_total").await, 0);
    // The process's own log is plain text when it goes to a file: no colour codes.
    assert!(
        !gw.logs().contains('\u{1b}'),
        "ANSI escapes in the log file"
    );
}

/// Sends a request with a body and extra headers; returns status, headers and body.
async fn post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut b = http::Request::post(format!("http://127.0.0.1:{port}{path}")).header("host", "h");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = client()
        .request(
            b.body(http_body_util::Full::new(body.into()))
                .expect("request"),
        )
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Filter API 0.2 buffered bodies through the gateway: a filter that asks for bodies
/// gets them whole and may replace them (content-length follows), a body past
/// `limits.maxBodyBytes` gets 413 / 502 or, FailOpen, streams on unfiltered, gRPC is
/// never buffered, a body no filter asks for streams past a header-only filter
/// whatever its size, and a 0.1 filter runs on the same rule as a 0.2 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_reach_the_filters_that_ask_for_them_and_stream_past_the_rest() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/harness/tests/fixtures/headers-0.1.0.wasm");
    let small = "  limits: {maxBodyBytes: 1Ki}\n  config: {request: [/x], response: [/x]}\n";
    let filters = [
        wasm_filter(
            "redact",
            "json_redact",
            "  config: {request: [/password], response: [/ssn]}\n",
        ),
        wasm_filter("small", "json_redact", small),
        wasm_filter(
            "small-open",
            "json_redact",
            &format!("{small}  failurePolicy: FailOpen\n"),
        ),
        wasm_filter(
            "strict",
            "json_redact",
            "  config: {request: [/password], onInvalid: reject}\n",
        ),
        wasm_filter("rid", "request_id", ""),
        wasm_filter(
            "old",
            "headers-0.1.0",
            "  config: {request: {set: {x-old: 'yes'}}, response: {set: {x-old-resp: 'yes'}}}\n",
        ),
    ];
    let rules = format!(
        "  - matches: [{{path: {{value: /redact}}}}]\n    filters: [{}, {}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{path: {{value: /strict}}}}]\n    filters: [{}, {}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{path: {{value: /small}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{path: {{value: /open}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("old"),
        ext("redact"),
        ext("old"),
        ext("strict"),
        ext("small"),
        ext("small-open"),
        ext("rid"),
    );
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("wasm-bodies");
    install_filters(&dir, &["json_redact", "request_id"]);
    std::fs::copy(&fixture, dir.0.join("filters/headers-0.1.0.wasm")).expect("copy fixture");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write("filters.yaml", &filters.join("---\n"));
    dir.write("routes.yaml", &route(&rules));
    let cache = dir.0.join("cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let reflect = [
        ("content-type", "application/json"),
        ("x-echo-reflect", "1"),
    ];

    // Both bodies redacted; the backend got the new request body with its length; the
    // 0.1 filter ran on the same rule, both ways.
    let (status, headers, body) = post(
        port,
        "/redact",
        &reflect,
        r#"{"user":"ann","password":"hunter2","ssn":"123-45-6789"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"{"user":"ann","password":"***","ssn":"***"}"#);
    assert_eq!(
        headers["x-echo-request-content-length"],
        r#"{"user":"ann","password":"***","ssn":"123-45-6789"}"#
            .len()
            .to_string()
    );
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(headers["x-old-resp"], "yes");

    // A chunked request body (curl, no content-length) reaches the backend whole, with
    // the length of what the filter made of it.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-H",
            "host: h",
            "-H",
            "transfer-encoding: chunked",
        ])
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "x-echo-reflect: 1",
        ])
        .args(["--data-binary", r#"{"password":"p"}"#])
        .arg(format!("http://127.0.0.1:{port}/redact"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.contains(&format!(
            "x-echo-request-content-length: {}",
            r#"{"password":"***"}"#.len()
        )),
        "{text}"
    );
    assert!(text.ends_with(r#"{"password":"***"}"#), "{text}");

    // gRPC is a stream: never buffered, counted as such.
    let (status, _, body) = post(
        port,
        "/redact",
        &[
            ("content-type", "application/grpc"),
            ("x-echo-reflect", "1"),
        ],
        r#"{"password":"p"}"#,
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &br#"{"password":"p"}"#[..])
    );

    // A body hook's direct answer: the backend is not called, and the answer goes
    // through the response work of the filters before it.
    let before = a.id.requests.load(Ordering::Relaxed);
    let (status, headers, body) = post(port, "/strict", &reflect, "{not json").await;
    assert_eq!(
        (status, &body[..]),
        (
            StatusCode::BAD_REQUEST,
            &b"the request body is not valid JSON\n"[..]
        )
    );
    assert_eq!(headers["x-old-resp"], "yes");
    assert_eq!(a.id.requests.load(Ordering::Relaxed), before);

    // Past maxBodyBytes, FailClosed: 413 without calling the backend, and 502.
    let big = vec![b'{'; 4096];
    let (status, _, _) = post(port, "/small", &reflect, big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.id.requests.load(Ordering::Relaxed), before);
    let r = send(
        &client(),
        "GET",
        port,
        "h",
        "/small",
        &[("x-echo-bytes", "4096")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // FailOpen: the filter is skipped and the bodies stream on whole.
    let (status, _, body) = post(port, "/open", &reflect, big.clone()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 4096));
    let r = send(
        &client(),
        "GET",
        port,
        "h",
        "/open",
        &[("x-echo-bytes", "4096")],
    )
    .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 4096));

    // A header-only filter: a body four times its maxBodyBytes streams past it.
    let (status, _, body) = post(port, "/", &[], vec![b'z'; 4 << 20]).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["bodyLength"], 4 << 20);

    let metrics = gw.admin("/metrics").await;
    for (filter, direction, outcome, n) in [
        ("redact", "request", "buffered", 2),
        ("redact", "response", "buffered", 2),
        ("redact", "request", "streamed", 1),
        ("redact", "response", "streamed", 1),
        ("small", "request", "too_large", 1),
        ("small", "response", "too_large", 1),
        ("small-open", "request", "too_large", 1),
        // The reflected 4 KiB body too.
        ("small-open", "response", "too_large", 2),
        ("rid", "request", "buffered", 0),
        ("rid", "request", "too_large", 0),
    ] {
        let line = format!(
            "sluice_wasm_bodies_total{{filter=\"default/{filter}\",direction=\"{direction}\",outcome=\"{outcome}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    assert!(
        metrics.contains("sluice_wasm_failopen_skips_total{filter=\"default/small-open\"} 0"),
        "a body too large is not a filter failure"
    );
    // password and ssn, then the chunked request's password.
    assert!(
        metrics.contains("sluice_filter_json_redact_fields_total{filter=\"default/redact\"} 3\n"),
        "{metrics}"
    );
}

/// A server that accepts connections and resets each at once (SO_LINGER 0): an
/// authorization service that breaks mid-call, as a real socket does.
async fn resetting_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    port
}

/// Filter API 0.2 outbound calls through the gateway, with `ext-authz` and a real
/// authorization service (the echo server, which answers as the forwarded `x-echo-*`
/// headers ask): allow with headers for the backend, deny with the service's answer,
/// a per-grant timeout, a service down (fail closed and fail open), one that resets
/// its connections, a name that is not granted (refused and counted), grants that do
/// not resolve (status), and a cross-namespace grant allowed by a ReferenceGrant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_calls_only_granted_backends_and_fails_open_or_closed() {
    let app = echo("app").await;
    let authz = echo("authz").await;
    let reset_port = resetting_server().await;
    let down_port = free_port();
    let port = free_port();
    let dir = TempDir::new("wasm-authz");
    install_filters(&dir, &["ext_authz"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    let in_ns =
        |yaml: String, ns: &str| yaml.replace("namespace: default", &format!("namespace: {ns}"));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            in_ns(service_yaml("authz", &authz, None), "auth"),
            in_ns(service_yaml("authz", &authz, None), "private"),
            service_yaml_port("down", down_port, None),
            service_yaml_port("reset", reset_port, None),
            // WasmFilters in default may call Services in auth, not in private.
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: filters, namespace: auth}\nspec:\n  from: [{group: sluice.dev, kind: WasmFilter, namespace: default}]\n  to: [{group: '', kind: Service}]\n".to_string(),
        ]
        .join("---\n"),
    );
    let grant = |backend: &str, extra: &str| {
        format!(
            "  outbound:\n  - name: authz\n    backendRef: {backend}\n    timeout: 300ms\n{extra}"
        )
    };
    let forward = "{headers: [authorization, x-echo-status, x-echo-set-header, x-echo-delay-ms], upstreamHeaders: [x-user]}";
    let filters = [
        wasm_filter(
            "authz",
            "ext_authz",
            &grant(
                "{name: authz, namespace: auth, port: 80}",
                &format!("  config: {forward}\n"),
            ),
        ),
        wasm_filter(
            "down-closed",
            "ext_authz",
            &grant("{name: down, port: 80}", ""),
        ),
        wasm_filter(
            "down-open",
            "ext_authz",
            &grant(
                "{name: down, port: 80}",
                "  config: {failureModeAllow: true}\n",
            ),
        ),
        wasm_filter("reset", "ext_authz", &grant("{name: reset, port: 80}", "")),
        wasm_filter(
            "ungranted",
            "ext_authz",
            &grant(
                "{name: authz, namespace: auth, port: 80}",
                "  config: {grant: other}\n",
            ),
        ),
        wasm_filter(
            "missing",
            "ext_authz",
            &grant("{name: nothere, port: 80}", ""),
        ),
        wasm_filter(
            "private",
            "ext_authz",
            &grant("{name: authz, namespace: private, port: 80}", ""),
        ),
    ];
    dir.write("filters.yaml", &filters.join("---\n"));
    let rule = |path: &str, filter: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /{path}}}}}]\n    filters: [{}]\n    backendRefs: [{{name: app, port: 80}}]\n",
            ext(filter)
        )
    };
    let rules: String = [
        ("authz", "authz"),
        ("down-closed", "down-closed"),
        ("down-open", "down-open"),
        ("reset", "reset"),
        ("ungranted", "ungranted"),
        ("private", "private"),
    ]
    .iter()
    .map(|(p, f)| rule(p, f))
    .collect();
    dir.write("routes.yaml", &route(&rules));
    let cache = dir.0.join("cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let c = client();

    // Allowed: the backend gets the header the service's answer carries.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/authz/x",
        &[("x-echo-set-header", "x-user: ann")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["service"], "app");
    assert_eq!(r.seen("x-user").as_deref(), Some("ann"));
    assert_eq!(
        authz.id.requests.load(Ordering::Relaxed),
        1,
        "one check per request"
    );

    // Denied: the client gets the service's own answer.
    let before = app.id.requests.load(Ordering::Relaxed);
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/authz/x",
        &[("x-echo-status", "401")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["service"], "authz", "the body is the service's");
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);

    // Past the grant's 300 ms: fail closed with 403, long before the service answers.
    let t = Instant::now();
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/authz/x",
        &[("x-echo-delay-ms", "3000")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // The service is down: closed answers 403, open lets the request in and says so.
    assert_eq!(
        get(port, "h", "/down-closed").await.status,
        StatusCode::FORBIDDEN
    );
    let r = get(port, "h", "/down-open").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.seen("x-ext-authz-failure-mode-allowed").as_deref(),
        Some("true")
    );
    // It resets its connections: fail closed.
    assert_eq!(get(port, "h", "/reset").await.status, StatusCode::FORBIDDEN);
    // A call to a name the WasmFilter does not grant is refused, and counted.
    assert_eq!(
        get(port, "h", "/ungranted").await.status,
        StatusCode::FORBIDDEN
    );
    // A grant whose reference is not permitted cannot be called.
    assert_eq!(
        get(port, "h", "/private").await.status,
        StatusCode::FORBIDDEN
    );

    let metrics = gw.admin("/metrics").await;
    for line in [
        r#"sluice_wasm_outbound_refused_total{filter="default/ungranted"} 1"#,
        r#"sluice_wasm_outbound_refused_total{filter="default/authz"} 0"#,
        r#"sluice_wasm_outbound_calls_total{filter="default/authz",grant="authz"} 3"#,
        r#"sluice_wasm_outbound_errors_total{filter="default/authz",grant="authz"} 1"#,
        r#"sluice_wasm_outbound_errors_total{filter="default/down-closed",grant="authz"} 1"#,
        r#"sluice_wasm_outbound_errors_total{filter="default/reset",grant="authz"} 1"#,
        r#"sluice_filter_ext_authz_allowed_total{filter="default/authz"} 1"#,
        r#"sluice_filter_ext_authz_denied_total{filter="default/authz"} 1"#,
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "{line}\n{metrics}");
    }
    assert!(metrics.contains(
        r#"sluice_wasm_outbound_duration_seconds_count{filter="default/authz",grant="authz"} 3"#
    ));

    // Status: each grant and whether it resolves.
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let ok = &status_of(&status, "WasmFilter", "authz")["status"];
    assert_eq!(
        condition(&ok["conditions"], "ResolvedRefs")["status"],
        "True"
    );
    assert_eq!(ok["outbound"][0]["name"], "authz");
    assert_eq!(ok["outbound"][0]["backend"], "auth/authz:80");
    assert_eq!(ok["outbound"][0]["resolved"], true);
    let missing = &status_of(&status, "WasmFilter", "missing")["status"];
    assert_eq!(
        condition(&missing["conditions"], "ResolvedRefs")["reason"],
        "BackendNotFound"
    );
    assert_eq!(missing["outbound"][0]["resolved"], false);
    let private = &status_of(&status, "WasmFilter", "private")["status"];
    assert_eq!(
        condition(&private["conditions"], "ResolvedRefs")["reason"],
        "RefNotPermitted"
    );
    let down = &status_of(&status, "WasmFilter", "down-closed")["status"];
    assert_eq!(
        down["outbound"][0]["resolved"], true,
        "it resolves; it is the server that is down"
    );
}

/// Signs JWTs in a test: an RSA key made by `openssl genpkey`, a P-256 key and an HMAC
/// secret made by ring, and the JWKS that publishes them.
struct Signer {
    rsa: ring::signature::RsaKeyPair,
    ec: ring::signature::EcdsaKeyPair,
    secret: Vec<u8>,
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Signer {
    fn new() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // OpenSSL 3 writes an RSA key in DER as PKCS#1 RSAPrivateKey.
        let rsa = ring::signature::RsaKeyPair::from_der(&out.stdout).expect("RSA PKCS#1");
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256");
        let ec =
            ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256");
        Signer {
            rsa,
            ec,
            secret: b"a shared secret of 32 bytes!!!!!".to_vec(),
        }
    }

    fn jwks(&self) -> String {
        use ring::signature::KeyPair;
        let rsa: ring::rsa::PublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        let point = self.ec.public_key().as_ref();
        serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "alg": "RS256", "use": "sig",
             "n": b64url(rsa.n.strip_prefix(&[0u8][..]).unwrap_or(&rsa.n)),
             "e": b64url(&rsa.e)},
            {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])},
            {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64url(&self.secret)},
        ]})
        .to_string()
    }

    /// A token whose header says `alg` but whose signature is HMAC-SHA256 keyed with
    /// the RSA public modulus.
    fn forged_hmac(&self, alg: &str, kid: &str, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"alg": alg, "kid": kid});
        let signed = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let n: ring::rsa::PublicKeyComponents<Vec<u8>> = self.rsa.public().into();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &n.n);
        format!(
            "{signed}.{}",
            b64url(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
        )
    }

    /// A token signed with `alg` (RS256, ES256 or HS256) under `kid`.
    fn token(&self, alg: &str, kid: &str, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match alg {
            "RS256" => {
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &rng,
                        signed.as_bytes(),
                        &mut sig,
                    )
                    .expect("sign");
                sig
            }
            "ES256" => self
                .ec
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            _ => ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret),
                signed.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        };
        format!("{signed}.{}", b64url(&sig))
    }
}

/// A real HTTP server for the issuer's JWKS, counting its fetches.
async fn jwks_server(body: String) -> (u16, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let fetches = Arc::new(AtomicU64::new(0));
    let count = fetches.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let body = body.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        let count = count.clone();
                        async move {
                            let resp = if req.uri().path() == "/jwks.json" {
                                count.fetch_add(1, Ordering::Relaxed);
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            } else {
                                http::Response::builder()
                                    .status(404)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                            };
                            Ok::<_, std::convert::Infallible>(resp.expect("response"))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, fetches)
}

/// The `jwt` filter through the gateway: RS256, ES256 and HS256 tokens checked against
/// a JWKS fetched from a real server through an outbound grant and cached (one fetch
/// for many requests, one more for an unknown kid), issuer, audience, expiry with clock
/// skew, claims into headers (a client's own copy replaced), 401 with
/// `www-authenticate`, and `alg: none` refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verifies_tokens_against_a_fetched_and_cached_jwks() {
    let signer = Signer::new();
    let (jwks_port, fetches) = jwks_server(signer.jwks()).await;
    let app = echo("app").await;
    let port = free_port();
    let dir = TempDir::new("wasm-jwt");
    install_filters(&dir, &["jwt"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            service_yaml_port("idp", jwks_port, None),
        ]
        .join("---\n"),
    );
    dir.write(
        "filters.yaml",
        &wasm_filter(
            "jwt",
            "jwt",
            "  outbound: [{name: jwks, backendRef: {name: idp, port: 80}}]\n  config:\n    issuer: https://idp.test\n    audiences: [api]\n    jwks: {grant: jwks, path: /jwks.json, cacheSeconds: 300}\n    claimsToHeaders: [{claim: sub, header: x-jwt-sub}]\n",
        ),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: app, port: 80}}]\n",
            ext("jwt")
        )),
    );
    let cache = dir.0.join("cache");
    let _gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let c = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"iss": "https://idp.test", "aud": ["other", "api"], "sub": "ann", "exp": now + 600});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let call = |token: String| {
        let c = c.clone();
        async move {
            let auth = format!("Bearer {token}");
            send(
                &c,
                "GET",
                port,
                "h",
                "/",
                &[("authorization", auth.as_str()), ("x-jwt-sub", "mallory")],
            )
            .await
        }
    };

    for (alg, kid) in [("RS256", "rsa1"), ("ES256", "ec1"), ("HS256", "hs1")] {
        let r = call(signer.token(alg, kid, claims(serde_json::json!({})))).await;
        assert_eq!(r.status, StatusCode::OK, "{alg}: {}", r.body);
        assert_eq!(
            r.seen("x-jwt-sub").as_deref(),
            Some("ann"),
            "{alg}: the claim, not the client's header"
        );
        assert_eq!(
            r.seen("authorization"),
            None,
            "{alg}: the token is not forwarded"
        );
    }
    // Expired 30 s ago: within the 60 s skew. An hour ago: refused.
    let r = call(signer.token("ES256", "ec1", claims(serde_json::json!({"exp": now - 30})))).await;
    assert_eq!(r.status, StatusCode::OK);
    for (why, token) in [
        (
            "expired",
            signer.token(
                "RS256",
                "rsa1",
                claims(serde_json::json!({"exp": now - 3600})),
            ),
        ),
        (
            "not valid yet",
            signer.token(
                "RS256",
                "rsa1",
                claims(serde_json::json!({"nbf": now + 3600})),
            ),
        ),
        (
            "audience",
            signer.token("RS256", "rsa1", claims(serde_json::json!({"aud": "other"}))),
        ),
        (
            "issuer",
            signer.token(
                "HS256",
                "hs1",
                claims(serde_json::json!({"iss": "https://evil.test"})),
            ),
        ),
        // An RS256 header over an HMAC signature keyed with the RSA key's public
        // modulus (the classic confusion): a key verifies only its own algorithm.
        (
            "signature",
            signer.forged_hmac("RS256", "rsa1", claims(serde_json::json!({}))),
        ),
        ("signature", {
            let t = signer.token("ES256", "ec1", claims(serde_json::json!({})));
            let mut parts: Vec<&str> = t.split('.').collect();
            let forged = b64url(
                claims(serde_json::json!({"sub": "admin"}))
                    .to_string()
                    .as_bytes(),
            );
            parts[1] = &forged;
            parts.join(".")
        }),
        (
            "alg",
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"none"}"#),
                b64url(claims(serde_json::json!({})).to_string().as_bytes())
            ),
        ),
    ] {
        let r = call(token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}");
        let challenge = r.headers["www-authenticate"].to_str().expect("ascii");
        assert!(
            challenge.starts_with("Bearer realm=\"https://idp.test\", error=\"invalid_token\""),
            "{why}: {challenge}"
        );
    }
    let r = get(port, "h", "/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"https://idp.test\""
    );
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        1,
        "the JWKS is cached across requests and instances"
    );
    // An unknown kid refetches the keys once.
    let r = call(signer.token("RS256", "rotated", claims(serde_json::json!({})))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fetches.load(Ordering::Relaxed), 2);
}

/// `--wasm-instances` bounds the hook calls in flight across all filters, including
/// calls waiting on an outbound request: past it a call fails (FailClosed: 500) at
/// once instead of queueing, and the requests within it are served. After the burst,
/// `--wasm-idle-memory` bounds the idle instances the filter keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_instances_bound_the_calls_waiting_on_outbound_requests() {
    // A budget below one instance is refused, with the flag and the fix.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--wasm-idle-memory", "512Ki", "."])
        .output()
        .expect("sluice run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--wasm-idle-memory") && err.contains("at least 1Mi"),
        "{err}"
    );

    let app = echo("app").await;
    let authz = echo("authz").await;
    let port = free_port();
    let dir = TempDir::new("wasm-instances");
    install_filters(&dir, &["ext_authz"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            service_yaml("authz", &authz, None),
        ]
        .join("---\n"),
    );
    dir.write(
        "filters.yaml",
        &wasm_filter(
            "authz",
            "ext_authz",
            "  outbound: [{name: authz, backendRef: {name: authz, port: 80}, timeout: 10s}]\n  config: {headers: [x-echo-delay-ms]}\n",
        ),
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: app, port: 80}}]\n",
            ext("authz")
        )),
    );
    let cache = dir.0.join("cache");
    let gw = Sluice::start(
        &dir.0,
        &[
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--wasm-instances",
            "64",
            "--wasm-idle-memory",
            "4Mi",
        ],
    )
    .await;
    let c = client();
    let calls: Vec<_> = (0..96)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                send(&c, "GET", port, "h", "/", &[("x-echo-delay-ms", "1500")])
                    .await
                    .status
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = 0;
    for call in calls {
        match call.await.expect("request") {
            StatusCode::OK => ok += 1,
            StatusCode::INTERNAL_SERVER_ERROR => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!((32..=64).contains(&ok), "{ok} served within 64 instances");
    assert_eq!(ok + failed, 96);
    // Up to 64 instances were in use at once; of about 1 MiB of linear memory each,
    // 4Mi keeps at most four.
    let live = gw
        .metric(r#"sluice_wasm_instances{filter="default/authz"}"#)
        .await;
    assert!((1..=4).contains(&live), "{live} instances kept idle");
}

/// `content-digest` as body-hash writes it.
fn content_digest(algorithm: &'static ring::digest::Algorithm, name: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    let d = ring::digest::digest(algorithm, body);
    format!(
        "{name}=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

/// Sends a chunked POST by hand: the head and `first`, then `second` after `pause`.
/// Returns the status line and how long the answer took from the first byte sent.
async fn chunked_post(
    port: u16,
    path: &str,
    first: &[u8],
    pause: Duration,
    second: &[u8],
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nx-echo-reflect: 1\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    for (i, chunk) in [first, second].into_iter().enumerate() {
        if i == 1 {
            tokio::time::sleep(pause).await;
        }
        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
        c.extend_from_slice(chunk);
        c.extend_from_slice(b"\r\n");
        // The gateway may have answered and closed by now: not an error here.
        if s.write_all(&c).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, started.elapsed())
}

/// Filter API 0.2 streamed bodies through the gateway: body-hash digests an upload
/// chunk by chunk and the backend gets the digest as a trailer (the body chunked),
/// a response body streams through it with its trailer reaching an HTTP/1.1 client
/// that accepts trailers, and a filter that stops reading (stalls) or traps in the
/// middle of a stream fails that request within its time limit, or, FailOpen, lets
/// the rest of the body through unfiltered. The failed instances are not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_pass_through_filters_chunk_by_chunk() {
    let filters = [
        wasm_filter("hash", "body_hash", ""),
        wasm_filter(
            "hash-resp",
            "body_hash",
            "  config: {direction: response, trailer: x-digest, algorithm: sha-512}\n",
        ),
        wasm_filter(
            "stall",
            "misbehave",
            "  config: {mode: stall-stream}\n  limits: {timeout: 50ms}\n",
        ),
        wasm_filter("trap", "misbehave", "  config: {mode: trap-stream}\n"),
        wasm_filter(
            "trap-open",
            "misbehave",
            "  config: {mode: trap-stream}\n  failurePolicy: FailOpen\n",
        ),
        wasm_filter(
            "sub",
            "sub_filter",
            "  config: {replace: [{from: '\"service\":\"a\"', to: '\"service\":\"renamed\"'}], contentTypes: [application/json]}\n",
        ),
    ];
    let chain = format!("{}, {}", ext("hash-resp"), ext("sub"));
    let rules = [
        ("/chain", chain.as_str()),
        ("/hash", "hash"),
        ("/hash-resp", "hash-resp"),
        ("/stall", "stall"),
        ("/trap", "trap"),
        ("/trap-open", "trap-open"),
    ]
    .iter()
    .map(|(path, f)| {
        let f = if f.starts_with('{') { f.to_string() } else { ext(f) };
        format!(
            "  - matches: [{{path: {{value: {path}}}}}]\n    filters: [{f}]\n    backendRefs: [{{name: a, port: 80}}]\n"
        )
    })
    .collect::<String>();
    let (a, port, _dir, gw) = setup("wasm-streams", &filters, &rules).await;

    // An 8 MiB upload with a content-length: the backend gets every byte, chunked, and
    // the digest of all of them as a trailer.
    let body: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let (status, headers, back) =
        post(port, "/hash", &[("x-echo-reflect", "1")], body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(back == body, "the body reaches the backend unchanged");
    assert_eq!(
        headers["x-echo-request-content-length"], "none",
        "sent chunked"
    );
    assert_eq!(
        headers["x-echo-request-trailer-content-digest"],
        content_digest(&ring::digest::SHA256, "sha-256", &body).as_str()
    );

    // A response body, to a client that accepts trailers.
    let req = http::Request::get(format!("http://127.0.0.1:{port}/hash-resp"))
        .header("host", "h")
        .header("te", "trailers")
        .header("x-echo-bytes", (3u32 << 20).to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["trailer"], "x-digest");
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    let data = collected.to_bytes();
    assert_eq!(data.len(), 3 << 20);
    assert_eq!(
        trailers["x-digest"],
        content_digest(&ring::digest::SHA512, "sha-512", &data).as_str()
    );

    // Two streaming filters on a response, in reverse order: sub-filter changes the
    // body (its length with it), then body-hash digests what sub-filter made of it.
    let req = http::Request::get(format!("http://127.0.0.1:{port}/chain"))
        .header("host", "h")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none());
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    let data = collected.to_bytes();
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains(r#""service":"renamed""#), "{text}");
    assert_eq!(
        trailers["x-digest"],
        content_digest(&ring::digest::SHA512, "sha-512", &data).as_str()
    );

    // A filter that stops reading: its chunk call is cut at its 50 ms limit, the
    // request fails (500) well within a second, and the instance is not kept.
    let (status, took) = chunked_post(
        port,
        "/stall",
        b"first",
        Duration::from_millis(100),
        b"second",
    )
    .await;
    assert!(status.contains(" 500 "), "{status}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A trap in the middle of a stream: 500 too.
    let (status, _) = chunked_post(
        port,
        "/trap",
        b"first",
        Duration::from_millis(100),
        b"second",
    )
    .await;
    assert!(status.contains(" 500 "), "{status}");
    let metrics = gw.admin("/metrics").await;
    for (filter, kind) in [("stall", "timeout"), ("trap", "trap")] {
        assert!(
            metrics.contains(&format!(
                "sluice_wasm_errors_total{{filter=\"default/{filter}\",kind=\"{kind}\"}} 1"
            )),
            "{filter}: {metrics}"
        );
        // The stream held the pool's one instance; it failed and was dropped: nothing
        // is held afterwards (the next request instantiates afresh).
        assert!(
            metrics.contains(&format!(
                "sluice_wasm_instances{{filter=\"default/{filter}\"}} 0"
            )),
            "{filter}: {metrics}"
        );
    }
    assert!(
        metrics.contains(r#"sluice_wasm_bodies_total{filter="default/hash",direction="request",outcome="chunked"} 1"#),
        "{metrics}"
    );

    // FailOpen: the rest of the body passes the failed filter unfiltered.
    let before = a.id.requests.load(Ordering::Relaxed);
    let (status, _) = chunked_post(
        port,
        "/trap-open",
        b"first",
        Duration::from_millis(100),
        b"second",
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(a.id.requests.load(Ordering::Relaxed), before + 1);
}

/// What the archive received: path, `x-tee-path`, length, `content-digest`.
type Archived = Arc<std::sync::Mutex<Vec<(String, String, usize, String)>>>;

/// An archive service for tee: records the path, the `x-tee-path` and the SHA-256 and
/// length of each body it receives, then answers 201.
async fn archive_server() -> (u16, Archived) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got: Archived = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let original = req
                                .headers()
                                .get("x-tee-path")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let sum = content_digest(&ring::digest::SHA256, "sha-256", &body);
                            seen.lock()
                                .expect("lock")
                                .push((path, original, body.len(), sum));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(201)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, got)
}

/// An outbound call whose body goes out in pieces (API 0.2 `outbound.start`), through
/// the gateway: tee copies an upload, as it streams, to an archive service granted in
/// its `spec.outbound`, and the route's backend gets the same body; with the archive
/// down, the upload still goes through and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tee_streams_a_copy_of_an_upload_to_its_granted_backend() {
    let (archive, got) = archive_server().await;
    let down = free_port();
    let filters = [
        wasm_filter(
            "tee",
            "tee",
            "  outbound: [{name: archive, backendRef: {name: archive, port: 80}, timeout: 10s}]\n  config: {grant: archive, path: /uploads}\n",
        ),
        wasm_filter(
            "tee-down",
            "tee",
            "  outbound: [{name: archive, backendRef: {name: down, port: 80}}]\n  config: {grant: archive}\n",
        ),
    ];
    let rules = format!(
        "  - matches: [{{path: {{value: /up, type: PathPrefix}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{path: {{value: /down}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("tee"),
        ext("tee-down"),
    );
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("wasm-tee");
    install_filters(&dir, &["tee"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("a", &a, None),
            service_yaml_port("archive", archive, None),
            service_yaml_port("down", down, None),
        ]
        .join("---\n"),
    );
    dir.write("filters.yaml", &filters.join("---\n"));
    dir.write("routes.yaml", &route(&rules));
    let cache = dir.0.join("cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;

    let body: Vec<u8> = (0..(6u32 << 20) + 7).map(|i| (i % 253) as u8).collect();
    let (status, _, back) = post(
        port,
        "/up/file.bin?x=1",
        &[("x-echo-reflect", "1")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(back == body, "the backend gets the upload unchanged");
    // The copy runs beside the request: the archive may finish reading it a little
    // after the backend answered.
    let mut copies = Vec::new();
    for _ in 0..100 {
        copies = got.lock().expect("lock").clone();
        if !copies.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = copies;
    assert_eq!(got.len(), 1, "{got:?}");
    let (path, original, len, sum) = &got[0];
    assert_eq!(path, "/uploads");
    assert_eq!(original, "/up/file.bin?x=1");
    assert_eq!(*len, body.len());
    assert_eq!(
        sum,
        &content_digest(&ring::digest::SHA256, "sha-256", &body)
    );

    // The archive is down: the upload is served all the same; the copy is counted failed.
    let (status, _, back) = post(
        port,
        "/down",
        &[("x-echo-reflect", "1")],
        vec![b'z'; 100_000],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back.len(), 100_000);
    // The backend may answer before the filter's end hook has the archive's answer
    // (the upload's length is known, so the body is complete at its last byte).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = gw.admin("/metrics").await;
        if metrics.contains(r#"sluice_filter_tee_copies_total{filter="default/tee"} 1"#)
            && metrics.contains(r#"sluice_filter_tee_failures_total{filter="default/tee-down"} 1"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains(r#"sluice_filter_tee_copies_total{filter="default/tee"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_filter_tee_bytes_total{filter="default/tee"} 6291463"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_filter_tee_failures_total{filter="default/tee-down"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"sluice_wasm_outbound_calls_total{filter="default/tee",grant="archive"} 1"#
        ),
        "{metrics}"
    );
}

/// A real Redis server on 127.0.0.1, without persistence: a restart empties it.
struct Redis {
    child: std::process::Child,
    _dir: TempDir,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let dir = TempDir::new("redis");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/tools.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis { child, _dir: dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two gateways whose ratelimit WasmFilter keeps its `kv` in one Redis enforce one
/// limit together. Redis stops under load: the FailClosed gateway answers 500, the
/// FailOpen one skips the filter, none waits past the kv timeout, and both count the
/// failures; Redis comes back and the limit holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_rate_limit_through_redis_and_ride_out_its_restart() {
    let redis_port = free_port();
    let redis = Redis::start(redis_port).await;
    let limit = |policy: &str| {
        wasm_filter(
            "limit",
            "ratelimit",
            &format!(
                "  config: {{requests: 10, windowSeconds: 600}}\n  failurePolicy: {policy}\n  kv: {{redis: {{url: 'redis://127.0.0.1:{redis_port}', timeout: 200ms}}}}\n"
            ),
        )
    };
    let rules = format!(
        "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("limit")
    );
    let (_a, port_a, _dir_a, gw_a) = setup("kv-a", &[limit("FailClosed")], &rules).await;
    let (_b, port_b, _dir_b, gw_b) = setup("kv-b", &[limit("FailOpen")], &rules).await;

    let (mut ok, mut limited) = (0, 0);
    for i in 0..14 {
        let port = if i % 2 == 0 { port_a } else { port_b };
        match get(port, "h", "/").await.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (10, 4),
        "one limit of 10 across both gateways"
    );

    // Load on both while Redis stops and comes back: every request is answered, with
    // the limit, the failure policy or the backend, within the kv timeout and more.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut load = Vec::new();
    for port in [port_a, port_b, port_a, port_b] {
        let (stop, seen) = (stop.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = tokio::time::timeout(Duration::from_secs(3), get(port, "h", "/"))
                    .await
                    .unwrap_or_else(|_| panic!("port {port}: no answer in 3 s"));
                *seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((port, answer.status.as_u16()))
                    .or_insert(0u64) += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(redis);
    // Until `port` answers `want` (or, with `not`, anything else).
    let wait_for = |port: u16, want: StatusCode, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, not) = (get(port, "h", "/").await.status, what.starts_with("not"));
            if (status == want) != not {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: never {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(
        port_a,
        StatusCode::INTERNAL_SERVER_ERROR,
        "FailClosed without Redis",
    )
    .await;
    wait_for(port_b, StatusCode::OK, "FailOpen without Redis").await;
    let failures = "sluice_wasm_kv_errors_total{filter=\"default/limit\"}";
    assert!(gw_a.metric(failures).await > 0, "failures are counted");
    assert!(gw_b.metric(failures).await > 0);
    assert!(
        gw_b.metric("sluice_wasm_failopen_skips_total{filter=\"default/limit\"}")
            .await
            > 0
    );
    assert!(
        gw_a.logs().contains("the Redis store at redis://127.0.0.1"),
        "the log names the store:\n{}",
        gw_a.logs()
    );

    let _redis = Redis::start(redis_port).await;
    // Allowed or limited again (the load may have used up the new window already).
    wait_for(
        port_a,
        StatusCode::INTERNAL_SERVER_ERROR,
        "not failing once Redis is back",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for ((port, status), n) in &seen {
        assert!(
            matches!(status, 200 | 429) || (*status == 500 && *port == port_a),
            "port {port}: {n} answers {status}: {seen:?}"
        );
    }
    assert!(seen.contains_key(&(port_a, 500)), "{seen:?}");

    // The restarted Redis is empty: a new window, shared again.
    let mut limited = (false, false);
    for _ in 0..30 {
        limited.0 |= get(port_a, "h", "/").await.status == StatusCode::TOO_MANY_REQUESTS;
        limited.1 |= get(port_b, "h", "/").await.status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert_eq!(limited, (true, true), "the limit holds again on both");
}

/// `sluice filter test`: what a filter did to a request written in YAML, checked
/// against the file's `expect:` block; 0, 1 on a mismatch, 2 when it cannot run.
#[test]
fn filter_test_runs_a_component_on_a_yaml_request_and_checks_expectations() {
    let built = sluice_harness::repo_filters().expect("building filters/ for wasm32-wasip2");
    let dir = TempDir::new("filter-test");
    let run = |component: &str, config: Option<&str>, case: &str| {
        dir.write("case.yaml", case);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        // The default --cache-dir, here in the test's folder.
        cmd.env("XDG_CACHE_HOME", dir.0.join("cache"))
            .args(["filter", "test"])
            .arg(built.join(format!("{component}.wasm")))
            .arg("--request")
            .arg(dir.0.join("case.yaml"));
        if let Some(c) = config {
            dir.write("config.yaml", c);
            cmd.arg("--config").arg(dir.0.join("config.yaml"));
        }
        let out = cmd.output().expect("sluice filter test");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hello = "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello, namespace: default}\nspec:\n  source: {path: hello.wasm}\n  config: {greeting: tests}\n";

    // Let through, changed; the response hooks run on the backend's answer.
    let (code, out, err) = run(
        "hello",
        Some(hello),
        "request: {path: /api?x=1, headers: {x-api-key: k1}}\nresponse: {status: 201, body: made}\nexpect:\n  request: {path: /api?x=1, headers: {x-hello: tests, x-api-key: k1}}\n  response: {status: 201, body: made}\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("x-hello: tests"),
        "the report shows the request:\n{out}"
    );
    // The compiled code is kept by digest, so the next test of this build loads it.
    let digest =
        sluice_wasm::sha256_hex(&std::fs::read(built.join("hello.wasm")).expect("read hello.wasm"));
    let cached: Vec<String> = std::fs::read_dir(dir.0.join("cache/sluice/wasm"))
        .expect("the default cache folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        cached
            .iter()
            .any(|f| f.starts_with(&digest) && f.ends_with(".cwasm")),
        "{cached:?}"
    );

    // A mismatch names each field that differs.
    let (code, _, err) = run(
        "hello",
        Some(hello),
        "request: {path: /hello}\nexpect:\n  respond: {status: 201, body: nope}\n  request: {path: /hello}\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("expect.respond.status: expected \"201\", got \"200\""),
        "{err}"
    );
    assert!(err.contains("expect.respond.body"), "{err}");
    assert!(
        err.contains("expect.request: expected, but there is none"),
        "{err}"
    );

    // A buffered request body (json-redact), and a config that is the config itself.
    let (code, out, err) = run(
        "json_redact",
        Some("{request: [/password]}"),
        "request:\n  method: POST\n  path: /login\n  headers: {content-type: application/json}\n  body: '{\"user\":\"ann\",\"password\":\"hunter2\"}'\nexpect:\n  request: {body: '{\"user\":\"ann\",\"password\":\"***\"}', absentHeaders: [accept-encoding]}\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // The client's address (API 0.2 connection.client).
    let (code, out, err) = run(
        "source_range",
        Some("{allow: [10.0.0.0/8]}"),
        "request: {path: /, client: '203.0.113.9:5000'}\nexpect:\n  respond: {status: 403}\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // A config the filter refuses, and a request file that does not parse.
    let (code, _, err) = run("hello", Some("{greeting: ''}"), "request: {path: /}\n");
    assert_eq!(code, Some(2));
    assert!(err.contains(".greeting: must not be empty"), "{err}");
    let (code, _, err) = run("hello", None, "request: {pth: /}\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("case.yaml") && err.contains("pth"), "{err}");
}

/// `spec.debug.captureFailures`: the gateway keeps the last requests a filter failed
/// on (secrets redacted), serves them at `/filters/failures`, and `sluice filter
/// replay` runs them again on the build that failed (they fail again) or with a fix
/// (they pass), and saves them as `filter test` cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_failures_replay_locally_and_pass_once_fixed() {
    let filters = [wasm_filter(
        "bad",
        "misbehave",
        "  config: {mode: trap, path: /boom}\n  failurePolicy: FailClosed\n  debug: {captureFailures: 2, redactHeaders: [X-Api-Key]}\n",
    )];
    let rules = format!(
        "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        ext("bad")
    );
    let (_a, port, dir, gw) = setup("wasm-replay", &filters, &rules).await;
    let c = client();
    assert_eq!(get(port, "h", "/fine").await.status, StatusCode::OK);
    for n in 1..=3 {
        let r = send(
            &c,
            "GET",
            port,
            "h",
            &format!("/boom?n={n}"),
            &[
                ("authorization", "Bearer secret"),
                ("x-api-key", "k1"),
                ("x-case", "kept"),
            ],
        )
        .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    // The last two, with what the filter was given and in which build.
    let text = gw.admin("/filters/failures").await;
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let all = v["failures"].as_array().expect("failures");
    assert_eq!(all.len(), 2, "{text}");
    let wasm = std::fs::read(dir.0.join("filters/misbehave.wasm")).expect("wasm");
    let digest = format!("sha256:{}", sluice_wasm::sha256_hex(&wasm));
    for (f, n) in all.iter().zip([2, 3]) {
        assert_eq!(f["filter"], "default/bad");
        assert_eq!(f["hook"], "on-request");
        assert_eq!(f["kind"], "trap");
        assert_eq!(f["digest"], digest.as_str());
        assert_eq!(f["config"]["mode"], "trap");
        assert_eq!(f["request"]["path"], format!("/boom?n={n}"));
        assert_eq!(f["request"]["headers"]["x-case"], "kept");
        assert_eq!(f["request"]["headers"]["authorization"], "<redacted>");
        assert_eq!(f["request"]["headers"]["x-api-key"], "<redacted>");
        assert_eq!(
            f["redactedHeaders"],
            serde_json::json!(["authorization", "x-api-key"])
        );
    }
    assert!(!text.contains("secret") && !text.contains("k1"), "{text}");
    let only = gw.admin("/filters/failures?filter=default/other").await;
    assert!(only.contains("\"failures\": []"), "{only}");

    let replay = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["filter", "replay"])
            .arg(dir.0.join("filters/misbehave.wasm"))
            .args(["--admin", &gw.admin.to_string(), "--filter", "default/bad"])
            .args(extra)
            .output()
            .expect("sluice filter replay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The build that failed: both fail again, and are saved as test cases.
    let saved = dir.0.join("cases");
    let (code, out, err) = replay(&["--save", saved.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.matches("fails again").count(), 2, "{out}");
    assert!(out.contains("2 of 2 failures happen again"), "{out}");
    assert!(out.contains("redacted: authorization, x-api-key"), "{out}");
    let case = saved.join("2-default-bad-on-request.yaml");
    let yaml = std::fs::read_to_string(&case).expect("saved case");
    assert!(yaml.contains("/boom?n=3"), "{yaml}");

    // A fix (here: a config that behaves): they pass, and the report shows the request.
    dir.write("fixed.yaml", "{mode: ok}\n");
    let fixed = dir.0.join("fixed.yaml");
    let (code, out, err) = replay(&["--config", fixed.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 of 2 failures happen again"), "{out}");
    assert!(out.contains("passes now"), "{out}");

    // The saved case is a `filter test` case: with the failing config it fails again.
    dir.write("trap.yaml", "{mode: trap, path: /boom}\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["filter", "test"])
        .arg(dir.0.join("filters/misbehave.wasm"))
        .arg("--config")
        .arg(dir.0.join("trap.yaml"))
        .arg("--request")
        .arg(&case)
        .output()
        .expect("sluice filter test");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
