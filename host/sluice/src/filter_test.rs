//! `sluice filter test`: runs a component on a request written in YAML, in the
//! gateway's own runtime (through the harness), prints what the filter did, and checks
//! it against the file's `expect:` block. A filter in any language is tested this way
//! without writing Rust.
//!
//! ```yaml
//! request:                    # what the client sends
//!   method: GET               # default GET
//!   path: /hello?x=1          # required
//!   headers: {x-api-key: k1}
//!   body: "..."               # optional
//!   client: 203.0.113.7:5000  # optional: connection.client (API 0.2)
//! response:                   # optional: the backend's answer (default: 200, no body)
//!   status: 200
//!   headers: {content-type: text/plain}
//!   body: ok
//! expect:                     # optional: each field given is checked
//!   request: {path: /hello, headers: {x-hello: world}, absentHeaders: [x-api-key]}
//!   respond: {status: 401}    # the filter answers itself instead
//!   response: {status: 200, headers: {x-hello: world}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde::Deserialize;
use sluice_harness::{BodyMode, Harness, Outcome, RequestBodyOutcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Case {
    pub(crate) request: RequestSpec,
    #[serde(default)]
    pub(crate) response: Option<ResponseSpec>,
    #[serde(default)]
    expect: Option<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestSpec {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    client: Option<std::net::SocketAddr>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseSpec {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

fn ok() -> u16 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// What reaches the backend.
    #[serde(default)]
    request: Option<Expected>,
    /// The filter's own answer, instead of the backend.
    #[serde(default)]
    respond: Option<Expected>,
    /// The backend's answer after the filter's response hooks.
    #[serde(default)]
    response: Option<Expected>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expected {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    #[serde(default)]
    body: Option<String>,
}

/// A message as the report shows it and the expectations read it.
#[derive(serde::Serialize)]
struct Seen {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

fn headers_of(h: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (n, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(n.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

fn body_text(b: &[u8]) -> Option<String> {
    (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned())
}

fn request_seen<B>(r: &http::Request<B>, body: &[u8]) -> Seen {
    Seen {
        status: None,
        method: Some(r.method().to_string()),
        path: r.uri().path_and_query().map(|p| p.to_string()),
        headers: headers_of(r.headers()),
        body: body_text(body),
    }
}

fn response_seen<B>(r: &http::Response<B>, body: &[u8]) -> Seen {
    Seen {
        status: Some(r.status().as_u16()),
        method: None,
        path: None,
        headers: headers_of(r.headers()),
        body: body_text(body),
    }
}

/// What the filter did with one case.
#[derive(serde::Serialize, Default)]
pub(crate) struct Report {
    /// The request as it reaches the backend, if the filter let it through.
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Seen>,
    /// The filter's own answer, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    respond: Option<Seen>,
    /// The backend's response after the filter's response hooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Seen>,
}

/// The filter's config from `path`: a WasmFilter's `spec.config`, or the file's whole
/// content as the config itself.
pub(crate) fn config(path: Option<&Path>) -> Result<serde_json::Value, String> {
    let Some(path) = path else {
        return Ok(serde_json::Value::Null);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(
        if v.get("kind").and_then(|k| k.as_str()) == Some("WasmFilter") {
            v.pointer("/spec/config")
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        } else {
            v
        },
    )
}

fn build_request(r: &RequestSpec) -> Result<http::Request<()>, String> {
    let mut b = http::Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str());
    if !r.headers.keys().any(|k| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "example.com");
    }
    for (n, v) in &r.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    b.body(()).map_err(|e| format!("request: {e}"))
}

fn build_response(r: &ResponseSpec) -> Result<http::Response<()>, String> {
    let mut b = http::Response::builder().status(r.status);
    for (n, v) in &r.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    b.body(()).map_err(|e| format!("response: {e}"))
}

/// Runs the case; the report, or why the filter could not run it.
pub(crate) fn run_case(f: &Harness, case: &Case) -> Result<Report, String> {
    let fail = |e: sluice_harness::FilterError| format!("the filter failed: {}", e.message);
    let mut report = Report::default();
    f.set_client(case.request.client);
    let req = build_request(&case.request)?;
    let body = case.request.body.clone().unwrap_or_default().into_bytes();
    let needs = f.needs();
    let (req, body) = match f.on_request(req).map_err(fail)? {
        Outcome::Respond(r) => {
            report.respond = Some(response_seen(&r, r.body()));
            return Ok(report);
        }
        Outcome::Continue(req) => match needs.request_body {
            BodyMode::Buffered if !body.is_empty() => {
                let (parts, ()) = req.into_parts();
                match f
                    .on_request_body(http::Request::from_parts(parts, body))
                    .map_err(fail)?
                {
                    RequestBodyOutcome::Respond(r) => {
                        report.respond = Some(response_seen(&r, r.body()));
                        return Ok(report);
                    }
                    RequestBodyOutcome::Continue(r) => {
                        let (parts, body) = r.into_parts();
                        (http::Request::from_parts(parts, ()), body)
                    }
                }
            }
            BodyMode::Streamed if !body.is_empty() => {
                let (req, streamed) = f
                    .stream_request(req, [body], http::HeaderMap::new())
                    .map_err(fail)?;
                (req, streamed.body())
            }
            _ => (req, body),
        },
    };
    report.request = Some(request_seen(&req, &body));
    let spec = case.response.as_ref();
    let resp = match spec {
        Some(r) => build_response(r)?,
        None => http::Response::new(()),
    };
    let body = spec
        .and_then(|r| r.body.clone())
        .unwrap_or_default()
        .into_bytes();
    let resp = f.on_response(resp).map_err(fail)?;
    let (resp, body) = match needs.response_body {
        BodyMode::Buffered if !body.is_empty() => {
            let (parts, ()) = resp.into_parts();
            let r = f
                .on_response_body(http::Response::from_parts(parts, body))
                .map_err(fail)?;
            let (parts, body) = r.into_parts();
            (http::Response::from_parts(parts, ()), body)
        }
        BodyMode::Streamed if !body.is_empty() => {
            let (resp, streamed) = f
                .stream_response(resp, [body], http::HeaderMap::new())
                .map_err(fail)?;
            (resp, streamed.body())
        }
        _ => (resp, body),
    };
    report.response = Some(response_seen(&resp, &body));
    Ok(report)
}

/// Each way `seen` differs from `want`, as `what.field: ...`.
fn compare(what: &str, want: &Expected, seen: Option<&Seen>, out: &mut Vec<String>) {
    let Some(seen) = seen else {
        out.push(format!("{what}: expected, but there is none"));
        return;
    };
    let mut check = |field: &str, want: Option<String>, got: Option<String>| {
        if want.is_some() && want != got {
            out.push(format!(
                "{what}.{field}: expected {:?}, got {:?}",
                want.unwrap_or_default(),
                got.unwrap_or_default()
            ));
        }
    };
    check(
        "status",
        want.status.map(|s| s.to_string()),
        seen.status.map(|s| s.to_string()),
    );
    check("method", want.method.clone(), seen.method.clone());
    check("path", want.path.clone(), seen.path.clone());
    check("body", want.body.clone(), seen.body.clone());
    for (n, v) in &want.headers {
        let n = n.to_ascii_lowercase();
        check(
            &format!("headers.{n}"),
            Some(v.clone()),
            seen.headers.get(&n).cloned(),
        );
    }
    for n in &want.absent_headers {
        let n = n.to_ascii_lowercase();
        if let Some(v) = seen.headers.get(&n) {
            out.push(format!("{what}.headers.{n}: expected absent, got {v:?}"));
        }
    }
}

/// `sluice filter test`: 0 when the filter did what `expect` says (or there is no
/// `expect`), 1 when it did not, 2 when it could not be run.
pub fn run(component: &Path, config_path: Option<&Path>, request_path: &Path) -> ExitCode {
    let setup = || -> Result<(Harness, Case), String> {
        let text = std::fs::read_to_string(request_path)
            .map_err(|e| format!("{}: {e}", request_path.display()))?;
        let case: Case = serde_norway::from_str(&text)
            .map_err(|e| format!("{}: {e}", request_path.display()))?;
        let config = config(config_path)?;
        let f = Harness::load(component, config)
            .map_err(|e| format!("{}: {}", component.display(), e.message))?;
        Ok((f, case))
    };
    let (f, case) = match setup() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let report = match run_case(&f, &case) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", component.display());
            return ExitCode::from(2);
        }
    };
    match serde_norway::to_string(&report) {
        Ok(y) => print!("{y}"),
        Err(e) => eprintln!("cannot print the report: {e}"),
    }
    let Some(expect) = &case.expect else {
        return ExitCode::SUCCESS;
    };
    let mut mismatches = Vec::new();
    for (what, want, seen) in [
        ("request", &expect.request, report.request.as_ref()),
        ("respond", &expect.respond, report.respond.as_ref()),
        ("response", &expect.response, report.response.as_ref()),
    ] {
        if let Some(want) = want {
            compare(what, want, seen, &mut mismatches);
        }
    }
    if mismatches.is_empty() {
        eprintln!("{}: as expected", request_path.display());
        ExitCode::SUCCESS
    } else {
        for m in &mismatches {
            eprintln!("{}: expect.{m}", request_path.display());
        }
        ExitCode::from(1)
    }
}
