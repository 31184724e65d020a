//! The smallest useful filter: copy this crate to start your own.
//!
//! It adds `x-hello: <greeting>` to every request, and answers `/hello` itself.
//! Build it with `cargo build --release --target wasm32-wasip2`, then point a
//! WasmFilter at `target/wasm32-wasip2/release/hello.wasm`.

use serde::Deserialize;
use sluice_sdk::{Action, Filter, Request, config_error};

/// `spec.config` of the WasmFilter, parsed once per instance. Unknown fields are
/// refused so a typo shows up in the WasmFilter's status instead of being ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// What to greet with; defaults to "world".
    #[serde(default = "world")]
    greeting: String,
}

fn world() -> String {
    "world".into()
}

struct Hello {
    greeting: String,
}

impl Filter for Hello {
    // `Option` so a WasmFilter without `spec.config` (JSON null) is fine too.
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, sluice_sdk::ConfigErrors> {
        let greeting = config.map_or_else(world, |c| c.greeting);
        // Validate here, once, and say where the problem is.
        if greeting.is_empty() {
            return Err(vec![config_error(".greeting", "must not be empty")]);
        }
        Ok(Hello { greeting })
    }

    fn on_request(&self, request: &Request) -> Action {
        if request.path() == "/hello" {
            // Shows up on the gateway's /metrics as sluice_filter_greetings_total.
            sluice_sdk::metrics::counter_add("greetings", 1);
            return Action::respond(200, format!("hello, {}\n", self.greeting));
        }
        // A header change can only fail for an invalid name or value; ours are fixed.
        let _ = request.set_header("x-hello", &self.greeting);
        Action::Continue
    }

    // on_response is not needed: the default does nothing.
}

sluice_sdk::export!(Hello);
