//! Failure capture (WasmFilter `spec.debug.captureFailures`): the last requests on which
//! a filter's hook trapped, ran out of time or of memory, kept per WasmFilter with the
//! filter's digest and config, so `sluice filter replay` can run them again.
//!
//! With capture on, each header and buffered-body hook's input is copied before the call
//! (the call consumes it, and a trap leaves it half changed); the request's head is also
//! kept in the request's context, so a failure in a response hook has the request too.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

use crate::{RequestCtx, ResponseCtx};

/// Header values never kept, whatever the WasmFilter lists.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// What a redacted header's value is replaced by.
pub const REDACTED: &str = "<redacted>";

/// What a WasmFilter asks to keep (`spec.debug`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CaptureSpec {
    /// How many failures to keep; 0: capture is off.
    pub failures: usize,
    /// Lowercase names of headers whose values are not kept, besides [`ALWAYS_REDACTED`].
    pub redact: Vec<String>,
    /// The most of a body kept.
    pub max_body: usize,
}

impl CaptureSpec {
    pub fn on(&self) -> bool {
        self.failures > 0
    }

    fn headers(&self, h: &HeaderMap, redacted: &mut Vec<String>) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (n, v) in h {
            let name = n.as_str();
            let hidden = ALWAYS_REDACTED.contains(&name) || self.redact.iter().any(|r| r == name);
            let v = if hidden {
                if !redacted.iter().any(|r| r == name) {
                    redacted.push(name.to_string());
                }
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            out.entry(name.to_string())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        out
    }

    fn body(&self, b: Option<&Bytes>) -> (Option<String>, Option<String>) {
        let Some(b) = b.filter(|b| !b.is_empty()) else {
            return (None, None);
        };
        let kept = &b[..b.len().min(self.max_body)];
        // A cut may fall inside a character: the text ends before it.
        let text = match std::str::from_utf8(kept) {
            Ok(s) => Some(s),
            Err(e) if kept.len() < b.len() && e.error_len().is_none() => {
                std::str::from_utf8(&kept[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        match text {
            Some(s) if s.len() == b.len() => (Some(s.to_string()), None),
            Some(s) => (
                Some(s.to_string()),
                Some(format!("cut to {} of its {} bytes", s.len(), b.len())),
            ),
            None => (
                None,
                Some(format!("{} bytes, not UTF-8: not kept", b.len())),
            ),
        }
    }

    pub(crate) fn request(
        &self,
        r: &RequestCtx,
        body: Option<&Bytes>,
        client: Option<SocketAddr>,
    ) -> CapturedRequest {
        let mut redacted = Vec::new();
        let headers = self.headers(&r.headers, &mut redacted);
        let (body, body_note) = self.body(body);
        CapturedRequest {
            method: r.method.to_string(),
            path: r
                .uri
                .path_and_query()
                .map_or_else(|| r.uri.to_string(), |p| p.to_string()),
            headers,
            body,
            body_note,
            client,
            redacted,
        }
    }

    pub(crate) fn response(&self, r: &ResponseCtx, body: Option<&Bytes>) -> CapturedResponse {
        let mut redacted = Vec::new();
        let headers = self.headers(&r.headers, &mut redacted);
        let (body, body_note) = self.body(body);
        CapturedResponse {
            status: r.status.as_u16(),
            headers,
            body,
            body_note,
            redacted,
        }
    }
}

/// A hook's input that a capture copies: a request's head, or a response's.
pub(crate) trait Input {
    /// Copies this input (and `body`) for a capture; a request's head is also kept in
    /// `context`, for a failure in a later response hook.
    fn capture(
        &self,
        spec: &CaptureSpec,
        body: Option<&Bytes>,
        context: &mut crate::Context,
    ) -> (Option<CapturedRequest>, Option<CapturedResponse>);
}

impl Input for RequestCtx {
    fn capture(
        &self,
        spec: &CaptureSpec,
        body: Option<&Bytes>,
        context: &mut crate::Context,
    ) -> (Option<CapturedRequest>, Option<CapturedResponse>) {
        let r = spec.request(self, body, context.client());
        context.set_captured(Some(Box::new(r.clone())));
        (Some(r), None)
    }
}

impl Input for ResponseCtx {
    fn capture(
        &self,
        spec: &CaptureSpec,
        body: Option<&Bytes>,
        context: &mut crate::Context,
    ) -> (Option<CapturedRequest>, Option<CapturedResponse>) {
        (context.captured().cloned(), Some(spec.response(self, body)))
    }
}

/// A request as a filter's hook was given it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// Why the body is missing or cut, when it is.
    pub body_note: Option<String>,
    pub client: Option<SocketAddr>,
    /// The headers whose values were replaced by [`REDACTED`].
    pub redacted: Vec<String>,
}

/// A response as a filter's hook was given it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub body_note: Option<String>,
    pub redacted: Vec<String>,
}

/// One failure: what failed, on what, in which build.
#[derive(Clone, Debug)]
pub struct Failure {
    pub time: SystemTime,
    /// `namespace/name`.
    pub filter: String,
    /// The component's `sha256:...`.
    pub digest: String,
    /// The JSON the filter was configured with.
    pub config: String,
    /// The hook that failed (`on-request`...).
    pub hook: &'static str,
    /// `trap`, `timeout` or `memory`.
    pub kind: &'static str,
    pub message: String,
    /// The request (for a response hook: as the filter's `on-request` was given it).
    pub request: Option<CapturedRequest>,
    pub response: Option<CapturedResponse>,
}

/// The failures kept for one WasmFilter, newest last.
#[derive(Debug, Default)]
pub(crate) struct Failures(Mutex<VecDeque<Failure>>);

impl Failures {
    pub(crate) fn push(&self, f: Failure, keep: usize) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() >= keep.max(1) {
            q.pop_front();
        }
        q.push_back(f);
    }

    pub(crate) fn list(&self) -> Vec<Failure> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CaptureSpec {
        CaptureSpec {
            failures: 2,
            redact: vec!["x-api-key".into()],
            max_body: 4,
        }
    }

    #[test]
    fn secrets_are_redacted_and_bodies_cut() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().expect("value"));
        headers.insert("x-api-key", "k".parse().expect("value"));
        headers.append("x-multi", "a".parse().expect("value"));
        headers.append("x-multi", "b".parse().expect("value"));
        let r = RequestCtx {
            method: http::Method::POST,
            uri: "/p?q=1".parse().expect("uri"),
            headers,
        };
        let c = spec().request(&r, Some(&Bytes::from_static(b"abcdef")), None);
        assert_eq!(c.path, "/p?q=1");
        assert_eq!(c.headers["authorization"], REDACTED);
        assert_eq!(c.headers["x-api-key"], REDACTED);
        assert_eq!(c.headers["x-multi"], "a, b");
        assert_eq!(c.redacted, ["authorization", "x-api-key"]);
        assert_eq!(c.body.as_deref(), Some("abcd"));
        assert_eq!(c.body_note.as_deref(), Some("cut to 4 of its 6 bytes"));
        let c = spec().request(&r, Some(&Bytes::from_static(&[0xff, 0xfe])), None);
        assert_eq!(c.body, None);
        assert!(c.body_note.is_some_and(|n| n.contains("not UTF-8")));
    }

    #[test]
    fn only_the_last_ones_are_kept() {
        let f = Failures::default();
        for i in 0..5 {
            f.push(
                Failure {
                    time: SystemTime::now(),
                    filter: "ns/f".into(),
                    digest: String::new(),
                    config: String::new(),
                    hook: "on-request",
                    kind: "trap",
                    message: i.to_string(),
                    request: None,
                    response: None,
                },
                2,
            );
        }
        let kept: Vec<String> = f.list().into_iter().map(|f| f.message).collect();
        assert_eq!(kept, ["3", "4"]);
    }
}
