//! Copies request bodies, as they stream, to another service: an archive for uploads,
//! a scanner that looks at them afterwards. The built-in `RequestMirror` holds a body
//! whole (at most 16 MiB); this filter holds one chunk at a time, whatever the size.
//!
//! ```yaml
//! spec:
//!   outbound:
//!   - {name: archive, backendRef: {name: archive, port: 80}, timeout: 60s}
//!   config:
//!     grant: archive        # the outbound grant to send copies to (required)
//!     path: /uploads        # default: the request's own path and query
//!     headers: [content-type]  # request headers sent with the copy (default: content-type)
//! ```
//!
//! The copy goes with the request's method and an `x-tee-path` header naming the
//! original path. It streams at the pace of the slower of the two backends: a chunk goes
//! on to the route's backend once the copy took it. A copy that fails (refused, timed
//! out, answered non-2xx) is logged and counted; the request itself carries on. The
//! grant's timeout covers the whole copy, so set it to the longest upload expected.
//! Counters: `sluice_filter_tee_copies_total`, `sluice_filter_tee_failures_total`,
//! `sluice_filter_tee_bytes_total`.

use serde::Deserialize;
use sluice_sdk::outbound::{self, Call};
use sluice_sdk::{
    BodyMode, BodyStream, Chunk, ConfigErrors, Filter, Needs, Request, Trailers, config_error, log,
    metrics,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    grant: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "default_headers")]
    headers: Vec<String>,
}

fn default_headers() -> Vec<String> {
    vec!["content-type".into()]
}

struct Tee {
    grant: String,
    path: Option<String>,
    headers: Vec<String>,
}

impl Filter for Tee {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        if c.grant.is_empty() {
            errors.push(config_error(".grant", "name the outbound grant to copy to"));
        }
        if c.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            errors.push(config_error(".path", "must start with /"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Tee {
            grant: c.grant,
            path: c.path,
            headers: c.headers,
        })
    }

    fn needs(&self) -> Needs {
        Needs {
            request_body: BodyMode::Streamed,
            ..Needs::default()
        }
    }

    fn request_stream(&self, request: &Request) -> Box<dyn BodyStream> {
        let original = match request.query() {
            Some(q) => format!("{}?{q}", request.path()),
            None => request.path(),
        };
        let mut copy =
            outbound::Request::new(&request.method(), self.path.as_deref().unwrap_or(&original))
                .header("x-tee-path", original.clone());
        for name in &self.headers {
            if let Some(v) = request.get_header(name) {
                copy = copy.header(name.clone(), v);
            }
        }
        let call = match outbound::start(&self.grant, copy) {
            Ok(c) => Some(c),
            Err(e) => {
                failed(&format!("cannot start the copy of {original}: {e:?}"));
                None
            }
        };
        Box::new(Copy {
            call,
            original,
            bytes: 0,
        })
    }
}

/// One body's copy in flight.
struct Copy {
    /// `None` once it failed.
    call: Option<Call>,
    original: String,
    bytes: u64,
}

fn failed(why: &str) {
    log::warn(why);
    metrics::counter_add("tee_failures", 1);
}

impl BodyStream for Copy {
    fn chunk(&mut self, chunk: Vec<u8>) -> Chunk {
        if let Some(call) = &self.call {
            match call.write(&chunk) {
                Ok(()) => self.bytes += chunk.len() as u64,
                Err(e) => {
                    failed(&format!("the copy of {} failed: {e:?}", self.original));
                    self.call = None;
                }
            }
        }
        Chunk::Pass
    }

    fn end(&mut self, _trailers: &Trailers) -> Vec<u8> {
        metrics::counter_add("tee_bytes", self.bytes);
        if let Some(call) = self.call.take() {
            match call.finish() {
                Ok(r) if (200..300).contains(&r.status) => metrics::counter_add("tee_copies", 1),
                Ok(r) => failed(&format!(
                    "the copy of {} was answered {}",
                    self.original, r.status
                )),
                Err(e) => failed(&format!("the copy of {} failed: {e:?}", self.original)),
            }
        }
        Vec::new()
    }
}

sluice_sdk::export!(Tee);
