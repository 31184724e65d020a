//! Sets, adds and removes request and response headers, from config:
//!
//! ```yaml
//! config:
//!   request:  {set: {x-env: prod}, add: {x-tag: a}, remove: [x-debug]}
//!   response: {set: {cache-control: no-store}, remove: [server]}
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{Action, ConfigErrors, Filter, HeaderError, Request, Response, config_error};

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Changes,
    #[serde(default)]
    response: Changes,
}

struct Headers {
    config: Config,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check(changes: &Changes, side: &str, errors: &mut ConfigErrors) {
    let names = changes
        .set
        .keys()
        .map(|n| ("set", n))
        .chain(changes.add.keys().map(|n| ("add", n)));
    for (what, n) in names.chain(changes.remove.iter().map(|n| ("remove", n))) {
        if !valid_name(n) {
            errors.push(config_error(
                format!(".{side}.{what}"),
                format!("{n:?} is not a valid header name"),
            ));
        }
    }
}

/// One interface for both sides, so the changes are written once.
trait HeaderOps {
    fn set(&self, n: &str, v: &str) -> Result<(), HeaderError>;
    fn add(&self, n: &str, v: &str) -> Result<(), HeaderError>;
    fn remove(&self, n: &str);
}

impl HeaderOps for Request {
    fn set(&self, n: &str, v: &str) -> Result<(), HeaderError> {
        self.set_header(n, v)
    }
    fn add(&self, n: &str, v: &str) -> Result<(), HeaderError> {
        self.append_header(n, v)
    }
    fn remove(&self, n: &str) {
        self.remove_header(n)
    }
}

impl HeaderOps for Response {
    fn set(&self, n: &str, v: &str) -> Result<(), HeaderError> {
        self.set_header(n, v)
    }
    fn add(&self, n: &str, v: &str) -> Result<(), HeaderError> {
        self.append_header(n, v)
    }
    fn remove(&self, n: &str) {
        self.remove_header(n)
    }
}

fn apply(changes: &Changes, target: &impl HeaderOps) {
    // Names were checked in `new`; a value the gateway refuses (a newline, say) is
    // skipped rather than failing the request.
    for (n, v) in &changes.set {
        let _ = target.set(n, v);
    }
    for (n, v) in &changes.add {
        let _ = target.add(n, v);
    }
    for n in &changes.remove {
        target.remove(n);
    }
}

impl Filter for Headers {
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, ConfigErrors> {
        let config = config.unwrap_or_default();
        let mut errors = Vec::new();
        check(&config.request, "request", &mut errors);
        check(&config.response, "response", &mut errors);
        if errors.is_empty() {
            Ok(Headers { config })
        } else {
            Err(errors)
        }
    }

    fn on_request(&self, request: &Request) -> Action {
        apply(&self.config.request, request);
        Action::Continue
    }

    fn on_response(&self, response: &Response) {
        apply(&self.config.response, response);
    }
}

sluice_sdk::export!(Headers);
