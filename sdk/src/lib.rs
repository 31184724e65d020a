//! Write Sluice gateway filters in Rust.
//!
//! A filter is a type that implements [`Filter`], exported with [`export!`], built for
//! `wasm32-wasip2`:
//!
//! ```ignore
//! use sluice_sdk::{Action, Filter, Request};
//!
//! struct Hello;
//! impl Filter for Hello {
//!     type Config = ();
//!     fn new(_: ()) -> Result<Self, sluice_sdk::ConfigErrors> { Ok(Hello) }
//!     fn on_request(&self, req: &Request) -> Action {
//!         let _ = req.set_header("x-hello", "world");
//!         Action::Continue
//!     }
//! }
//! sluice_sdk::export!(Hello);
//! ```
//!
//! ## When each hook runs
//!
//! ```text
//!  WasmFilter loaded ──> new(config), needs()          once per instance
//!  request matched   ──> on_request(&request)          route filters in list order
//!                         │ Action::Continue           next filter
//!                         │ Action::Respond            answer now, skip the rest
//!  request body      ──> on_request_body(&req, body)   if needs() asks for it whole
//!                         │ Continue | Replace | Respond
//!  ... the backend ...
//!  response back     ──> on_response(&response)        in reverse order
//!  response body     ──> on_response_body(&resp, body) if needs() asks for it whole
//!                         │ Continue | Replace | Respond
//! ```
//!
//! A filter that asks for a body [`BodyMode::Streamed`] gets it chunk by chunk instead,
//! through the [`BodyStream`] that [`Filter::request_stream`] (or
//! [`Filter::response_stream`]) returns: `chunk` for each chunk (pass, change, drop or
//! add bytes), then `end` with the trailers. One instance sees the whole stream.
//!
//! A body nobody asks for is never held: it streams through the gateway as it comes.
//!
//! The gateway keeps a pool of instances per WasmFilter. One instance handles one call
//! at a time, and the `on_request` and `on_response` of one request may run in
//! different instances: keep per-request state in [`context`] (or headers), shared
//! state in [`kv`], never in globals.
//!
//! Filters built with this SDK speak `sluice:filter@0.2.0` (see `wit/filter.wit`); the
//! gateway also runs components built for 0.1.
//!
//! Nothing here unwraps a host result: host calls that can fail return `Result`.
//! A panic in a filter traps its instance; the gateway applies the WasmFilter's
//! failure policy and replaces the instance.

use std::sync::OnceLock;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "sluice:filter/filter@0.2.0",
        path: "wit",
        // The 0.1 interfaces 0.2 imports unchanged are generated here too.
        generate_all,
        default_bindings_module: "sluice_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_filter_world",
    });
}

use bindings::sluice::filter0_1_0::types;

/// The request being filtered. Read and change it with its methods: `method`,
/// `path`, `query`, `authority`, `get_header`, `set_header`, `append_header`,
/// `remove_header`, `set_path_and_query`, `set_authority`, `set_method`, ...
/// Headers are fetched from the gateway one at a time, when asked for.
pub type Request = types::Request;
/// The response being filtered: `status`, `set_status` and the header methods.
pub type Response = types::Response;
/// Why a header change was refused.
pub type HeaderError = types::HeaderError;

/// A problem in the filter's config: where (a JSON path such as `.rules[0].name`) and what.
pub type ConfigError = types::ConfigError;

/// Every problem found in a config.
pub type ConfigErrors = Vec<ConfigError>;

/// Builds a [`ConfigError`].
pub fn config_error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// What happens after [`Filter::on_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on: the next filter, then the backend.
    Continue,
    /// Answer the client now with this status, headers and body; the backend is not called.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Action {
    /// A direct answer with a status and a body, and no headers.
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Action::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// How a filter wants a body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyMode {
    /// Not at all: the body streams past the filter (the default).
    #[default]
    None,
    /// Whole, in one call of the body hook. The gateway collects at most the
    /// WasmFilter's `spec.limits.maxBodyBytes` (default 1 MiB); past that it answers 413
    /// for a request and 502 for a response, or, with `failurePolicy: FailOpen`, skips
    /// the filter for that body.
    Buffered,
    /// Chunk by chunk, as it comes, whatever its size: [`Filter::request_stream`] (or
    /// [`Filter::response_stream`]) starts a [`BodyStream`] that gets each chunk and then
    /// the trailers. The gateway holds one chunk at a time.
    Streamed,
}

/// What to forward for one chunk of a streamed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// The chunk as it came (nothing is copied back to the gateway).
    Pass,
    /// These bytes instead: changed, fewer, none (drops the chunk) or more.
    Replace(Vec<u8>),
}

/// The trailers that end a streamed body: `get`, `names`, `set`, `remove`. They reach
/// the other side over HTTP/2, and over HTTP/1.1 when the message is chunked and its
/// `trailer` header names them: set `trailer` (and, on a request, remove
/// `content-length`) when the stream starts, before the head leaves.
pub type Trailers = bindings::sluice::filter0_2_0::body::Trailers;

/// One streamed body, seen from its first chunk to its end by one instance (and no
/// other call meanwhile): keep the stream's state (a digest, a count) in `self`.
pub trait BodyStream: Send {
    /// A chunk, as it came from the peer (or from the filter before this one).
    ///
    /// Default: passes it on.
    fn chunk(&mut self, chunk: Vec<u8>) -> Chunk {
        let _ = chunk;
        Chunk::Pass
    }

    /// The end of the body, with its trailers (read and change them). Returns bytes to
    /// send after the last chunk.
    ///
    /// Default: nothing more.
    fn end(&mut self, trailers: &Trailers) -> Vec<u8> {
        let _ = trailers;
        Vec::new()
    }
}

/// A stream that passes every chunk on: what the default stream hooks return.
pub struct PassThrough;
impl BodyStream for PassThrough {}

/// Which bodies a filter needs, from [`Filter::needs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub request_body: BodyMode,
    pub response_body: BodyMode,
}

/// What happens after [`Filter::on_request_body`] or [`Filter::on_response_body`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyAction {
    /// Keep the body as it is.
    Continue,
    /// Send these bytes instead; the gateway sets `content-length` for them.
    Replace(Vec<u8>),
    /// Answer with this instead: of forwarding the request (from `on_request_body`),
    /// or of the backend's response (from `on_response_body`).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl BodyAction {
    /// A direct answer with a status and a body, and no headers.
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Self {
        BodyAction::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// A gateway filter.
///
/// Every hook but [`Filter::new`] has a default that does nothing, so a filter
/// implements only what it needs.
pub trait Filter: Sized + Send + Sync + 'static {
    /// The filter's config, parsed once per instance from the WasmFilter's `spec.config`
    /// (JSON `null` when the WasmFilter has none: use `()` or an `Option`, or
    /// `#[serde(default)]`).
    type Config: serde::de::DeserializeOwned;

    /// Runs once per instance, before any request, with the parsed config. Return
    /// every problem found; the WasmFilter's status then lists them (with their paths)
    /// and routes that use it answer 500. Parse errors are reported for you.
    fn new(config: Self::Config) -> Result<Self, ConfigErrors>;

    /// Runs for each request the route sends through this filter, before the backend.
    /// Change the request in place; return [`Action::Continue`] to go on, or
    /// [`Action::Respond`] to answer without calling the backend.
    ///
    /// Default: does nothing and continues.
    fn on_request(&self, request: &Request) -> Action {
        let _ = request;
        Action::Continue
    }

    /// Which bodies this filter needs whole; asked once per instance, after
    /// [`Filter::new`]. Ask only for what you use: a body no filter on a route needs
    /// streams through without being held.
    ///
    /// Default: none.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Runs with the whole request body, if [`Filter::needs`] asked for it, after
    /// `on_request` of every filter on the route has continued and before the
    /// backend. The request's method, path and headers may still be changed. Not
    /// called for a request without a body, nor for gRPC and WebSocket requests (their
    /// bodies are streams).
    ///
    /// Default: keeps the body.
    fn on_request_body(&self, request: &Request, body: Vec<u8>) -> BodyAction {
        let _ = (request, body);
        BodyAction::Continue
    }

    /// Runs for each response of a request that went through this filter's
    /// `on_request` (including direct responses from later filters), before the client
    /// gets it. Change the status and headers in place.
    ///
    /// Default: does nothing.
    fn on_response(&self, response: &Response) {
        let _ = response;
    }

    /// Runs with the whole response body, if [`Filter::needs`] asked for it, after
    /// `on_response` of every filter. The status and headers may still be changed. Not
    /// called for a response without a body (HEAD, 204, 304) nor for gRPC.
    ///
    /// Default: keeps the body.
    fn on_response_body(&self, response: &Response, body: Vec<u8>) -> BodyAction {
        let _ = (response, body);
        BodyAction::Continue
    }

    /// Starts a streamed request body, if [`Filter::needs`] asked for it
    /// [`BodyMode::Streamed`] and the request has one: after `on_request` (and the
    /// buffered body hooks) of every filter, before the request leaves, so its head may
    /// still be changed. The returned stream gets every chunk, then the end.
    ///
    /// Default: passes the body through.
    fn request_stream(&self, request: &Request) -> Box<dyn BodyStream> {
        let _ = request;
        Box::new(PassThrough)
    }

    /// Starts a streamed response body, as [`Filter::request_stream`] does a request's:
    /// after every `on_response`, while the status and headers may still be changed.
    ///
    /// Default: passes the body through.
    fn response_stream(&self, response: &Response) -> Box<dyn BodyStream> {
        let _ = response;
        Box::new(PassThrough)
    }
}

/// Writes to the gateway's log, tagged with the WasmFilter's name.
pub mod log {
    use crate::bindings::sluice::filter0_1_0::log::{Level, write};
    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Metrics on the gateway's `/metrics`, labelled with the WasmFilter.
pub mod metrics {
    /// Adds to the counter `sluice_filter_<name>_total`. `name` must match `[a-z_][a-z0-9_]*`.
    pub fn counter_add(name: &str, value: u64) {
        crate::bindings::sluice::filter0_1_0::metrics::counter_add(name, value)
    }
    /// Records one observation in the histogram `sluice_filter_<name>`.
    pub fn histogram_observe(name: &str, value: f64) {
        crate::bindings::sluice::filter0_1_0::metrics::histogram_observe(name, value)
    }
}

/// A key-value store shared by all instances of this WasmFilter, with TTLs.
pub mod kv {
    use crate::bindings::sluice::filter0_1_0::kv;
    use std::time::Duration;

    fn ms(ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
    /// The value at `key`, unless absent or expired.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }
    /// Stores `value`; false if the store is full or the key or value too large.
    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> bool {
        kv::set(key, value, ms(ttl))
    }
    /// Atomically adds `delta` and returns the new value; `ttl` applies when the key is created.
    pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        kv::increment(key, delta, ms(ttl))
    }
    pub fn delete(key: &str) {
        kv::delete(key)
    }
}

/// State kept for the current request, across this filter's hooks: what `on_request`
/// stores, `on_response` of the same request reads, whichever instances run them.
/// Values belong to this WasmFilter and this request, and go when the request ends. A
/// request's context holds at most 64 keys and 64 KiB of keys and values together.
///
/// ```ignore
/// fn on_request(&self, req: &Request) -> Action {
///     let _ = context::set_json("started", &clock::monotonic_now());
///     Action::Continue
/// }
/// fn on_response(&self, resp: &Response) {
///     if let Some(t) = context::get_json::<u64>("started") { /* ... */ }
/// }
/// ```
pub mod context {
    use crate::bindings::sluice::filter0_2_0::context;

    /// The context is at its limit (64 keys, 64 KiB).
    pub use context::ContextError;

    /// The bytes stored under `key` for this request.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        context::get(key)
    }
    /// Stores `value` under `key` for this request, replacing what was there.
    pub fn set(key: &str, value: &[u8]) -> Result<(), ContextError> {
        context::set(key, value)
    }
    /// Removes `key`.
    pub fn remove(key: &str) {
        context::remove(key)
    }
    /// The value stored under `key` by [`set_json`], if it is there and parses as `T`.
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
        serde_json::from_slice(&get(key)?).ok()
    }
    /// Stores `value` as JSON under `key`.
    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), ContextError> {
        // Serializing plain data to a Vec does not fail; a type whose Serialize does is
        // stored as nothing rather than panicking in the filter.
        set(key, &serde_json::to_vec(value).unwrap_or_default())
    }
}

/// HTTP calls to the backends the WasmFilter grants in `spec.outbound`:
///
/// ```ignore
/// use sluice_sdk::outbound::{self, Request};
/// let answer = outbound::send("authz", Request::get("/check").header("authorization", token))?;
/// if answer.status == 200 { /* ... */ }
/// ```
///
/// A call reads as blocking in the filter: it returns with the answer. The gateway is not
/// blocked meanwhile (the thread serves other requests), and the wait does not count
/// against the filter's `limits.timeout`; each grant has its own `timeout`, and a
/// request's calls together may take at most its route's request timeout (30 s without
/// one).
pub mod outbound {
    use crate::bindings::sluice::filter0_2_0::outbound as wit;

    /// Why a call got no answer: `NotGranted` (no grant by that name), `Unavailable`
    /// (the backend cannot be used now), `Timeout`, `Failed` (connection or protocol),
    /// `InvalidRequest`, `ResponseTooLarge` (past `limits.maxBodyBytes`).
    pub use wit::CallError;

    /// A request to send to a granted backend.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Request {
        pub method: String,
        /// Path and query, starting with `/`.
        pub path: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Request {
        pub fn new(method: &str, path: &str) -> Self {
            Request {
                method: method.into(),
                path: path.into(),
                headers: Vec::new(),
                body: Vec::new(),
            }
        }
        pub fn get(path: &str) -> Self {
            Self::new("GET", path)
        }
        pub fn post(path: &str) -> Self {
            Self::new("POST", path)
        }
        /// Adds a header.
        pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }
    }

    /// The backend's answer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Response {
        pub status: u16,
        /// Lowercase names, in the order received.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        /// The first value of a header (names are case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn to_wit(request: Request) -> wit::OutboundRequest {
        wit::OutboundRequest {
            method: request.method,
            path: request.path,
            headers: request.headers,
            body: request.body,
        }
    }

    fn from_wit(r: wit::OutboundResponse) -> Response {
        Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }

    /// Sends `request` to the backend granted as `grant` and waits for the answer.
    pub fn send(grant: &str, request: Request) -> Result<Response, CallError> {
        wit::send(grant, &to_wit(request)).map(from_wit)
    }

    /// Starts a call whose body goes on after `request.body` in pieces: for a body too
    /// large to hold or not there yet, such as a copy of an upload as it streams.
    ///
    /// ```ignore
    /// let call = outbound::start("archive", outbound::Request::post("/uploads"))?;
    /// call.write(&chunk)?;        // waits while the backend is not taking it
    /// let answer = call.finish()?; // ends the body, waits for the answer
    /// ```
    ///
    /// The grant's timeout counts from here to the answer. An instance holds at most
    /// 16 started calls at once; dropping a [`Call`] before `finish` cancels it.
    pub fn start(grant: &str, request: Request) -> Result<Call, CallError> {
        wit::start(grant, &to_wit(request)).map(Call)
    }

    /// A started call (see [`start`]).
    pub struct Call(wit::Call);

    impl Call {
        /// Sends the next piece of the body.
        pub fn write(&self, data: &[u8]) -> Result<(), CallError> {
            self.0.write(data)
        }

        /// Ends the body and waits for the answer.
        pub fn finish(self) -> Result<Response, CallError> {
            self.0.finish().map(from_wit)
        }
    }
}

/// The connection a request came on (API 0.2).
pub mod connection {
    use crate::bindings::sluice::filter0_2_0::connection as wit;

    /// The address the request's connection comes from: the client, or a load balancer
    /// or proxy in front of the gateway, which names the client in `x-forwarded-for`
    /// (trust only the entries that proxies you run appended). An IPv4 client on a
    /// dual-stack socket comes as IPv4. `None` when the request came on no connection
    /// (a harness test that gives none).
    ///
    /// ```ignore
    /// if let Some(peer) = sluice_sdk::connection::client() {
    ///     sluice_sdk::log::info(&format!("from {}", peer.ip()));
    /// }
    /// ```
    pub fn client() -> Option<std::net::SocketAddr> {
        let a = wit::client()?;
        let ip = match a.address {
            wit::IpAddress::Ipv4((a, b, c, d)) => std::net::IpAddr::from([a, b, c, d]),
            wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                std::net::IpAddr::from([a, b, c, d, e, f, g, h])
            }
        };
        Some(std::net::SocketAddr::new(ip, a.port))
    }
}

/// Clocks: monotonic, for durations, and the time of day, for what expires.
pub mod clock {
    /// Nanoseconds since a fixed point in the past.
    pub fn monotonic_now() -> u64 {
        crate::bindings::sluice::filter0_1_0::clock::monotonic_now()
    }
    /// Milliseconds since the Unix epoch, UTC (API 0.2). WASI's clocks stay frozen at
    /// the epoch in a filter; this is the one wall clock it has.
    pub fn unix_millis() -> u64 {
        crate::bindings::sluice::filter0_2_0::wall_clock::now_millis()
    }
}

/// SHA-256 and SHA-512 computed by the gateway in native code (API 0.2): several times
/// faster than a hash compiled into the filter, for digesting bodies as they stream.
///
/// ```ignore
/// let h = sluice_sdk::digest::Hasher::new(sluice_sdk::digest::Algorithm::Sha256);
/// h.update(b"hello");
/// let sum: Vec<u8> = h.finish(); // 32 bytes; the hasher starts over
/// ```
///
/// An instance may hold at most 16 hashers at once.
pub mod digest {
    pub use crate::bindings::sluice::filter0_2_0::digest::{Algorithm, Hasher};
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    use crate::bindings::sluice::filter0_2_0::body as wit;

    pub fn configure<F: Filter>(
        cell: &OnceLock<F>,
        config: &str,
    ) -> Result<wit::Needs, ConfigErrors> {
        // A filter has no stderr: send panic messages to the gateway's log, where they
        // are reported with the trap that follows.
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("filter panicked: {info}"))
        }));
        let de = &mut serde_json::Deserializer::from_str(config);
        let parsed: F::Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // `.a.b`, `.a[0]`; a config type wrapped in `Option` reports `a.b`.
            let mut path = match path.as_str() {
                "." => String::new(),
                p if p.starts_with(['.', '[']) => path,
                p => format!(".{p}"),
            };
            let e = e.into_inner();
            // The line and column are of the JSON the gateway made from the user's
            // YAML, which the user never sees: the path says where.
            let mut message = e.to_string();
            let at = format!(" at line {} column {}", e.line(), e.column());
            if let Some(m) = message.strip_suffix(&at) {
                message = m.to_string();
            }
            // A missing field is reported at its parent: name the field itself.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                path = format!("{path}.{field}");
                message = "is required".to_string();
            }
            vec![config_error(path, message)]
        })?;
        let filter = F::new(parsed)?;
        let needs = filter.needs();
        // A second `configure` in the same instance keeps the first filter: the host
        // calls it once per instance.
        let _ = cell.set(filter);
        let mode = |m: BodyMode| match m {
            BodyMode::None => wit::BodyMode::None,
            BodyMode::Buffered => wit::BodyMode::Buffered,
            BodyMode::Streamed => wit::BodyMode::Streamed,
        };
        Ok(wit::Needs {
            request_body: mode(needs.request_body),
            response_body: mode(needs.response_body),
        })
    }

    fn not_configured() -> types::DirectResponse {
        types::DirectResponse {
            status: 500,
            headers: Vec::new(),
            body: b"filter was not configured".to_vec(),
        }
    }

    pub fn on_request<F: Filter>(cell: &OnceLock<F>, request: &Request) -> types::RequestAction {
        let Some(f) = cell.get() else {
            return types::RequestAction::Respond(not_configured());
        };
        match f.on_request(request) {
            Action::Continue => types::RequestAction::Continue,
            Action::Respond {
                status,
                headers,
                body,
            } => types::RequestAction::Respond(types::DirectResponse {
                status,
                headers,
                body,
            }),
        }
    }

    fn body_action(a: BodyAction) -> wit::BodyAction {
        match a {
            BodyAction::Continue => wit::BodyAction::Continue,
            BodyAction::Replace(b) => wit::BodyAction::Replace(b),
            BodyAction::Respond {
                status,
                headers,
                body,
            } => wit::BodyAction::Respond(types::DirectResponse {
                status,
                headers,
                body,
            }),
        }
    }

    pub fn on_request_body<F: Filter>(
        cell: &OnceLock<F>,
        request: &Request,
        body: Vec<u8>,
    ) -> wit::BodyAction {
        match cell.get() {
            Some(f) => body_action(f.on_request_body(request, body)),
            None => wit::BodyAction::Respond(not_configured()),
        }
    }

    pub fn on_response<F: Filter>(cell: &OnceLock<F>, response: &Response) {
        if let Some(f) = cell.get() {
            f.on_response(response)
        }
    }

    pub fn on_response_body<F: Filter>(
        cell: &OnceLock<F>,
        response: &Response,
        body: Vec<u8>,
    ) -> wit::BodyAction {
        match cell.get() {
            Some(f) => body_action(f.on_response_body(response, body)),
            None => wit::BodyAction::Respond(not_configured()),
        }
    }

    /// The stream this instance is in, per direction: the host gives an instance one
    /// stream at a time, from its start to its end.
    pub type Current = std::sync::Mutex<Option<Box<dyn BodyStream>>>;

    pub fn stream_start(current: &Current, stream: Option<Box<dyn BodyStream>>) {
        *current.lock().unwrap_or_else(|p| p.into_inner()) = stream;
    }

    pub fn chunk(current: &Current, chunk: Vec<u8>) -> wit::ChunkAction {
        match current.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(s) => match s.chunk(chunk) {
                Chunk::Pass => wit::ChunkAction::Pass,
                Chunk::Replace(b) => wit::ChunkAction::Replace(b),
            },
            None => wit::ChunkAction::Pass,
        }
    }

    pub fn stream_end(current: &Current, trailers: &Trailers) -> Vec<u8> {
        match current.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(mut s) => s.end(trailers),
            None => Vec::new(),
        }
    }
}

/// Exports a [`Filter`] implementation as the component's `sluice:filter/filter` world.
/// Use it once per filter crate (a `cdylib` built for `wasm32-wasip2`).
#[macro_export]
macro_rules! export {
    ($filter:ty) => {
        const _: () = {
            static FILTER: ::std::sync::OnceLock<$filter> = ::std::sync::OnceLock::new();
            static REQUEST_STREAM: $crate::__private::Current = ::std::sync::Mutex::new(None);
            static RESPONSE_STREAM: $crate::__private::Current = ::std::sync::Mutex::new(None);
            struct Export;
            impl $crate::bindings::Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::bindings::sluice::filter0_2_0::body::Needs,
                    $crate::ConfigErrors,
                > {
                    $crate::__private::configure::<$filter>(&FILTER, &config)
                }
                fn on_request_body(
                    request: &$crate::Request,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::bindings::sluice::filter0_2_0::body::BodyAction {
                    $crate::__private::on_request_body::<$filter>(&FILTER, request, body)
                }
                fn on_response_body(
                    response: &$crate::Response,
                    body: ::std::vec::Vec<u8>,
                ) -> $crate::bindings::sluice::filter0_2_0::body::BodyAction {
                    $crate::__private::on_response_body::<$filter>(&FILTER, response, body)
                }
                fn on_request(
                    request: &$crate::Request,
                ) -> $crate::bindings::sluice::filter0_1_0::types::RequestAction {
                    $crate::__private::on_request::<$filter>(&FILTER, request)
                }
                fn on_response(response: &$crate::Response) {
                    $crate::__private::on_response::<$filter>(&FILTER, response)
                }
                fn on_request_stream_start(request: &$crate::Request) {
                    let s = FILTER
                        .get()
                        .map(|f| $crate::Filter::request_stream(f, request));
                    $crate::__private::stream_start(&REQUEST_STREAM, s)
                }
                fn on_request_chunk(
                    chunk: ::std::vec::Vec<u8>,
                ) -> $crate::bindings::sluice::filter0_2_0::body::ChunkAction {
                    $crate::__private::chunk(&REQUEST_STREAM, chunk)
                }
                fn on_request_stream_end(trailers: &$crate::Trailers) -> ::std::vec::Vec<u8> {
                    $crate::__private::stream_end(&REQUEST_STREAM, trailers)
                }
                fn on_response_stream_start(response: &$crate::Response) {
                    let s = FILTER
                        .get()
                        .map(|f| $crate::Filter::response_stream(f, response));
                    $crate::__private::stream_start(&RESPONSE_STREAM, s)
                }
                fn on_response_chunk(
                    chunk: ::std::vec::Vec<u8>,
                ) -> $crate::bindings::sluice::filter0_2_0::body::ChunkAction {
                    $crate::__private::chunk(&RESPONSE_STREAM, chunk)
                }
                fn on_response_stream_end(trailers: &$crate::Trailers) -> ::std::vec::Vec<u8> {
                    $crate::__private::stream_end(&RESPONSE_STREAM, trailers)
                }
            }
    $crate::bindings::__export_filter_world!(Export with_types_in $crate::bindings);
        };
    };
}
