//! One request, start to end: route, filter, forward, filter the response, count.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use sluice_ir::{PathRewriteIr, RedirectIr};

use crate::access_log::{self, AccessLog, FilterOutcome, Record};
use crate::body::{Buffered, Collected, StreamFilterFailed, collect};
use crate::client::{BodyTooSlow, ConnectionLimits, InFlight, Streamed, Tracked};
use crate::cors::Cors;
use crate::metrics::Stats;
use crate::snapshot::{Backend, Endpoint, Filter, HeaderMod, Rule, Snapshot, WasmFilter};
use crate::{Body, Gateway};
use sluice_wasm::{BodyEvent, BodyMode, BodyOutcome, Direction, FilterError, RequestOutcome};

/// Mirrored requests are buffered so both copies can be sent; larger bodies get 413.
const MIRROR_BODY_LIMIT: u64 = 16 << 20;

pub(crate) struct ConnInfo {
    /// The configured socket (`0.0.0.0:80`), which names the port in the snapshot.
    pub key: SocketAddr,
    pub remote: SocketAddr,
    /// `remote`'s IP as a header value, made once per connection for X-Forwarded-For.
    pub remote_ip: HeaderValue,
    /// Set when the gateway terminated TLS: the SNI the client sent, lowercase, if any.
    pub tls: Option<Tls>,
    /// The listener's limits; request bodies are held to its body timeout and rate.
    pub limits: ConnectionLimits,
}

pub(crate) struct Tls {
    pub sni: Option<String>,
}

impl ConnInfo {
    pub fn new(
        key: SocketAddr,
        remote: SocketAddr,
        tls: Option<Tls>,
        limits: ConnectionLimits,
    ) -> Self {
        let remote_ip = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            key,
            remote,
            remote_ip,
            tls,
            limits,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What a request came in on, for redirects: its host, the listener's port, the scheme.
struct Origin<'a> {
    host: &'a str,
    port: u16,
    scheme: &'static str,
}

/// Answers one request. The response's body keeps the request counted in
/// `in_flight` until it is sent, and writes its access log line then. This future is
/// the connection's service future itself: a wrapper around it would copy its state
/// (some 4.3 KB) once more per request when first polled. A plain `fn` returning its
/// future, as `serve`: an `async fn` holds its arguments twice in its state.
#[allow(clippy::manual_async_fn)]
pub(crate) fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> impl Future<Output = Result<Response<Tracked>, Infallible>> {
    async move {
        let start = Instant::now();
        let snap = gw.snapshot.load_full();
        let http2 = req.version() == Version::HTTP_2;
        // A record when this request gets an access log line, or when tracing is on.
        let log = gw.access_log.as_ref().filter(|l| l.sampled());
        let mut record = (log.is_some() || gw.tracing.is_some()).then(|| {
            Box::new(Record::new(
                log.cloned(),
                gw.tracing.as_ref(),
                &conn,
                &req,
                start,
            ))
        });
        let (mut resp, stats) = serve(&gw, &snap, &conn, req, start, &mut record).await;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            *resp.version_mut() = Version::HTTP_11;
            // Draining: the client learns from this answer to take its next request
            // elsewhere, instead of finding its kept-alive connection cut.
            if !http2 && gw.draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        stats.record(resp.status().as_u16(), start.elapsed());
        if let Some(r) = record.as_mut() {
            r.status = resp.status().as_u16();
            r.stats = Some(stats);
        }
        Ok(resp.map(|b| Tracked::new(b, in_flight, record)))
    }
}

impl Record {
    fn new(
        log: Option<Arc<AccessLog>>,
        tracing: Option<&Arc<crate::trace::Tracing>>,
        conn: &ConnInfo,
        req: &Request<Incoming>,
        start: Instant,
    ) -> Self {
        let trace = tracing.map(|t| t.request(req.headers(), req.method()));
        Record {
            log,
            time: std::time::SystemTime::now(),
            start,
            listener: conn.key,
            remote: conn.remote,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            version: req.version(),
            status: 0,
            stats: None,
            endpoint: None,
            bytes_in: None,
            upstream: None,
            filters: Vec::new(),
            trace_id: match &trace {
                Some(span) => Some(span.trace_id()),
                None => req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| access_log::trace_id(v.as_bytes())),
            },
            trace,
        }
    }
}

/// Notes a Wasm filter's outcome in the request's access log line, if it has one.
fn note(record: &mut Option<Box<Record>>, w: &WasmFilter, outcome: FilterOutcome) {
    if let Some(r) = record {
        r.filters.push((w.pool.clone(), outcome));
    }
}

/// Starts the span of `w`'s `hook` when the request is traced, and points `context`
/// at it (the hook's outbound calls become its children).
fn hook_span(
    record: &Option<Box<Record>>,
    w: &WasmFilter,
    hook: &'static str,
    context: &mut sluice_wasm::Context,
) -> Option<crate::trace::ChildSpan> {
    record
        .as_ref()?
        .trace
        .as_ref()?
        .filter(w.pool.name(), hook, context)
}

/// Ends a hook's span: what the filter did, or why it failed.
fn hook_done(span: Option<crate::trace::ChildSpan>, outcome: Result<&'static str, &FilterError>) {
    if let Some(s) = span {
        match outcome {
            Ok(what) => s.end(what, false),
            Err(e) => s.end(e.kind.as_str(), true),
        }
    }
}

/// What a body hook did, for its span.
fn body_outcome(o: &Result<BodyOutcome, FilterError>) -> Result<&'static str, &FilterError> {
    match o {
        Ok(BodyOutcome::Continue) => Ok("continue"),
        Ok(BodyOutcome::Replace(_)) => Ok("replace"),
        Ok(BodyOutcome::Respond { .. }) => Ok("respond"),
        Err(e) => Err(e),
    }
}

/// A response the gateway makes itself.
fn answer(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Either::Right(Buffered::new(body)));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A short plain-text answer (errors, 404).
pub(crate) fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer(status, headers, Bytes::from_static(body.as_bytes()))
}

/// The request's host, lowercase, without port: `:authority` for HTTP/2, else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = if raw.starts_with('[') {
        // [v6]:port
        &raw[..raw.find(']').map_or(raw.len(), |i| i + 1)]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

#[allow(clippy::manual_async_fn)]
fn serve<'a>(
    gw: &'a Arc<Gateway>,
    snap: &'a Snapshot,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    start: Instant,
    record: &'a mut Option<Box<Record>>,
) -> impl Future<Output = (Response<Body>, Arc<Stats>)> + 'a {
    async move {
        let no_route = || {
            (
                local(StatusCode::NOT_FOUND, "no route matched\n"),
                snap.no_route.clone(),
            )
        };
        let Some(port) = snap.port(&conn.key) else {
            return no_route();
        };
        if let Some(why) = host_problem(&req) {
            return (local(StatusCode::BAD_REQUEST, why), snap.no_route.clone());
        }
        let host = request_host(&req).unwrap_or_default();
        let Some(listener) = port.listeners.get(&host) else {
            return no_route();
        };
        // A connection belongs to the listener its SNI chose. A request for a host of
        // another listener (a browser reusing a connection for a name the certificate also
        // covers) is sent back to open its own connection.
        if let Some(Tls { sni: Some(sni) }) = &conn.tls
            && !port
                .listeners
                .get(sni)
                .is_some_and(|by_sni| std::ptr::eq(by_sni, listener))
        {
            return (
                local(
                    StatusCode::MISDIRECTED_REQUEST,
                    "this connection's TLS server name belongs to another listener\n",
                ),
                snap.no_route.clone(),
            );
        }
        let origin = Origin {
            host: &host,
            port: listener.port,
            scheme: conn.scheme(),
        };
        let Some(router) = listener.vhosts.get(&host) else {
            return no_route();
        };
        // Routes and filters see the normalised path, and so does the backend: a path
        // spelled another way (`/a/../raw`, `/%72aw`, `//raw`) cannot slip past a rule.
        if let std::borrow::Cow::Owned(p) = normalize_path(req.uri().path()) {
            set_path(&mut req, &p);
        }
        let rule = {
            let uri = req.uri();
            match router.find(uri.path(), req.method(), req.headers(), uri.query()) {
                Some(r) => r.clone(),
                None => return no_route(),
            }
        };
        if let Some(why) = &rule.invalid {
            tracing::debug!(rule = %rule.id, why, "rule cannot be served");
            return (
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "route rule is not valid; see the route's status\n",
                ),
                rule.local_stats.get(&gw.metrics).clone(),
            );
        }

        // The body, held to the connection's body timeout and rate from here on (an
        // ExternalAuth filter with forwardBody reads it before the backend does).
        let mut req = req.map(|b| Streamed::client(b, &conn.limits));
        if let Some(r) = record.as_mut() {
            r.bytes_in = Some(req.body_mut().count_bytes());
        }
        // Request filters, in order: the rule's, then the chosen backend's.
        let mut st = FilterRun::default();
        // What this request's Wasm filters may call, and until when.
        let scope = CallScope {
            gw,
            client: conn.remote,
            deadline: tokio::time::Instant::from_std(start)
                + rule
                    .request_timeout
                    .unwrap_or(crate::outbound::CALLS_WITHOUT_ROUTE_TIMEOUT),
        };
        // The filter stages are boxed, and only entered when there is work for them: what
        // they hold across an await (Wasm calls, buffered bodies) would otherwise be part of
        // every request's future, which is moved several times on its way into hyper.
        if let Some(resp) =
            boxed_request_filters(&rule.filters, &mut req, &mut st, &origin, &scope, record).await
        {
            return (resp, rule.local_stats.get(&gw.metrics).clone());
        }
        let Some(backend) = pick_backend(&rule) else {
            return (
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no backend with a weight above zero\n",
                ),
                rule.local_stats.get(&gw.metrics).clone(),
            );
        };
        if backend.invalid.is_some() {
            return (
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backend is not valid; see the route's status\n",
                ),
                backend.stats.get(&gw.metrics).clone(),
            );
        }
        if let Some(resp) =
            boxed_request_filters(&backend.filters, &mut req, &mut st, &origin, &scope, record)
                .await
        {
            return (resp, backend.stats.get(&gw.metrics).clone());
        }
        let FilterRun {
            mut steps,
            cors,
            mirrors,
            new_host,
        } = st;

        let upgrade = is_websocket_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let body = if !wants_body(&steps, Direction::Request) {
            Either::Left(body)
        } else {
            match Box::pin(request_bodies(
                &mut steps,
                &mut parts,
                body,
                upgrade.is_some(),
                record,
            ))
            .await
            {
                Ok(b) => b,
                Err(resp) => return (resp, backend.stats.get(&gw.metrics).clone()),
            }
        };
        let upgrade_value = upgrade
            .as_ref()
            .and_then(|_| parts.headers.get(header::UPGRADE).cloned());
        strip_hop_by_hop(&mut parts.headers);
        if let Some(v) = upgrade_value {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, v);
        }
        let host_value = match &new_host {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| parts.headers.get(header::HOST).cloned()),
        };
        if let Some(h) = host_value {
            parts.headers.insert(header::HOST, h);
        }
        forwarded_headers(&mut parts.headers, conn);
        if let Some(span) = record.as_ref().and_then(|r| r.trace.as_ref()) {
            span.propagate(&mut parts.headers);
        }

        let body: Body = match body {
            body if mirrors.is_empty() => body,
            Either::Right(held) => {
                let bytes = held.data();
                for m in mirrors {
                    send_mirror(gw, m, &parts, bytes.clone());
                }
                Either::Right(held)
            }
            Either::Left(streamed) => match Box::pin(collect(streamed, MIRROR_BODY_LIMIT)).await {
                Collected::Whole { data, trailers } => {
                    for m in mirrors {
                        send_mirror(gw, m, &parts, data.clone());
                    }
                    Either::Right(Buffered::with_trailers(data, trailers))
                }
                Collected::TooLarge(_) => {
                    return (
                        local(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large to mirror\n",
                        ),
                        backend.stats.get(&gw.metrics).clone(),
                    );
                }
                Collected::Failed(e) => {
                    return (body_failed(&*e), backend.stats.get(&gw.metrics).clone());
                }
            },
        };

        let head = parts.method == http::Method::HEAD;
        // Read only for the access log and traces: a clock read per request otherwise.
        let sent = record.is_some().then(Instant::now);
        let result = match &rule.retry {
            // An upgrade's body is the connection: it is never sent twice.
            Some(retry) if upgrade.is_none() => {
                match Box::pin(retry_body(body, &parts.headers)).await {
                    Ok((_, Some(again))) => {
                        Box::pin(with_retries(
                            gw, &rule, backend, retry, parts, again, start, record,
                        ))
                        .await
                    }
                    Ok((body, None)) => attempt(&rule, backend, parts, body, start, record).await,
                    Err(resp) => Attempt::Local(resp),
                }
            }
            _ => attempt(&rule, backend, parts, body, start, record).await,
        };
        if let (Some(r), Some(sent)) = (record.as_mut(), sent) {
            r.upstream = Some(sent.elapsed());
        }
        let mut resp = match result.answer(backend) {
            Ok(r) => r,
            Err(local) => return (local, backend.stats.get(&gw.metrics).clone()),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(server_side) = upgrade {
                let client_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(a), Ok(b)) = (server_side.await, client_side.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(a),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                });
            }
        } else {
            strip_hop_by_hop(resp.headers_mut());
        }
        let (mut parts, body) = resp.into_parts();
        let body = if steps.is_empty() {
            Either::Left(body)
        } else {
            let bodies = parts.status != StatusCode::SWITCHING_PROTOCOLS && !head;
            match Box::pin(response_side(&mut steps, &mut parts, body, bodies, record)).await {
                Ok(b) => b,
                Err(resp) => return (resp, backend.stats.get(&gw.metrics).clone()),
            }
        };
        if let Some((c, origin)) = cors {
            c.decorate(origin.as_ref(), &mut parts.headers);
        }
        (
            Response::from_parts(parts, body),
            backend.stats.get(&gw.metrics).clone(),
        )
    }
}

/// What a request's Wasm filters may call out to: the gateway's upstreams, until the
/// request's time for calls is spent.
struct CallScope<'a> {
    gw: &'a Arc<Gateway>,
    /// The address the request's connection comes from (the 0.2 `connection.client`).
    client: SocketAddr,
    deadline: tokio::time::Instant,
}

impl CallScope<'_> {
    /// A filter's context for this request: the client's address, and its outbound
    /// grants if it has any (one allocation then; none for a filter without grants).
    fn context(&self, w: &WasmFilter) -> sluice_wasm::Context {
        let cx = match &w.grants {
            Some(grants) => sluice_wasm::Context::with_outbound(Arc::new(crate::outbound::Calls {
                gw: self.gw.clone(),
                grants: grants.clone(),
                max_body: w.max_body_bytes,
                deadline: self.deadline,
            })),
            None => sluice_wasm::Context::default(),
        };
        cx.with_client(self.client)
    }
}

/// What the request filters leave for later: response work, CORS, mirrors, a new host.
#[derive(Default)]
struct FilterRun<'a> {
    steps: Vec<ResponseStep<'a>>,
    cors: Option<(&'a Cors, Option<HeaderValue>)>,
    mirrors: Vec<&'a Arc<Backend>>,
    new_host: Option<String>,
}

/// A filter that also acts on the response; they run in reverse order. A Wasm filter
/// carries what it keeps for this request (its 0.2 context) from `on-request` on.
enum ResponseStep<'a> {
    Headers(&'a HeaderMod),
    Wasm(&'a WasmFilter, sluice_wasm::Context),
}

fn filter_failed() -> Response<Body> {
    local(StatusCode::INTERNAL_SERVER_ERROR, "a filter failed\n")
}

/// [`request_filters`] on the heap, and not entered at all for an empty list: the
/// request's own future then holds a pointer, not the filters' state.
async fn boxed_request_filters<'a>(
    filters: &'a [Filter],
    req: &mut Request<Streamed>,
    st: &mut FilterRun<'a>,
    origin: &Origin<'_>,
    scope: &CallScope<'_>,
    record: &mut Option<Box<Record>>,
) -> Option<Response<Body>> {
    if filters.is_empty() {
        return None;
    }
    Box::pin(request_filters(filters, req, st, origin, scope, record)).await
}

/// Runs one filter list on the request, in order. Returns the response when a filter
/// answers (a redirect, a CORS preflight, a Wasm filter's direct response or failure).
async fn request_filters<'a>(
    filters: &'a [Filter],
    req: &mut Request<Streamed>,
    st: &mut FilterRun<'a>,
    origin: &Origin<'_>,
    scope: &CallScope<'_>,
    record: &mut Option<Box<Record>>,
) -> Option<Response<Body>> {
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaders(m) => st.steps.push(ResponseStep::Headers(m)),
            Filter::Redirect(r) => return Some(redirect(r, req, origin)),
            Filter::Rewrite(r) => {
                if let Some(h) = &r.hostname {
                    st.new_host = Some(h.clone());
                }
                if let Some(p) = &r.path {
                    let path = rewrite_path(p, req.uri().path());
                    set_path(req, &path);
                }
            }
            Filter::Mirror {
                backend,
                numerator,
                denominator,
            } => {
                if *numerator >= *denominator || fastrand::u32(0..*denominator) < *numerator {
                    st.mirrors.push(backend);
                }
            }
            Filter::ExternalAuth(a) => {
                let asked = if a.grpc {
                    let from = crate::outbound::Asker {
                        client: scope.client,
                        scheme: origin.scheme,
                    };
                    crate::outbound::authorize_grpc(scope.gw, a, req, from, scope.deadline).await
                } else {
                    crate::outbound::authorize(scope.gw, a, req, scope.deadline).await
                };
                if let Err(answer) = asked {
                    return Some(answer);
                }
            }
            Filter::Cors(c) => {
                if Cors::is_preflight(req.method(), req.headers()) {
                    return Some(answer(
                        StatusCode::OK,
                        c.preflight(req.headers()),
                        Bytes::new(),
                    ));
                }
                st.cors = Some((c, req.headers().get(header::ORIGIN).cloned()));
            }
            Filter::Wasm(w) => {
                // The pieces move into the filter's store for the call and back.
                let mut method = std::mem::replace(req.method_mut(), http::Method::GET);
                let mut uri = std::mem::take(req.uri_mut());
                let mut headers = std::mem::take(req.headers_mut());
                let mut context = scope.context(w);
                let span = hook_span(record, w, "on-request", &mut context);
                let outcome = w
                    .pool
                    .on_request(&mut method, &mut uri, &mut headers, &mut context)
                    .await;
                hook_done(
                    span,
                    match &outcome {
                        Ok(RequestOutcome::Continue) => Ok("continue"),
                        Ok(RequestOutcome::Respond { .. }) => Ok("respond"),
                        Err(e) => Err(e),
                    },
                );
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                match outcome {
                    Ok(RequestOutcome::Continue) => {
                        note(record, w, FilterOutcome::Continue);
                        st.steps.push(ResponseStep::Wasm(w, context));
                    }
                    Ok(RequestOutcome::Respond {
                        mut status,
                        mut headers,
                        body,
                    }) => {
                        note(record, w, FilterOutcome::Respond);
                        // The answer goes back through the response work of the
                        // filters that ran before this one.
                        if !response_filters(&mut st.steps, &mut status, &mut headers, record).await
                        {
                            return Some(filter_failed());
                        }
                        return Some(answer(status, headers, Bytes::from(body)));
                    }
                    Err(e) if w.fail_open => {
                        note(record, w, FilterOutcome::Skipped(e.kind));
                        w.pool.stats().skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        note(record, w, FilterOutcome::Failed(e.kind));
                        return Some(filter_failed());
                    }
                }
            }
        }
    }
    None
}

/// The request body through the filters that asked for it: whole, then streamed.
async fn request_bodies(
    steps: &mut Vec<ResponseStep<'_>>,
    parts: &mut http::request::Parts,
    body: Streamed,
    upgrade: bool,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let body = request_body_filters(steps, parts, body, upgrade, record).await?;
    request_stream_filters(steps, parts, body, upgrade, record).await
}

/// The response through the filters that ran on the request: their `on-response`,
/// then, when the response has a body to filter (`bodies`: not an upgrade or the
/// answer to HEAD) and a filter asked for it, the body hooks.
async fn response_side(
    steps: &mut [ResponseStep<'_>],
    parts: &mut http::response::Parts,
    body: Streamed,
    bodies: bool,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    if !response_filters(steps, &mut parts.status, &mut parts.headers, record).await {
        return Err(filter_failed());
    }
    if !bodies || !wants_body(steps, Direction::Response) {
        return Ok(Either::Left(body));
    }
    Box::pin(response_bodies(steps, parts, body, record)).await
}

/// The response body through the filters that asked for it: whole, then streamed.
async fn response_bodies(
    steps: &mut [ResponseStep<'_>],
    parts: &mut http::response::Parts,
    body: Streamed,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let body = response_body_filters(steps, parts, body, record).await?;
    response_stream_filters(steps, parts, body, record).await
}

/// Whether a Wasm filter among `steps` asked for `direction`'s body, buffered or
/// streamed. When none did, the body hooks are not entered at all: their state (the
/// body hook calls' futures) would be moved onto the heap for nothing.
fn wants_body(steps: &[ResponseStep<'_>], direction: Direction) -> bool {
    steps.iter().any(|s| match s {
        ResponseStep::Wasm(w, _) => body_mode(w, direction) != BodyMode::None,
        ResponseStep::Headers(_) => false,
    })
}

/// Runs the response side of the filters that ran on the request, last first.
/// Returns false when a FailClosed Wasm filter failed.
async fn response_filters(
    steps: &mut [ResponseStep<'_>],
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    record: &mut Option<Box<Record>>,
) -> bool {
    for step in steps.iter_mut().rev() {
        match step {
            ResponseStep::Headers(m) => m.apply(headers),
            ResponseStep::Wasm(w, context) => {
                let span = hook_span(record, w, "on-response", context);
                let result = w.pool.on_response(status, headers, context).await;
                hook_done(span, result.as_ref().map(|()| "continue"));
                if let Err(e) = result {
                    if w.fail_open {
                        note(record, w, FilterOutcome::Skipped(e.kind));
                        w.pool.stats().skipped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        note(record, w, FilterOutcome::Failed(e.kind));
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Whether a message's body is a stream that is never buffered: gRPC (whose messages
/// may never end) or an upgraded connection.
fn is_stream(headers: &HeaderMap, upgrade: bool) -> bool {
    upgrade
        || headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer when the client's body could not be read: too slow (408) or broken (400).
pub(crate) fn body_failed(e: &(dyn std::error::Error + 'static)) -> Response<Body> {
    if causes(e).any(|c| c.is::<BodyTooSlow>()) {
        local(
            StatusCode::REQUEST_TIMEOUT,
            "the request body arrived too slowly\n",
        )
    } else {
        local(
            StatusCode::BAD_REQUEST,
            "the request body could not be read\n",
        )
    }
}

/// The Wasm filters among `steps` that asked for `direction`'s body in `mode`, by
/// index.
fn asking(steps: &[ResponseStep<'_>], direction: Direction, mode: BodyMode) -> Vec<usize> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            ResponseStep::Wasm(w, _) if body_mode(w, direction) == mode => Some(i),
            _ => None,
        })
        .collect()
}

/// How `w` asked for `direction`'s body (`configure`).
fn body_mode(w: &WasmFilter, direction: Direction) -> BodyMode {
    let n = w.pool.needs();
    match direction {
        Direction::Request => n.request_body,
        Direction::Response => n.response_body,
    }
}

/// A body too large for the filters at `indices` (all that asked for it, or one):
/// each is noted and counted, and skipped if FailOpen. Returns false if one of them is
/// FailClosed, and the request must fail.
fn too_large_for(
    steps: &[ResponseStep<'_>],
    wanting: &[usize],
    direction: Direction,
    record: &mut Option<Box<Record>>,
) -> bool {
    let mut all_open = true;
    for &i in wanting {
        if let ResponseStep::Wasm(w, _) = &steps[i] {
            w.pool.stats().body(direction, BodyEvent::TooLarge);
            note(
                record,
                w,
                FilterOutcome::BodyTooLarge {
                    skipped: w.fail_open,
                },
            );
            all_open &= w.fail_open;
        }
    }
    all_open
}

/// The Wasm filters among `steps` at `indices`.
fn wasm_at<'s>(
    steps: &'s [ResponseStep<'_>],
    indices: &'s [usize],
) -> impl Iterator<Item = &'s WasmFilter> + 's {
    indices.iter().filter_map(|&i| match &steps[i] {
        ResponseStep::Wasm(w, _) => Some(&**w),
        _ => None,
    })
}

/// Sets the framing of a body now held whole: its length, and no chunking.
fn held_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

fn request_too_large() -> Response<Body> {
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than a filter on this route accepts (its limits.maxBodyBytes)\n",
    )
}

fn response_too_large() -> Response<Body> {
    local(
        StatusCode::BAD_GATEWAY,
        "the response body is larger than a filter on this route accepts (its limits.maxBodyBytes)\n",
    )
}

/// Runs `on-request-body` of the filters that asked for the request body whole, in
/// route order, once every `on-request` has continued. With none, the body streams on
/// untouched (no copy, no allocation). A filter's direct answer goes back through the
/// response work of the filters before it.
async fn request_body_filters(
    steps: &mut Vec<ResponseStep<'_>>,
    parts: &mut http::request::Parts,
    body: Streamed,
    upgrade: bool,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let wanting = asking(steps, Direction::Request, BodyMode::Buffered);
    if wanting.is_empty() || body.is_end_stream() {
        return Ok(Either::Left(body));
    }
    if is_stream(&parts.headers, upgrade) {
        for w in wasm_at(steps, &wanting) {
            w.pool.stats().body(Direction::Request, BodyEvent::Streamed);
        }
        return Ok(Either::Left(body));
    }
    let limit = wasm_at(steps, &wanting)
        .map(|w| w.max_body_bytes)
        .max()
        .unwrap_or(0);
    let (mut data, trailers) = match collect(body, limit).await {
        Collected::Whole { data, trailers } => (data, trailers),
        Collected::Failed(e) => return Err(body_failed(&*e)),
        Collected::TooLarge(rest) => {
            return if too_large_for(steps, &wanting, Direction::Request, record) {
                Ok(Either::Left(rest))
            } else {
                Err(request_too_large())
            };
        }
    };
    for &i in &wanting {
        let ResponseStep::Wasm(w, context) = &mut steps[i] else {
            continue;
        };
        let w: &WasmFilter = w;
        if data.len() as u64 > w.max_body_bytes {
            if too_large_for(steps, &[i], Direction::Request, record) {
                continue;
            }
            return Err(request_too_large());
        }
        w.pool.stats().body(Direction::Request, BodyEvent::Buffered);
        let span = hook_span(record, w, "on-request-body", context);
        let outcome = w
            .pool
            .on_request_body(
                &mut parts.method,
                &mut parts.uri,
                &mut parts.headers,
                context,
                data.clone(),
            )
            .await;
        hook_done(span, body_outcome(&outcome));
        match outcome {
            Ok(BodyOutcome::Continue) => {}
            Ok(BodyOutcome::Replace(b)) => data = Bytes::from(b),
            Ok(BodyOutcome::Respond {
                mut status,
                mut headers,
                body,
            }) => {
                note(record, w, FilterOutcome::Respond);
                steps.truncate(i);
                if !response_filters(steps, &mut status, &mut headers, record).await {
                    return Err(filter_failed());
                }
                return Err(answer(status, headers, Bytes::from(body)));
            }
            Err(e) if w.fail_open => {
                note(record, w, FilterOutcome::Skipped(e.kind));
                w.pool.stats().skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                note(record, w, FilterOutcome::Failed(e.kind));
                return Err(filter_failed());
            }
        }
    }
    held_length(&mut parts.headers, data.len());
    Ok(Either::Right(Buffered::with_trailers(data, trailers)))
}

/// A response with this status has no body (RFC 9110 6.4.1): body filters skip it.
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Runs `on-response-body` of the filters that asked for the response body whole, in
/// reverse route order, after every `on-response`. With none, the body streams on.
async fn response_body_filters(
    steps: &mut [ResponseStep<'_>],
    parts: &mut http::response::Parts,
    body: Streamed,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let wanting = asking(steps, Direction::Response, BodyMode::Buffered);
    if wanting.is_empty() || bodiless(parts.status) || body.is_end_stream() {
        return Ok(Either::Left(body));
    }
    if is_stream(&parts.headers, false) {
        for w in wasm_at(steps, &wanting) {
            w.pool
                .stats()
                .body(Direction::Response, BodyEvent::Streamed);
        }
        return Ok(Either::Left(body));
    }
    let limit = wasm_at(steps, &wanting)
        .map(|w| w.max_body_bytes)
        .max()
        .unwrap_or(0);
    let (mut data, trailers) = match collect(body, limit).await {
        Collected::Whole { data, trailers } => (data, trailers),
        Collected::Failed(e) => {
            tracing::debug!(error = %e, "upstream response body failed");
            return Err(local(StatusCode::BAD_GATEWAY, "upstream response failed\n"));
        }
        Collected::TooLarge(rest) => {
            return if too_large_for(steps, &wanting, Direction::Response, record) {
                Ok(Either::Left(rest))
            } else {
                Err(response_too_large())
            };
        }
    };
    for &i in wanting.iter().rev() {
        let ResponseStep::Wasm(w, context) = &mut steps[i] else {
            continue;
        };
        let w: &WasmFilter = w;
        if data.len() as u64 > w.max_body_bytes {
            if too_large_for(steps, &[i], Direction::Response, record) {
                continue;
            }
            return Err(response_too_large());
        }
        w.pool
            .stats()
            .body(Direction::Response, BodyEvent::Buffered);
        let span = hook_span(record, w, "on-response-body", context);
        let outcome = w
            .pool
            .on_response_body(&mut parts.status, &mut parts.headers, context, data.clone())
            .await;
        hook_done(span, body_outcome(&outcome));
        match outcome {
            Ok(BodyOutcome::Continue) => {}
            Ok(BodyOutcome::Replace(b)) => data = Bytes::from(b),
            Ok(BodyOutcome::Respond {
                status,
                headers,
                body,
            }) => {
                note(record, w, FilterOutcome::Respond);
                parts.status = status;
                parts.headers = headers;
                data = Bytes::from(body);
            }
            Err(e) if w.fail_open => {
                note(record, w, FilterOutcome::Skipped(e.kind));
                w.pool.stats().skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                note(record, w, FilterOutcome::Failed(e.kind));
                return Err(filter_failed());
            }
        }
    }
    held_length(&mut parts.headers, data.len());
    Ok(Either::Right(Buffered::with_trailers(data, trailers)))
}

/// Starts the streams of the filters that asked for the request body streamed, in
/// route order, once the buffered body hooks are done; each may still change the
/// request's head. The body then passes through them chunk by chunk on its way to the
/// backend. An upgrade's body is the connection itself: not streamed through filters.
async fn request_stream_filters(
    steps: &[ResponseStep<'_>],
    parts: &mut http::request::Parts,
    body: Body,
    upgrade: bool,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let wanting = asking(steps, Direction::Request, BodyMode::Streamed);
    if wanting.is_empty() || upgrade || body.is_end_stream() {
        return Ok(body);
    }
    let mut stages = Vec::with_capacity(wanting.len());
    for &i in &wanting {
        let ResponseStep::Wasm(w, context) = &steps[i] else {
            continue;
        };
        let mut context = context.clone();
        let span = hook_span(record, w, "on-request-stream-start", &mut context);
        let started = w
            .pool
            .request_stream(
                &mut parts.method,
                &mut parts.uri,
                &mut parts.headers,
                context,
            )
            .await;
        hook_done(span, started.as_ref().map(|_| "continue"));
        stages.extend(stage(w, started, Direction::Request, record).map_err(|()| filter_failed())?);
    }
    Ok(match stages.is_empty() {
        true => body,
        false => Either::Left(crate::body::filter(body, stages)),
    })
}

/// Starts the streams of the filters that asked for the response body streamed, in
/// reverse route order, after the buffered body hooks; each may still change the
/// status and headers.
async fn response_stream_filters(
    steps: &mut [ResponseStep<'_>],
    parts: &mut http::response::Parts,
    body: Body,
    record: &mut Option<Box<Record>>,
) -> Result<Body, Response<Body>> {
    let wanting = asking(steps, Direction::Response, BodyMode::Streamed);
    if wanting.is_empty() || bodiless(parts.status) || body.is_end_stream() {
        return Ok(body);
    }
    let mut stages = Vec::with_capacity(wanting.len());
    for &i in wanting.iter().rev() {
        let ResponseStep::Wasm(w, context) = &mut steps[i] else {
            continue;
        };
        // The request's hooks are all done: the stream takes the context.
        let mut context = std::mem::take(context);
        let span = hook_span(record, w, "on-response-stream-start", &mut context);
        let started = w
            .pool
            .response_stream(&mut parts.status, &mut parts.headers, context)
            .await;
        hook_done(span, started.as_ref().map(|_| "continue"));
        stages
            .extend(stage(w, started, Direction::Response, record).map_err(|()| filter_failed())?);
    }
    Ok(match stages.is_empty() {
        true => body,
        false => Either::Left(crate::body::filter(body, stages)),
    })
}

/// A filter's stream, if it started; a FailOpen filter that failed to start is
/// skipped, a FailClosed one fails the request (`Err`).
fn stage(
    w: &WasmFilter,
    started: Result<sluice_wasm::BodyStream, sluice_wasm::FilterError>,
    direction: Direction,
    record: &mut Option<Box<Record>>,
) -> Result<Option<crate::body::Stage>, ()> {
    match started {
        Ok(stream) => {
            w.pool.stats().body(direction, BodyEvent::Chunked);
            Ok(Some(crate::body::Stage {
                stream,
                fail_open: w.fail_open,
            }))
        }
        Err(e) if w.fail_open => {
            note(record, w, FilterOutcome::Skipped(e.kind));
            w.pool.stats().skipped.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => {
            note(record, w, FilterOutcome::Failed(e.kind));
            Err(())
        }
    }
}

/// What one attempt at the backend gave.
enum Attempt {
    Answer(Response<Streamed>),
    /// Answered by the gateway before anything was sent (no endpoint, a bad target, a
    /// body that could not be read).
    Local(Response<Body>),
    /// No answer within the request's or the backend request's timeout.
    TimedOut,
    Failed(hyper_util::client::legacy::Error),
    /// A failure on the request's own connection (`h1`): nothing was answered.
    Unsent(crate::h1::Error),
}

impl Attempt {
    /// The backend's answer, or the gateway's own for a failure (both responses, of
    /// like size: boxing one would only add an allocation).
    #[allow(clippy::result_large_err)]
    fn answer(self, backend: &Backend) -> Result<Response<Streamed>, Response<Body>> {
        match self {
            Attempt::Answer(r) => Ok(r),
            Attempt::Local(r) => Err(r),
            Attempt::TimedOut => Err(local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timed out\n",
            )),
            Attempt::Failed(e) => {
                tracing::debug!(backend = %backend.name, error = ?e, "upstream request failed");
                Err(failed(&e, request_body_failed(&e), e.is_connect()))
            }
            Attempt::Unsent(e) => {
                tracing::debug!(backend = %backend.name, error = %e, "upstream request failed");
                Err(failed(&e, e.is_body(), e.is_connect()))
            }
        }
    }
}

/// The gateway's answer to a request the backend did not answer: a filter's failure, a
/// request body too slow or unreadable (`body`: the client's fault, malformed chunked
/// encoding or gone mid-body, answered and counted as such), a connection that could
/// not be opened (`connect`), or the backend's failure.
fn failed(e: &(dyn std::error::Error + 'static), body: bool, connect: bool) -> Response<Body> {
    let (status, msg) = if causes(e).any(|c| c.is::<StreamFilterFailed>()) {
        (StatusCode::INTERNAL_SERVER_ERROR, "a filter failed\n")
    } else if causes(e).any(|c| c.is::<BodyTooSlow>()) {
        (
            StatusCode::REQUEST_TIMEOUT,
            "the request body arrived too slowly\n",
        )
    } else if body {
        (
            StatusCode::BAD_REQUEST,
            "the request body could not be read\n",
        )
    } else if connect {
        (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
    } else {
        (StatusCode::BAD_GATEWAY, "upstream request failed\n")
    };
    local(status, msg)
}

/// Sends the request to the backend's next endpoint, within the rule's timeouts. (A
/// plain `fn` returning its future: an `async fn` would hold the request's head and
/// body twice in its state.)
#[allow(clippy::manual_async_fn)]
fn attempt<'a>(
    rule: &'a Rule,
    backend: &'a Backend,
    mut parts: http::request::Parts,
    body: Body,
    start: Instant,
    record: &'a mut Option<Box<Record>>,
) -> impl Future<Output = Attempt> + 'a {
    async move {
        let Some(endpoint) = next_endpoint(backend) else {
            return Attempt::Local(local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy endpoints\n",
            ));
        };
        if let Some(r) = record.as_mut() {
            r.endpoint = Some(endpoint.authority.to_string());
        }
        if let Some(addr) = crate::h1::target(backend, endpoint.addr, &parts) {
            // No upgrade, cleartext HTTP/1.1 to an IP: written and read by this task, on
            // this thread's own connections (`h1`).
            return match within(rule, start, crate::h1::send(addr, &parts, body)).await {
                None => Attempt::TimedOut,
                Some(Ok(r)) => Attempt::Answer(r.map(Streamed::upstream_h1)),
                Some(Err(e)) => Attempt::Unsent(e),
            };
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = match backend.uri(endpoint.authority.clone(), pq) {
            Ok(u) => u,
            Err(_) => {
                return Attempt::Local(local(StatusCode::BAD_REQUEST, "invalid request target\n"));
            }
        };
        parts.version = backend.version();
        match within(rule, start, send(backend, Request::from_parts(parts, body))).await {
            None => Attempt::TimedOut,
            Some(Ok(r)) => Attempt::Answer(r.map(Streamed::upstream)),
            Some(Err(e)) => Attempt::Failed(e),
        }
    }
}

/// `call`'s output, or `None` when the rule's timeouts ran out first.
fn within<F: Future>(rule: &Rule, start: Instant, call: F) -> Within<F> {
    Within {
        call,
        timer: deadline(rule, start).map(tokio::time::sleep),
    }
}

/// [`within`] with no timeout configured, for the size tests.
#[cfg(test)]
pub(crate) fn within_for_test<F: Future>(call: F) -> Within<F> {
    Within {
        call,
        timer: Some(tokio::time::sleep_until(tokio::time::Instant::now())),
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future: `call` and its timer side by side. (An `async fn` would hold
    /// `call` twice in its state, as its argument and as the future it awaits, and each
    /// caller that awaits it moves all of it.)
    pub(crate) struct Within<F> {
        #[pin]
        call: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// The most of a request body held to send again (HTTPRoute `retry`): a request with
/// a longer body, or a streamed one of unknown length, is sent once.
pub(crate) const RETRY_BODY_LIMIT: u64 = 64 << 10;

/// A request body that can be sent again: one already held whole, an empty one, or one
/// whose `content-length` is at most [`RETRY_BODY_LIMIT`] (read whole first). Returns
/// the body to send and, when it can be sent again, its bytes and trailers.
async fn retry_body(
    body: Body,
    headers: &HeaderMap,
) -> Result<(Body, Option<Buffered>), Response<Body>> {
    match body {
        Either::Right(held) => {
            let again = held.clone();
            Ok((Either::Right(held), Some(again)))
        }
        Either::Left(s) if s.is_end_stream() => Ok((Either::Left(s), Some(Buffered::default()))),
        Either::Left(s) => {
            let small = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= RETRY_BODY_LIMIT);
            if !small {
                return Ok((Either::Left(s), None));
            }
            match collect(s, RETRY_BODY_LIMIT).await {
                Collected::Whole { data, trailers } => {
                    let held = Buffered::with_trailers(data, trailers);
                    Ok((Either::Right(held.clone()), Some(held)))
                }
                Collected::TooLarge(rest) => Ok((Either::Left(rest), None)),
                Collected::Failed(e) => Err(body_failed(&*e)),
            }
        }
    }
}

/// Sends the request, and again while the rule's `retry` says so: after a connection
/// error, a backend request timeout, or an answer with one of its codes, up to its
/// attempts, waiting its backoff (doubled each time, at most ten times over, plus up
/// to a quarter of it as jitter), never past the request timeout.
#[allow(clippy::too_many_arguments)]
async fn with_retries(
    gw: &Gateway,
    rule: &Rule,
    backend: &Backend,
    retry: &sluice_ir::RetryIr,
    parts: http::request::Parts,
    body: Buffered,
    start: Instant,
    record: &mut Option<Box<Record>>,
) -> Attempt {
    let mut tries = 0;
    loop {
        let mut again = http::Request::new(());
        *again.method_mut() = parts.method.clone();
        *again.uri_mut() = parts.uri.clone();
        *again.version_mut() = parts.version;
        *again.headers_mut() = parts.headers.clone();
        let (again, ()) = again.into_parts();
        let outcome = attempt(
            rule,
            backend,
            again,
            Either::Right(body.clone()),
            start,
            record,
        )
        .await;
        let request_over = || rule.request_timeout.is_some_and(|t| start.elapsed() >= t);
        let retry_it = tries < retry.attempts
            && match &outcome {
                Attempt::Answer(r) => retry.codes.contains(&r.status().as_u16()),
                // The backend request's timeout, not the whole request's.
                Attempt::TimedOut => !request_over(),
                Attempt::Failed(e) => !causes(e).any(|c| c.is::<StreamFilterFailed>()),
                Attempt::Unsent(e) => !causes(e).any(|c| c.is::<StreamFilterFailed>()),
                Attempt::Local(_) => false,
            };
        if !retry_it {
            return outcome;
        }
        let base = Duration::from_millis(retry.backoff_ms);
        let wait =
            (base * 2u32.pow(tries.min(4))).min(base * 10) + base.mul_f64(fastrand::f64() / 4.0);
        if rule
            .request_timeout
            .is_some_and(|t| start.elapsed() + wait >= t)
        {
            // No time left for another try: the last outcome stands.
            return outcome;
        }
        drop(outcome);
        backend
            .stats
            .get(&gw.metrics)
            .retries
            .fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        tries += 1;
    }
}

/// The time left for the upstream call: the smaller of what remains of the request
/// timeout and the per-attempt backend timeout.
fn deadline(rule: &Rule, start: Instant) -> Option<Duration> {
    let remaining = rule
        .request_timeout
        .map(|t| t.saturating_sub(start.elapsed()));
    match (remaining, rule.backend_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn pick_backend(rule: &Rule) -> Option<&Backend> {
    match rule.backends.len() {
        0 => None,
        1 => rule.backends.first().filter(|b| b.weight > 0),
        _ => {
            if rule.total_weight == 0 {
                return None;
            }
            let mut n = fastrand::u64(0..rule.total_weight);
            for b in &rule.backends {
                let w = u64::from(b.weight);
                if n < w {
                    return Some(b);
                }
                n -= w;
            }
            None
        }
    }
}

/// `e` and the errors it wraps, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Whether an upstream call failed because reading the client's request body failed:
/// hyper reports an error of the body it was sending as a "user" error.
fn request_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
    })
}

/// Sends `req` on the backend's pool: its own TLS pool, or this thread's cleartext one.
pub(crate) fn send(
    backend: &Backend,
    req: Request<Body>,
) -> hyper_util::client::legacy::ResponseFuture {
    match &backend.tls {
        Some(tls) => tls.request(req),
        None => crate::upstream::request(backend.protocol, req),
    }
}

pub(crate) fn next_endpoint(b: &Backend) -> Option<&Endpoint> {
    match b.endpoints.len() {
        0 => None,
        1 => b.endpoints.first(),
        n => b.endpoints.get(b.next.fetch_add(1, Ordering::Relaxed) % n),
    }
}

/// Why a request's Host is not acceptable (RFC 9112 §3.2): an HTTP/1.1 request must carry
/// exactly one Host (unless its target is in absolute form), and no request two.
fn host_problem(req: &Request<Incoming>) -> Option<&'static str> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some("more than one Host header\n");
    }
    if hosts == 0 && req.version() == Version::HTTP_11 && req.uri().authority().is_none() {
        return Some("an HTTP/1.1 request needs a Host header\n");
    }
    None
}

/// A WebSocket upgrade: the one protocol switch Sluice forwards. Any other `Upgrade`
/// (`h2c` among them) is dropped with the other hop-by-hop headers, and the request is
/// served as the plain request it also is, through routing and filters.
fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    h.get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// `Keep-Alive` and `Proxy-Connection`, which the `http` crate has no constants for.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop whatever `Connection` lists (RFC 9110 7.6.1, and the obsolete
/// `Keep-Alive` and `Proxy-Connection`). `Trailer` is end to end (RFC 9110 6.6.2): kept,
/// so that trailers a sender (or a filter) declares reach the other side over HTTP/1.1
/// too.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), and any the Connection
/// header names, except Host: a client cannot make the request lose the name it is
/// routed by. `TE: trailers` stays: gRPC needs it end to end.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names the message has finds which of `HOP_BY_HOP` it carries
    // (most requests none; a backend's response often `Connection: keep-alive` alone),
    // where removing each candidate would hash and probe seven names.
    let mut present = 0u8;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // The names `Connection` lists go too (but `Host`, and those removed below anyway).
    // Its values are shared bytes: taken out first, so that the map can change while
    // they are read.
    let mut listed = h.get_all(header::CONNECTION).iter();
    let first = listed.next().cloned();
    let more: Vec<HeaderValue> = listed.cloned().collect();
    for v in first.iter().chain(&more) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',').map(str::trim) {
            let known = t.eq_ignore_ascii_case("host")
                || HOP_BY_HOP
                    .iter()
                    .any(|n| t.eq_ignore_ascii_case(n.as_str()));
            if !known {
                h.remove(t);
            }
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn forwarded_headers(h: &mut HeaderMap, conn: &ConnInfo) {
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.remote.ip())).ok(),
        // The common case reuses the connection's value: no formatting per request.
        None => Some(conn.remote_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme()));
}

/// The path as RFC 3986 §6.2.2 normalises it, as Envoy's `normalize_path` and
/// `merge_slashes` do: percent-encoded unreserved characters decoded (`%72` is `r`,
/// other escapes such as `%2F` kept, in upper case), runs of `/` merged, and `.` and
/// `..` segments removed (never above the root). Borrowed when nothing changes.
pub(crate) fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let needs = path.contains('%') || path.contains("//") || path.contains("/.");
    if !needs {
        return std::borrow::Cow::Borrowed(path);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        // Bytes, not chars: a UTF-8 path keeps its multi-byte characters whole.
        decoded.push(bytes[i]);
        i += 1;
    }
    // Only ASCII escapes were replaced, by ASCII bytes, so this stays valid UTF-8.
    let decoded = String::from_utf8(decoded)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || (trailing && !p.ends_with('/')) {
        p.push('/');
    }
    if p == path {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(p)
    }
}

fn set_path<B>(req: &mut Request<B>, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(p);
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

pub(crate) fn rewrite_path(p: &PathRewriteIr, path: &str) -> String {
    match p {
        PathRewriteIr::Full(f) => f.clone(),
        PathRewriteIr::Prefix { prefix, with } => replace_prefix(path, prefix, with),
    }
}

/// Replaces the matched prefix segment-wise: `/foo/bar` with prefix `/foo` and
/// replacement `/baz` becomes `/baz/bar`; with replacement `/` it becomes `/bar`.
pub(crate) fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let rest = if prefix == "/" {
        path
    } else {
        path.get(prefix.len()..).unwrap_or("")
    };
    let rest = if prefix == "/" && rest == "/" {
        ""
    } else {
        rest
    };
    let mut out = format!("{}{}", with.trim_end_matches('/'), rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

fn redirect<B>(r: &RedirectIr, req: &Request<B>, origin: &Origin<'_>) -> Response<Body> {
    let scheme = r.scheme.as_deref().unwrap_or(origin.scheme);
    let port = r.port.unwrap_or(match r.scheme.as_deref() {
        Some("https") => 443,
        Some("http") => 80,
        _ => origin.port,
    });
    let hostname = r.hostname.as_deref().unwrap_or(origin.host);
    let default_port = match scheme {
        "https" => 443,
        _ => 80,
    };
    let mut location = format!("{scheme}://{hostname}");
    if port != default_port {
        location.push_str(&format!(":{port}"));
    }
    let path = match &r.path {
        Some(p) => rewrite_path(p, req.uri().path()),
        None => req.uri().path().to_string(),
    };
    location.push_str(&path);
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, v);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
            answer(status, headers, Bytes::new())
        }
        Err(_) => local(
            StatusCode::BAD_REQUEST,
            "cannot build a redirect location for this request\n",
        ),
    }
}

/// Fire and forget: the mirror's answer is dropped, its failure only counted.
fn send_mirror(gw: &Gateway, backend: &Arc<Backend>, parts: &http::request::Parts, body: Bytes) {
    let Some(endpoint) = next_endpoint(backend) else {
        return;
    };
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Ok(uri) = backend.uri(endpoint.authority.clone(), pq) else {
        return;
    };
    let mut req = Request::new(Either::Right(Buffered::new(body)));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    *req.version_mut() = backend.version();
    let call = send(backend, req);
    let stats = backend.stats.get(&gw.metrics).clone();
    let metrics = gw.metrics.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(resp)) => {
                stats.record(resp.status().as_u16(), start.elapsed());
                // Drain so the connection can go back to the pool.
                let _ = resp.into_body().collect().await;
            }
            _ => {
                metrics
                    .counters
                    .mirror_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_before_matching() {
        for (raw, want) in [
            ("/raw/secret", "/raw/secret"),
            ("/x/../raw/secret", "/raw/secret"),
            ("/%72aw/secret", "/raw/secret"),
            ("//raw//secret", "/raw/secret"),
            ("/./raw/./secret/", "/raw/secret/"),
            ("/../../raw", "/raw"),
            ("/a/%2e%2e/raw", "/raw"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/..", "/"),
            ("/", "/"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("//café/./x", "/café/x"),
            ("/100%", "/100%"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
        assert!(matches!(
            normalize_path("/plain/path"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn prefix_replacement_is_segment_wise() {
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/baz"), "/baz/bar");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/"), "/bar");
        assert_eq!(replace_prefix("/foo", "/foo", "/"), "/");
        assert_eq!(replace_prefix("/foo", "/foo", "/baz"), "/baz");
        assert_eq!(replace_prefix("/foo/", "/foo", "/baz"), "/baz/");
        assert_eq!(replace_prefix("/x", "/", "/app"), "/app/x");
        assert_eq!(replace_prefix("/", "/", "/app"), "/app");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/baz/"), "/baz/bar");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert(header::TRAILER, "content-digest".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::TRAILER], "content-digest", "end to end");
        assert!(
            h.get("x-private").is_none()
                && h.get("keep-alive").is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");

        // Without `Connection`: the names that are always hop by hop still go; listed
        // names in any case and with spaces, from every `Connection` line, go too.
        let mut h = HeaderMap::new();
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "X-One ,".parse().unwrap());
        h.append(header::CONNECTION, "x-two, host".parse().unwrap());
        for n in ["x-one", "x-two", "host", "x-kept"] {
            h.insert(n, "1".parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "x-kept"]);
        // And a map with none is left as it was.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::TRAILER, "b".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
