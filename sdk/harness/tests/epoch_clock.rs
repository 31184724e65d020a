//! The epoch clock that bounds guest calls ticks at its fast pace (every millisecond)
//! only while a call runs on: calls that end quickly leave it at its slow pace (no
//! thread waking a thousand times a second beside a busy gateway), and a call that
//! loops hurries it and is still cut at its time limit. In a process of its own:
//! another test's slow call would keep the shared clock fast.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_harness::{Harness, Limits, Outcome};
use sluice_wasm::ErrorKind;

fn wasm(name: &str) -> std::path::PathBuf {
    sluice_harness::repo_filters()
        .expect("building filters/ for wasm32-wasip2")
        .join(format!("{name}.wasm"))
}

fn request(path: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("host", "example.com")
        .body(())
        .expect("request")
}

/// Calls `f`'s hooks every 200 µs for `d`, as a gateway under load does with guest
/// code a small part of its time; returns how many requests it ran.
fn busy(f: &Harness, d: Duration) -> u32 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        match f.on_request(request("/")).expect("on_request") {
            Outcome::Continue(_) => {}
            Outcome::Respond(r) => panic!("unexpected answer {}", r.status()),
        }
        let resp = http::Response::builder()
            .status(200)
            .body(())
            .expect("response");
        f.on_response(resp).expect("on_response");
        n += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    n
}

#[test]
fn quick_calls_leave_the_clock_asleep_and_a_loop_wakes_it() {
    let headers = Harness::load(
        &wasm("headers"),
        json!({"request": {"set": {"x-a": "1"}}, "response": {"set": {"x-b": "1"}}}),
    )
    .expect("load headers");
    let looping = Harness::load_with(
        &wasm("misbehave"),
        json!({"mode": "loop", "path": "/bad"}),
        Limits {
            memory_bytes: 4 << 20,
            // Longer than the clock takes to stop at its slow pace (100 ms): a loop
            // that failed to keep it fast would never be cut.
            timeout: Duration::from_millis(200),
        },
    )
    .expect("load misbehave");
    // Loading may have hurried the clock; it slows a few ticks after.
    busy(&headers, Duration::from_millis(50));
    let before = sluice_harness::epoch_ticks();
    let calls = busy(&headers, Duration::from_millis(300));
    let ticked = sluice_harness::epoch_ticks() - before;
    assert!(calls > 100, "only {calls} requests in 300 ms");
    // 60 slow ticks, and a few fast ones after a tick that found a call running. A
    // clock at the fast pace throughout ticks about 300 times.
    assert!(
        ticked <= 150,
        "the clock ticked {ticked} times over {calls} quick requests in 300 ms"
    );

    let before = sluice_harness::epoch_ticks();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(looping.on_request(request("/bad")).err().map(|e| e.kind));
    });
    let kind = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the loop is stopped");
    assert_eq!(kind, Some(ErrorKind::Timeout));
    let ticked = sluice_harness::epoch_ticks() - before;
    assert!(
        ticked >= 150,
        "a 200 ms limit is counted in 1 ms ticks of the running clock, not {ticked}"
    );
}
