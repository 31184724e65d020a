//! The cost of one filter hook call, in process: the `headers` filter touching three
//! headers (set and remove on the request, set on the response), against a baseline
//! that does the same request and response bookkeeping without calling a filter.
//!
//!   cargo bench -p sluice-harness --bench filter_call
//!
//! Prints ns per call and the ratio to the baseline. Compare ratios, not absolute
//! numbers: these machines are shared.

use std::hint::black_box;
use std::time::Instant;

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

/// Best of five rounds of `n` iterations, in ns per iteration.
fn measure(n: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = sluice_harness::repo_filters().expect("building filters/");
    let filter = Harness::load(
        &dir.join("headers.wasm"),
        serde_json::json!({"request": {"set": {"x-bench-1": "1"}, "remove": ["x-none-1"]}, "response": {"set": {"x-served-1": "1"}}}),
    )
    .expect("load headers filter");
    let n = 50_000;
    // Warm up: instances created, caches hot.
    let _ = measure(5_000, || {
        let _ = black_box(filter.on_request(request()));
    });
    // The harness moves the parts in and out, as the gateway does; the baselines do
    // the same work without the call.
    let base_req = measure(n, || {
        let (parts, ()) = black_box(request()).into_parts();
        black_box(http::Request::from_parts(parts, ()));
    });
    let base_resp = measure(n, || {
        let (parts, ()) = black_box(response()).into_parts();
        black_box(http::Response::from_parts(parts, ()));
    });
    let on_request = measure(n, || match filter.on_request(request()) {
        Ok(Outcome::Continue(r)) => {
            black_box(r);
        }
        other => panic!("unexpected {other:?}"),
    });
    let on_response = measure(n, || {
        black_box(filter.on_response(response()).expect("on_response"));
    });
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
