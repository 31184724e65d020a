//! The cost of one filter hook call, in process: the `headers` filter touching three
//! headers (set and remove on the request, set on the response), against a baseline
//! that does the same request and response bookkeeping without calling a filter.
//!
//!   cargo bench -p sluice-harness --bench filter_call
//!
//! Prints ns per call and the ratio to the baseline. Compare ratios, not absolute
//! numbers: these machines are shared.

mod common;

use std::hint::black_box;

use common::best_of;
use sluice_harness::{Harness, Outcome};

fn request() -> http::Request<()> {
    http::Request::get("/bench")
        .header("host", "example.com")
        .header("user-agent", "bench")
        .header("accept", "*/*")
        .header("x-none-1", "drop me")
        .body(())
        .expect("request")
}

fn response() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(())
        .expect("response")
}

/// ns per `on_request` and per `on_response` of one loaded filter.
fn hooks(filter: &Harness, n: u32) -> (f64, f64) {
    // Warm up: instances created, caches hot.
    let _ = best_of(5_000, || {
        let _ = black_box(filter.on_request(request()));
    });
    let on_request = best_of(n, || match filter.on_request(request()) {
        Ok(Outcome::Continue(r)) => {
            black_box(r);
        }
        other => panic!("unexpected {other:?}"),
    });
    let on_response = best_of(n, || {
        black_box(filter.on_response(response()).expect("on_response"));
    });
    (on_request, on_response)
}

fn main() {
    let dir = sluice_harness::repo_filters().expect("building filters/");
    let config = serde_json::json!({"request": {"set": {"x-bench-1": "1"}, "remove": ["x-none-1"]}, "response": {"set": {"x-served-1": "1"}}});
    let filter =
        Harness::load(&dir.join("headers.wasm"), config.clone()).expect("load headers filter");
    // The same filter built with the 0.1 SDK and committed: what an old component costs
    // on this host, next to today's build.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/headers-0.1.0.wasm");
    let old = Harness::load(&fixture, config).expect("load the 0.1 fixture");
    // A 0.2 filter that stores into and reads from the request's context.
    let rid = Harness::load(&dir.join("request_id.wasm"), serde_json::json!(null))
        .expect("load request-id");
    let n = 50_000;
    // The harness moves the parts in and out, as the gateway does; the baselines do
    // the same work without the call.
    let base_req = best_of(n, || {
        let (parts, ()) = black_box(request()).into_parts();
        black_box(http::Request::from_parts(parts, ()));
    });
    let base_resp = best_of(n, || {
        let (parts, ()) = black_box(response()).into_parts();
        black_box(http::Response::from_parts(parts, ()));
    });
    let (on_request, on_response) = hooks(&filter, n);
    let (old_req, old_resp) = hooks(&old, n);
    let (rid_req, rid_resp) = hooks(&rid, n);
    let added_req = (on_request - base_req).max(0.0);
    let added_resp = (on_response - base_resp).max(0.0);
    println!("baselines without a filter: request {base_req:.0} ns, response {base_resp:.0} ns");
    println!(
        "on_request  (set 1, remove 1 header): {on_request:.0} ns, +{added_req:.0} ns per call, x{:.1} baseline",
        on_request / base_req
    );
    println!(
        "on_response (set 1 header):           {on_response:.0} ns, +{added_resp:.0} ns per call, x{:.1} baseline",
        on_response / base_resp
    );
    println!(
        "the same filter as a committed 0.1 component: on_request {old_req:.0} ns (x{:.2} today's build), on_response {old_resp:.0} ns (x{:.2})",
        old_req / on_request,
        old_resp / on_response
    );
    println!(
        "request-id (0.2, context set and get): on_request {rid_req:.0} ns, on_response {rid_resp:.0} ns"
    );
    redact_64k(&dir);
    let per_filter = added_req + added_resp;
    println!(
        "one headers filter on one request (both hooks): +{:.2} us; target per call 1.5 us: {}",
        per_filter / 1000.0,
        if per_filter / 2.0 <= 1500.0 {
            "met"
        } else {
            "missed"
        }
    );
}

/// A buffered 64 KiB JSON response through `json-redact` (one pointer with a `*`,
/// 400 fields replaced): µs per `on_response_body`, next to the same parse, redact and
/// serialize done natively in this process.
fn redact_64k(dir: &std::path::Path) {
    let redact = Harness::load(
        &dir.join("json_redact.wasm"),
        serde_json::json!({"response": ["/items/*/ssn"]}),
    )
    .expect("load json-redact");
    let mut items = Vec::new();
    let mut doc = Vec::new();
    for i in 0.. {
        items.push(serde_json::json!({"id": i, "name": format!("customer {i}"), "ssn": "123-45-6789", "tags": ["a", "b"]}));
        doc = serde_json::to_vec(&serde_json::json!({ "items": items })).expect("json");
        if doc.len() >= 64 << 10 {
            break;
        }
    }
    let doc = bytes_of(doc);
    let resp = || {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(doc.to_vec())
            .expect("response")
    };
    let out = redact.on_response_body(resp()).expect("on_response_body");
    let fields = String::from_utf8_lossy(out.body())
        .matches("\"***\"")
        .count();
    let wasm = best_of(300, || {
        black_box(redact.on_response_body(resp()).expect("on_response_body"));
    });
    let native = best_of(300, || {
        let mut v: serde_json::Value = serde_json::from_slice(&resp().into_body()).expect("json");
        if let Some(items) = v["items"].as_array_mut() {
            for item in items {
                item["ssn"] = serde_json::Value::from("***");
            }
        }
        black_box(serde_json::to_vec(&v).expect("json"));
    });
    println!(
        "json-redact, buffered {} KiB response, {fields} fields: {:.0} us per body; native parse+redact+serialize {:.0} us (x{:.2})",
        doc.len() >> 10,
        wasm / 1000.0,
        native / 1000.0,
        wasm / native
    );
}

fn bytes_of(v: Vec<u8>) -> std::sync::Arc<[u8]> {
    v.into()
}
