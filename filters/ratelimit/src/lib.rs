//! A fixed-window rate limiter on the shared key-value store: every instance of one
//! WasmFilter counts in the same store, so the limit holds across the gateway's pool.
//!
//! ```yaml
//! config: {requests: 100, windowSeconds: 60, keyHeader: x-api-key}
//! ```
//!
//! Requests are counted per value of `keyHeader` (all together when unset or absent);
//! past `requests` in a window the filter answers 429 with `retry-after`.

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::{Action, ConfigErrors, Filter, Request, config_error, kv, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    requests: u32,
    window_seconds: u32,
    #[serde(default)]
    key_header: Option<String>,
}

struct RateLimit {
    limit: i64,
    window: Duration,
    key_header: Option<String>,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        if c.requests == 0 {
            errors.push(config_error(".requests", "must be at least 1"));
        }
        if c.window_seconds == 0 {
            errors.push(config_error(".windowSeconds", "must be at least 1"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RateLimit {
            limit: i64::from(c.requests),
            window: Duration::from_secs(u64::from(c.window_seconds)),
            key_header: c.key_header,
        })
    }

    fn on_request(&self, request: &Request) -> Action {
        let who = self
            .key_header
            .as_deref()
            .and_then(|h| request.get_header(h))
            .unwrap_or_default();
        // The entry is created with the window as its TTL and keeps that expiry as it
        // is incremented: a fixed window in one atomic call.
        let count = kv::increment(&format!("rl:{who}"), 1, Some(self.window));
        if count > self.limit {
            metrics::counter_add("limited", 1);
            return Action::Respond {
                status: 429,
                headers: vec![("retry-after".into(), self.window.as_secs().to_string())],
                body: b"rate limit exceeded\n".to_vec(),
            };
        }
        Action::Continue
    }
}

sluice_sdk::export!(RateLimit);
