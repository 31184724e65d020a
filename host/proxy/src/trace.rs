//! Traces: W3C trace context read from clients and passed on to backends, and spans
//! exported by OTLP.
//!
//! Each HTTP request gets a server span, a child span for each Wasm filter hook it
//! runs, and under that a client span for each outbound call the hook makes; the call
//! and the backend carry `traceparent` naming the span they were sent from. Spans go
//! through the OpenTelemetry SDK (sampling, the batch processor and its thread) to our
//! own exporter, which posts OTLP protobuf over the hyper client the gateway already
//! has: over HTTP (`/v1/traces`) or gRPC (`TraceService/Export`).
//!
//! With tracing off nothing here runs: the request path tests one `Option`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use prost::Message as _;
use sluice_wasm::SpanIds;

/// How spans leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces` (port 4318 by custom).
    Http,
    /// OTLP/gRPC, to `<endpoint>` (port 4317 by custom).
    Grpc,
}

/// Tracing settings (`--otlp-*` and `--trace-*` flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// `http://host:port` or `https://host:port` (HTTP: a path other than `/` is kept
    /// and `/v1/traces` appended).
    pub endpoint: Uri,
    pub protocol: Protocol,
    /// The share of new traces sampled, 0 to 1; a client's sampled flag is followed.
    pub sample: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How long one export may take.
    pub timeout: Duration,
    /// Spans waiting for export; past it, new spans are dropped and counted.
    pub queue: usize,
    /// How often queued spans are sent.
    pub delay: Duration,
}

/// Counts kept by the exporter, shown at `/metrics`.
#[derive(Debug, Default)]
struct Counts {
    exported: AtomicU64,
    failed_exports: AtomicU64,
}

/// The process's tracer: the SDK pipeline and the W3C propagator.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    counts: Arc<Counts>,
}

impl Tracing {
    /// Starts the export pipeline; the exporter's calls run on `runtime`.
    pub fn otlp(cfg: &Config, runtime: tokio::runtime::Handle) -> Result<Arc<Tracing>, String> {
        let counts = Arc::new(Counts::default());
        let exporter = Otlp::new(cfg, runtime, counts.clone())?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(cfg.queue)
                    .with_max_export_batch_size(cfg.queue.clamp(1, 512))
                    .with_scheduled_delay(cfg.delay)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample.clamp(0.0, 1.0),
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sluice");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            counts,
        }))
    }

    /// Sends what is queued and stops the pipeline (on shutdown), waiting at most `limit`.
    pub fn shutdown(&self, limit: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(limit) {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }

    /// Starts a request's server span, the child of the client's `traceparent` when it
    /// sent a valid one.
    pub(crate) fn request(
        self: &Arc<Self>,
        headers: &HeaderMap,
        method: &http::Method,
    ) -> RequestSpan {
        let parent = self.propagator.extract(&Headers(headers));
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let state = parent.span().span_context().trace_state().clone();
        RequestSpan {
            span,
            state,
            tracing: self.clone(),
        }
    }

    /// Starts a child of `parent` named `name`.
    fn child(&self, parent: &SpanContext, name: String, kind: SpanKind) -> ChildSpan {
        let cx = Context::new().with_remote_span_context(parent.clone());
        ChildSpan(
            self.tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(&self.tracer, &cx),
        )
    }

    /// A span for a call a filter makes under `parent` (its hook's span) to `grant`;
    /// sets `traceparent` on the call's `headers` to name it.
    pub(crate) fn outbound(
        &self,
        parent: SpanIds,
        grant: &str,
        method: &http::Method,
        headers: &mut HeaderMap,
    ) -> ChildSpan {
        let parent = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            if parent.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            false,
            TraceState::default(),
        );
        let mut span = self.child(&parent, format!("{method} {grant}"), SpanKind::Client);
        span.0.set_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("sluice.outbound.grant", grant.to_owned()),
        ]);
        self.inject(span.0.span_context(), headers);
        span
    }

    /// Sets `traceparent` (and `tracestate`) on `headers` to name `span`.
    fn inject(&self, span: &SpanContext, headers: &mut HeaderMap) {
        let cx = Context::new().with_remote_span_context(span.clone());
        self.propagator
            .inject_context(&cx, &mut HeadersMut(headers));
    }
}

impl sluice_metrics::Collect for Tracing {
    fn collect(&self, out: &mut sluice_metrics::Encoder) {
        use sluice_metrics::{Labels, Type};
        let name = "sluice_trace_spans_exported_total";
        out.family(name, Type::Counter, "Spans sent to the OTLP endpoint.");
        let n = self.counts.exported.load(Ordering::Relaxed);
        out.sample(name, &Labels::new(), n);
        let name = "sluice_trace_export_failures_total";
        out.family(
            name,
            Type::Counter,
            "OTLP exports that failed; their spans are lost.",
        );
        let n = self.counts.failed_exports.load(Ordering::Relaxed);
        out.sample(name, &Labels::new(), n);
    }
}

/// A request's server span; ended when its response has been sent.
pub(crate) struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The client's `tracestate`, passed on unchanged.
    state: TraceState,
    tracing: Arc<Tracing>,
}

impl RequestSpan {
    /// The W3C trace id, for the access log.
    pub(crate) fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Sets `traceparent` on the request to the backend, naming this span.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap) {
        let sc = self.span.span_context();
        let sc = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            false,
            self.state.clone(),
        );
        self.tracing.inject(&sc, headers);
    }

    /// Starts the span of a Wasm filter's hook, and points `context` at it so the
    /// hook's outbound calls are its children. `None` when this request is not
    /// sampled: nothing is recorded, and the calls carry this span's ids.
    pub(crate) fn filter(
        &self,
        filter: &str,
        hook: &'static str,
        context: &mut sluice_wasm::Context,
    ) -> Option<ChildSpan> {
        let sc = self.span.span_context();
        if !sc.is_sampled() {
            context.set_span(Some(ids(sc)));
            return None;
        }
        let mut span =
            self.tracing
                .child(sc, format!("filter {filter} {hook}"), SpanKind::Internal);
        span.0.set_attributes([
            KeyValue::new("sluice.filter", filter.to_owned()),
            KeyValue::new("sluice.filter.hook", hook),
        ]);
        context.set_span(Some(ids(span.0.span_context())));
        Some(span)
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    pub(crate) fn set(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.span.set_attributes(attributes);
    }

    /// Ends the span with the response's status (5xx marks it an error).
    pub(crate) fn end(mut self, status: u16) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                self.span.set_status(Status::error(status.to_string()));
            }
        }
        self.span.end_with_timestamp(SystemTime::now());
    }
}

/// Ends a request's server span when its response has been sent, with what its access
/// log line would say (HTTP semantic conventions where they have a name).
pub(crate) fn finish(mut span: RequestSpan, r: &crate::access_log::Record, bytes_out: u64) {
    if span.is_recording() {
        let (route, rule, backend) = crate::access_log::route_fields(r);
        let version = match r.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        span.set([
            KeyValue::new("http.request.method", r.method.to_string()),
            KeyValue::new("url.path", r.path.clone()),
            KeyValue::new("network.protocol.version", version),
            KeyValue::new("client.address", r.remote.ip().to_string()),
            KeyValue::new("server.port", i64::from(r.listener.port())),
            KeyValue::new("http.response.body.size", bytes_out as i64),
            KeyValue::new("sluice.route", route.to_owned()),
            KeyValue::new("sluice.rule", rule.to_owned()),
            KeyValue::new("sluice.backend", backend.to_owned()),
        ]);
        if let Some(e) = &r.endpoint {
            span.set([KeyValue::new("sluice.endpoint", e.clone())]);
        }
    }
    span.end(r.status);
}

/// A filter hook's or an outbound call's span.
pub(crate) struct ChildSpan(opentelemetry_sdk::trace::Span);

impl ChildSpan {
    /// Ends the span: `outcome` is what the filter did (`continue`, `respond`...) or an
    /// error's kind (`trap`, `timeout`...), an error when `failed`.
    pub(crate) fn end(mut self, outcome: &str, failed: bool) {
        self.0
            .set_attribute(KeyValue::new("sluice.outcome", outcome.to_owned()));
        if failed {
            self.0.set_status(Status::error(outcome.to_owned()));
        }
        self.0.end_with_timestamp(SystemTime::now());
    }

    /// Ends an outbound call's span with its answer's status, or its error.
    pub(crate) fn end_call(mut self, result: Result<u16, &'static str>) {
        match result {
            Ok(status) => self.0.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            )),
            Err(e) => {
                self.0.set_attribute(KeyValue::new("error.type", e));
                self.0.set_status(Status::error(e));
            }
        }
        self.0.end_with_timestamp(SystemTime::now());
    }
}

fn ids(sc: &SpanContext) -> SpanIds {
    SpanIds {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The OTLP exporter: protobuf over the gateway's hyper client.
struct Otlp {
    url: Uri,
    protocol: Protocol,
    client: HttpsClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    resource: ResourceAttributesWithSchema,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp").field("url", &self.url).finish()
    }
}

/// The gRPC method OTLP traces are sent to.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Otlp {
    fn new(
        cfg: &Config,
        runtime: tokio::runtime::Handle,
        counts: Arc<Counts>,
    ) -> Result<Otlp, String> {
        let url = export_url(&cfg.endpoint, cfg.protocol)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("--otlp-endpoint: no TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new());
        if cfg.protocol == Protocol::Grpc {
            builder.http2_only(true).timer(TokioTimer::new());
        }
        Ok(Otlp {
            url,
            protocol: cfg.protocol,
            client: builder.build(connector),
            runtime,
            timeout: cfg.timeout,
            resource: ResourceAttributesWithSchema::default(),
            counts,
        })
    }

    fn request(&self, message: &ExportTraceServiceRequest) -> Result<Request<Full<Bytes>>, String> {
        let b = Request::post(self.url.clone());
        let (b, body) = match self.protocol {
            Protocol::Http => (
                b.header(http::header::CONTENT_TYPE, "application/x-protobuf"),
                Bytes::from(message.encode_to_vec()),
            ),
            Protocol::Grpc => {
                // A gRPC message: uncompressed flag, big-endian length, the protobuf.
                let len = message.encoded_len();
                let mut buf = BytesMut::with_capacity(5 + len);
                buf.put_u8(0);
                buf.put_u32(u32::try_from(len).map_err(|_| "a batch past 4 GiB".to_string())?);
                message
                    .encode(&mut buf)
                    .map_err(|e| format!("encoding: {e}"))?;
                (
                    b.header(http::header::CONTENT_TYPE, "application/grpc")
                        .header(http::header::TE, "trailers"),
                    buf.freeze(),
                )
            }
        };
        b.body(Full::new(body)).map_err(|e| e.to_string())
    }
}

/// Where an export goes: `/v1/traces` under an HTTP endpoint's path, or the gRPC method.
fn export_url(endpoint: &Uri, protocol: Protocol) -> Result<Uri, String> {
    let scheme = endpoint.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "--otlp-endpoint {endpoint}: give http://HOST:PORT or https://HOST:PORT"
        ));
    }
    let Some(authority) = endpoint.authority() else {
        return Err(format!("--otlp-endpoint {endpoint}: no host"));
    };
    let path = match protocol {
        Protocol::Http => format!("{}/v1/traces", endpoint.path().trim_end_matches('/')),
        Protocol::Grpc => GRPC_PATH.to_string(),
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))
}

/// Sends one export and reads its answer: HTTP 2xx, and for gRPC a `grpc-status` of 0.
async fn send(client: HttpsClient, req: Request<Full<Bytes>>, grpc: bool) -> Result<(), String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let header_status = resp.headers().get("grpc-status").cloned();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the endpoint answered {status}"));
    }
    if grpc {
        let code = header_status.or_else(|| collected.trailers()?.get("grpc-status").cloned());
        match code.as_ref().map(HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(c) => {
                return Err(format!(
                    "the endpoint answered grpc-status {}",
                    String::from_utf8_lossy(c)
                ));
            }
            None => return Err("the endpoint answered without a grpc-status".into()),
        }
    }
    Ok(())
}

impl SpanExporter for Otlp {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let message = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let result = match self.request(&message) {
            Ok(req) => {
                // The batch processor runs on a thread of its own; the call runs on the
                // gateway's runtime, where the hyper client's connections live.
                let (client, timeout) = (self.client.clone(), self.timeout);
                let grpc = self.protocol == Protocol::Grpc;
                let call = self.runtime.spawn(async move {
                    tokio::time::timeout(timeout, send(client, req, grpc))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
                });
                call.await.unwrap_or_else(|e| Err(e.to_string()))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.counts.exported.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.counts.failed_exports.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.url, error = %e, spans = n, "OTLP export failed");
                Err(OTelSdkError::InternalFailure(e))
            }
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_urls_follow_the_protocol() {
        let u = |s: &str, p| export_url(&s.parse().expect("uri"), p);
        assert_eq!(
            u("http://127.0.0.1:4318", Protocol::Http).expect("url"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            u("https://otel.example/base/", Protocol::Http).expect("url"),
            "https://otel.example/base/v1/traces"
        );
        assert_eq!(
            u("http://127.0.0.1:4317", Protocol::Grpc).expect("url"),
            "http://127.0.0.1:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert!(u("127.0.0.1:4317", Protocol::Grpc).is_err());
        assert!(u("ftp://x", Protocol::Http).is_err());
    }
}
