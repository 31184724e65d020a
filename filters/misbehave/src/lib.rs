//! A deliberately bad filter for the gateway's fault tests. `config.mode` picks the
//! failure; `config.path` limits it to one request path (other paths pass through and
//! get `x-misbehave: passed`), so a test can show that other requests are unaffected.
//!
//! Modes: `trap` (executes `unreachable`), `loop` (spins forever), `grow` (allocates
//! until the memory limit), `panic` (a Rust panic), `reject-config` (refuses its
//! config in `configure`), `ok` (behaves).

use serde::Deserialize;
use sluice_sdk::{Action, ConfigErrors, Filter, Request, config_error};

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
            "trap" | "loop" | "grow" | "panic" | "ok" => Ok(Misbehave { mode: c.mode, path: c.path }),
            other => Err(vec![config_error(".mode", format!("unknown mode {other:?}"))]),
        }
    }

    fn on_request(&self, request: &Request) -> Action {
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
            _ => {
                let _ = request.set_header("x-misbehave", "ok");
                Action::Continue
            }
        }
    }
}

sluice_sdk::export!(Misbehave);
