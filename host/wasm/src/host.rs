//! The host side of the WIT imports: one `HostState` per store, the request and
//! response resources, log, metrics, key-value and clock.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};

use crate::FilterShared;
use crate::bindings::v0_1::sluice::filter0_1_0::{clock, kv, log, metrics, types};
use crate::bindings::v0_2::sluice::filter0_2_0::outbound as wit_out;
use crate::bindings::v0_2::sluice::filter0_2_0::{connection, context};

/// The request while a filter looks at it; moved into the store for the call and back out.
pub struct RequestCtx {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// The response while a filter looks at it.
pub struct ResponseCtx {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// The trailers at the end of a streamed body, while a filter's `on-*-stream-end` looks
/// at them.
#[derive(Default)]
pub struct TrailersCtx(pub HeaderMap);

/// A digest a filter is computing (the 0.2 `digest` interface).
pub use crate::digest::Hasher as HasherCtx;

/// An outbound call whose body goes out in pieces (the 0.2 `outbound.call`).
pub struct CallCtx {
    /// `None` once finished.
    sink: Option<Box<dyn crate::outbound::BodySink>>,
    grant: String,
    started: Instant,
}

/// Started calls one instance may hold at once.
pub const MAX_CALLS: u32 = 16;

/// Hashers one instance may hold at once: each is a host allocation the guest
/// controls, so it is bounded like everything else a guest can make the host keep.
pub const MAX_HASHERS: u32 = 16;

/// Per-store state. A store is one pooled instance.
pub struct HostState {
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) shared: Arc<FilterShared>,
    /// The WasmFilter's `kv` store.
    pub(crate) kv: Arc<crate::kv::Store>,
    /// The last error the guest logged (the SDK logs a panic's message just before the
    /// trap), so the trap can be reported with it.
    pub(crate) last_error: Option<String>,
    /// Epoch ticks the current call may still run; the call is cut when they run out.
    /// Counted only while the guest runs (see `Pool::call`).
    pub(crate) ticks_left: u64,
    /// The current call was running at a tick. A call that only straddles one tick
    /// goes on; from its second tick on, it yields at each.
    pub(crate) ticked: bool,
    /// The runtime's lane for calls that run past one tick, and this call's place in
    /// it while it has one (see `Runtime::slow_lane`).
    pub(crate) slow_lane: Arc<tokio::sync::Semaphore>,
    pub(crate) slow_permit: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// The current request's context for this filter, moved in for each call.
    pub(crate) context: Context,
    /// Set during `on-*-stream-start`, where `content-length` may be removed.
    pub(crate) stream_start: bool,
    /// Live `digest.hasher` resources.
    pub(crate) hashers: u32,
    /// Live `outbound.call` resources.
    pub(crate) calls: u32,
}

/// Keys one request's context may hold, per WasmFilter.
pub const CONTEXT_MAX_KEYS: usize = 64;
/// Bytes of keys and values one request's context may hold, per WasmFilter.
pub const CONTEXT_MAX_BYTES: usize = 64 << 10;

/// What one WasmFilter keeps for one request (the 0.2 `context` interface), and the
/// outbound calls it may make during it: the caller holds it between hooks and moves it
/// into the store for each call. Empty until the filter stores something, and then one
/// allocation.
#[derive(Clone, Default)]
pub struct Context(
    Option<Box<ContextMap>>,
    Option<Arc<dyn crate::Outbound>>,
    Option<std::net::SocketAddr>,
    Option<crate::SpanIds>,
    /// The request as `on-request` got it, when the filter captures failures.
    Option<Box<crate::CapturedRequest>>,
);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("values", &self.0)
            .field("outbound", &self.1.is_some())
            .field("client", &self.2)
            .field("span", &self.3)
            .finish()
    }
}

#[derive(Clone, Debug, Default)]
struct ContextMap {
    entries: std::collections::HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Context {
    /// A context whose filter may make outbound calls through `outbound`.
    pub fn with_outbound(outbound: Arc<dyn crate::Outbound>) -> Self {
        Context(None, Some(outbound), None, None, None)
    }

    /// Sets the traced span the filter's next hook runs in: its outbound calls become
    /// its children. `None` when the request is not traced.
    pub fn set_span(&mut self, span: Option<crate::SpanIds>) {
        self.3 = span;
    }

    pub(crate) fn set_captured(&mut self, r: Option<Box<crate::CapturedRequest>>) {
        self.4 = r;
    }

    pub(crate) fn captured(&self) -> Option<&crate::CapturedRequest> {
        self.4.as_deref()
    }

    /// The span set by [`Context::set_span`].
    pub fn span(&self) -> Option<crate::SpanIds> {
        self.3
    }

    /// The same context, for a request whose connection comes from `client` (the 0.2
    /// `connection.client`).
    pub fn with_client(mut self, client: std::net::SocketAddr) -> Self {
        self.2 = Some(client);
        self
    }

    /// The address the request's connection comes from, if given.
    pub fn client(&self) -> Option<std::net::SocketAddr> {
        self.2
    }

    pub(crate) fn outbound(&self) -> Option<Arc<dyn crate::Outbound>> {
        self.1.clone()
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0.as_ref()?.entries.get(key).map(Vec::as_slice)
    }

    /// Stores a value unless that takes the context past its key or byte limit.
    pub fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextFull> {
        let map = self.0.get_or_insert_with(Box::default);
        let old = map.entries.get(&key).map(|v| key.len() + v.len());
        let bytes = map.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > CONTEXT_MAX_BYTES || (old.is_none() && map.entries.len() >= CONTEXT_MAX_KEYS) {
            return Err(ContextFull);
        }
        map.bytes = bytes;
        map.entries.insert(key, value);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(map) = self.0.as_mut()
            && let Some(v) = map.entries.remove(key)
        {
            map.bytes -= key.len() + v.len();
        }
    }
}

/// A context is at its key or byte limit.
#[derive(Debug, PartialEq, Eq)]
pub struct ContextFull;

/// `StoreLimits`, plus a note of whether the memory limit was what stopped the guest,
/// so the failure is reported as `memory` rather than as a generic trap.
pub struct MemoryLimiter {
    pub inner: StoreLimits,
    pub limit: usize,
    pub exceeded: bool,
    /// The instance's linear memories, in bytes, all together (their creation counts
    /// as growth from 0).
    pub size: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok || desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        self.size = self.size.saturating_add(desired.saturating_sub(current));
        Ok(ok)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

/// Headers the gateway manages itself; filters may read but not write them.
fn forbidden(name: &HeaderName, request: bool) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || (request && name == header::HOST)
}

fn lossy(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

fn get(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(lossy)
}

fn get_all(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name).iter().map(lossy).collect()
}

fn names(h: &HeaderMap) -> Vec<String> {
    h.keys().map(|k| k.as_str().to_string()).collect()
}

fn write(
    h: &mut HeaderMap,
    name: &str,
    value: String,
    append: bool,
    request: bool,
) -> Result<(), types::HeaderError> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| types::HeaderError::InvalidName)?;
    if forbidden(&n, request) {
        return Err(types::HeaderError::Forbidden);
    }
    // The string lifted from the guest becomes the value (checked as `from_str` checks
    // it), rather than being copied once more.
    let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(value.into_bytes()))
        .map_err(|_| types::HeaderError::InvalidValue)?;
    if append {
        h.append(n, v);
    } else {
        h.insert(n, v);
    }
    Ok(())
}

/// Removes `name` unless the gateway manages it. `content-length` is the exception
/// where `unframe` says so (a stream's start): a filter that changes a streamed body's
/// length, or adds trailers, removes it and the body goes chunked.
fn remove(h: &mut HeaderMap, name: &str, request: bool, unframe: bool) {
    // Compared and looked up as text: a `HeaderName` of a name that is not a standard
    // one would be an allocation. A name that is not valid finds nothing.
    let is = |n: HeaderName| name.eq_ignore_ascii_case(n.as_str());
    let kept = (is(header::CONTENT_LENGTH) && !unframe)
        || is(header::TRANSFER_ENCODING)
        || is(header::CONNECTION)
        || (request && is(header::HOST));
    if !kept {
        h.remove(name);
    }
}

impl HostState {
    fn req(&mut self, r: &Resource<RequestCtx>) -> wasmtime::Result<&mut RequestCtx> {
        Ok(self.table.get_mut(r)?)
    }
    fn resp(&mut self, r: &Resource<ResponseCtx>) -> wasmtime::Result<&mut ResponseCtx> {
        Ok(self.table.get_mut(r)?)
    }
}

/// The header accessors, identical on requests and responses but for the resource type
/// and whether `host` is writable.
macro_rules! header_methods {
    ($ty:ty, $get:ident, $request:expr) => {
        fn get_header(
            &mut self,
            r: Resource<$ty>,
            name: String,
        ) -> wasmtime::Result<Option<String>> {
            Ok(get(&self.$get(&r)?.headers, &name))
        }
        fn get_header_all(
            &mut self,
            r: Resource<$ty>,
            name: String,
        ) -> wasmtime::Result<Vec<String>> {
            Ok(get_all(&self.$get(&r)?.headers, &name))
        }
        fn header_names(&mut self, r: Resource<$ty>) -> wasmtime::Result<Vec<String>> {
            Ok(names(&self.$get(&r)?.headers))
        }
        fn set_header(
            &mut self,
            r: Resource<$ty>,
            name: String,
            value: String,
        ) -> wasmtime::Result<Result<(), types::HeaderError>> {
            Ok(write(
                &mut self.$get(&r)?.headers,
                &name,
                value,
                false,
                $request,
            ))
        }
        fn append_header(
            &mut self,
            r: Resource<$ty>,
            name: String,
            value: String,
        ) -> wasmtime::Result<Result<(), types::HeaderError>> {
            Ok(write(
                &mut self.$get(&r)?.headers,
                &name,
                value,
                true,
                $request,
            ))
        }
        fn remove_header(&mut self, r: Resource<$ty>, name: String) -> wasmtime::Result<()> {
            let unframe = self.stream_start;
            remove(&mut self.$get(&r)?.headers, &name, $request, unframe);
            Ok(())
        }
    };
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.method.as_str().to_string())
    }
    fn set_method(
        &mut self,
        r: Resource<RequestCtx>,
        method: String,
    ) -> wasmtime::Result<Result<(), ()>> {
        Ok(match Method::from_bytes(method.as_bytes()) {
            Ok(m) => {
                self.req(&r)?.method = m;
                Ok(())
            }
            Err(_) => Err(()),
        })
    }
    fn path(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.req(&r)?.uri.path().to_string())
    }
    fn query(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Option<String>> {
        Ok(self.req(&r)?.uri.query().map(str::to_string))
    }
    fn set_path_and_query(
        &mut self,
        r: Resource<RequestCtx>,
        pq: String,
    ) -> wasmtime::Result<Result<(), ()>> {
        if !pq.starts_with('/') {
            return Ok(Err(()));
        }
        let ctx = self.req(&r)?;
        let mut parts = ctx.uri.clone().into_parts();
        let Ok(p) = http::uri::PathAndQuery::try_from(pq) else {
            return Ok(Err(()));
        };
        parts.path_and_query = Some(p);
        Ok(match Uri::from_parts(parts) {
            Ok(u) => {
                ctx.uri = u;
                Ok(())
            }
            Err(_) => Err(()),
        })
    }
    fn authority(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        let ctx = self.req(&r)?;
        Ok(match ctx.uri.authority() {
            Some(a) => a.as_str().to_string(),
            None => get(&ctx.headers, "host").unwrap_or_default(),
        })
    }
    fn set_authority(
        &mut self,
        r: Resource<RequestCtx>,
        authority: String,
    ) -> wasmtime::Result<Result<(), ()>> {
        let ctx = self.req(&r)?;
        let (Ok(a), Ok(v)) = (
            authority.parse::<http::uri::Authority>(),
            HeaderValue::from_str(&authority),
        ) else {
            return Ok(Err(()));
        };
        if ctx.uri.authority().is_some() {
            let mut parts = ctx.uri.clone().into_parts();
            parts.authority = Some(a);
            if let Ok(u) = Uri::from_parts(parts) {
                ctx.uri = u;
            }
        }
        ctx.headers.insert(header::HOST, v);
        Ok(Ok(()))
    }
    header_methods!(RequestCtx, req, true);

    fn drop(&mut self, _r: Resource<RequestCtx>) -> wasmtime::Result<()> {
        // The host owns request resources and deletes them after the call; the guest
        // only ever borrows them.
        Ok(())
    }
}

impl types::HostResponse for HostState {
    fn status(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<u16> {
        Ok(self.resp(&r)?.status.as_u16())
    }
    fn set_status(
        &mut self,
        r: Resource<ResponseCtx>,
        status: u16,
    ) -> wasmtime::Result<Result<(), ()>> {
        Ok(match StatusCode::from_u16(status) {
            Ok(s) if (100..600).contains(&status) => {
                self.resp(&r)?.status = s;
                Ok(())
            }
            _ => Err(()),
        })
    }
    header_methods!(ResponseCtx, resp, false);

    fn drop(&mut self, _r: Resource<ResponseCtx>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if level == log::Level::Error {
            // Kept for the failure report even when the line itself is not written.
            self.last_error = Some(message.chars().take(1024).collect());
        }
        if !self.shared.may_log() {
            return Ok(());
        }
        let filter = &self.shared.name;
        match level {
            log::Level::Trace => tracing::trace!(%filter, "{message}"),
            log::Level::Debug => tracing::debug!(%filter, "{message}"),
            log::Level::Info => tracing::info!(%filter, "{message}"),
            log::Level::Warn => tracing::warn!(%filter, "{message}"),
            log::Level::Error => tracing::error!(%filter, "{message}"),
        }
        Ok(())
    }
}

impl HostState {
    /// Waiting on the network is not running: the slow lane place goes to others.
    fn leave_slow_lane(&self) {
        drop(
            self.slow_permit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl HostState {
    /// What a call needs: this request's outbound calls (none: refused and counted as
    /// not granted) and the request, checked.
    fn call_parts(
        &self,
        request: wit_out::OutboundRequest,
    ) -> Result<(Arc<dyn crate::Outbound>, crate::OutboundRequest), wit_out::CallError> {
        let Some(outbound) = self.context.outbound() else {
            self.shared.stats.outbound_refused();
            return Err(wit_out::CallError::NotGranted);
        };
        let mut req =
            crate::outbound::request(request).map_err(wit_out::CallError::InvalidRequest)?;
        req.span = self.context.span();
        Ok((outbound, req))
    }
}

impl crate::bindings::v0_2::sluice::filter0_2_0::outbound::HostCall for HostState {
    async fn write(
        &mut self,
        r: Resource<CallCtx>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit_out::CallError>> {
        self.leave_slow_lane();
        let stats = self.shared.stats.clone();
        let call = self.table.get_mut(&r)?;
        let Some(sink) = call.sink.as_mut() else {
            return Ok(Err(wit_out::CallError::Failed(
                "the call is finished: it takes no more writes".into(),
            )));
        };
        match sink.write(bytes::Bytes::from(data)).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                // The call is over: counted now, with how long it ran.
                call.sink = None;
                stats.outbound_call(&call.grant, false, call.started.elapsed());
                Ok(Err(crate::outbound::error_to_wit(e)))
            }
        }
    }

    async fn finish(
        &mut self,
        r: Resource<CallCtx>,
    ) -> wasmtime::Result<Result<wit_out::OutboundResponse, wit_out::CallError>> {
        self.leave_slow_lane();
        let stats = self.shared.stats.clone();
        let call = self.table.get_mut(&r)?;
        let Some(sink) = call.sink.take() else {
            return Ok(Err(wit_out::CallError::Failed(
                "the call is finished already".into(),
            )));
        };
        let result = sink.finish().await;
        stats.outbound_call(&call.grant, result.is_ok(), call.started.elapsed());
        Ok(crate::outbound::to_wit(result))
    }

    fn drop(&mut self, r: Resource<CallCtx>) -> wasmtime::Result<()> {
        // Dropping the sink cancels a call that was not finished.
        self.table.delete(r)?;
        self.calls = self.calls.saturating_sub(1);
        Ok(())
    }
}

impl crate::bindings::v0_2::sluice::filter0_2_0::outbound::Host for HostState {
    fn start(
        &mut self,
        grant: String,
        request: wit_out::OutboundRequest,
    ) -> wasmtime::Result<Result<Resource<CallCtx>, wit_out::CallError>> {
        if self.calls >= MAX_CALLS {
            return Err(wasmtime::format_err!(
                "a filter instance may hold at most {MAX_CALLS} started outbound calls at once"
            ));
        }
        let stats = self.shared.stats.clone();
        let (outbound, req) = match self.call_parts(request) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        match outbound.start(&grant, req) {
            Ok(sink) => {
                let r = self.table.push(CallCtx {
                    sink: Some(sink),
                    grant,
                    started,
                })?;
                self.calls += 1;
                Ok(Ok(r))
            }
            Err(e) => {
                match &e {
                    crate::CallError::NotGranted => stats.outbound_refused(),
                    _ => stats.outbound_call(&grant, false, started.elapsed()),
                }
                Ok(Err(crate::outbound::error_to_wit(e)))
            }
        }
    }

    async fn send(
        &mut self,
        grant: String,
        request: wit_out::OutboundRequest,
    ) -> wasmtime::Result<Result<wit_out::OutboundResponse, wit_out::CallError>> {
        self.leave_slow_lane();
        let stats = self.shared.stats.clone();
        let (outbound, req) = match self.call_parts(request) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let start = std::time::Instant::now();
        let result = outbound.send(&grant, req).await;
        match &result {
            Err(crate::CallError::NotGranted) => stats.outbound_refused(),
            r => stats.outbound_call(&grant, r.is_ok(), start.elapsed()),
        }
        Ok(crate::outbound::to_wit(result))
    }
}

impl crate::bindings::v0_2::sluice::filter0_2_0::connection::Host for HostState {
    fn client(&mut self) -> wasmtime::Result<Option<connection::SocketAddress>> {
        use connection::IpAddress;
        Ok(self.context.client().map(|a| connection::SocketAddress {
            address: match a.ip().to_canonical() {
                std::net::IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    IpAddress::Ipv4((a, b, c, d))
                }
                std::net::IpAddr::V6(v6) => {
                    let [a, b, c, d, e, f, g, h] = v6.segments();
                    IpAddress::Ipv6((a, b, c, d, e, f, g, h))
                }
            },
            port: a.port(),
        }))
    }
}

impl crate::bindings::v0_2::sluice::filter0_2_0::wall_clock::Host for HostState {
    fn now_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
}

/// `body` has only types.
impl crate::bindings::v0_2::sluice::filter0_2_0::body::Host for HostState {}

impl crate::bindings::v0_2::sluice::filter0_2_0::digest::Host for HostState {}

impl crate::bindings::v0_2::sluice::filter0_2_0::digest::HostHasher for HostState {
    fn new(
        &mut self,
        algorithm: crate::bindings::v0_2::sluice::filter0_2_0::digest::Algorithm,
    ) -> wasmtime::Result<Resource<HasherCtx>> {
        use crate::bindings::v0_2::sluice::filter0_2_0::digest::Algorithm;
        if self.hashers >= MAX_HASHERS {
            return Err(wasmtime::format_err!(
                "a filter instance may hold at most {MAX_HASHERS} digest hashers at once"
            ));
        }
        let h = HasherCtx::new(match algorithm {
            Algorithm::Sha256 => crate::digest::Algorithm::Sha256,
            Algorithm::Sha512 => crate::digest::Algorithm::Sha512,
        });
        let r = self.table.push(h)?;
        self.hashers += 1;
        Ok(r)
    }
    async fn update(&mut self, r: Resource<HasherCtx>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.table.get(&r)?.update(data).await;
        Ok(())
    }
    async fn finish(&mut self, r: Resource<HasherCtx>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&r)?.finish().await)
    }
    fn drop(&mut self, r: Resource<HasherCtx>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        self.hashers = self.hashers.saturating_sub(1);
        Ok(())
    }
}

impl crate::bindings::v0_2::sluice::filter0_2_0::body::HostTrailers for HostState {
    fn get(&mut self, r: Resource<TrailersCtx>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(get(&self.table.get(&r)?.0, &name))
    }
    fn names(&mut self, r: Resource<TrailersCtx>) -> wasmtime::Result<Vec<String>> {
        Ok(names(&self.table.get(&r)?.0))
    }
    fn set(
        &mut self,
        r: Resource<TrailersCtx>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        // Framing and `host` have no place in trailers: refused as on a request.
        Ok(write(
            &mut self.table.get_mut(&r)?.0,
            &name,
            value,
            false,
            true,
        ))
    }
    fn remove(&mut self, r: Resource<TrailersCtx>, name: String) -> wasmtime::Result<()> {
        remove(&mut self.table.get_mut(&r)?.0, &name, true, false);
        Ok(())
    }
    fn drop(&mut self, _r: Resource<TrailersCtx>) -> wasmtime::Result<()> {
        // The host owns the trailers and takes them back after the call.
        Ok(())
    }
}

impl context::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.context.get(&key).map(<[u8]>::to_vec))
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), context::ContextError>> {
        Ok(self
            .context
            .set(key, value)
            .map_err(|ContextFull| context::ContextError::Full))
    }
    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        self.context.remove(&key);
        Ok(())
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, value: u64) -> wasmtime::Result<()> {
        self.shared.stats.guest_counter(&name, value);
        Ok(())
    }
    fn histogram_observe(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        self.shared.stats.guest_histogram(&name, value);
        Ok(())
    }
}

impl HostState {
    /// A failed Redis call: counted, logged (within the filter's log budget) and turned
    /// into a trap, so the WasmFilter's failurePolicy decides what the request gets.
    fn kv_failed(&self, op: &str, e: crate::kv::RedisFailed) -> wasmtime::Error {
        self.shared.stats.kv_error();
        let server = match &*self.kv {
            crate::kv::Store::Redis(r) => r.server(),
            crate::kv::Store::Memory(_) => String::new(),
        };
        let message = format!("kv.{op}: the Redis store at {server} failed: {}", e.0);
        if self.shared.may_log() {
            tracing::warn!(filter = %self.shared.name, "{message}");
        }
        wasmtime::Error::msg(message)
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        match &*self.kv {
            crate::kv::Store::Memory(m) => Ok(m.get(&key)),
            crate::kv::Store::Redis(r) => {
                self.leave_slow_lane();
                r.get(&key).await.map_err(|e| self.kv_failed("get", e))
            }
        }
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<bool> {
        match &*self.kv {
            crate::kv::Store::Memory(m) => Ok(m.set(key, value, ttl_ms)),
            crate::kv::Store::Redis(r) => {
                self.leave_slow_lane();
                r.set(&key, value, ttl_ms)
                    .await
                    .map_err(|e| self.kv_failed("set", e))
            }
        }
    }
    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        match &*self.kv {
            crate::kv::Store::Memory(m) => Ok(m.increment(key, delta, ttl_ms)),
            crate::kv::Store::Redis(r) => {
                self.leave_slow_lane();
                r.increment(&key, delta, ttl_ms)
                    .await
                    .map_err(|e| self.kv_failed("increment", e))
            }
        }
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        match &*self.kv {
            crate::kv::Store::Memory(m) => {
                m.delete(&key);
                Ok(())
            }
            crate::kv::Store::Redis(r) => {
                self.leave_slow_lane();
                r.delete(&key)
                    .await
                    .map_err(|e| self.kv_failed("delete", e))
            }
        }
    }
}

/// One process-wide origin, so every instance sees the same monotonic timeline.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub(crate) fn monotonic_nanos() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl clock::Host for HostState {
    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(monotonic_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filter's header writes: names in any case, values checked, and the headers the
    /// gateway manages kept (`content-length` may go at a stream's start).
    #[test]
    fn header_writes_take_any_case_and_keep_what_the_gateway_manages() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-none", "1"),
            ("content-length", "5"),
            ("host", "a"),
            ("connection", "close"),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
        let long = format!("x-{}", "l".repeat(70));
        h.insert(
            HeaderName::from_bytes(long.as_bytes()).expect("name"),
            HeaderValue::from_static("1"),
        );

        remove(&mut h, "X-None", true, false);
        assert!(!h.contains_key("x-none"));
        remove(&mut h, &long.to_uppercase(), true, false);
        assert!(
            !h.contains_key(long.as_str()),
            "a name past 64 bytes, in capitals"
        );
        remove(&mut h, "bad name", true, false);
        remove(&mut h, "Content-Length", true, false);
        remove(&mut h, "HOST", true, false);
        remove(&mut h, "connection", false, true);
        assert_eq!(h.len(), 3, "{h:?}");
        remove(&mut h, "content-length", true, true);
        assert!(
            !h.contains_key("content-length"),
            "a stream's start may unframe"
        );
        remove(&mut h, "host", false, false);
        assert!(!h.contains_key("host"), "a response has no host to keep");

        assert_eq!(write(&mut h, "X-Set", "v 1".into(), false, true), Ok(()));
        assert_eq!(write(&mut h, "x-set", "v2".into(), true, true), Ok(()));
        let all: Vec<_> = h.get_all("x-set").iter().collect();
        assert_eq!(all, ["v 1", "v2"]);
        assert_eq!(
            write(&mut h, "x-set", "a\nb".into(), false, true),
            Err(types::HeaderError::InvalidValue)
        );
        assert_eq!(
            write(&mut h, "bad name", "v".into(), false, true),
            Err(types::HeaderError::InvalidName)
        );
        assert_eq!(
            write(&mut h, "Transfer-Encoding", "chunked".into(), false, false),
            Err(types::HeaderError::Forbidden)
        );
        assert_eq!(
            h.get_all("x-set").iter().count(),
            2,
            "a refused write changes nothing"
        );
    }

    #[test]
    fn a_context_holds_at_most_its_keys_and_bytes() {
        let mut c = Context::default();
        assert_eq!(c.get("a"), None);
        for i in 0..CONTEXT_MAX_KEYS {
            c.set(format!("k{i}"), vec![0; 10])
                .expect("within the limits");
        }
        assert_eq!(c.set("one-more".into(), Vec::new()), Err(ContextFull));
        // Replacing a key is not a new key.
        c.set("k0".into(), vec![1; 100]).expect("replace");
        assert_eq!(c.get("k0"), Some(&[1u8; 100][..]));
        c.remove("k0");
        c.remove("absent");
        assert_eq!(c.get("k0"), None);
        c.set("k0".into(), Vec::new()).expect("a freed key");
        // Bytes: a value that would pass 64 KiB in all is refused, and the old one kept.
        assert_eq!(
            c.set("k1".into(), vec![0; CONTEXT_MAX_BYTES]),
            Err(ContextFull)
        );
        assert_eq!(c.get("k1"), Some(&[0u8; 10][..]));
        // What "k1" holds now (10 bytes) is freed by replacing it.
        let room = CONTEXT_MAX_BYTES - c.0.as_ref().map_or(0, |m| m.bytes) + 10;
        c.set("k1".into(), vec![0; room]).expect("exactly full");
        // One byte more anywhere is refused: "k2" holds 10 bytes, 11 would pass.
        assert_eq!(c.set("k2".into(), vec![0; 11]), Err(ContextFull));
    }
}
