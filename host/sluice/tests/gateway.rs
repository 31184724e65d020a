//! End-to-end tests: the real binary, real sockets on 127.0.0.1, real clients.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_listener_hostname_path_headers_query_and_method() {
    let (a, b) = (echo("a").await, echo("b").await);
    let port = free_port();
    let dir = TempDir::new("routing");
    dir.write(
        "gw.yaml",
        &gateway_yaml(
            port,
            Some(
                "  - {name: foo, port: PORT, protocol: HTTP, hostname: foo.example.com}\n  - {name: wild, port: PORT, protocol: HTTP, hostname: '*.example.com'}\n",
            ),
        ),
    );
    dir.write(
        "svc.yaml",
        &services_yaml(&[("a", &a, None), ("b", &b, None)]),
    );
    dir.write(
        "routes.yaml",
        &[
            route(
                "foo",
                "  parentRefs: [{name: gw}]
  hostnames: [foo.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /api}, headers: [{name: x-version, value: '2'}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /api}, queryParams: [{name: v, type: RegularExpression, value: '[0-9]+'}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /api}, method: DELETE}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {value: /api}}]
    backendRefs: [{name: a, port: 80}]
",
            ),
            route(
                "wild",
                "  parentRefs: [{name: gw, sectionName: wild}]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/re/[a-z]+'}}]
    backendRefs: [{name: b, port: 80}]
  - backendRefs: [{name: a, port: 80}]
",
            ),
        ]
        .join("---\n"),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;
    let svc = |ans: &Answer| {
        ans.json()["service"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let c = client();

    let r = send(&c, "GET", port, "foo.example.com", "/exact", &[]).await;
    assert_eq!((r.status, svc(&r)), (StatusCode::OK, "a".into()));
    // Exact does not match a longer path; the prefix /api does not match /apix.
    let r = send(&c, "GET", port, "foo.example.com", "/exact/more", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "foo.example.com has no route for /exact/more"
    );
    assert_eq!(
        send(&c, "GET", port, "foo.example.com", "/apix", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        svc(&send(&c, "GET", port, "foo.example.com", "/api/x", &[]).await),
        "a"
    );
    assert_eq!(
        svc(&send(
            &c,
            "GET",
            port,
            "foo.example.com",
            "/api/x",
            &[("x-version", "2")]
        )
        .await),
        "b"
    );
    assert_eq!(
        svc(&send(&c, "GET", port, "foo.example.com", "/api?v=12", &[]).await),
        "b"
    );
    assert_eq!(
        svc(&send(&c, "GET", port, "foo.example.com", "/api?v=x", &[]).await),
        "a"
    );
    assert_eq!(
        svc(&send(&c, "DELETE", port, "FOO.example.com:1234", "/api", &[]).await),
        "b"
    );
    // The wildcard listener: regex before the catch-all prefix.
    assert_eq!(
        svc(&send(&c, "GET", port, "bar.example.com", "/re/abc", &[]).await),
        "b"
    );
    assert_eq!(
        svc(&send(&c, "GET", port, "bar.example.com", "/re/123", &[]).await),
        "a"
    );
    // No listener for this host at all.
    assert_eq!(
        send(&c, "GET", port, "example.org", "/", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_modify_redirect_rewrite_mirror_and_cors() {
    let (a, mirror) = (echo("a").await, echo("mirror").await);
    let port = free_port();
    let dir = TempDir::new("filters");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &services_yaml(&[("a", &a, None), ("mirror", &mirror, None)]),
    );
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: set}], add: [{name: x-add, value: added}], remove: [x-remove]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-resp, value: yes}], remove: [x-drop-me]}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: new.example.com, statusCode: 308, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {value: /app}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /mirrored}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {value: /cors}}]
    filters:
    - type: CORS
      cors: {allowOrigins: ['https://*.example.com'], allowMethods: [GET, PUT], allowHeaders: [x-token], exposeHeaders: [x-request-id], maxAge: 60}
    backendRefs: [{name: a, port: 80}]
",
        ),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;
    let c = client();

    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/headers",
        &[
            ("x-remove", "1"),
            ("x-add", "mine"),
            ("x-echo-set-header", "x-drop-me: 1"),
        ],
    )
    .await;
    assert_eq!(r.seen("x-set").as_deref(), Some("set"));
    assert_eq!(
        r.json()["headers"]["x-add"],
        serde_json::json!(["mine", "added"])
    );
    assert_eq!(r.seen("x-remove"), None);
    assert_eq!(r.headers["x-resp"], "yes");
    assert!(
        r.headers.get("x-drop-me").is_none(),
        "ResponseHeaderModifier remove"
    );

    // The redirect, checked with curl as a user would.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: shop.example.com",
        ])
        .arg(format!("http://127.0.0.1:{port}/old/item?id=7"))
        .output()
        .expect("curl is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "308 https://new.example.com/new/item?id=7"
    );

    let r = send(&c, "GET", port, "h", "/app/page?q=1", &[]).await;
    assert_eq!(r.json()["path"], "/page?q=1");
    assert_eq!(r.json()["host"], "internal.example.com");

    let before = mirror.id.requests.load(Ordering::Relaxed);
    assert_eq!(
        send(&c, "GET", port, "h", "/mirrored", &[]).await.status,
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirror.id.requests.load(Ordering::Relaxed) == before {
        assert!(
            Instant::now() < deadline,
            "mirror backend never saw the request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pre = send(
        &c,
        "OPTIONS",
        port,
        "h",
        "/cors",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert_eq!(pre.status, StatusCode::OK);
    assert_eq!(
        pre.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(pre.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(pre.headers["access-control-max-age"], "60");
    let denied = send(
        &c,
        "OPTIONS",
        port,
        "h",
        "/cors",
        &[
            ("origin", "https://evil.org"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert!(denied.headers.get("access-control-allow-origin").is_none());
    let actual = send(
        &c,
        "GET",
        port,
        "h",
        "/cors",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(actual.json()["service"], "a");
    assert_eq!(
        actual.headers["access-control-expose-headers"],
        "x-request-id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_weights_errors_timeouts_and_forwarding_headers() {
    let (a, b) = (echo("a").await, echo("b").await);
    let port = free_port();
    let dir = TempDir::new("backends");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &format!(
            "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n",
            service_yaml("a", &a, None),
            service_yaml("b", &b, None)
        ),
    );
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /split}}]
    backendRefs: [{name: a, port: 80, weight: 3}, {name: b, port: 80, weight: 1}]
  - matches: [{path: {value: /missing}}]
    backendRefs: [{name: nowhere, port: 80}]
  - matches: [{path: {value: /empty}}]
    backendRefs: [{name: empty, port: 80}]
  - matches: [{path: {value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: a, port: 80}]
  - backendRefs: [{name: a, port: 80}]
",
        ),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;
    let c = client();

    let (mut na, mut nb) = (0, 0);
    for _ in 0..400 {
        match send(&c, "GET", port, "h", "/split", &[]).await.json()["service"].as_str() {
            Some("a") => na += 1,
            Some("b") => nb += 1,
            other => panic!("unexpected backend {other:?}"),
        }
    }
    // 3:1 split; 400 draws keep the share of b well inside 15%..35%.
    assert!((60..=140).contains(&nb), "weights 3:1 gave a={na} b={nb}");

    assert_eq!(
        send(&c, "GET", port, "h", "/missing", &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        send(&c, "GET", port, "h", "/empty", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let t = Instant::now();
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/slow",
        &[("x-echo-delay-ms", "3000")],
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "timed out after {:?}",
        t.elapsed()
    );
    assert_eq!(
        send(&c, "GET", port, "h", "/slow", &[("x-echo-delay-ms", "10")])
            .await
            .status,
        StatusCode::OK
    );

    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(
        r.seen("x-private"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(
        r.seen("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_h2c_upstream_and_h2c_downstream() {
    let (a, h2) = (echo("a").await, echo("h2").await);
    let port = free_port();
    let dir = TempDir::new("protocols");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &services_yaml(&[("a", &a, None), ("h2", &h2, Some("kubernetes.io/h2c"))]),
    );
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /h2}}]
    backendRefs: [{name: h2, port: 80}]
  - backendRefs: [{name: a, port: 80}]
",
        ),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;

    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/chat"))
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let text = format!("ping {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            text.clone().into(),
        ))
        .await
        .expect("send");
        let got = ws.next().await.expect("reply").expect("frame");
        assert_eq!(got.into_text().expect("text").as_str(), text);
    }

    let r = get(port, "h", "/h2").await;
    assert_eq!(
        r.json()["proto"],
        "HTTP/2.0",
        "appProtocol kubernetes.io/h2c speaks HTTP/2 upstream"
    );
    assert_eq!(r.json()["service"], "h2");

    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2 200"), "h2c downstream: {text}");
}

/// An HTTPRoute `r` to Service `a` that sets `x-version: V` on the request.
fn versioned_routes(v: u32) -> String {
    route(
        "r",
        &format!(
            "  parentRefs: [{{name: gw}}]
  rules:
  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-version, value: '{v}'}}]}}}}]
    backendRefs: [{{name: a, port: 80}}]
"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_no_request_and_bad_reload_keeps_old_config() {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("reload");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    let routes = versioned_routes;
    dir.write("routes.yaml", &routes(0));
    let gw = Sluice::start(&dir.0, &[]).await;

    // Eight clients on keep-alive connections send requests while the config changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get(format!("http://127.0.0.1:{port}/"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()));
                match c.request(req.expect("request")).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for v in 1..=5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        dir.write("routes.yaml", &routes(v));
        gw.wait_reloads("ok", u64::from(v)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 100, "only {ok} requests completed");
    assert_eq!(
        get(port, "h", "/").await.seen("x-version").as_deref(),
        Some("5")
    );

    // A broken file is refused; the last good config keeps serving.
    dir.write(
        "routes.yaml",
        &routes(6).replace("RequestHeaderModifier", "RequestHeaderModifer"),
    );
    gw.wait_reloads("rejected", 1).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-version").as_deref(),
        Some("5")
    );
    let dump: serde_json::Value =
        serde_json::from_str(&gw.admin("/config_dump").await).expect("json");
    let err = dump["lastReloadError"]
        .as_str()
        .expect("a reload error is reported");
    assert!(
        err.contains("routes.yaml")
            && err.contains("HTTPRoute default/r")
            && err.contains("spec.rules[0].filters[0]"),
        "{err}"
    );
    assert!(
        gw.logs().contains("configuration rejected"),
        "the rejection is logged"
    );

    // Fixing the file recovers.
    dir.write("routes.yaml", &routes(7));
    gw.wait_reloads("ok", 6).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-version").as_deref(),
        Some("7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waits_until_changes_pause_for_reload_settle() {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("settle");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    let routes = versioned_routes;
    dir.write("routes.yaml", &routes(0));
    let gw = Sluice::start(&dir.0, &["--reload-settle", "3s"]).await;
    let reloads = || async {
        let metrics = gw.admin("/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_config_reloads_total{result=\"ok\"} "))
            .map(|n| n.trim().to_string())
    };
    let before = reloads().await;

    // A change, and another one second later: the pause after the second is what counts,
    // so 2.5 s after the first change (1.5 s after the second) nothing has reloaded yet.
    dir.write("routes.yaml", &routes(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reloads().await,
        before,
        "reloaded before changes paused for 3 s"
    );
    dir.write("routes.yaml", &routes(2));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reloads().await,
        before,
        "reloaded before changes paused for 3 s"
    );
    assert_eq!(
        get(port, "h", "/").await.seen("x-version").as_deref(),
        Some("0")
    );

    // Then one reload takes both changes.
    gw.wait_reloads("ok", 1).await;
    assert_eq!(
        get(port, "h", "/").await.seen("x-version").as_deref(),
        Some("2")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        reloads().await.as_deref(),
        Some("1"),
        "one reload for the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reports_health_metrics_ir_and_status() {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("admin");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "routes.yaml",
        &[
            route("good", "  parentRefs: [{name: gw}]\n  rules:\n  - name: main\n    backendRefs: [{name: a, port: 80}]\n"),
            route("broken", "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: ghost, port: 80}]\n"),
        ]
        .join("---\n"),
    );
    let gw = Sluice::start(&dir.0, &[]).await;
    assert_eq!(get(port, "h", "/x").await.status, StatusCode::OK);
    assert_eq!(
        get(port, "h", "/b").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    assert_eq!(
        admin_get(gw.admin, "/healthz").await.expect("healthz").0,
        StatusCode::OK
    );
    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"sluice_http_requests_total{route="default/good",rule="main",backend="default/a:80",code="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sluice_http_request_duration_seconds_count{route="default/good",rule="main",backend="default/a:80"} 1"#));
    assert!(
        metrics.contains(r#"route="default/broken",rule="0",backend="",code="500"} 1"#),
        "{metrics}"
    );

    let dump: serde_json::Value =
        serde_json::from_str(&gw.admin("/config_dump").await).expect("json");
    assert_eq!(dump["ir"]["ports"][0]["port"], port);

    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    assert_eq!(status["kind"], "List");
    let items = status["items"].as_array().expect("items");
    let find = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        find("GatewayClass", "sluice")["status"]["conditions"][0]["status"],
        "True"
    );
    assert_eq!(
        find("Gateway", "gw")["status"]["listeners"][0]["attachedRoutes"],
        2
    );
    let broken = &find("HTTPRoute", "broken")["status"]["parents"][0]["conditions"];
    assert_eq!(broken[1]["type"], "ResolvedRefs");
    assert_eq!(broken[1]["reason"], "BackendNotFound");
}

/// An echo backend and a gateway (with `--workers WORKERS`) whose one route sends
/// everything to it; the echo and the folder live as long as the test keeps them.
async fn one_route(tag: &str, workers: &str) -> (Echo, TempDir, u16, Sluice) {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        ),
    );
    let gw = Sluice::start(&dir.0, &["--workers", workers]).await;
    (a, dir, port, gw)
}

/// Waits up to 10 s for a gateway sent SIGTERM to exit, and checks it exited cleanly.
async fn exits_after_draining(gw: &mut Sluice) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = gw.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let (_a, _dir, port, mut gw) = one_route("drain", "1").await;
    let slow = tokio::spawn(async move {
        send(
            &client(),
            "GET",
            port,
            "h",
            "/",
            &[("x-echo-delay-ms", "700")],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.sigterm();
    let r = slow.await.expect("request task");
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    exits_after_draining(&mut gw).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

/// The listening sockets on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        })
        .count()
}

/// With `--workers 2` each worker thread accepts on a socket of its own for the port
/// (SO_REUSEPORT) and serves what it accepts; draining on SIGTERM covers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_accepts_on_a_socket_of_its_own_and_drains() {
    let (_a, _dir, port, mut gw) = one_route("workers", "2").await;
    assert_eq!(
        listening_sockets(port),
        2,
        "one listening socket per worker"
    );
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.child.id()))
        .expect("the gateway's threads")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("sluice-worker-"))
        .collect();
    assert_eq!(threads.len(), 2, "two worker threads: {threads:?}");
    // Each request on a connection of its own, from ports the kernel spreads over the
    // two sockets.
    for i in 0..40 {
        let r = get(port, "h", &format!("/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    // In-flight requests on several connections finish after SIGTERM.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                send(
                    &client(),
                    "GET",
                    port,
                    "h",
                    "/",
                    &[("x-echo-delay-ms", "700")],
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.sigterm();
    for s in slow {
        let r = s.await.expect("request task");
        assert_eq!(r.status, StatusCode::OK, "an in-flight request finished");
    }
    exits_after_draining(&mut gw).await;
    assert_eq!(listening_sockets(port), 0, "the listeners are closed");
}

/// One worker: one socket, served on the thread that runs everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_listens_once() {
    let (_a, _dir, port, gw) = one_route("one-worker", "1").await;
    assert_eq!(listening_sockets(port), 1);
    assert_eq!(get(port, "h", "/").await.status, StatusCode::OK);
    drop(gw);
}

#[test]
fn check_prints_errors_with_file_object_and_field() {
    let dir = TempDir::new("check");
    dir.write("bad.yaml", &route("r", "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: Exact, value: nope}}]\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&dir.0)
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: HTTPRoute default/r: spec.rules[0].matches[0].path.value: must be an absolute path"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_opens_and_closes_listener_ports() {
    let a = echo("a").await;
    let (port, extra) = (free_port(), free_port());
    let dir = TempDir::new("ports");
    let one = format!("  - {{name: http, port: {port}, protocol: HTTP}}\n");
    let two = format!("{one}  - {{name: extra, port: {extra}, protocol: HTTP}}\n");
    dir.write("gw.yaml", &gateway_yaml(port, Some(&one)));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        ),
    );
    let gw = Sluice::start(&dir.0, &[]).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", extra)).is_err());

    dir.write("gw.yaml", &gateway_yaml(port, Some(&two)));
    gw.wait_reloads("ok", 1).await;
    assert_eq!(
        get(extra, "h", "/").await.status,
        StatusCode::OK,
        "the new listener serves"
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let gateway = status["items"]
        .as_array()
        .and_then(|i| i.iter().find(|o| o["kind"] == "Gateway"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(gateway["status"]["listeners"][1]["attachedRoutes"], 1);

    dir.write("gw.yaml", &gateway_yaml(port, Some(&one)));
    gw.wait_reloads("ok", 2).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", extra)).is_err(),
        "the removed listener's port is closed"
    );
    assert_eq!(get(port, "h", "/").await.status, StatusCode::OK);
}

/// The listener status of `listener` of Gateway `gw` in `/status`.
fn listener_condition(status: &serde_json::Value, gw: &str, listener: &str, t: &str) -> String {
    let g = &status_of(status, "Gateway", gw)["status"];
    let l = g["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener}: {g}"));
    let c = condition(&l["conditions"], t);
    format!(
        "{} {}",
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_cannot_be_bound_are_reported_and_do_not_hold_back_the_rest() {
    let echo = echo("a").await;
    let (port, taken_port) = (free_port(), free_port());
    // Another process's socket on the port a listener wants.
    let taken = std::net::TcpListener::bind(("127.0.0.1", taken_port)).expect("bind");
    let dir = TempDir::new("unbound");
    dir.write(
        "gw.yaml",
        &gateway_yaml(
            port,
            Some(&format!(
                "  - {{name: http, port: PORT, protocol: HTTP}}\n  - {{name: busy, port: {taken_port}, protocol: HTTP}}\n"
            )),
        ),
    );
    // 203.0.113.1 (TEST-NET-3) is not this host's address.
    dir.write(
        "elsewhere.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: elsewhere, namespace: default}}
spec:
  gatewayClassName: sluice
  addresses: [{{type: IPAddress, value: 203.0.113.1}}]
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
"
        ),
    );
    dir.write("svc.yaml", &service_yaml("a", &echo, None));
    dir.write(
        "routes.yaml",
        &common::route("  - backendRefs: [{name: a, port: 80}]\n"),
    );
    let gw = Sluice::start(&dir.0, &[]).await;

    // The Gateway and listener that can be served are.
    assert_eq!(get(port, "h", "/").await.status, StatusCode::OK);
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let elsewhere = &status_of(&status, "Gateway", "elsewhere")["status"];
    let programmed = condition(&elsewhere["conditions"], "Programmed");
    assert_eq!(programmed["status"], "False", "{elsewhere}");
    assert_eq!(programmed["reason"], "AddressNotUsable", "{elsewhere}");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap_or("")
            .contains("203.0.113.1"),
        "{programmed}"
    );
    assert_eq!(
        listener_condition(&status, "gw", "http", "Programmed"),
        "True Programmed"
    );
    assert_eq!(
        listener_condition(&status, "gw", "busy", "Accepted"),
        "False PortUnavailable"
    );

    // The port is freed: the retry takes it, and the status says so.
    drop(taken);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&gw.admin("/status").await).expect("json");
        if listener_condition(&status, "gw", "busy", "Accepted") == "True Accepted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "port not taken after it was freed:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(taken_port, "h", "/").await.status, StatusCode::OK);
}

/// A gateway on a free port whose HTTPRoute `r` has `spec` (YAML) in front of one echo
/// backend `a`, started with `args`.
async fn one_backend(tag: &str, spec: &str, args: &[&str]) -> (Echo, u16, TempDir, Sluice) {
    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &services_yaml(&[("a", &a, None)]));
    dir.write("routes.yaml", &route("r", spec));
    let gw = Sluice::start(&dir.0, args).await;
    (a, port, dir, gw)
}

/// Sends `raw` on a new connection and returns the response as text (status line,
/// headers and body; the request should ask for `Connection: close`).
async fn raw_request(port: u16, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer to {raw:?}");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_connection_tokens_and_upgrades_are_checked_before_routing() {
    let (_a, port, _dir, _gw) = one_backend(
        "http-edges",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        &[],
    )
    .await;

    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with two, is a 400.
    let r = raw_request(port, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "no Host: {r}");
    let r = raw_request(
        port,
        "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "two Hosts: {r}");
    // HTTP/1.0 has no Host requirement.
    let r = raw_request(port, "GET /x HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 200"), "HTTP/1.0 without Host: {r}");

    // `Connection: Host` does not strip the Host the request is routed by.
    let r = raw_request(
        port,
        "GET /x HTTP/1.1\r\nHost: named.example\r\nConnection: Host, close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains(r#""host":["named.example"]"#),
        "the backend saw the client's Host: {r}"
    );

    // An h2c upgrade is not tunnelled past routing and filters: it is served as the
    // plain HTTP/1.1 request it also is, and the backend sees no Upgrade.
    let r = raw_request(
        port,
        "GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "h2c upgrade: {r}");
    assert!(
        !r.to_ascii_lowercase().contains("\"upgrade\""),
        "the backend saw an Upgrade header: {r}"
    );
}

/// Reads until the server closes the connection, or `within` passes; true if it closed.
async fn closed_within(s: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_silent_ones_are_closed() {
    let (_a, port, _dir, gw) = one_backend(
        "conn-limits",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        &["--max-connections", "3", "--header-timeout", "2"],
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));

    // Three silent connections fill the listener; a fourth is closed at once, while the
    // admin API (a thread of its own, not this listener) still answers.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect().await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect().await.expect("the kernel accepts it");
    assert!(
        closed_within(&mut fourth, Duration::from_secs(1)).await,
        "a connection past --max-connections is closed"
    );
    assert_eq!(
        admin_get(gw.admin, "/readyz").await.expect("admin").0,
        StatusCode::OK
    );
    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains("sluice_connections_refused_total 1"),
        "{metrics}"
    );

    // A connection that sends nothing is closed after --header-timeout, which frees
    // its place.
    let t = Instant::now();
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "a silent connection is closed"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t.elapsed()
    );
    let r = get(port, "h", "/").await;
    assert_eq!(r.status, StatusCode::OK, "the listener serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_meet_the_header_timeout_and_http2_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let (_a, port, _dir, _gw) = one_backend(
        "head-deadlines",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        &["--header-timeout", "2", "--idle-timeout", "6"],
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));

    // A head that keeps coming, a field every 300 ms, is still cut 2 s after accept.
    let t = Instant::now();
    let (mut rd, mut wr) = connect().await.expect("connect").into_split();
    let trickle = tokio::spawn(async move {
        let _ = wr.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    assert!(
        closed_within(&mut rd, Duration::from_secs(10)).await,
        "a trickled head is cut, not answered"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    trickle.abort();

    // A kept-alive HTTP/1.1 connection idle after its response: 2 s, not the idle 6 s.
    let mut kept = connect().await.expect("connect");
    let r = exchange(&mut kept, "GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let t = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(10)).await);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );

    // HTTP/2 (prior knowledge) is held to the idle timeout instead: 3 s without a
    // request leaves it open, and the next request is served on it.
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(connect().await.expect("connect")),
    )
    .await
    .expect("h2 handshake");
    let ended = tokio::spawn(conn);
    let get = || {
        http::Request::get("http://h/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request")
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = h2.send_request(get()).await.expect("first request, 3 s in");
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = h2
        .send_request(get())
        .await
        .expect("a request after 3 s idle");
    assert_eq!(r.status(), StatusCode::OK);
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), ended)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .expect("task")
        .expect("closed cleanly, with GOAWAY");
    assert!(
        idle.elapsed() >= Duration::from_secs(5),
        "{:?}",
        idle.elapsed()
    );
}

/// The CPUs a `Cpus_allowed_list` line of /proc/.../status names ("0-3,6").
fn cpu_list(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
        cpus.extend(a..=b);
    }
    cpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cpu_affinity_keeps_each_worker_to_a_cpu_of_its_own() {
    let (_a, port, _dir, gw) = one_backend(
        "worker-affinity",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        &["--workers", "2", "--worker-cpu-affinity"],
    )
    .await;
    let ours = cpu_list(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let mut workers = Vec::new();
    let mut others = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", gw.child.id())).expect("tasks") {
        let task = task.expect("task").path();
        let name = std::fs::read_to_string(task.join("comm")).expect("comm");
        let cpus = cpu_list(&std::fs::read_to_string(task.join("status")).expect("status"));
        if name.trim().starts_with("sluice-worker-") {
            workers.push((name.trim().to_string(), cpus));
        } else {
            others.push(cpus);
        }
    }
    workers.sort();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for (name, cpus) in &workers {
        assert_eq!(cpus.len(), 1, "{name} keeps to one CPU: {cpus:?}");
        assert!(
            ours.contains(&cpus[0]),
            "{name} is on a CPU the process may use"
        );
    }
    if ours.len() >= 2 {
        assert_ne!(
            workers[0].1, workers[1].1,
            "each worker has a CPU of its own"
        );
    }
    assert!(
        others.iter().all(|c| *c == ours),
        "the other threads stay unpinned: {others:?}"
    );
    assert_eq!(get(port, "h", "/").await.status, StatusCode::OK);
}

/// Sends one request on `s` and reads one response (head and a Content-Length body).
async fn exchange(s: &mut tokio::net::TcpStream, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_for_the_delay_then_closes_kept_alive_connections_with_close() {
    let (_a, port, _dir, mut gw) = one_backend(
        "shutdown-delay",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        &["--shutdown-delay", "2"],
    )
    .await;
    let request = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let r = exchange(&mut kept, request).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    gw.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The delay: not ready, yet serving, new connections included.
    assert_eq!(
        admin_get(gw.admin, "/readyz").await.expect("admin").0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for _ in 0..5 {
        let r = get(port, "h", "/").await;
        assert_eq!(r.status, StatusCode::OK, "served during the shutdown delay");
    }
    let r = exchange(&mut kept, request).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && !r.to_ascii_lowercase().contains("connection: close"),
        "kept alive during the delay: {r}"
    );

    // Draining (after the 2 s delay): the kept-alive connection's next request is
    // answered, with `Connection: close`, rather than cut.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    let r = exchange(&mut kept, request).await;
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "answered while draining: {r}"
    );
    assert!(
        r.to_ascii_lowercase().contains("connection: close"),
        "told to close: {r}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "sluice did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_sent_upstream_normalised() {
    let (_a, port, _dir, _gw) = one_backend(
        "path-normalise",
        "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /raw}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-raw-rule, value: '1'}]}}]
    backendRefs: [{name: a, port: 80}]
  - backendRefs: [{name: a, port: 80}]
",
        &[],
    )
    .await;
    for spelled in [
        "/x/../raw/secret",
        "/%72aw/secret",
        "//raw/secret",
        "/raw/./secret",
    ] {
        let r = raw_request(
            port,
            &format!("GET {spelled} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{spelled}: {r}");
        assert!(
            r.contains(r#""x-raw-rule":["1"]"#),
            "{spelled} went through the /raw rule's filter: {r}"
        );
        assert!(
            r.contains(r#""path":"/raw/secret""#),
            "{spelled} reached the backend normalised: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_clients_error_not_the_backends() {
    let (_a, port, _dir, gw) = one_backend("bad-body", "  parentRefs: [{name: gw}]\n  rules:\n  - name: all\n    backendRefs: [{name: a, port: 80}]\n", &[]).await;
    let r = raw_request(
        port,
        "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 400"),
        "a bad chunk size is answered 400 (or the connection closed), never 502: {r}"
    );
    let metrics = gw.admin("/metrics").await;
    assert!(!metrics.contains(r#"code="502""#), "{metrics}");
    assert!(
        metrics.contains(r#"sluice_http_requests_total{route="default/r",rule="all",backend="default/a:80",code="400"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_stalled_readers_and_idle_connections_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, port, _dir, gw) = one_backend(
        "slow-clients",
        "  parentRefs: [{name: gw}]\n  rules:\n  - name: all\n    backendRefs: [{name: a, port: 80}]\n",
        &[
            "--body-timeout",
            "2",
            "--body-min-rate",
            "100",
            "--send-timeout",
            "2",
            "--idle-timeout",
            "2",
        ],
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    let head = "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n";

    // A body dripping one byte every 300 ms (3 B/s, under the 100 B/s minimum) is
    // answered 408 once the 2 s grace is spent, not held for the whole kilobyte.
    let mut drip = connect().await.expect("connect");
    drip.write_all(head.as_bytes()).await.expect("head");
    let t = Instant::now();
    let dripping = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..1000 {
            if drip.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(300), drip.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), dripping)
        .await
        .expect("the dripping body is cut")
        .expect("task");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A body that stops after a few bytes is cut 2 s after its last ones.
    let mut stalled = connect().await.expect("connect");
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled
        .write_all(&[b'y'; 500])
        .await
        .expect("part of the body");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the stalled body is cut");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // A body sent at full speed is not held to anything.
    let big = vec![b'z'; 4 << 20];
    let resp = client()
        .request(
            http::Request::post(format!("http://127.0.0.1:{port}/up"))
                .header("host", "h")
                .body(http_body_util::Full::new(bytes::Bytes::from(big)))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let r: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(r["bodyLength"], 4 << 20);

    // A client that asks for 64 MiB and reads none of it is cut after the send timeout:
    // reading afterwards finds only what the socket buffers held, then the end.
    let mut sink = connect().await.expect("connect");
    sink.write_all(b"GET /big HTTP/1.1\r\nHost: h\r\nx-echo-bytes: 67108864\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sink.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection ended");
    assert!(
        got < 64 << 20,
        "a non-reading client was cut ({got} bytes had been sent)"
    );

    // HTTP/2: a request in flight longer than the idle timeout keeps its connection;
    // once nothing is in flight for 2 s the connection gets GOAWAY and ends.
    let tcp = connect().await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let ended = tokio::spawn(conn);
    let slow = http::Request::get("http://h/slow")
        .header("x-echo-delay-ms", "3000")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = h2.send_request(slow).await.expect("a slow request on h2");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "in flight past the idle timeout"
    );
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .expect("task")
        .expect("closed cleanly, with GOAWAY");
    assert!(
        idle.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        idle.elapsed()
    );

    let metrics = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"sluice_http_requests_total{route="default/r",rule="all",backend="default/a:80",code="408"} 2"#),
        "{metrics}"
    );
}

/// Every query of the chart's Grafana dashboard names a metric that `/metrics` exports:
/// here, file mode with an HTTP route through a Wasm filter and a TCP route; the status
/// writer's, in Kubernetes mode (tests/kube.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_name_exported_metrics() {
    let a = echo("a").await;
    let (port, tcp) = (free_port(), free_port());
    let dir = TempDir::new("dashboard");
    install_filters(&dir, &["hello"]);
    dir.write(
        "gw.yaml",
        &gateway_yaml(
            port,
            Some(&format!(
                "  - {{name: http, port: PORT, protocol: HTTP}}\n  - {{name: tcp, port: {tcp}, protocol: TCP}}\n"
            )),
        ),
    );
    dir.write("svc.yaml", &services_yaml(&[("a", &a, None)]));
    dir.write(
        "routes.yaml",
        &[
            "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello, namespace: default}\nspec:\n  source: {path: filters/hello.wasm}\n".to_string(),
            route(
                "web",
                "  parentRefs: [{name: gw, sectionName: http}]\n  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: hello}}]\n    backendRefs: [{name: a, port: 80}]\n",
            ),
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: raw, namespace: default}\nspec:\n  parentRefs: [{name: gw, sectionName: tcp}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n".to_string(),
        ]
        .join("---\n"),
    );
    let gw = Sluice::start(&dir.0, &[]).await;
    assert_eq!(get(port, "x.example.com", "/").await.status, StatusCode::OK);
    let exported = exported_metrics(&gw.admin("/metrics").await);
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|m| !exported.contains(m) && !KUBE_ONLY_METRICS.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}\nexported: {exported:?}"
    );
}

/// A backend whose listen queue is full never completes a connection (the kernel drops
/// the SYNs): the request is given up after `--connect-timeout`, not the 5 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_accept_is_given_up_after_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let full = socket.listen(0).expect("listen");
    let addr = full.local_addr().expect("addr");
    // Fill the queue (never accepted) until one more connection cannot complete.
    let mut queued = Vec::new();
    let filled = (0..16).any(|_| {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => {
                queued.push(s);
                false
            }
            Err(_) => true,
        }
    });
    assert!(filled, "the listen queue never filled");

    let port = free_port();
    let dir = TempDir::new("connect-timeout");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml_port("stuck", addr.port(), None));
    dir.write(
        "routes.yaml",
        &route(
            "r",
            "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: stuck, port: 80}]\n",
        ),
    );
    let _gw = Sluice::start(&dir.0, &["--connect-timeout", "300ms"]).await;
    let start = Instant::now();
    let answer = get(port, "h", "/").await;
    let took = start.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("upstream connect error"),
        "{}",
        answer.body
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "given up after {took:?}, not after the 300ms --connect-timeout"
    );
    drop(queued);
}

/// A backend that fails on purpose, by a segment of the path: `.../codes/KEY` answers 503
/// to its first two requests for the path and 200 after, `.../always/KEY` always 503,
/// `.../slow/KEY` waits 600 ms on its first request for the path. It keeps each request's body by key.
async fn flaky() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
) {
    use http_body_util::BodyExt;
    let seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>> =
        Arc::default();
    let kept = seen.clone();
    let addr = http_server(move |req: hyper::Request<hyper::body::Incoming>| {
        let kept = kept.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let n = {
                let mut all = kept.lock().expect("lock");
                let list = all.entry(path.clone()).or_default();
                list.push(String::from_utf8_lossy(&body).into_owned());
                list.len()
            };
            let mode = ["codes", "always", "slow"]
                .into_iter()
                .find(|m| path.contains(&format!("/{m}/")));
            let status = match mode {
                Some("codes") if n <= 2 => 503,
                Some("always") => 503,
                Some("slow") if n == 1 => {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    200
                }
                _ => 200,
            };
            hyper::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    "attempt {n}"
                ))))
                .expect("response")
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_rule_codes_connection_errors_timeouts_and_bodies() {
    let (addr, seen) = flaky().await;
    let port = free_port();
    let dir = TempDir::new("retry");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    // `split` has two endpoints: the flaky backend, and an address where nothing
    // listens (connection refused), taken in turn.
    let split = service_yaml_port("split", addr.port(), None).replace(
        "- addresses: [127.0.0.1]\n",
        "- addresses: [127.0.0.1]\n- addresses: [127.0.0.2]\n",
    );
    dir.write(
        "svc.yaml",
        &[service_yaml_port("flaky", addr.port(), None), split].join("---\n"),
    );
    let rule = |prefix: &str, service: &str, extra: &str| {
        format!(
            "  - matches: [{{path: {{value: /{prefix}}}}}]\n    backendRefs: [{{name: {service}, port: 80}}]\n{extra}"
        )
    };
    let rules = [
        rule("codes", "flaky", "    retry: {codes: [503], attempts: 2, backoff: 10ms}\n"),
        rule("few/", "flaky", "    retry: {codes: [503], attempts: 1, backoff: 10ms}\n"),
        rule(
            "slow",
            "flaky",
            "    timeouts: {request: 5s, backendRequest: 300ms}\n    retry: {attempts: 1, backoff: 10ms}\n",
        ),
        rule(
            "always",
            "flaky",
            "    timeouts: {request: 400ms}\n    retry: {codes: [503], attempts: 10, backoff: 100ms}\n",
        ),
        rule("split", "split", "    retry: {attempts: 1, backoff: 10ms}\n"),
        rule("once", "split", ""),
    ]
    .concat();
    dir.write(
        "routes.yaml",
        &route(
            "r",
            &format!("  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"),
        ),
    );
    let gw = Sluice::start(&dir.0, &[]).await;
    let c = client();
    let tries = |key: &str| seen.lock().expect("lock").get(key).map_or(0, Vec::len);

    // Answers with a listed code are sent again, up to the attempts.
    let r = get(port, "h", "/codes/a").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "attempt 3"));
    let r = get(port, "h", "/few/codes/b").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        tries("/few/codes/b"),
        2,
        "one retry, then the last answer stands"
    );
    assert_eq!(
        gw.metric(
            "sluice_http_retries_total{route=\"default/r\",rule=\"0\",backend=\"default/flaky:80\"}"
        )
        .await,
        2
    );

    // A small body is sent again whole; a streamed one of unknown length is sent once.
    let r = send_body(&c, port, "/codes/post", Some(5), "hello").await;
    assert_eq!(r, StatusCode::OK);
    assert_eq!(seen.lock().expect("lock")["/codes/post"], ["hello"; 3]);
    let r = send_body(&c, port, "/codes/streamed", None, "hello").await;
    assert_eq!(r, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(tries("/codes/streamed"), 1);

    // A backend request timeout is retried; the whole request's timeout bounds it all.
    let r = get(port, "h", "/slow/a").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "attempt 2"));
    let start = Instant::now();
    let r = get(port, "h", "/always/a").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let n = tries("/always/a");
    assert!(
        (2..=4).contains(&n),
        "{n} attempts within a 400ms request timeout"
    );

    // Connection errors: with a retry every request reaches the live endpoint; without,
    // those sent to the dead one fail.
    for i in 0..6 {
        let r = get(port, "h", &format!("/split/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let failed = futures_util::future::join_all(
        (0..6).map(|i| async move { get(port, "h", &format!("/once/{i}")).await }),
    )
    .await
    .iter()
    .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
    .count();
    assert!(failed > 0, "without retry the dead endpoint answers 503");
}

/// POSTs `body` to `path`, with a content-length or (`None`) chunked.
async fn send_body(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    port: u16,
    path: &str,
    length: Option<usize>,
    body: &'static str,
) -> StatusCode {
    match length {
        Some(_) => {
            let req = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
                .header("host", "h")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .expect("request");
            c.request(req).await.expect("response").status()
        }
        None => {
            let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::data(bytes::Bytes::from_static(body.as_bytes())),
            )]);
            let req = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
                .header("host", "h")
                .body(http_body_util::StreamBody::new(frames))
                .expect("request");
            let chunked =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            chunked.request(req).await.expect("response").status()
        }
    }
}

/// What an authorization service was asked: path and query, headers and body.
type AuthAsked = Arc<std::sync::Mutex<Vec<(String, hyper::HeaderMap, bytes::Bytes)>>>;

/// An authorization service: `authorization: Bearer good` gets a 200 with `x-user` and
/// `x-extra`; anything else a 401 with `www-authenticate` and a body. It keeps the
/// path, headers and body of each request it gets.
async fn auth_service() -> (std::net::SocketAddr, AuthAsked) {
    let seen: AuthAsked = Arc::default();
    let kept = seen.clone();
    let addr = http_server(move |req: hyper::Request<hyper::body::Incoming>| {
        let kept = kept.clone();
        async move {
            let good = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer good");
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            kept.lock().expect("lock").push((
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                parts.headers,
                body,
            ));
            let resp = if good {
                hyper::Response::builder()
                    .header("x-user", "ann")
                    .header("x-extra", "not for the backend")
                    .header("content-type", "text/plain")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
            } else {
                hyper::Response::builder()
                    .status(401)
                    .header("www-authenticate", "Bearer")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        b"sign in first\n",
                    )))
            };
            resp.expect("response")
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_lets_through_denies_and_fails_closed() {
    let (auth, seen) = auth_service().await;
    let app = echo("app").await;
    let port = free_port();
    let dir = TempDir::new("external-auth");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            service_yaml_port("auth", auth.port(), None),
            service_yaml_port("down", free_port(), None),
        ]
        .join("---\n"),
    );
    let filter = |service: &str| {
        format!(
            "[{{type: ExternalAuth, externalAuth: {{protocol: HTTP, backendRef: {{name: {service}, port: 80}}, http: {{path: /check, allowedHeaders: [x-allowed], allowedResponseHeaders: [x-user]}}}}}}]"
        )
    };
    let copy_all = "[{type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: auth, port: 80}, http: {path: /check}}}]";
    let with_body = "[{type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: auth, port: 80}, http: {}, forwardBody: {maxSize: 16}}}]";
    dir.write(
        "routes.yaml",
        &route(
            "r",
            &format!(
                "  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{value: /api}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n  - matches: [{{path: {{value: /down}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n  - matches: [{{path: {{value: /all}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n  - matches: [{{path: {{value: /body}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n",
                filter("auth"),
                filter("down"),
                copy_all,
                with_body
            ),
        ),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;
    let c = client();

    // Allowed: the backend gets the allowed header of the service's answer only.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/api/x?q=1",
        &[
            ("authorization", "Bearer good"),
            ("x-allowed", "yes"),
            ("x-secret", "kept from the service"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["service"], "app");
    assert_eq!(r.seen("x-user").as_deref(), Some("ann"));
    assert_eq!(r.seen("x-extra"), None);
    {
        let all = seen.lock().expect("lock");
        let (path, headers, _) = &all[0];
        assert_eq!(path, "/check/api/x?q=1");
        assert_eq!(headers["authorization"], "Bearer good");
        assert_eq!(headers["x-allowed"], "yes");
        assert_eq!(headers["host"], "h");
        assert_eq!(headers["content-length"], "0");
        assert!(!headers.contains_key("x-secret"), "{headers:?}");
    }

    // Without allowedResponseHeaders every header of the 200 is copied, but not those
    // about the answer itself: the client's content-type stays.
    let r = send(
        &c,
        "POST",
        port,
        "h",
        "/all",
        &[
            ("authorization", "Bearer good"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.seen("x-user").as_deref(), Some("ann"));
    assert_eq!(r.seen("x-extra").as_deref(), Some("not for the backend"));
    assert_eq!(r.seen("content-type").as_deref(), Some("application/json"));

    // forwardBody: the service gets the body (up to maxSize) and its length, and the
    // backend still gets it whole.
    let r = send_with_body(
        &c,
        "POST",
        port,
        "h",
        "/body",
        &[("authorization", "Bearer good"), ("x-echo-reflect", "1")],
        b"amount=10",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "amount=10");
    {
        let all = seen.lock().expect("lock");
        let (path, headers, body) = all.last().expect("asked");
        assert_eq!(path, "/body");
        assert_eq!(headers["content-length"], "9");
        assert_eq!(&body[..], b"amount=10");
    }
    // A body above maxSize: 413, and neither the service nor the backend is asked.
    let (asked, before) = (
        seen.lock().expect("lock").len(),
        app.id.requests.load(Ordering::Relaxed),
    );
    let r = send_with_body(
        &c,
        "POST",
        port,
        "h",
        "/body",
        &[("authorization", "Bearer good")],
        b"seventeen bytes!!",
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.body.contains("forwardBody.maxSize"), "{}", r.body);
    assert_eq!(seen.lock().expect("lock").len(), asked);
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);

    // Denied: the client gets the service's answer; the backend is not asked.
    let before = app.id.requests.load(Ordering::Relaxed);
    let r = send(&c, "GET", port, "h", "/api/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, "sign in first\n");
    assert_eq!(
        r.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);

    // A service that cannot be reached fails closed.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/down",
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);
}

/// ListenerSets in file mode: a set's listeners serve the routes attached to the set on
/// the Gateway's address (a hostname on the Gateway's port and a port of its own), the
/// Gateway's routes stay on its own listeners, a set from a namespace the Gateway does
/// not allow serves nothing, and removing a set closes its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_sets_add_listeners_to_their_gateway() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (port, set_port) = (free_port(), free_port());
    let dir = TempDir::new("listenersets");
    let gateway = gateway_yaml(
        port,
        Some("  - {name: main, port: PORT, protocol: HTTP, hostname: main.test}\n"),
    )
    .replace(
        "  gatewayClassName: sluice\n",
        "  gatewayClassName: sluice\n  allowedListeners: {namespaces: {from: Same}}\n",
    );
    dir.write("gw.yaml", &gateway);
    dir.write(
        "svc.yaml",
        &services_yaml(&[("a", &a, None), ("b", &b, None)]),
    );
    let set = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: extra, namespace: default}}
spec:
  parentRef: {{name: gw}}
  listeners:
  - {{name: shared-port, port: {port}, protocol: HTTP, hostname: set.test}}
  - {{name: own-port, port: {set_port}, protocol: HTTP}}
"
    );
    dir.write("set.yaml", &set);
    dir.write(
        "outsider.yaml",
        &format!(
            "apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: outsider, namespace: other}}
spec:
  parentRef: {{name: gw, namespace: default}}
  listeners:
  - {{name: out, port: {port}, protocol: HTTP, hostname: out.test, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: outsider-route, namespace: default}}
spec:
  parentRefs: [{{kind: ListenerSet, name: outsider, namespace: other}}]
  rules:
  - backendRefs: [{{name: b, port: 80}}]
"
        ),
    );
    dir.write(
        "routes.yaml",
        &[
            route(
                "to-gateway",
                "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
            ),
            route(
                "to-set",
                "  parentRefs: [{kind: ListenerSet, group: gateway.networking.k8s.io, name: extra}]\n  rules:\n  - backendRefs: [{name: b, port: 80}]\n",
            ),
        ]
        .join("---\n"),
    );
    let gw = Sluice::start(&dir.0, &[]).await;
    let served = |ans: Answer| {
        assert_eq!(ans.status, StatusCode::OK, "{}", ans.body);
        ans.json()["service"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(served(get(port, "main.test", "/").await), "a");
    assert_eq!(served(get(port, "set.test", "/").await), "b");
    assert_eq!(served(get(set_port, "any.test", "/").await), "b");
    assert_eq!(
        get(port, "out.test", "/").await.status,
        StatusCode::NOT_FOUND,
        "a set the Gateway does not allow adds no listener"
    );

    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let set_status = &status_of(&status, "ListenerSet", "extra")["status"];
    assert_eq!(
        condition(&set_status["conditions"], "Accepted")["status"],
        "True"
    );
    assert_eq!(
        condition(&set_status["conditions"], "Programmed")["status"],
        "True"
    );
    for l in set_status["listeners"].as_array().expect("listeners") {
        assert_eq!(l["attachedRoutes"], 1, "{l}");
        assert_eq!(condition(&l["conditions"], "Programmed")["status"], "True");
    }
    let outsider = &status_of(&status, "ListenerSet", "outsider")["status"];
    assert_eq!(
        condition(&outsider["conditions"], "Accepted")["reason"],
        "NotAllowed"
    );
    let gateway = &status_of(&status, "Gateway", "gw")["status"];
    assert_eq!(gateway["attachedListenerSets"], 1);
    assert_eq!(
        gateway["listeners"].as_array().map(Vec::len),
        Some(1),
        "the Gateway lists only its own listeners: {gateway}"
    );
    assert_eq!(gateway["listeners"][0]["attachedRoutes"], 1);

    // Removing the set takes its listeners away: its port closes, its host is gone.
    dir.write("set.yaml", "# no ListenerSet\n");
    gw.wait_reloads("ok", 1).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", set_port)).is_err(),
        "the removed set's port is closed"
    );
    assert_eq!(
        get(port, "set.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(served(get(port, "main.test", "/").await), "a");
}

/// An Envoy ext_authz gRPC server (`.ci/extauthz`, on the official go-control-plane
/// types; built into target/tools by .ci/run), with the CheckRequests it got as JSON.
struct ExtAuthz {
    child: std::process::Child,
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl ExtAuthz {
    fn start() -> ExtAuthz {
        use std::io::BufRead;
        let bin =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/extauthz");
        let mut child = Command::new(&bin)
            .arg("127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; .ci/run builds it from .ci/extauthz",
                    bin.display()
                )
            });
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("extauthz said {first:?}"));
        let seen: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    kept.lock().expect("lock").push(v);
                }
            }
        });
        ExtAuthz { child, port, seen }
    }

    /// The `n`th CheckRequest the service printed (from 0). The service prints it before
    /// it answers, but the thread that reads its output may not have the line yet when
    /// the gateway's response arrives, so this waits for it (up to 10 s).
    async fn check(&self, n: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.seen.lock().expect("lock").get(n) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the ext_authz service printed no CheckRequest #{n} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ExtAuthz {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ExternalAuth` with `protocol: GRPC` against a real Envoy ext_authz server: allowed
/// requests get the OK response's headers (set, appended, removed), denied ones get the
/// denied response, the CheckRequest carries the request as Envoy's does (all headers, or
/// `grpc.allowedHeaders`), and a service that is gone fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_over_grpc_speaks_envoys_ext_authz() {
    let mut authz = ExtAuthz::start();
    let app = echo("app").await;
    let port = free_port();
    let dir = TempDir::new("external-auth-grpc");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            service_yaml_port("authz", authz.port, None),
        ]
        .join("---\n"),
    );
    let filter = |grpc: &str| {
        format!(
            "[{{type: ExternalAuth, externalAuth: {{protocol: GRPC, backendRef: {{name: authz, port: 80}}, grpc: {grpc}}}}}]"
        )
    };
    dir.write(
        "routes.yaml",
        &route(
            "r",
            &format!(
                "  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{value: /api}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n  - matches: [{{path: {{value: /only}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n  - matches: [{{path: {{value: /body}}}}]\n    filters: {}\n    backendRefs: [{{name: app, port: 80}}]\n",
                filter("{}"),
                filter("{allowedHeaders: [authorization]}"),
                filter("{}, forwardBody: {maxSize: 64}")
            ),
        ),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;
    let c = client();

    // Allowed: set, appended and removed headers as the OK response says.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/api/x?q=1",
        &[
            ("authorization", "Bearer good"),
            ("x-tag", "a"),
            ("x-drop", "gone"),
            ("x-secret", "shown to the service"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["service"], "app");
    assert_eq!(r.seen("x-user").as_deref(), Some("ann"));
    let tags = &r.json()["headers"]["x-tag"];
    assert_eq!(tags, &serde_json::json!(["a", "b"]), "{}", r.body);
    assert_eq!(r.seen("x-drop"), None);
    {
        let check = authz.check(0).await;
        let http = &check["attributes"]["request"]["http"];
        assert_eq!(http["method"], "GET");
        assert_eq!(http["path"], "/api/x?q=1");
        assert_eq!(http["query"], "q=1");
        assert_eq!(http["host"], "h");
        assert_eq!(http["scheme"], "http");
        assert_eq!(http["headers"]["authorization"], "Bearer good");
        assert_eq!(http["headers"]["x-secret"], "shown to the service");
        let source = &check["attributes"]["source"]["address"]["socketAddress"];
        assert_eq!(source["address"], "127.0.0.1", "{check}");
    }

    // Only the allowed headers go to the service when grpc.allowedHeaders is set.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/only",
        &[
            ("authorization", "Bearer good"),
            ("x-secret", "kept from the service"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    {
        let check = authz.check(1).await;
        let headers = &check["attributes"]["request"]["http"]["headers"];
        assert_eq!(headers["authorization"], "Bearer good");
        assert!(headers.get("x-secret").is_none(), "{headers}");
    }

    // forwardBody: a UTF-8 body goes as `body`, any other as `rawBody`, with its size;
    // the backend still gets all of it.
    for (i, (sent, field, value)) in [
        (&b"amount=10"[..], "body", "amount=10"),
        (&b"\xff\x00\x01"[..], "rawBody", "/wAB"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = send_with_body(
            &c,
            "POST",
            port,
            "h",
            "/body",
            &[("authorization", "Bearer good")],
            sent,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["bodyLength"], sent.len(), "{}", r.body);
        let check = authz.check(2 + i).await;
        let http = &check["attributes"]["request"]["http"];
        assert_eq!(http[field], value, "{http}");
        assert_eq!(http["size"], sent.len().to_string(), "{http}");
    }

    // Denied: the denied response goes to the client; the backend is not asked.
    let before = app.id.requests.load(Ordering::Relaxed);
    let r = send(&c, "GET", port, "h", "/api/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, "sign in first\n");
    assert_eq!(
        r.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);

    // The service gone: closed.
    let _ = authz.child.kill();
    let _ = authz.child.wait();
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/api/x",
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(app.id.requests.load(Ordering::Relaxed), before);
}
