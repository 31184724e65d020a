//! Test a Sluice filter inside `cargo test`, without a gateway.
//!
//! The harness builds the filter for `wasm32-wasip2`, loads it in the same runtime the
//! gateway uses (same limits, same sandbox), and runs its hooks on `http` values:
//!
//! ```ignore
//! let wasm = sluice_harness::build(env!("CARGO_MANIFEST_DIR"))?;
//! let filter = sluice_harness::Harness::load(&wasm, serde_json::json!({"greeting": "hi"}))?;
//! let req = http::Request::get("/").body(()).unwrap();
//! match filter.on_request(req)? {
//!     sluice_harness::Outcome::Continue(req) => assert_eq!(req.headers()["x-hello"], "hi"),
//!     sluice_harness::Outcome::Respond(resp) => panic!("unexpected answer {}", resp.status()),
//! }
//! ```
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use sluice_wasm::{ApiVersion, BodyMode, CallError, Needs, OutboundRequest, OutboundResponse};
use sluice_wasm::{BodyOutcome, Context, FilterSpec, Pool, RequestOutcome, Runtime};
pub use sluice_wasm::{ErrorKind, FilterError};

/// What `on-request` did to a request.
#[derive(Debug)]
pub enum Outcome {
    /// The filter let the request through, possibly changed.
    Continue(http::Request<()>),
    /// The filter answered itself.
    Respond(http::Response<Vec<u8>>),
}

/// What `on-request-body` did: the request goes on (its body replaced if the filter
/// replaced it, with `content-length` set as the gateway sets it), or the filter
/// answered.
#[derive(Debug)]
pub enum RequestBodyOutcome {
    Continue(http::Request<Vec<u8>>),
    Respond(http::Response<Vec<u8>>),
}

/// A streamed body after a filter (API 0.2, [`Harness::stream_request`]): what it
/// forwarded for each chunk fed to it, the bytes it added at the end, and the trailers.
#[derive(Debug, Default)]
pub struct StreamedBody {
    /// One entry per chunk fed: the chunk as it came, or what the filter sent instead
    /// (empty if it dropped it).
    pub chunks: Vec<Vec<u8>>,
    /// What `end` added after the last chunk.
    pub tail: Vec<u8>,
    /// The trailers after the filter's `end`.
    pub trailers: http::HeaderMap,
}

impl StreamedBody {
    /// The whole body the other side would get.
    pub fn body(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.chunks.concat();
        all.extend_from_slice(&self.tail);
        all
    }
}

/// A loaded filter: one WasmFilter's worth of instances.
pub struct Harness {
    pool: Arc<Pool>,
    /// The context of the request `on_request` last started (see [`Exchange`]).
    current: std::sync::Mutex<Context>,
    /// What answers the filter's outbound calls (see [`Harness::answer_outbound`]).
    outbound: std::sync::Mutex<Option<Arc<dyn sluice_wasm::Outbound>>>,
    /// Where requests come from (see [`Harness::set_client`]).
    client: std::sync::Mutex<Option<std::net::SocketAddr>>,
}

/// Answers a filter's outbound calls in a test: the one fake the harness has, so that a
/// filter's unit test needs no server.
/// A started call (`outbound::start`) is answered once finished, with the whole body
/// it was written.
struct Answerer<F>(Arc<F>);

impl<F> sluice_wasm::Outbound for Answerer<F>
where
    F: Fn(&str, OutboundRequest) -> Result<OutboundResponse, CallError> + Send + Sync + 'static,
{
    fn send(&self, grant: &str, request: OutboundRequest) -> sluice_wasm::CallFuture {
        Box::pin(std::future::ready((self.0)(grant, request)))
    }

    fn start(
        &self,
        grant: &str,
        request: OutboundRequest,
    ) -> Result<Box<dyn sluice_wasm::BodySink>, CallError> {
        Ok(Box::new(Collecting {
            answer: self.0.clone(),
            grant: grant.to_string(),
            body: request.body.to_vec(),
            request,
        }))
    }
}

/// A started call's body, collected until it is finished.
struct Collecting<F> {
    answer: Arc<F>,
    grant: String,
    request: OutboundRequest,
    body: Vec<u8>,
}

impl<F> sluice_wasm::BodySink for Collecting<F>
where
    F: Fn(&str, OutboundRequest) -> Result<OutboundResponse, CallError> + Send + Sync + 'static,
{
    fn write(&mut self, data: bytes::Bytes) -> sluice_wasm::WriteFuture<'_> {
        self.body.extend_from_slice(&data);
        Box::pin(std::future::ready(Ok(())))
    }

    fn finish(self: Box<Self>) -> sluice_wasm::CallFuture {
        let Collecting {
            answer,
            grant,
            mut request,
            body,
        } = *self;
        request.body = body.into();
        Box::pin(std::future::ready(answer(&grant, request)))
    }
}

/// One request's way through a filter: what the filter keeps for it (its `context`,
/// API 0.2) from `on_request` to `on_response`. [`Harness::on_request`] and
/// [`Harness::on_response`] treat each pair as one request; use an `Exchange` with the
/// `_in` methods to interleave several.
#[derive(Debug, Default)]
pub struct Exchange(Context);

impl Exchange {
    /// What the filter stored under `key` for this request.
    pub fn context(&self, key: &str) -> Option<&[u8]> {
        self.0.get(key)
    }
}

static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();
static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

fn runtime() -> Result<Arc<Runtime>, String> {
    RUNTIME
        .get_or_init(|| Runtime::new(CACHE_DIR.get().cloned()).map_err(|e| e.to_string()))
        .clone()
}

/// Ticks of the shared runtime's epoch clock so far (see
/// [`sluice_wasm::Runtime::epoch_ticks`]); 0 before the first filter loads.
pub fn epoch_ticks() -> u64 {
    RUNTIME
        .get()
        .and_then(|r| r.as_ref().ok())
        .map_or(0, |r| r.epoch_ticks())
}

/// Keeps the machine code of the components this process loads in `dir`, by digest,
/// in the format of the gateway's `--cache-dir` (the engines match, so the two can
/// share a folder). A later run then loads a component it has seen in milliseconds
/// instead of compiling it again, which takes seconds for a Python or JavaScript
/// component. Call it before the first [`Harness::load`]: it returns `false`, and
/// changes nothing, once the runtime has started.
///
/// ```ignore
/// sluice_harness::set_cache_dir("target/sluice-wasm-cache".into());
/// ```
pub fn set_cache_dir(dir: PathBuf) -> bool {
    RUNTIME.get().is_none() && CACHE_DIR.set(dir).is_ok()
}

/// Limits for [`Harness::load_with`]; the defaults are the gateway's.
#[derive(Clone, Debug)]
pub struct Limits {
    pub memory_bytes: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: usize::try_from(sluice_ir::WASM_DEFAULT_MEMORY).unwrap_or(usize::MAX),
            timeout: sluice_ir::WASM_DEFAULT_TIMEOUT,
        }
    }
}

impl Harness {
    /// Loads a compiled filter and runs `configure` with `config`. A config the filter
    /// refuses comes back as an error of kind `Config`, with the filter's messages.
    pub fn load(wasm: &Path, config: serde_json::Value) -> Result<Harness, FilterError> {
        Self::load_with(wasm, config, Limits::default())
    }

    pub fn load_with(
        wasm: &Path,
        config: serde_json::Value,
        limits: Limits,
    ) -> Result<Harness, FilterError> {
        let err = |message: String| FilterError {
            kind: ErrorKind::Trap,
            message,
            config_errors: Vec::new(),
        };
        let rt = runtime().map_err(err)?;
        let bytes = std::fs::read(wasm).map_err(|e| err(format!("{}: {e}", wasm.display())))?;
        let compiled = rt.load(&bytes).map_err(|e| err(e.to_string()))?;
        let spec = FilterSpec {
            name: format!(
                "test/{}",
                wasm.file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            ),
            config: config.to_string(),
            memory_bytes: limits.memory_bytes,
            timeout: limits.timeout,
            min_instances: 1,
            kv: sluice_wasm::KvBackend::Memory,
            capture: sluice_wasm::CaptureSpec::default(),
        };
        Ok(Harness {
            pool: sluice_wasm::block_on(rt.pool(&compiled, &spec))?,
            current: std::sync::Mutex::default(),
            outbound: std::sync::Mutex::default(),
            client: std::sync::Mutex::default(),
        })
    }

    /// Answers the filter's outbound calls (API 0.2 `outbound.send`) with `answer`,
    /// for the requests started from now on: it gets the grant name and the request,
    /// and returns the response or the error the gateway would (`CallError::NotGranted`
    /// for a name the WasmFilter would not grant, `Timeout`, `Failed`, ...). Without
    /// it, every call is refused as not granted, as for a WasmFilter without
    /// `spec.outbound`.
    ///
    /// ```ignore
    /// f.answer_outbound(|grant, req| {
    ///     assert_eq!(grant, "authz");
    ///     Ok(sluice_harness::OutboundResponse {
    ///         status: http::StatusCode::OK,
    ///         headers: http::HeaderMap::new(),
    ///         body: bytes::Bytes::new(),
    ///     })
    /// });
    /// ```
    pub fn answer_outbound(
        &self,
        answer: impl Fn(&str, OutboundRequest) -> Result<OutboundResponse, CallError>
        + Send
        + Sync
        + 'static,
    ) {
        *self.outbound.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(Answerer(Arc::new(answer))));
    }

    /// A new request's exchange, whose outbound calls [`Harness::answer_outbound`]
    /// answers.
    pub fn exchange(&self) -> Exchange {
        let cx = match &*self.outbound.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(o) => Context::with_outbound(o.clone()),
            None => Context::default(),
        };
        match *self.client.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(a) => Exchange(cx.with_client(a)),
            None => Exchange(cx),
        }
    }

    /// The address the requests started from now on come from (API 0.2
    /// `connection.client`), as the gateway gives a connection's peer; `None` (the
    /// default) for none.
    ///
    /// ```ignore
    /// f.set_client(Some("203.0.113.7:50000".parse()?));
    /// ```
    pub fn set_client(&self, client: Option<std::net::SocketAddr>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// The `sluice:filter` version the component speaks.
    pub fn api(&self) -> ApiVersion {
        self.pool.api()
    }

    /// Runs `on-request` (on this thread, to completion, as the gateway runs it on a
    /// worker) as the start of a new request.
    pub fn on_request(&self, req: http::Request<()>) -> Result<Outcome, FilterError> {
        let mut ex = self.exchange();
        let out = self.on_request_in(&mut ex, req);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = ex.0;
        out
    }

    /// Runs `f` in the exchange `on_request` last started.
    fn in_current<T>(&self, f: impl FnOnce(&mut Exchange) -> T) -> T {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut ex = Exchange(std::mem::take(&mut *current));
        let out = f(&mut ex);
        *current = ex.0;
        out
    }

    /// Runs `on-response` for the request `on_request` last started.
    pub fn on_response(&self, resp: http::Response<()>) -> Result<http::Response<()>, FilterError> {
        self.in_current(|ex| self.on_response_in(ex, resp))
    }

    /// Which bodies the filter asked for from `configure` (API 0.2).
    pub fn needs(&self) -> Needs {
        self.pool.needs()
    }

    /// Runs `on-request-body` with the request's whole body, for the request
    /// `on_request` last started. The gateway calls it only if [`Harness::needs`] asks
    /// for the request body, with at most the WasmFilter's `limits.maxBodyBytes`; the
    /// harness calls it whenever asked.
    pub fn on_request_body(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<RequestBodyOutcome, FilterError> {
        self.in_current(|ex| self.on_request_body_in(ex, req))
    }

    /// Runs `on-response-body` with the response's whole body, for the request
    /// `on_request` last started. A body the filter replaced comes back with
    /// `content-length` set; a direct answer replaces the whole response.
    pub fn on_response_body(
        &self,
        resp: http::Response<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, FilterError> {
        self.in_current(|ex| self.on_response_body_in(ex, resp))
    }

    /// Runs `on-request-body` for the request `ex` stands for.
    pub fn on_request_body_in(
        &self,
        ex: &mut Exchange,
        req: http::Request<Vec<u8>>,
    ) -> Result<RequestBodyOutcome, FilterError> {
        let (mut parts, body) = req.into_parts();
        let outcome = sluice_wasm::block_on(self.pool.on_request_body(
            &mut parts.method,
            &mut parts.uri,
            &mut parts.headers,
            &mut ex.0,
            body.clone().into(),
        ))?;
        Ok(match outcome {
            BodyOutcome::Continue => {
                RequestBodyOutcome::Continue(http::Request::from_parts(parts, body))
            }
            BodyOutcome::Replace(new) => {
                set_length(&mut parts.headers, new.len());
                RequestBodyOutcome::Continue(http::Request::from_parts(parts, new))
            }
            BodyOutcome::Respond {
                status,
                headers,
                body,
            } => RequestBodyOutcome::Respond(response(status, headers, body)),
        })
    }

    /// Runs `on-response-body` for the request `ex` stands for.
    pub fn on_response_body_in(
        &self,
        ex: &mut Exchange,
        resp: http::Response<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, FilterError> {
        let (mut parts, body) = resp.into_parts();
        let outcome = sluice_wasm::block_on(self.pool.on_response_body(
            &mut parts.status,
            &mut parts.headers,
            &mut ex.0,
            body.clone().into(),
        ))?;
        Ok(match outcome {
            BodyOutcome::Continue => http::Response::from_parts(parts, body),
            BodyOutcome::Replace(new) => {
                set_length(&mut parts.headers, new.len());
                http::Response::from_parts(parts, new)
            }
            BodyOutcome::Respond {
                status,
                headers,
                body,
            } => response(status, headers, body),
        })
    }

    /// Runs `on-request` for the request `ex` stands for.
    pub fn on_request_in(
        &self,
        ex: &mut Exchange,
        req: http::Request<()>,
    ) -> Result<Outcome, FilterError> {
        let (mut parts, ()) = req.into_parts();
        let outcome = sluice_wasm::block_on(self.pool.on_request(
            &mut parts.method,
            &mut parts.uri,
            &mut parts.headers,
            &mut ex.0,
        ))?;
        match outcome {
            RequestOutcome::Continue => Ok(Outcome::Continue(http::Request::from_parts(parts, ()))),
            RequestOutcome::Respond {
                status,
                headers,
                body,
            } => Ok(Outcome::Respond(response(status, headers, body))),
        }
    }

    /// Runs `on-response` for the request `ex` stands for.
    pub fn on_response_in(
        &self,
        ex: &mut Exchange,
        resp: http::Response<()>,
    ) -> Result<http::Response<()>, FilterError> {
        let (mut parts, ()) = resp.into_parts();
        sluice_wasm::block_on(self.pool.on_response(
            &mut parts.status,
            &mut parts.headers,
            &mut ex.0,
        ))?;
        Ok(http::Response::from_parts(parts, ()))
    }

    /// Streams a request body through the filter, as the gateway does when
    /// [`Harness::needs`] asks for it `Streamed`: `on-request-stream-start` with the
    /// request's head (returned as the filter left it), `on-request-chunk` for each of
    /// `chunks`, then `on-request-stream-end` with `trailers`. The stream sees the
    /// context of the request `on_request` last started.
    pub fn stream_request<C: Into<Vec<u8>>>(
        &self,
        req: http::Request<()>,
        chunks: impl IntoIterator<Item = C>,
        trailers: http::HeaderMap,
    ) -> Result<(http::Request<()>, StreamedBody), FilterError> {
        let (mut parts, ()) = req.into_parts();
        let context = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stream = sluice_wasm::block_on(self.pool.request_stream(
            &mut parts.method,
            &mut parts.uri,
            &mut parts.headers,
            context,
        ))?;
        let body = feed(stream, chunks, trailers)?;
        Ok((http::Request::from_parts(parts, ()), body))
    }

    /// Streams a response body through the filter (`on-response-stream-start`, the
    /// chunks, `on-response-stream-end`), as [`Harness::stream_request`] does a request's.
    pub fn stream_response<C: Into<Vec<u8>>>(
        &self,
        resp: http::Response<()>,
        chunks: impl IntoIterator<Item = C>,
        trailers: http::HeaderMap,
    ) -> Result<(http::Response<()>, StreamedBody), FilterError> {
        let (mut parts, ()) = resp.into_parts();
        let context = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stream = sluice_wasm::block_on(self.pool.response_stream(
            &mut parts.status,
            &mut parts.headers,
            context,
        ))?;
        let body = feed(stream, chunks, trailers)?;
        Ok((http::Response::from_parts(parts, ()), body))
    }

    /// This filter's metrics (calls, errors by kind, live instances).
    pub fn stats(&self) -> &sluice_wasm::FilterStats {
        self.pool.stats()
    }
}

fn response(
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// As the gateway frames a body it holds whole.
fn set_length(headers: &mut http::HeaderMap, len: usize) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
}

fn feed<C: Into<Vec<u8>>>(
    mut stream: sluice_wasm::BodyStream,
    chunks: impl IntoIterator<Item = C>,
    mut trailers: http::HeaderMap,
) -> Result<StreamedBody, FilterError> {
    let mut out = StreamedBody::default();
    for c in chunks {
        let c: bytes::Bytes = c.into().into();
        let sent = sluice_wasm::block_on(stream.chunk(c.clone()))?;
        out.chunks.push(sent.unwrap_or_else(|| c.to_vec()));
    }
    out.tail = sluice_wasm::block_on(stream.end(&mut trailers))?;
    out.trailers = trailers;
    Ok(out)
}

/// Builds the filter crate at `manifest_dir` for `wasm32-wasip2` (release) and returns
/// the path of its `.wasm`. Needs `rustup target add wasm32-wasip2`.
pub fn build(manifest_dir: impl AsRef<Path>) -> Result<PathBuf, String> {
    let all = build_all(manifest_dir.as_ref())?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "building {} produced no .wasm: a filter crate needs `[lib] crate-type = \
             [\"cdylib\"]` in its Cargo.toml",
            manifest_dir.as_ref().display()
        )),
        _ => Err(format!(
            "expected one .wasm from {}, got {all:?}: build one filter crate at a time",
            manifest_dir.as_ref().display()
        )),
    }
}

/// Builds every cdylib of the crate or workspace at `manifest_dir` and returns their
/// `.wasm` files.
pub fn build_all(manifest_dir: &Path) -> Result<Vec<PathBuf>, String> {
    cargo_build(manifest_dir, &["--release"])
}

/// `cargo build --target wasm32-wasip2 ARGS` of the crate or workspace at
/// `manifest_dir` (into its own `target`), returning the `.wasm` files built: for
/// other profiles and packages than [`build_all`]'s, such as a debug build whose traps
/// name source lines (`&["-p", "my-filter"]`).
pub fn cargo_build(manifest_dir: &Path, args: &[&str]) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(manifest_dir.join("target"))
        // Settings of the outer build are for the host target, not for this one.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            manifest_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut wasm = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm.push(PathBuf::from(f));
            }
        }
    }
    wasm.sort();
    Ok(wasm)
}

/// The filters of this repository's `filters/` workspace, built once per test process.
pub fn repo_filters() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters");
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        build_all(&dir)?;
        Ok(dir.join("target/wasm32-wasip2/release"))
    })
    .clone()
}
