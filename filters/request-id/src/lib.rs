//! Gives every request an id and returns it with the response, as Envoy's
//! `x-request-id` does:
//!
//! ```yaml
//! config:
//!   header: x-request-id   # default
//! ```
//!
//! A request that carries the header keeps its id; one without gets a new one (the
//! monotonic clock and a counter shared by the filter's instances: unique within one
//! gateway process). The backend sees the id on the request, and the client gets the
//! same id on the response. The id travels from `on_request` to `on_response` in the
//! request's context (filter API 0.2): the two hooks may run in different instances,
//! and other requests run in between.

use serde::Deserialize;
use sluice_sdk::{
    Action, ConfigErrors, Filter, Request, Response, clock, config_error, context, kv,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-request-id".into()
}

struct RequestId {
    header: String,
}

/// An id carried by a client is kept only if it is a plausible id: short, visible ASCII.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

impl Filter for RequestId {
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, ConfigErrors> {
        let header = config
            .map_or_else(default_header, |c| c.header)
            .to_ascii_lowercase();
        let valid = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(vec![config_error(
                ".header",
                "not a valid HTTP header name",
            )]);
        }
        Ok(RequestId { header })
    }

    fn on_request(&self, req: &Request) -> Action {
        let id = match req.get_header(&self.header) {
            Some(id) if acceptable(&id) => id,
            _ => {
                let seq = kv::increment("seq", 1, None);
                let id = format!("{:016x}-{seq:08x}", clock::monotonic_now());
                if let Err(e) = req.set_header(&self.header, &id) {
                    sluice_sdk::log::warn(&format!("cannot set {}: {e:?}", self.header));
                }
                id
            }
        };
        if context::set("id", id.as_bytes()).is_err() {
            sluice_sdk::log::warn("the request context is full; the id is not returned");
        }
        Action::Continue
    }

    fn on_response(&self, resp: &Response) {
        if let Some(id) = context::get("id").and_then(|b| String::from_utf8(b).ok()) {
            let _ = resp.set_header(&self.header, &id);
        }
    }
}

sluice_sdk::export!(RequestId);
