//! Answers every request itself, from config:
//!
//! ```yaml
//! config: {status: 503, headers: {retry-after: "30"}, body: "down for maintenance\n"}
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_sdk::{Action, ConfigErrors, Filter, Request, config_error};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn ok() -> u16 {
    200
}

struct Respond {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Filter for Respond {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        if !(100..=599).contains(&c.status) {
            return Err(vec![config_error(".status", "must be between 100 and 599")]);
        }
        Ok(Respond {
            status: c.status,
            headers: c.headers.into_iter().collect(),
            body: c.body.into_bytes(),
        })
    }

    fn on_request(&self, _: &Request) -> Action {
        Action::Respond {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

sluice_sdk::export!(Respond);
