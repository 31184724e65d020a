//! A deliberately bad filter for the gateway's fault tests. `config.mode` picks the
//! failure; `config.path` limits it to one request path (other paths pass through and
//! get `x-misbehave: passed`), so a test can show that other requests are unaffected.
//!
//! Modes: `trap` (executes `unreachable`), `loop` (spins forever), `grow` (allocates
//! until the memory limit), `panic` (a Rust panic), `reject-config` (refuses its
//! config in `configure`), `sandbox` (tries files, environment, wall clock and
//! network, and reports what it got in `x-fs`, `x-env`, `x-clock`, `x-net`; measures
//! a spin with `Instant` in `x-monotonic-ns`; prints to stdout and stderr), `sleep`
//! (`std::thread::sleep`, which WASI cannot do for a filter),
//! `slow-start` (spins for some milliseconds in `configure`, then behaves), `ok`
//! (behaves). Streamed request bodies (API 0.2): `stall-stream` (passes the first chunk,
//! then spins forever in the next: a filter that stops reading), `trap-stream` (passes
//! the first chunk, then panics in the next). `hoard-hashers` creates digest hashers
//! past the host's limit of 16 per instance, `hoard-calls` starts outbound calls (to
//! the grant `any`) past the limit of 16 (or as many as the request's `x-start` says).

use serde::Deserialize;
use sluice_sdk::{
    Action, BodyMode, BodyStream, Chunk, ConfigErrors, Filter, Needs, Request, config_error,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default)]
    path: Option<String>,
}

struct Misbehave {
    mode: String,
    path: Option<String>,
}

impl Filter for Misbehave {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        match c.mode.as_str() {
            "reject-config" => Err(vec![
                config_error(".mode", "reject-config always refuses its config"),
                config_error(".path", "and reports a second problem"),
            ]),
            "slow-start" => {
                // Long enough to run past several 1 ms epoch ticks, well under the
                // 1 s configure limit.
                let mut n: u64 = 0;
                for _ in 0..20_000_000u64 {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
                Ok(Misbehave {
                    mode: c.mode,
                    path: c.path,
                })
            }
            "trap" | "loop" | "grow" | "panic" | "sleep" | "sandbox" | "ok" | "stall-stream"
            | "trap-stream" | "hoard-hashers" | "hoard-calls" => Ok(Misbehave {
                mode: c.mode,
                path: c.path,
            }),
            other => Err(vec![config_error(
                ".mode",
                format!("unknown mode {other:?}"),
            )]),
        }
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: if self.mode.ends_with("-stream") {
                BodyMode::Streamed
            } else {
                BodyMode::None
            },
            ..Needs::default()
        }
    }

    fn request_stream(&self, request: &Request) -> Box<dyn BodyStream> {
        let bad = self.path.as_ref().is_none_or(|p| *p == request.path());
        Box::new(BadStream {
            stall: self.mode == "stall-stream",
            bad,
            chunks: 0,
        })
    }

    fn on_request(&self, request: &Request) -> Action {
        if self.mode.ends_with("-stream") {
            return Action::Continue;
        }
        if self.path.as_ref().is_some_and(|p| *p != request.path()) {
            let _ = request.set_header("x-misbehave", "passed");
            return Action::Continue;
        }
        match self.mode.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "panic" => panic!("misbehave: panicking on purpose"),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                Action::Continue
            }
            "hoard-calls" => {
                let n: u32 = request
                    .get_header("x-start")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(17);
                let hoard: Vec<_> = (0..n)
                    .filter_map(|_| {
                        sluice_sdk::outbound::start("any", sluice_sdk::outbound::Request::post("/"))
                            .ok()
                    })
                    .collect();
                let _ = request.set_header("x-calls", &hoard.len().to_string());
                Action::Continue
            }
            "hoard-hashers" => {
                let hoard: Vec<_> = (0..17)
                    .map(|_| sluice_sdk::digest::Hasher::new(sluice_sdk::digest::Algorithm::Sha256))
                    .collect();
                let _ = request.set_header("x-hashers", &hoard.len().to_string());
                Action::Continue
            }
            "sandbox" => {
                let fs = match std::fs::read_dir("/") {
                    Ok(_) => "readable".to_string(),
                    Err(e) => format!("denied: {e}"),
                };
                let env = std::env::vars().count().to_string();
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs().to_string())
                    .unwrap_or_default();
                // Real monotonic time: some work between two readings shows in
                // `elapsed`.
                let started = std::time::Instant::now();
                let mut spins = 0u64;
                while started.elapsed().is_zero() && spins < 10_000_000 {
                    spins += 1;
                }
                let monotonic = started.elapsed().as_nanos().to_string();
                println!("misbehave: printed to stdout");
                eprintln!("misbehave: printed to stderr");
                let net = match std::net::TcpStream::connect("127.0.0.1:9") {
                    Ok(_) => "connected".to_string(),
                    Err(e) => format!("denied: {e}"),
                };
                for (n, v) in [
                    ("x-fs", fs),
                    ("x-env", env),
                    ("x-clock", clock),
                    ("x-net", net),
                    ("x-monotonic-ns", monotonic),
                ] {
                    let _ = request.set_header(n, &v);
                }
                Action::Continue
            }
            _ => {
                let _ = request.set_header("x-misbehave", "ok");
                Action::Continue
            }
        }
    }
}

/// Passes the first chunk of a body, then stalls or panics in the next.
struct BadStream {
    stall: bool,
    bad: bool,
    chunks: u64,
}

impl BodyStream for BadStream {
    fn chunk(&mut self, _chunk: Vec<u8>) -> Chunk {
        self.chunks += 1;
        if self.bad && self.chunks > 1 {
            if self.stall {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            panic!("misbehave: panicking in the middle of a stream");
        }
        Chunk::Pass
    }
}

sluice_sdk::export!(Misbehave);
