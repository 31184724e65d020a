//! Outbound calls from Wasm filters (filter API 0.2 `outbound.send`): only to the
//! backends the WasmFilter's `spec.outbound` grants, through the same upstream pools,
//! endpoints and BackendTLSPolicy as routes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Either;
use tokio::time::Instant;

use hyper::body::Frame;
use sluice_wasm::{
    BodySink, CallError, CallFuture, Outbound, OutboundRequest, OutboundResponse, WriteFuture,
};

use crate::body::{Buffered, Collected, Filtered, Frames, collect, peek_whole};
use crate::client::Streamed;
use crate::snapshot::Backend;
use crate::{Body, Gateway};

/// One granted backend.
pub(crate) struct Grant {
    pub name: String,
    pub backend: Arc<Backend>,
    pub timeout: Duration,
}

/// A WasmFilter's grants (at most 16: a list is quicker than a map).
pub(crate) struct Grants(pub Vec<Grant>);

/// Time all of a request's outbound calls may take when its route sets no timeout.
pub(crate) const CALLS_WITHOUT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The calls one filter may make during one request.
pub(crate) struct Calls {
    pub gw: Arc<Gateway>,
    pub grants: Arc<Grants>,
    /// The largest answer body read (the WasmFilter's `limits.maxBodyBytes`).
    pub max_body: u64,
    /// When this request's time for calls is spent.
    pub deadline: Instant,
}

/// A call ready to go: its request, and what sending it needs.
struct Prepared {
    gw: Arc<Gateway>,
    backend: Arc<Backend>,
    request: Request<Body>,
    timeout: Duration,
    max_body: u64,
    /// The call's span, when the request is traced.
    span: Option<crate::trace::ChildSpan>,
}

impl Calls {
    /// Resolves `grant` and builds the request, with `body` as its body.
    fn prepare(
        &self,
        grant: &str,
        req: OutboundRequest,
        body: Body,
    ) -> Result<Prepared, CallError> {
        let Some(g) = self.grants.0.iter().find(|g| g.name == grant) else {
            return Err(CallError::NotGranted);
        };
        let backend = g.backend.clone();
        if let Some(why) = &backend.invalid {
            return Err(CallError::Unavailable(why.clone()));
        }
        let timeout = g
            .timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            return Err(CallError::Timeout);
        }
        let Some(endpoint) = crate::proxy::next_endpoint(&backend).map(|e| e.authority.clone())
        else {
            return Err(CallError::Unavailable(format!(
                "{}: no ready endpoints",
                backend.name
            )));
        };
        let uri = backend
            .uri(endpoint.clone(), req.path)
            .map_err(|e| CallError::InvalidRequest(e.to_string()))?;
        let parent = req.span;
        let mut out = Request::new(body);
        *out.method_mut() = req.method;
        *out.uri_mut() = uri;
        *out.headers_mut() = req.headers;
        *out.version_mut() = backend.version();
        if !out.headers().contains_key(header::HOST)
            && let Ok(h) = HeaderValue::from_str(endpoint.as_str())
        {
            out.headers_mut().insert(header::HOST, h);
        }
        let span = match (&self.gw.tracing, parent) {
            (Some(t), Some(parent)) => {
                let method = out.method().clone();
                Some(t.outbound(parent, grant, &method, out.headers_mut()))
            }
            _ => None,
        };
        Ok(Prepared {
            gw: self.gw.clone(),
            backend,
            request: out,
            timeout,
            max_body: self.max_body,
            span,
        })
    }
}

/// Sends a prepared call and reads its answer, within its timeout.
async fn exchange(p: Prepared) -> Result<OutboundResponse, CallError> {
    exchange_with_trailers(p).await.map(|(r, _)| r)
}

/// [`exchange`], keeping the answer's trailers (gRPC's status is in them).
async fn exchange_with_trailers(
    p: Prepared,
) -> Result<(OutboundResponse, Option<http::HeaderMap>), CallError> {
    let Prepared {
        gw,
        backend,
        request,
        timeout,
        max_body,
        span,
    } = p;
    let start = Instant::now();
    let call = async {
        let resp = crate::proxy::send(&backend, request)
            .await
            .map_err(|e| CallError::Failed(describe(&e)))?;
        let (parts, body) = resp.into_parts();
        backend
            .stats
            .get(&gw.metrics)
            .record(parts.status.as_u16(), start.elapsed());
        match collect(Streamed::upstream(body), max_body).await {
            Collected::Whole { data, trailers } => Ok((
                OutboundResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: data,
                },
                trailers,
            )),
            Collected::TooLarge(_) => Err(CallError::ResponseTooLarge),
            Collected::Failed(e) => Err(CallError::Failed(e.to_string())),
        }
    };
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout),
    };
    if let Some(span) = span {
        span.end_call(match &result {
            Ok((r, _)) => Ok(r.status.as_u16()),
            Err(e) => Err(call_error_name(e)),
        });
    }
    result
}

/// A call error's kind, for its span.
fn call_error_name(e: &CallError) -> &'static str {
    match e {
        CallError::NotGranted => "not-granted",
        CallError::Unavailable(_) => "unavailable",
        CallError::Timeout => "timeout",
        CallError::Failed(_) => "failed",
        CallError::InvalidRequest(_) => "invalid-request",
        CallError::ResponseTooLarge => "response-too-large",
    }
}

impl Outbound for Calls {
    fn send(&self, grant: &str, mut req: OutboundRequest) -> CallFuture {
        let body = Either::Right(Buffered::new(std::mem::take(&mut req.body)));
        match self.prepare(grant, req, body) {
            Ok(p) => Box::pin(exchange(p)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn start(&self, grant: &str, mut req: OutboundRequest) -> Result<Box<dyn BodySink>, CallError> {
        // One frame waits at most: the filter's writes go at the backend's pace.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let first = std::mem::take(&mut req.body);
        if !first.is_empty() {
            // The channel is new and empty: this cannot fail.
            let _ = tx.try_send(Ok(Frame::data(first)));
        }
        let body = Either::Left(Streamed::filtered(Filtered::new(rx)));
        let p = self.prepare(grant, req, body)?;
        // Sent by a task of its own, so the body moves while the filter writes it.
        let answer = tokio::spawn(exchange(p));
        Ok(Box::new(Sink {
            tx: Some(tx),
            answer: Some(answer),
        }))
    }
}

/// A started call: where its body goes, and the task that sends it.
struct Sink {
    tx: Option<tokio::sync::mpsc::Sender<Frames>>,
    answer: Option<tokio::task::JoinHandle<Result<OutboundResponse, CallError>>>,
}

impl Sink {
    /// The call's outcome, once its task ended.
    async fn outcome(&mut self) -> Result<OutboundResponse, CallError> {
        match self.answer.take() {
            Some(task) => match task.await {
                Ok(r) => r,
                Err(_) => Err(CallError::Failed("the call was cancelled".into())),
            },
            None => Err(CallError::Failed("the call has ended".into())),
        }
    }
}

impl BodySink for Sink {
    fn write(&mut self, data: bytes::Bytes) -> WriteFuture<'_> {
        Box::pin(async move {
            let sent = match &self.tx {
                Some(tx) => tx.send(Ok(Frame::data(data))).await.is_ok(),
                None => false,
            };
            if sent {
                return Ok(());
            }
            // The request ended before its body did: its outcome says why.
            self.tx = None;
            match self.outcome().await {
                Ok(_) => Err(CallError::Failed(
                    "the backend answered before the body was sent".into(),
                )),
                Err(e) => Err(e),
            }
        })
    }

    fn finish(mut self: Box<Self>) -> CallFuture {
        // Closing the channel ends the body.
        self.tx = None;
        Box::pin(async move { self.outcome().await })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Not finished: the call is cancelled.
        if let Some(task) = self.answer.take() {
            task.abort();
        }
    }
}

/// The error and its causes, for the guest.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// An HTTPRoute `ExternalAuth` filter (HTTP protocol): each request is first sent to
/// the authorization service, with its method, the prefixed path, Host, Authorization,
/// `content-length: 0` and the allowed headers; a 200 lets it through with the allowed
/// headers of the answer, any other answer is sent to the client as it is, and a
/// service that cannot be reached fails closed (403).
pub(crate) struct ExternalAuth {
    pub backend: Arc<Backend>,
    /// The Envoy ext_authz gRPC protocol ([`authorize_grpc`]) instead of HTTP.
    pub grpc: bool,
    pub prefix: String,
    pub allowed: Vec<header::HeaderName>,
    /// Empty: every header of the 200 but the ones below.
    pub allowed_response: Vec<header::HeaderName>,
    /// `forwardBody.maxSize`: the request body goes to the service too, and a larger
    /// one is answered 413. 0: no body is sent.
    pub forward_body: u64,
}

/// The most an authorization request may take (bounded by the route's request timeout).
pub(crate) const EXTERNAL_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest denial body passed to the client; a larger one fails closed.
const EXTERNAL_AUTH_BODY: u64 = 64 << 10;

/// Headers of the service's answer that never reach the request or the client as they
/// are: its framing, hop-by-hop headers, and its host.
fn not_copied(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Headers that describe the service's answer itself (its body's type and encoding,
/// when and by what it was made): copied from a 200 only when
/// `allowedResponseHeaders` names them, so that they never replace the client's own
/// `content-type` or `date` on the request.
fn describes_answer(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "content-encoding"
            | "content-language"
            | "content-location"
            | "content-range"
            | "date"
            | "server"
    )
}

/// The answer when the authorization service cannot say: 403, fail closed.
fn auth_failed(a: &ExternalAuth, why: &str) -> http::Response<crate::Body> {
    tracing::debug!(service = %a.backend.name, why, "external authorization failed");
    crate::proxy::local(
        http::StatusCode::FORBIDDEN,
        "external authorization failed\n",
    )
}

/// The request body for the service when `forwardBody` asks for it (empty when it does
/// not), read whole and put back for the backend; else the answer for the client (413
/// above `forwardBody.maxSize`).
async fn forwarded_body(
    a: &ExternalAuth,
    req: &mut Request<Streamed>,
    deadline: Instant,
) -> Result<Bytes, http::Response<crate::Body>> {
    if a.forward_body == 0 {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout_at(deadline, peek_whole(req.body_mut(), a.forward_body)).await {
        Ok(Ok(Some(data))) => Ok(data),
        Ok(Ok(None)) => Err(crate::proxy::local(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than the route's external authorization accepts (its forwardBody.maxSize)\n",
        )),
        Ok(Err(e)) => Err(crate::proxy::body_failed(&*e)),
        Err(_) => Err(crate::proxy::local(
            http::StatusCode::GATEWAY_TIMEOUT,
            "the request body did not arrive within the route's timeout\n",
        )),
    }
}

/// The call to the authorization service: within [`EXTERNAL_AUTH_TIMEOUT`] and the
/// route's deadline, its answer's body at most [`EXTERNAL_AUTH_BODY`].
fn auth_call(
    gw: &Arc<Gateway>,
    a: &ExternalAuth,
    request: Request<Body>,
    deadline: Instant,
) -> Prepared {
    Prepared {
        gw: gw.clone(),
        backend: a.backend.clone(),
        request,
        timeout: EXTERNAL_AUTH_TIMEOUT.min(deadline.saturating_duration_since(Instant::now())),
        max_body: EXTERNAL_AUTH_BODY,
        span: None,
    }
}

/// An ext_authz header option's name, value and `append`, when both are valid and the
/// header may be copied.
fn option_header(
    o: &crate::ext_authz::HeaderValueOption,
) -> Option<(header::HeaderName, HeaderValue, bool)> {
    let hv = o.header.as_ref()?;
    let name = header::HeaderName::from_bytes(hv.key.as_bytes()).ok()?;
    let value = HeaderValue::from_bytes(hv.bytes()).ok()?;
    let append = o.append.as_ref().is_some_and(|b| b.value);
    (!not_copied(&name)).then_some((name, value, append))
}

/// The authorization service's next endpoint, or why there is none.
fn auth_endpoint(a: &ExternalAuth) -> Result<http::uri::Authority, &str> {
    if let Some(why) = &a.backend.invalid {
        return Err(why);
    }
    crate::proxy::next_endpoint(&a.backend)
        .map(|e| e.authority.clone())
        .ok_or("no ready endpoints")
}

/// Asks the service about `req`: `Ok` when it answered 200 (its allowed headers are set
/// on `req`), else the answer for the client.
pub(crate) async fn authorize(
    gw: &Arc<Gateway>,
    a: &ExternalAuth,
    req: &mut Request<Streamed>,
    deadline: Instant,
) -> Result<(), http::Response<crate::Body>> {
    let fail = |why: &str| auth_failed(a, why);
    let endpoint = auth_endpoint(a).map_err(fail)?;
    let body = forwarded_body(a, req, deadline).await?;
    let path = format!(
        "{}{}",
        a.prefix,
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let Ok(uri) = a.backend.uri(endpoint, path) else {
        return Err(fail("the authorization path is not valid"));
    };
    let length = HeaderValue::from(body.len());
    let mut out = Request::new(Either::Right(Buffered::new(body)));
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = uri;
    *out.version_mut() = a.backend.version();
    let headers = out.headers_mut();
    for name in [header::HOST, header::AUTHORIZATION]
        .iter()
        .chain(a.allowed.iter())
    {
        for v in req.headers().get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    // HTTP/2 carries the host in the URI.
    if !headers.contains_key(header::HOST)
        && let Some(h) = req
            .uri()
            .authority()
            .and_then(|h| HeaderValue::from_str(h.as_str()).ok())
    {
        headers.insert(header::HOST, h);
    }
    headers.insert(header::CONTENT_LENGTH, length);
    let answer = exchange(auth_call(gw, a, out, deadline)).await;
    let answer = match answer {
        Ok(r) => r,
        Err(e) => return Err(fail(&format!("{e:?}"))),
    };
    if answer.status == http::StatusCode::OK {
        for (name, v) in &answer.headers {
            let wanted = if a.allowed_response.is_empty() {
                !not_copied(name) && !describes_answer(name)
            } else {
                a.allowed_response.contains(name)
            };
            if wanted {
                req.headers_mut().insert(name.clone(), v.clone());
            }
        }
        return Ok(());
    }
    let mut deny = http::Response::new(Either::Right(Buffered::new(answer.body)));
    *deny.status_mut() = answer.status;
    for (name, v) in &answer.headers {
        if !not_copied(name) {
            deny.headers_mut().append(name.clone(), v.clone());
        }
    }
    Err(deny)
}

/// Where the request being authorized comes from, for the `CheckRequest`.
pub(crate) struct Asker {
    pub client: std::net::SocketAddr,
    pub scheme: &'static str,
}

/// Asks the service about `req` with the Envoy ext_authz gRPC protocol: a
/// `CheckRequest` with the request's method, path, host and headers (those in
/// `grpc.allowedHeaders`, or all when it is empty). A `CheckResponse` with status OK lets
/// it through with the `ok_response`'s headers set (or added, with `append`) and its
/// `headers_to_remove` removed; any other status answers the client with the
/// `denied_response` (its status, default 403, headers and body). A service that cannot
/// be reached, fails the call or answers something else fails closed (403).
pub(crate) async fn authorize_grpc(
    gw: &Arc<Gateway>,
    a: &ExternalAuth,
    req: &mut Request<Streamed>,
    from: Asker,
    deadline: Instant,
) -> Result<(), http::Response<crate::Body>> {
    use crate::ext_authz as pb;
    let fail = |why: &str| auth_failed(a, why);
    let endpoint = auth_endpoint(a).map_err(fail)?;
    let data = forwarded_body(a, req, deadline).await?;
    // Envoy's default: the body as a string; bytes that are not UTF-8 go as raw_body.
    let (body, raw_body) = match std::str::from_utf8(&data) {
        Ok(text) => (text.to_string(), Bytes::new()),
        Err(_) => (String::new(), data),
    };
    let mut headers: std::collections::HashMap<String, String> = Default::default();
    for (name, v) in req.headers() {
        if !a.allowed.is_empty() && !a.allowed.contains(name) {
            continue;
        }
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|all| {
                all.push(',');
                all.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = req
        .uri()
        .authority()
        .map(|h| h.as_str().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?;
            Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let check = pb::CheckRequest {
        attributes: Some(pb::AttributeContext {
            source: Some(pb::Peer {
                address: Some(pb::Address {
                    socket_address: Some(pb::SocketAddress {
                        address: from.client.ip().to_string(),
                        port_value: u32::from(from.client.port()),
                    }),
                }),
            }),
            destination: None,
            request: Some(pb::AttributeRequest {
                http: Some(pb::HttpRequest {
                    id: String::new(),
                    method: req.method().as_str().to_string(),
                    headers,
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string(),
                    host,
                    scheme: from.scheme.to_string(),
                    query: req.uri().query().unwrap_or_default().to_string(),
                    size: hyper::body::Body::size_hint(req.body())
                        .exact()
                        .and_then(|n| i64::try_from(n).ok())
                        .unwrap_or(-1),
                    protocol: format!("{:?}", req.version()),
                    body,
                    raw_body,
                }),
            }),
        }),
    };
    let Ok(uri) = a.backend.uri(endpoint, pb::CHECK_PATH) else {
        return Err(fail("the authorization service's address is not valid"));
    };
    let mut out = Request::new(Either::Right(Buffered::new(pb::frame(&check))));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = uri;
    *out.version_mut() = http::Version::HTTP_2;
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    let (answer, trailers) = match exchange_with_trailers(auth_call(gw, a, out, deadline)).await {
        Ok(r) => r,
        Err(e) => return Err(fail(&format!("{e:?}"))),
    };
    // The call's own status: in the trailers, or in the headers of an answer that has
    // no body ("trailers only").
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| answer.headers.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    if answer.status != http::StatusCode::OK || grpc_status.as_deref() != Some(b"0") {
        return Err(fail(&format!(
            "the Check call failed: HTTP {}, grpc-status {:?}",
            answer.status,
            grpc_status.map(|s| String::from_utf8_lossy(&s).into_owned())
        )));
    }
    let check = match pb::unframe(&answer.body) {
        Ok(c) => c,
        Err(why) => return Err(fail(&why)),
    };
    if check.status.as_ref().map_or(0, |s| s.code) == 0 {
        if let Some(ok) = check.ok_response {
            let h = req.headers_mut();
            for name in &ok.headers_to_remove {
                if let Ok(name) = header::HeaderName::from_bytes(name.as_bytes())
                    && name != header::HOST
                {
                    h.remove(name);
                }
            }
            for (name, v, append) in ok.headers.iter().filter_map(option_header) {
                if append {
                    h.append(name, v);
                } else {
                    h.insert(name, v);
                }
            }
        }
        return Ok(());
    }
    let denied = check.denied_response.unwrap_or_default();
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .filter(|c| c.as_u16() >= 200)
        .unwrap_or(http::StatusCode::FORBIDDEN);
    let mut deny = http::Response::new(Either::Right(Buffered::new(bytes::Bytes::from(
        denied.body,
    ))));
    *deny.status_mut() = status;
    for (name, v, _) in denied.headers.iter().filter_map(option_header) {
        deny.headers_mut().append(name, v);
    }
    Err(deny)
}
