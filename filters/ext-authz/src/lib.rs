//! External authorization, as Envoy's `ext_authz` with an HTTP service: each request
//! is first asked about to an authorization service, which the WasmFilter grants as an
//! outbound backend (filter API 0.2):
//!
//! ```yaml
//! spec:
//!   outbound:
//!   - name: authz
//!     backendRef: {name: authz, namespace: auth, port: 8080}
//!     timeout: 200ms
//!   config:
//!     grant: authz                # the outbound grant to call (default authz)
//!     pathPrefix: /check          # put before the request's path (default none)
//!     headers: [authorization, cookie]   # request headers sent along (default [authorization])
//!     upstreamHeaders: [x-user-id]       # headers of an allowing answer added to the request
//!     clientHeaders: [www-authenticate]  # headers of a denying answer sent to the client
//!                                        # (default: all but the framing ones)
//!     failureModeAllow: false     # the service cannot be asked: let the request in (true)
//!                                 # or answer statusOnError (false, the default)
//!     statusOnError: 403          # default 403, as Envoy
//! ```
//!
//! The check request has the request's method and `pathPrefix` + its path and query,
//! the selected headers, `x-forwarded-host` with the request's authority, and no body.
//! A 2xx answer lets the request go on, with the answer's `upstreamHeaders` set on it.
//! Any other answer is sent to the client as it is: its status, its `clientHeaders`
//! and its body. When the service cannot be asked (down, reset, past the grant's
//! timeout), `failureModeAllow` decides; a request let in that way carries
//! `x-ext-authz-failure-mode-allowed: true` to the backend. Counters:
//! `sluice_filter_ext_authz_allowed_total`, `_denied_total`, `_errors_total`.

use serde::Deserialize;
use sluice_sdk::outbound::{self, CallError};
use sluice_sdk::{Action, ConfigErrors, Filter, Request, config_error, log, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default = "default_grant")]
    grant: String,
    #[serde(default)]
    path_prefix: String,
    #[serde(default = "default_headers")]
    headers: Vec<String>,
    #[serde(default)]
    upstream_headers: Vec<String>,
    #[serde(default)]
    client_headers: Option<Vec<String>>,
    #[serde(default)]
    failure_mode_allow: bool,
    #[serde(default = "default_status_on_error")]
    status_on_error: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grant: default_grant(),
            path_prefix: String::new(),
            headers: default_headers(),
            upstream_headers: Vec::new(),
            client_headers: None,
            failure_mode_allow: false,
            status_on_error: default_status_on_error(),
        }
    }
}

fn default_grant() -> String {
    "authz".into()
}
fn default_headers() -> Vec<String> {
    vec!["authorization".into()]
}
fn default_status_on_error() -> u16 {
    403
}

struct ExtAuthz {
    grant: String,
    path_prefix: String,
    headers: Vec<String>,
    upstream_headers: Vec<String>,
    client_headers: Option<Vec<String>>,
    failure_mode_allow: bool,
    status_on_error: u16,
}

/// Headers of a denying answer that are about its own framing, never passed on.
const FRAMING: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
];

fn lower_all(names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

impl Filter for ExtAuthz {
    type Config = Option<Config>;

    fn new(c: Option<Config>) -> Result<Self, ConfigErrors> {
        let c = c.unwrap_or_default();
        let mut errors = Vec::new();
        if !(c.path_prefix.is_empty() || c.path_prefix.starts_with('/')) {
            errors.push(config_error(
                ".pathPrefix",
                "must start with / (or be empty)",
            ));
        }
        if !(100..=599).contains(&c.status_on_error) {
            errors.push(config_error(".statusOnError", "must be 100 to 599"));
        }
        if c.grant.is_empty() {
            errors.push(config_error(
                ".grant",
                "name a grant of the WasmFilter's spec.outbound",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ExtAuthz {
            grant: c.grant,
            path_prefix: c.path_prefix.trim_end_matches('/').to_string(),
            headers: lower_all(c.headers),
            upstream_headers: lower_all(c.upstream_headers),
            client_headers: c.client_headers.map(lower_all),
            failure_mode_allow: c.failure_mode_allow,
            status_on_error: c.status_on_error,
        })
    }

    fn on_request(&self, req: &Request) -> Action {
        let path = match req.query() {
            Some(q) => format!("{}{}?{q}", self.path_prefix, req.path()),
            None => format!("{}{}", self.path_prefix, req.path()),
        };
        let mut check = outbound::Request::new(&req.method(), &path)
            .header("x-forwarded-host", req.authority());
        for name in &self.headers {
            for value in req.get_header_all(name) {
                check = check.header(name.clone(), value);
            }
        }
        match outbound::send(&self.grant, check) {
            Ok(answer) if (200..300).contains(&answer.status) => {
                metrics::counter_add("ext_authz_allowed", 1);
                for name in &self.upstream_headers {
                    if let Some(v) = answer.header(name)
                        && let Err(e) = req.set_header(name, v)
                    {
                        log::warn(&format!(
                            "cannot set {name} from the authorization answer: {e:?}"
                        ));
                    }
                }
                Action::Continue
            }
            Ok(answer) => {
                metrics::counter_add("ext_authz_denied", 1);
                let headers = answer
                    .headers
                    .into_iter()
                    .filter(|(n, _)| match &self.client_headers {
                        Some(keep) => keep.contains(n),
                        None => !FRAMING.contains(&n.as_str()),
                    })
                    .collect();
                Action::Respond {
                    status: answer.status,
                    headers,
                    body: answer.body,
                }
            }
            Err(e) => {
                metrics::counter_add("ext_authz_errors", 1);
                log::warn(&format!(
                    "the authorization service ({}) could not be asked: {}",
                    self.grant,
                    describe(&e)
                ));
                if self.failure_mode_allow {
                    let _ = req.set_header("x-ext-authz-failure-mode-allowed", "true");
                    Action::Continue
                } else {
                    Action::respond(self.status_on_error, "")
                }
            }
        }
    }
}

fn describe(e: &CallError) -> String {
    match e {
        CallError::NotGranted => {
            "not granted: add it to the WasmFilter's spec.outbound".to_string()
        }
        CallError::Unavailable(m) => format!("unavailable: {m}"),
        CallError::Timeout => "no answer within the grant's timeout".to_string(),
        CallError::Failed(m) => format!("failed: {m}"),
        CallError::InvalidRequest(m) => format!("invalid request: {m}"),
        CallError::ResponseTooLarge => "the answer is larger than limits.maxBodyBytes".into(),
    }
}

sluice_sdk::export!(ExtAuthz);
