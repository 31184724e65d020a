//! The repository's filters, run through the harness: what a filter author's tests
//! look like, and the sandbox and fault behaviour of the runtime.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use sluice_harness::{ErrorKind, Harness, Limits, Outcome};

fn wasm(name: &str) -> PathBuf {
    sluice_harness::repo_filters()
        .expect("building filters/ for wasm32-wasip2")
        .join(format!("{name}.wasm"))
}

/// A copy of a filter under a name of its own: metrics are per WasmFilter name and
/// shared by every load of it in this process, so a test that counts errors must not
/// share its name with tests running beside it.
fn private_copy(name: &str, tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("{name}-{tag}-{}.wasm", std::process::id()));
    std::fs::copy(wasm(name), &to).expect("copy the filter");
    to
}

fn request(path: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("x-debug", "1")
        .header("host", "example.com")
        .body(())
        .expect("request")
}

fn continued(o: Outcome) -> http::Request<()> {
    match o {
        Outcome::Continue(r) => r,
        Outcome::Respond(r) => panic!(
            "expected the request to continue, got a {} answer",
            r.status()
        ),
    }
}

#[test]
fn headers_filter_changes_request_and_response_headers() {
    check_headers_filter(&wasm("headers"));
}

/// A `sluice:filter@0.1.0` component built once and committed (tests/fixtures): later
/// hosts must keep running filters that nobody rebuilds.
#[test]
fn a_committed_0_1_component_keeps_working() {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/headers-0.1.0.wasm");
    check_headers_filter(&fixture);
    let f = Harness::load(&fixture, json!(null)).expect("load");
    assert_eq!(f.api(), sluice_harness::ApiVersion::V0_1);
    // A filter built today that imports a 0.2 interface is run as 0.2.
    let current = Harness::load(&wasm("request_id"), json!(null)).expect("load");
    assert_eq!(current.api(), sluice_harness::ApiVersion::V0_2);
}

/// The request context (API 0.2): what `on_request` keeps, `on_response` of the same
/// request gets back, with other requests in between.
#[test]
fn request_id_returns_each_requests_own_id_through_its_context() {
    use sluice_harness::Exchange;
    let f = Harness::load(&wasm("request_id"), json!(null)).expect("load");
    let with_id = |id: &str| {
        http::Request::get("/")
            .header("x-request-id", id)
            .body(())
            .expect("request")
    };
    let ok = || {
        http::Response::builder()
            .status(200)
            .body(())
            .expect("response")
    };
    let (mut a, mut b, mut c) = (
        Exchange::default(),
        Exchange::default(),
        Exchange::default(),
    );
    continued(f.on_request_in(&mut a, with_id("id-a")).expect("a"));
    continued(f.on_request_in(&mut b, with_id("id-b")).expect("b"));
    let sent = continued(f.on_request_in(&mut c, request("/")).expect("c"));
    let generated = sent.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(c.context("id"), Some(generated.as_bytes()));
    // Responses come back in another order.
    let rb = f.on_response_in(&mut b, ok()).expect("b");
    let rc = f.on_response_in(&mut c, ok()).expect("c");
    let ra = f.on_response_in(&mut a, ok()).expect("a");
    assert_eq!(ra.headers()["x-request-id"], "id-a");
    assert_eq!(rb.headers()["x-request-id"], "id-b");
    assert_eq!(rc.headers()["x-request-id"], generated.as_str());
    // A response without its request's context gets no id.
    let lone = f
        .on_response_in(&mut Exchange::default(), ok())
        .expect("lone");
    assert!(lone.headers().get("x-request-id").is_none());
    // Generated ids differ.
    let other = continued(f.on_request(request("/")).expect("d"));
    assert_ne!(other.headers()["x-request-id"], generated.as_str());
}

fn check_headers_filter(wasm: &std::path::Path) {
    let f = Harness::load(
        wasm,
        json!({
            "request": {"set": {"x-env": "prod"}, "add": {"x-debug": "2"}, "remove": ["x-drop"]},
            "response": {"set": {"cache-control": "no-store"}, "remove": ["server"]}
        }),
    )
    .expect("load");
    let mut req = request("/");
    req.headers_mut().insert("x-drop", "1".parse().unwrap());
    let req = continued(f.on_request(req).expect("on_request"));
    assert_eq!(req.headers()["x-env"], "prod");
    let debug: Vec<_> = req.headers().get_all("x-debug").iter().collect();
    assert_eq!(debug, ["1", "2"]);
    assert!(req.headers().get("x-drop").is_none());

    let resp = http::Response::builder()
        .status(200)
        .header("server", "x")
        .body(())
        .unwrap();
    let resp = f.on_response(resp).expect("on_response");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().get("server").is_none());
}

#[test]
fn respond_filter_answers_directly() {
    let f = Harness::load(
        &wasm("respond"),
        json!({"status": 503, "headers": {"retry-after": "30"}, "body": "later\n"}),
    )
    .expect("load");
    match f.on_request(request("/x")).expect("on_request") {
        Outcome::Respond(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()["retry-after"], "30");
            assert_eq!(r.body(), b"later\n");
        }
        Outcome::Continue(_) => panic!("respond must answer"),
    }
}

#[test]
fn hello_filter_greets_and_validates_its_config() {
    let f = Harness::load(&wasm("hello"), json!({"greeting": "hi"})).expect("load");
    assert_eq!(
        continued(f.on_request(request("/")).unwrap()).headers()["x-hello"],
        "hi"
    );
    let Outcome::Respond(r) = f.on_request(request("/hello")).unwrap() else {
        panic!("/hello answers")
    };
    assert_eq!(r.body(), b"hello, hi\n");
    // No config at all is fine: the default greeting.
    let f = Harness::load(&wasm("hello"), serde_json::Value::Null).expect("load");
    assert_eq!(
        continued(f.on_request(request("/")).unwrap()).headers()["x-hello"],
        "world"
    );

    let err = Harness::load(&wasm("hello"), json!({"greeting": ""}))
        .err()
        .expect("empty greeting refused");
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(
        err.config_errors,
        vec![(".greeting".to_string(), "must not be empty".to_string())]
    );
    let err = Harness::load(&wasm("hello"), json!({"greting": "x"}))
        .err()
        .expect("typo refused");
    assert!(
        err.config_errors[0].1.contains("unknown field `greting`"),
        "{:?}",
        err.config_errors
    );
}

#[test]
fn a_filter_sees_no_files_environment_wall_clock_or_network() {
    let f = Harness::load(&wasm("misbehave"), json!({"mode": "sandbox"})).expect("load");
    let req = continued(f.on_request(request("/")).unwrap());
    let h = |n: &str| req.headers()[n].to_str().unwrap().to_string();
    assert!(
        h("x-fs").starts_with("denied"),
        "file system: {}",
        h("x-fs")
    );
    assert_eq!(h("x-env"), "0", "environment variables");
    assert_eq!(h("x-clock"), "0", "the wall clock is frozen at the epoch");
    assert!(h("x-net").starts_with("denied"), "network: {}", h("x-net"));
    // `Instant` is real: the spin between two readings took time. (The filter also
    // printed to stdout and stderr on the way, which trapped before they went to
    // the log: the call continuing shows it.)
    let ns: u64 = h("x-monotonic-ns").parse().expect("nanoseconds");
    assert!(ns > 0, "Instant::elapsed was {ns} ns");
}

#[test]
fn a_forbidden_wasi_call_names_itself_and_the_fix() {
    let f = Harness::load(&wasm("misbehave"), json!({"mode": "sleep"})).expect("load");
    let err = f
        .on_request(request("/"))
        .expect_err("sleeping is not available to filters");
    assert_eq!(err.kind, ErrorKind::Trap);
    assert!(
        err.message.contains("is not available to filters")
            && err.message.contains("sluice_sdk::outbound"),
        "{}",
        err.message
    );
}

/// A trap in a component built with debug info names the file and line.
#[test]
fn a_trap_in_a_debug_build_names_its_source_line() {
    let filters = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters");
    let built = sluice_harness::cargo_build(&filters, &["-p", "misbehave"]).expect("debug build");
    let [debug] = built.as_slice() else {
        panic!("one component expected: {built:?}");
    };
    // `unreachable`, not a panic: a panic's message names its line by itself.
    let f = Harness::load(debug, json!({"mode": "trap"})).expect("load");
    let e = f.on_request(request("/")).expect_err("traps");
    assert_eq!(e.kind, ErrorKind::Trap);
    let first = e.message.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("wasm trap: wasm `unreachable` instruction executed at ")
            && first.contains("filters/misbehave/src/lib.rs:"),
        "the first line names the trap and the filter's own line: {}",
        e.message
    );
}

#[test]
fn faults_are_classified_and_the_bad_instance_is_replaced() {
    let limits = Limits {
        memory_bytes: 4 << 20,
        timeout: Duration::from_millis(20),
    };
    let misbehave = private_copy("misbehave", "faults");
    for (mode, kind) in [
        ("trap", ErrorKind::Trap),
        ("loop", ErrorKind::Timeout),
        ("grow", ErrorKind::Memory),
        ("panic", ErrorKind::Trap),
        // The 17th digest hasher an instance holds at once is refused.
        ("hoard-hashers", ErrorKind::Trap),
    ] {
        let f = Harness::load_with(
            &misbehave,
            json!({"mode": mode, "path": "/bad"}),
            limits.clone(),
        )
        .expect("load");
        // Metrics are per WasmFilter name, shared by every load of it in this process.
        let before = f.stats().errors(kind);
        let err = f
            .on_request(request("/bad"))
            .err()
            .unwrap_or_else(|| panic!("{mode} must fail"));
        assert_eq!(err.kind, kind, "{mode}: {}", err.message);
        if mode == "panic" {
            assert!(
                err.message.contains("panicking on purpose"),
                "the panic message is kept: {}",
                err.message
            );
        }
        assert_eq!(f.stats().errors(kind), before + 1);
        // The failed instance was dropped; a fresh one serves the next request.
        let ok = continued(f.on_request(request("/good")).expect("next request works"));
        assert_eq!(ok.headers()["x-misbehave"], "passed");
    }
    let err = Harness::load(&wasm("misbehave"), json!({"mode": "reject-config"}))
        .err()
        .expect("refused");
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(err.config_errors.len(), 2);
    assert_eq!(err.config_errors[0].0, ".mode");
}

/// The epoch clock stops while no guest code runs; a looping call made after a quiet
/// spell starts it, and is stopped at its time limit.
#[test]
fn a_loop_after_a_quiet_spell_still_times_out() {
    let looping = Harness::load_with(
        &wasm("misbehave"),
        json!({"mode": "loop", "path": "/bad"}),
        Limits {
            memory_bytes: 4 << 20,
            timeout: Duration::from_millis(20),
        },
    )
    .expect("load");
    // Well past the clock's 100 ms without guest code (other tests may keep it awake; this one
    // must pass either way).
    std::thread::sleep(Duration::from_millis(400));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(looping.on_request(request("/bad")).err().map(|e| e.kind));
    });
    // Far below the 30 s a sleeping clock waits on its own.
    let kind = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the loop is stopped");
    assert_eq!(kind, Some(ErrorKind::Timeout));
}

#[test]
fn ratelimit_counts_in_the_shared_store_across_instances() {
    let f = Harness::load(
        &wasm("ratelimit"),
        json!({"requests": 2, "windowSeconds": 60, "keyHeader": "x-key"}),
    )
    .expect("load");
    let keyed = |k: &str| {
        let mut r = request("/");
        r.headers_mut().insert("x-key", k.parse().unwrap());
        r
    };
    assert!(matches!(
        f.on_request(keyed("a")).unwrap(),
        Outcome::Continue(_)
    ));
    assert!(matches!(
        f.on_request(keyed("a")).unwrap(),
        Outcome::Continue(_)
    ));
    match f.on_request(keyed("a")).unwrap() {
        Outcome::Respond(r) => {
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "60");
        }
        Outcome::Continue(_) => panic!("the third request in the window must be limited"),
    }
    assert!(
        matches!(f.on_request(keyed("b")).unwrap(), Outcome::Continue(_)),
        "keys count apart"
    );
    // A second load of the same WasmFilter (another pool, as after a config reload)
    // shares the store, so the limit still holds.
    let g = Harness::load(
        &wasm("ratelimit"),
        json!({"requests": 2, "windowSeconds": 60, "keyHeader": "x-key"}),
    )
    .expect("load");
    assert!(matches!(
        g.on_request(keyed("a")).unwrap(),
        Outcome::Respond(_)
    ));
    let err = Harness::load(
        &wasm("ratelimit"),
        json!({"requests": 0, "windowSeconds": 0}),
    )
    .err()
    .expect("refused");
    assert_eq!(err.config_errors.len(), 2);
}

/// A filter whose start runs past epoch ticks (and so through the slow lane) must not
/// keep its place there while it sits in the pool: slow calls after it still run, and
/// are cut at their own limit.
#[test]
fn a_slow_start_does_not_keep_the_slow_lane() {
    let slow = Harness::load(
        &wasm("misbehave"),
        json!({"mode": "slow-start", "path": "/never"}),
    )
    .expect("load");
    // `slow`'s first instance now sits in its pool, unused: it must not hold a place
    // in the lane (a call on it would give the place back, hiding the leak).
    let limits = Limits {
        timeout: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    let looping = Harness::load_with(
        &wasm("misbehave"),
        json!({"mode": "loop", "path": "/bad"}),
        limits,
    )
    .expect("load");
    // Run on a thread, so a call stuck waiting for the lane fails the test in time.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..3 {
            let r = looping.on_request(request("/bad")).err().map(|e| e.kind);
            let _ = tx.send(r);
        }
    });
    for _ in 0..3 {
        let kind = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a slow call still gets the lane");
        assert_eq!(kind, Some(ErrorKind::Timeout));
    }
    drop(slow);
}

fn json_response(body: serde_json::Value) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("response")
}

#[test]
fn json_redact_replaces_the_configured_fields_of_buffered_bodies() {
    let f = Harness::load(
        &wasm("json_redact"),
        json!({"response": ["/user/ssn", "/items/*/card", "/a~1b"], "request": ["/password"]}),
    )
    .expect("load");
    let needs = f.needs();
    assert_eq!(needs.request_body, sluice_harness::BodyMode::Buffered);
    assert_eq!(needs.response_body, sluice_harness::BodyMode::Buffered);

    // on-request drops accept-encoding, so the backend answers JSON it can read.
    let req = http::Request::post("/")
        .header("accept-encoding", "gzip")
        .body(())
        .expect("request");
    let req = continued(f.on_request(req).expect("on_request"));
    assert!(req.headers().get("accept-encoding").is_none());

    let req = http::Request::post("/login")
        .header("content-type", "application/json")
        .body(br#"{"user":"ann","password":"hunter2"}"#.to_vec())
        .expect("request");
    let sluice_harness::RequestBodyOutcome::Continue(req) =
        f.on_request_body(req).expect("on_request_body")
    else {
        panic!("the request was answered");
    };
    assert_eq!(req.body(), br#"{"user":"ann","password":"***"}"#);
    assert_eq!(
        req.headers()["content-length"],
        req.body().len().to_string()
    );

    let resp = f
        .on_response_body(json_response(json!({
            "user": {"name": "ann", "ssn": "123-45-6789"},
            "items": [{"card": "4111", "n": 1}, {"card": "5500", "n": 2}, {"n": 3}],
            "a/b": 7,
            "keep": true
        })))
        .expect("on_response_body");
    let got: serde_json::Value = serde_json::from_slice(resp.body()).expect("still JSON");
    assert_eq!(
        got,
        json!({
            "user": {"name": "ann", "ssn": "***"},
            "items": [{"card": "***", "n": 1}, {"card": "***", "n": 2}, {"n": 3}],
            "a/b": "***",
            "keep": true
        })
    );
    // Members keep the backend's order.
    let resp = http::Response::builder()
        .header("content-type", "application/json")
        .body(br#"{"z":1,"user":{"ssn":"1","a":2},"b":3}"#.to_vec())
        .expect("response");
    let resp = f.on_response_body(resp).expect("call");
    assert_eq!(resp.body(), br#"{"z":1,"user":{"ssn":"***","a":2},"b":3}"#);

    // Nothing to redact: the body is passed byte for byte (spacing included).
    let untouched = b"{ \"other\" : 1 }".to_vec();
    let resp = http::Response::builder()
        .header("content-type", "application/json")
        .body(untouched.clone())
        .expect("response");
    assert_eq!(f.on_response_body(resp).expect("call").body(), &untouched);
    // Not JSON by its content type: not read.
    let resp = http::Response::builder()
        .header("content-type", "text/plain")
        .body(b"ssn=123".to_vec())
        .expect("response");
    assert_eq!(f.on_response_body(resp).expect("call").body(), b"ssn=123");
}

#[test]
fn json_redact_passes_or_rejects_what_it_cannot_read_and_checks_its_config() {
    let bad = || {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(b"{\"ssn\": ".to_vec())
            .expect("response")
    };
    let pass = Harness::load(&wasm("json_redact"), json!({"response": ["/ssn"]})).expect("load");
    assert_eq!(pass.needs().request_body, sluice_harness::BodyMode::None);
    assert_eq!(
        pass.on_response_body(bad()).expect("call").body(),
        b"{\"ssn\": "
    );
    let reject = Harness::load(
        &wasm("json_redact"),
        json!({"response": ["/ssn"], "onInvalid": "reject"}),
    )
    .expect("load");
    assert_eq!(reject.on_response_body(bad()).expect("call").status(), 502);
    let gzipped = http::Response::builder()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0])
        .expect("response");
    assert_eq!(
        reject.on_response_body(gzipped).expect("call").status(),
        502
    );

    let e = Harness::load(
        &wasm("json_redact"),
        json!({"response": ["ssn", "/ok", "/x~2"], "request": []}),
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind, ErrorKind::Config);
    let paths: Vec<&str> = e.config_errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, [".response[0]", ".response[2]"]);
    let e = Harness::load(&wasm("json_redact"), json!({}))
        .err()
        .expect("refused");
    assert!(
        e.message.contains("at least one JSON pointer"),
        "{}",
        e.message
    );
}

/// The status `source_range` gives a request from `client` with `xff` headers.
fn source_range_status(f: &Harness, client: Option<&str>, xff: &[&str]) -> u16 {
    f.set_client(client.map(|c| c.parse().expect("socket address")));
    let mut req = http::Request::get("/");
    for v in xff {
        req = req.header("x-forwarded-for", *v);
    }
    match f.on_request(req.body(()).expect("request")).expect("call") {
        Outcome::Continue(_) => 200,
        Outcome::Respond(r) => r.status().as_u16(),
    }
}

#[test]
fn source_range_lets_in_and_keeps_out_by_the_clients_address() {
    let f = Harness::load(
        &wasm("source_range"),
        json!({"allow": ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"], "deny": ["10.9.0.0/16"]}),
    )
    .expect("load");
    let status = |client: &str| source_range_status(&f, Some(client), &[]);
    assert_eq!(
        status("10.200.0.1:5000"),
        200,
        "in a range; host bits ignored"
    );
    assert_eq!(status("192.0.2.7:1"), 200, "a single address");
    assert_eq!(status("192.0.2.8:1"), 403);
    assert_eq!(status("10.9.1.1:5000"), 403, "deny comes first");
    assert_eq!(status("[2001:db8:ff::1]:443"), 200);
    assert_eq!(status("[2001:db9::1]:443"), 403);
    assert_eq!(status("[::ffff:10.0.0.1]:80"), 200, "IPv4-mapped is IPv4");
    // The peer decides; what the client writes in x-forwarded-for does not.
    assert_eq!(
        source_range_status(&f, Some("203.0.113.1:1"), &["10.0.0.1"]),
        403
    );
    assert_eq!(
        source_range_status(&f, None, &[]),
        403,
        "no address: kept out"
    );

    // Behind one proxy: the rightmost x-forwarded-for entry is the client, whatever
    // the entries the client wrote to its left, over several header lines too.
    let behind = Harness::load(
        &wasm("source_range"),
        json!({"allow": ["10.0.0.0/8"], "trustedHops": 1, "status": 404}),
    )
    .expect("load");
    let lb = Some("172.16.0.1:1000");
    assert_eq!(source_range_status(&behind, lb, &["10.0.0.5"]), 200);
    assert_eq!(
        source_range_status(&behind, lb, &["10.0.0.5, 203.0.113.9"]),
        404
    );
    assert_eq!(
        source_range_status(&behind, lb, &["203.0.113.9", "10.0.0.5:4000"]),
        200
    );
    assert_eq!(
        source_range_status(&behind, lb, &[]),
        404,
        "too few entries"
    );
    assert_eq!(source_range_status(&behind, lb, &["unknown"]), 404);

    // Deny alone lets in what it cannot judge.
    let deny = Harness::load(&wasm("source_range"), json!({"deny": ["0.0.0.0/0"]})).expect("load");
    assert_eq!(
        source_range_status(&deny, Some("[2001:db8::1]:1"), &[]),
        200
    );
    assert_eq!(source_range_status(&deny, Some("198.51.100.1:1"), &[]), 403);
    assert_eq!(source_range_status(&deny, None, &[]), 200);
    assert!(deny.stats().counter("source_range_denied") >= 1);

    let e = Harness::load(
        &wasm("source_range"),
        json!({"allow": ["10.0.0.0/33", "ok", "10.0.0.0/8"], "status": 99}),
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind, ErrorKind::Config);
    let paths: Vec<&str> = e.config_errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, [".allow[0]", ".allow[1]", ".status"]);
    let e = Harness::load(&wasm("source_range"), json!({}))
        .err()
        .expect("refused");
    assert!(e.message.contains("give allow"), "{}", e.message);
}

fn authz_answer(
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> sluice_harness::OutboundResponse {
    let mut h = http::HeaderMap::new();
    for (n, v) in headers {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    sluice_harness::OutboundResponse {
        status: http::StatusCode::from_u16(status).expect("status"),
        headers: h,
        body: body.as_bytes().to_vec().into(),
    }
}

#[test]
fn ext_authz_asks_the_service_and_lets_in_denies_or_fails_as_configured() {
    let f = Harness::load(
        &wasm("ext_authz"),
        json!({"pathPrefix": "/check", "headers": ["authorization"], "upstreamHeaders": ["x-user"], "clientHeaders": ["www-authenticate"]}),
    )
    .expect("load");
    // Each check is answered here, from the token the request carries.
    f.answer_outbound(|grant, req| {
        assert_eq!(grant, "authz");
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(req.body.is_empty());
        match token {
            "Bearer good" => {
                assert_eq!(
                    (req.method.as_str(), req.path.as_str()),
                    ("PUT", "/check/api/x?y=1")
                );
                assert_eq!(req.headers["x-forwarded-host"], "example.com");
                Ok(authz_answer(
                    200,
                    &[("x-user", "ann"), ("x-other", "no")],
                    "",
                ))
            }
            "Bearer down" => Err(sluice_harness::CallError::Failed("connection reset".into())),
            _ => Ok(authz_answer(
                401,
                &[("www-authenticate", "Bearer"), ("x-internal", "no")],
                "who are you?",
            )),
        }
    });
    let req = |token: &str| {
        http::Request::put("/api/x?y=1")
            .header("host", "example.com")
            .header("authorization", token)
            .body(())
            .expect("request")
    };
    let allowed = continued(f.on_request(req("Bearer good")).expect("on_request"));
    assert_eq!(allowed.headers()["x-user"], "ann");
    assert!(allowed.headers().get("x-other").is_none());

    let Outcome::Respond(denied) = f.on_request(req("Bearer bad")).expect("on_request") else {
        panic!("a denied request is answered");
    };
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    assert!(denied.headers().get("x-internal").is_none());
    assert_eq!(denied.body(), b"who are you?");

    // The service cannot be asked: fail closed with statusOnError (403)...
    let Outcome::Respond(closed) = f.on_request(req("Bearer down")).expect("on_request") else {
        panic!("fail closed");
    };
    assert_eq!(closed.status(), 403);
    // ... or, failureModeAllow, let the request in and say so.
    let open = Harness::load(&wasm("ext_authz"), json!({"failureModeAllow": true})).expect("load");
    open.answer_outbound(|_, _| Err(sluice_harness::CallError::Timeout));
    let let_in = continued(open.on_request(req("Bearer any")).expect("on_request"));
    assert_eq!(let_in.headers()["x-ext-authz-failure-mode-allowed"], "true");

    // Without a grant (no answerer), every call is refused: fail closed.
    let ungranted = Harness::load(&wasm("ext_authz"), json!(null)).expect("load");
    let Outcome::Respond(r) = ungranted
        .on_request(req("Bearer good"))
        .expect("on_request")
    else {
        panic!("refused");
    };
    assert_eq!(r.status(), 403);
}

/// An HS256 token over `claims`, keyed with `secret`.
fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signed = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"k1"}"#),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signed}.{}",
        b64(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
    )
}

#[test]
fn jwt_checks_tokens_with_a_jwks_the_test_serves() {
    use base64::Engine;
    let secret = b"0123456789abcdef0123456789abcdef";
    let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)}]});
    let config = json!({"issuer": "https://idp.test", "jwks": {"path": "/keys"}, "claimsToHeaders": [{"claim": "sub", "header": "x-sub"}]});
    let f = Harness::load(&private_copy("jwt", "harness"), config).expect("load");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = served.clone();
    f.answer_outbound(move |grant, req| {
        assert_eq!((grant, req.path.as_str()), ("jwks", "/keys"));
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(authz_answer(
            200,
            &[("content-type", "application/json")],
            &jwks.to_string(),
        ))
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let with = |token: &str| {
        http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request")
    };
    let good = hs256(
        secret,
        json!({"iss": "https://idp.test", "sub": "ann", "exp": now + 60}),
    );
    let req = continued(f.on_request(with(&good)).expect("on_request"));
    assert_eq!(req.headers()["x-sub"], "ann");
    assert!(req.headers().get("authorization").is_none());
    let _ = continued(f.on_request(with(&good)).expect("on_request"));
    assert_eq!(
        served.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "cached in kv"
    );

    let wrong_key = hs256(
        b"another secret, 32 bytes long!!!",
        json!({"iss": "https://idp.test"}),
    );
    let Outcome::Respond(r) = f.on_request(with(&wrong_key)).expect("on_request") else {
        panic!("refused");
    };
    assert_eq!(r.status(), 401);
    let Outcome::Respond(r) = f.on_request(request("/")).expect("on_request") else {
        panic!("no token");
    };
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"https://idp.test\""
    );

    let e = Harness::load(
        &wasm("jwt"),
        json!({"issuer": "", "jwks": {"path": "keys", "cacheSeconds": 0}}),
    )
    .err()
    .expect("refused");
    let paths: Vec<&str> = e.config_errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, [".issuer", ".jwks.path", ".jwks.cacheSeconds"]);
}

fn sha(algorithm: &'static ring::digest::Algorithm, name: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    let d = ring::digest::digest(algorithm, body);
    format!(
        "{name}=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

#[test]
fn body_hash_digests_a_streamed_body_into_a_trailer() {
    let f = Harness::load(&wasm("body_hash"), json!(null)).expect("load");
    assert_eq!(f.needs().request_body, sluice_harness::BodyMode::Streamed);
    assert_eq!(f.needs().response_body, sluice_harness::BodyMode::None);
    let chunks: Vec<Vec<u8>> = vec![b"hello ".to_vec(), Vec::new(), b"world".to_vec()];
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sent", "by-client".parse().expect("value"));
    let req = http::Request::post("/upload")
        .header("content-length", "11")
        .body(())
        .expect("request");
    let (req, body) = f
        .stream_request(req, chunks.clone(), trailers)
        .expect("stream");
    // The trailer needs chunked framing: declared, and the length removed.
    assert_eq!(req.headers()["trailer"], "content-digest");
    assert!(req.headers().get("content-length").is_none());
    // Every chunk passes unchanged, and the digest is of all of them.
    assert_eq!(body.chunks, chunks);
    assert!(body.tail.is_empty());
    assert_eq!(
        body.trailers["content-digest"],
        sha(&ring::digest::SHA256, "sha-256", b"hello world").as_str()
    );
    assert_eq!(
        body.trailers["x-sent"], "by-client",
        "the sender's trailers stay"
    );

    // The next stream on the same (reused) instance starts from nothing.
    let (_, again) = f
        .stream_request(
            request("/upload"),
            [b"abc".to_vec()],
            http::HeaderMap::new(),
        )
        .expect("second stream");
    assert_eq!(
        again.trailers["content-digest"],
        sha(&ring::digest::SHA256, "sha-256", b"abc").as_str()
    );

    // Responses, SHA-512, a trailer name of one's own.
    let f = Harness::load(
        &wasm("body_hash"),
        json!({"algorithm": "sha-512", "trailer": "x-digest", "direction": "both"}),
    )
    .expect("load");
    assert_eq!(f.needs().response_body, sluice_harness::BodyMode::Streamed);
    let big = vec![7u8; 1 << 20];
    let resp = http::Response::builder()
        .header("content-length", big.len().to_string())
        .body(())
        .expect("response");
    let (resp, body) = f
        .stream_response(resp, big.chunks(16 << 10), http::HeaderMap::new())
        .expect("stream");
    assert_eq!(resp.headers()["trailer"], "x-digest");
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(body.body(), big);
    assert_eq!(
        body.trailers["x-digest"],
        sha(&ring::digest::SHA512, "sha-512", &big).as_str()
    );

    let err = Harness::load(&wasm("body_hash"), json!({"trailer": "bad name"}))
        .err()
        .expect("refused");
    assert_eq!(err.kind, ErrorKind::Config);
    assert_eq!(err.config_errors[0].0, ".trailer");
    let err = Harness::load(&wasm("body_hash"), json!({"algorithm": "md5"}))
        .err()
        .expect("refused");
    assert_eq!(err.config_errors[0].0, ".algorithm");
}

#[test]
fn a_filter_that_stalls_or_traps_mid_stream_fails_that_stream_only() {
    let limits = Limits {
        memory_bytes: 4 << 20,
        timeout: Duration::from_millis(20),
    };
    let misbehave = private_copy("misbehave", "streams");
    for (mode, kind) in [
        ("stall-stream", ErrorKind::Timeout),
        ("trap-stream", ErrorKind::Trap),
    ] {
        let f = Harness::load_with(
            &misbehave,
            json!({"mode": mode, "path": "/bad"}),
            limits.clone(),
        )
        .expect("load");
        let before = f.stats().errors(kind);
        let err = f
            .stream_request(
                request("/bad"),
                [b"first".to_vec(), b"second".to_vec()],
                http::HeaderMap::new(),
            )
            .err()
            .unwrap_or_else(|| panic!("{mode} must fail"));
        assert_eq!(err.kind, kind, "{mode}: {}", err.message);
        assert_eq!(f.stats().errors(kind), before + 1);
        // Another stream gets a fresh instance and passes.
        let (_, ok) = f
            .stream_request(
                request("/good"),
                [b"first".to_vec(), b"second".to_vec()],
                http::HeaderMap::new(),
            )
            .expect("the next stream works");
        assert_eq!(ok.body(), b"firstsecond");
    }
}

#[test]
fn sub_filter_replaces_strings_across_chunk_boundaries() {
    let f = Harness::load(
        &wasm("sub_filter"),
        json!({"replace": [
            {"from": "http://app.internal", "to": "https://app.example.com"},
            {"from": "secret", "to": ""}
        ]}),
    )
    .expect("load");
    assert_eq!(f.needs().response_body, sluice_harness::BodyMode::Streamed);
    assert_eq!(f.needs().request_body, sluice_harness::BodyMode::None);
    let page = "<a href=\"http://app.internal/x\">secret</a> http://app.internal";
    let expected = "<a href=\"https://app.example.com/x\"></a> https://app.example.com";
    // Every split of the page into two chunks gives the same body: matches that
    // straddle a chunk boundary are held back until the next chunk completes them.
    for cut in 0..=page.len() {
        let resp = http::Response::builder()
            .header("content-type", "text/html")
            .header("content-length", page.len().to_string())
            .body(())
            .expect("response");
        let (head, body) = f
            .stream_response(
                resp,
                [&page.as_bytes()[..cut], &page.as_bytes()[cut..]],
                http::HeaderMap::new(),
            )
            .expect("stream");
        assert_eq!(
            String::from_utf8_lossy(&body.body()),
            expected,
            "cut at {cut}"
        );
        assert!(head.headers().get("content-length").is_none());
    }
    // One byte at a time: held back, then flushed by the end (an unfinished match
    // at the very end is sent as it is).
    let resp = http::Response::builder()
        .header("content-type", "text/plain")
        .body(())
        .expect("response");
    let text = "go to http://app.internal or http://app.inter";
    let (_, body) = f
        .stream_response(resp, text.as_bytes().chunks(1), http::HeaderMap::new())
        .expect("stream");
    assert_eq!(
        String::from_utf8_lossy(&body.body()),
        "go to https://app.example.com or http://app.inter"
    );
    assert!(
        body.chunks.iter().any(Vec::is_empty),
        "held-back chunks are dropped"
    );
    assert_eq!(body.tail, b"http://app.inter", "and sent at the end");
    // Not text, or compressed: passed byte for byte.
    for (ct, ce) in [
        ("application/octet-stream", None),
        ("text/html", Some("gzip")),
    ] {
        let mut b = http::Response::builder()
            .header("content-type", ct)
            .header("content-length", "6");
        if let Some(e) = ce {
            b = b.header("content-encoding", e);
        }
        let (head, body) = f
            .stream_response(
                b.body(()).expect("response"),
                [b"secret"],
                http::HeaderMap::new(),
            )
            .expect("stream");
        assert_eq!(body.body(), b"secret");
        assert_eq!(head.headers()["content-length"], "6");
    }
    let err = Harness::load(
        &wasm("sub_filter"),
        json!({"replace": [{"from": "", "to": "x"}]}),
    )
    .err()
    .expect("refused");
    assert_eq!(err.config_errors[0].0, ".replace[0].from");
}

#[test]
fn tee_copies_a_streamed_body_to_its_grant_in_pieces() {
    use std::sync::{Arc, Mutex};
    let f = Harness::load(
        &wasm("tee"),
        json!({"grant": "archive", "path": "/uploads"}),
    )
    .expect("load");
    assert_eq!(f.needs().request_body, sluice_harness::BodyMode::Streamed);
    /// What the archive got: grant, request line, headers, body.
    type Copies = Arc<Mutex<Vec<(String, String, http::HeaderMap, Vec<u8>)>>>;
    let got: Copies = Arc::default();
    let seen = got.clone();
    f.answer_outbound(move |grant, req| {
        let status = if req.path.as_str() == "/uploads" {
            201
        } else {
            500
        };
        seen.lock().expect("lock").push((
            grant.to_string(),
            format!("{} {}", req.method, req.path),
            req.headers.clone(),
            req.body.to_vec(),
        ));
        Ok(sluice_harness::OutboundResponse {
            status: http::StatusCode::from_u16(status).expect("status"),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        })
    });
    let req = || {
        http::Request::put("/files/a.bin?v=2")
            .header("content-type", "application/octet-stream")
            .header("authorization", "secret")
            .body(())
            .expect("request")
    };
    continued(f.on_request(req()).expect("on_request"));
    let chunks: Vec<Vec<u8>> = vec![vec![1; 1000], vec![2; 10], vec![3; 5000]];
    let (_, body) = f
        .stream_request(req(), chunks.clone(), http::HeaderMap::new())
        .expect("stream");
    assert_eq!(
        body.chunks, chunks,
        "the request's own body passes unchanged"
    );
    let got = got.lock().expect("lock");
    assert_eq!(got.len(), 1);
    let (grant, line, headers, copied) = &got[0];
    assert_eq!(grant, "archive");
    assert_eq!(line, "PUT /uploads");
    assert_eq!(headers["x-tee-path"], "/files/a.bin?v=2");
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(
        headers.get("authorization").is_none(),
        "only the configured headers"
    );
    assert_eq!(copied, &chunks.concat(), "the copy is the whole body");

    let err = Harness::load(&wasm("tee"), json!({"grant": "", "path": "uploads"}))
        .err()
        .expect("refused");
    let paths: Vec<&str> = err.config_errors.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(paths, [".grant", ".path"]);
}

#[test]
fn an_instance_holds_at_most_16_started_outbound_calls() {
    let f = Harness::load(
        &private_copy("misbehave", "calls"),
        json!({"mode": "hoard-calls"}),
    )
    .expect("load");
    f.answer_outbound(|_, _| Err(sluice_harness::CallError::Timeout));
    let sixteen = http::Request::get("/")
        .header("x-start", "16")
        .body(())
        .expect("request");
    let ok = continued(f.on_request(sixteen).expect("16 calls are allowed"));
    assert_eq!(ok.headers()["x-calls"], "16");
    let err = f
        .on_request(request("/"))
        .expect_err("the 17th start traps");
    assert_eq!(err.kind, ErrorKind::Trap, "{}", err.message);
}

#[test]
fn a_core_module_or_an_empty_file_is_refused_with_the_fix() {
    let dir = std::env::temp_dir().join(format!("harness-not-a-component-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The smallest core module (what a wasm32-wasip1 build is), and an empty file.
    for (name, bytes, says) in [
        ("core.wasm", &b"\0asm\x01\0\0\0"[..], "core Wasm module"),
        ("empty.wasm", &b""[..], "empty"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let Err(err) = Harness::load(&path, json!({})) else {
            panic!("{name} loaded as a filter");
        };
        assert!(
            err.message.contains(says) && err.message.contains("--target wasm32-wasip2"),
            "{name}: {}",
            err.message
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_have_json_paths_and_no_json_positions() {
    for (config, path, says) in [
        (json!({}), ".mode", "is required"),
        (
            json!({"mode": 5}),
            ".mode",
            "invalid type: integer `5`, expected a string",
        ),
        (
            json!({"mode": "ok", "moed": 1}),
            ".moed",
            "unknown field `moed`",
        ),
    ] {
        let Err(err) = Harness::load(&wasm("misbehave"), config.clone()) else {
            panic!("{config} was accepted");
        };
        assert_eq!(err.kind, ErrorKind::Config);
        let (p, m) = &err.config_errors[0];
        assert_eq!(p, path, "{config}: {:?}", err.config_errors);
        assert!(m.starts_with(says) && !m.contains("line"), "{config}: {m}");
    }
}

/// A pool keeps idle instances only as far as the runtime's idle memory goes
/// (`sluice run --wasm-idle-memory`): after 20 streams held 20 instances of body-hash
/// at once, the default keeps all 20 for the next burst; a budget of 8 MiB keeps what
/// fits in it (a Rust instance has about 1 MiB of linear memory); and `minInstances`
/// are kept whatever the budget.
#[test]
fn idle_instances_stay_within_the_idle_memory() {
    use sluice_wasm::{CaptureSpec, Context, FilterSpec, KvBackend, Runtime, block_on};
    use std::sync::atomic::Ordering;

    let bytes = std::fs::read(wasm("body_hash")).expect("read body_hash.wasm");
    let kept_after_a_burst = |idle_memory: Option<usize>, min_instances: usize| {
        let rt = Runtime::with_instances(None, 64).expect("runtime");
        if let Some(b) = idle_memory {
            rt.set_idle_memory(b);
        }
        let compiled = rt.load(&bytes).expect("load body-hash");
        let spec = FilterSpec {
            name: "test/idle-memory".into(),
            config: "null".into(),
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(1),
            min_instances,
            kv: KvBackend::Memory,
            capture: CaptureSpec::default(),
        };
        let pool = block_on(rt.pool(&compiled, &spec)).expect("pool");
        let live = || pool.stats().instances.load(Ordering::Relaxed);
        let streams: Vec<_> = (0..20)
            .map(|_| {
                let (mut method, mut uri, mut headers) = (
                    http::Method::POST,
                    http::Uri::from_static("/up"),
                    http::HeaderMap::new(),
                );
                block_on(pool.request_stream(
                    &mut method,
                    &mut uri,
                    &mut headers,
                    Context::default(),
                ))
                .expect("stream start")
            })
            .collect();
        assert_eq!(live(), 20, "each stream holds an instance");
        for s in streams {
            let mut trailers = http::HeaderMap::new();
            block_on(s.end(&mut trailers)).expect("stream end");
            assert!(trailers.contains_key("content-digest"), "{trailers:?}");
        }
        live()
    };
    assert_eq!(
        kept_after_a_burst(None, 1),
        20,
        "the default keeps the burst's instances"
    );
    let kept = kept_after_a_burst(Some(8 << 20), 1);
    assert!((1..=8).contains(&kept), "8 MiB kept {kept} instances");
    assert_eq!(
        kept_after_a_burst(Some(8 << 20), 12),
        12,
        "minInstances are kept regardless"
    );
}
