//! Replaces fields of JSON bodies, named by JSON pointers, with `"***"`:
//!
//! ```yaml
//! config:
//!   response:                  # pointers into response bodies
//!   - /user/ssn
//!   - /items/*/card/number     # `*` is every member of an object or element of an array
//!   request:                   # pointers into request bodies (optional)
//!   - /password
//!   replacement: "***"         # default; any JSON value
//!   onInvalid: pass            # pass (default) | reject: a body that says it is JSON but is not
//! ```
//!
//! Pointers follow RFC 6901 (`~1` is `/`, `~0` is `~`); a segment that is exactly `*`
//! matches every member or element. A pointer that matches nothing in a body is not an
//! error. Only bodies whose `content-type` is JSON (`application/json`, `*/*+json`) are
//! read; others pass unchanged. A body is rewritten only if something was redacted, so
//! a body with nothing to redact reaches the client byte for byte.
//!
//! The filter asks the gateway for the bodies it has pointers for, whole (filter API
//! 0.2, buffered): bodies up to the WasmFilter's `limits.maxBodyBytes` (1 MiB by
//! default). With response pointers it also removes the request's `accept-encoding`, so
//! the backend answers uncompressed JSON it can read. A body it cannot read (compressed
//! anyway, or not valid JSON) passes with `onInvalid: pass`, or is refused with
//! `reject` (400 for a request, 502 for a response). Counters:
//! `sluice_filter_json_redact_fields_total` (fields replaced) and
//! `sluice_filter_json_redact_unreadable_total`.

use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::{
    Action, BodyAction, BodyMode, ConfigErrors, Filter, Needs, Request, Response, config_error,
    metrics,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    response: Vec<String>,
    #[serde(default)]
    request: Vec<String>,
    #[serde(default = "default_replacement")]
    replacement: Value,
    #[serde(default)]
    on_invalid: OnInvalid,
}

fn default_replacement() -> Value {
    Value::String("***".into())
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum OnInvalid {
    #[default]
    Pass,
    Reject,
}

/// A JSON pointer, split into its unescaped segments.
type Pointer = Vec<String>;

struct JsonRedact {
    request: Vec<Pointer>,
    response: Vec<Pointer>,
    replacement: Value,
    on_invalid: OnInvalid,
}

fn parse_pointer(p: &str) -> Result<Pointer, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "{p:?} is not a JSON pointer: it must start with `/`, such as /user/ssn"
        ));
    };
    rest.split('/')
        .map(|s| {
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return Err(format!(
                        "{p:?}: `~` must be written ~0, and `/` in a name ~1"
                    ));
                }
            }
            Ok(s.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

fn parse_all(pointers: &[String], field: &str, errors: &mut ConfigErrors) -> Vec<Pointer> {
    let mut out = Vec::new();
    for (i, p) in pointers.iter().enumerate() {
        match parse_pointer(p) {
            Ok(p) => out.push(p),
            Err(e) => errors.push(config_error(format!(".{field}[{i}]"), e)),
        }
    }
    out
}

/// Replaces what `path` names under `v`; returns how many values were replaced.
fn redact(v: &mut Value, path: &[String], with: &Value) -> u64 {
    let Some((head, rest)) = path.split_first() else {
        *v = with.clone();
        return 1;
    };
    match v {
        Value::Object(m) if head == "*" => m.values_mut().map(|c| redact(c, rest, with)).sum(),
        Value::Object(m) => m.get_mut(head).map_or(0, |c| redact(c, rest, with)),
        Value::Array(a) if head == "*" => a.iter_mut().map(|c| redact(c, rest, with)).sum(),
        Value::Array(a) => head
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get_mut(i))
            .map_or(0, |c| redact(c, rest, with)),
        _ => 0,
    }
}

fn is_json(content_type: Option<String>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn compressed(content_encoding: Option<String>) -> bool {
    content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
}

/// What to do with one body.
enum Verdict {
    Keep,
    Replace(Vec<u8>),
    Unreadable,
}

impl JsonRedact {
    fn apply(&self, pointers: &[Pointer], body: &[u8]) -> Verdict {
        let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
            return Verdict::Unreadable;
        };
        let n: u64 = pointers
            .iter()
            .map(|p| redact(&mut doc, p, &self.replacement))
            .sum();
        if n == 0 {
            return Verdict::Keep;
        }
        metrics::counter_add("json_redact_fields", n);
        match serde_json::to_vec(&doc) {
            Ok(b) => Verdict::Replace(b),
            Err(_) => Verdict::Unreadable,
        }
    }

    fn unreadable(&self, status: u16, message: &str) -> BodyAction {
        metrics::counter_add("json_redact_unreadable", 1);
        match self.on_invalid {
            OnInvalid::Pass => BodyAction::Continue,
            OnInvalid::Reject => BodyAction::Respond {
                status,
                headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
                body: message.as_bytes().to_vec(),
            },
        }
    }
}

impl Filter for JsonRedact {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let request = parse_all(&c.request, "request", &mut errors);
        let response = parse_all(&c.response, "response", &mut errors);
        if request.is_empty() && response.is_empty() && errors.is_empty() {
            errors.push(config_error(
                "",
                "give at least one JSON pointer in `response` or `request`",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JsonRedact {
            request,
            response,
            replacement: c.replacement,
            on_invalid: c.on_invalid,
        })
    }

    fn needs(&self) -> Needs {
        let mode = |p: &[Pointer]| {
            if p.is_empty() {
                BodyMode::None
            } else {
                BodyMode::Buffered
            }
        };
        Needs {
            request_body: mode(&self.request),
            response_body: mode(&self.response),
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        if !self.response.is_empty() {
            req.remove_header("accept-encoding");
        }
        Action::Continue
    }

    fn on_request_body(&self, req: &Request, body: Vec<u8>) -> BodyAction {
        if !is_json(req.get_header("content-type")) {
            return BodyAction::Continue;
        }
        if compressed(req.get_header("content-encoding")) {
            return self.unreadable(400, "a compressed JSON request body cannot be redacted\n");
        }
        match self.apply(&self.request, &body) {
            Verdict::Keep => BodyAction::Continue,
            Verdict::Replace(b) => BodyAction::Replace(b),
            Verdict::Unreadable => self.unreadable(400, "the request body is not valid JSON\n"),
        }
    }

    fn on_response_body(&self, resp: &Response, body: Vec<u8>) -> BodyAction {
        if !is_json(resp.get_header("content-type")) {
            return BodyAction::Continue;
        }
        if compressed(resp.get_header("content-encoding")) {
            return self.unreadable(502, "the backend sent a compressed JSON body\n");
        }
        match self.apply(&self.response, &body) {
            Verdict::Keep => BodyAction::Continue,
            Verdict::Replace(b) => BodyAction::Replace(b),
            Verdict::Unreadable => self.unreadable(502, "the backend sent invalid JSON\n"),
        }
    }
}

sluice_sdk::export!(JsonRedact);
