//! Traces end to end: the real binary exporting OTLP to a receiver on 127.0.0.1 built on
//! the official `opentelemetry-proto` messages (HTTP/protobuf and gRPC), W3C trace
//! context from the client through a Wasm filter's outbound call to the backends.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

/// A span as the receiver got it, ids in hex.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    error: bool,
    attributes: HashMap<String, String>,
    service: String,
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn keep(spans: &Spans, message: ExportTraceServiceRequest) {
    let mut all = spans.lock().expect("lock");
    for rs in message.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| value(&a.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                all.push(Got {
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    kind: s.kind,
                    error: s.status.is_some_and(|st| st.code == 2),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), value(&a.value)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
}

/// An OTLP receiver: HTTP/protobuf at `/v1/traces` and gRPC `TraceService/Export`
/// (h2c), on one port.
async fn receiver() -> (SocketAddr, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let spans: Spans = Arc::default();
    let kept = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        let path = req.uri().path().to_string();
                        let mut body = req.into_body().collect().await.expect("body").to_bytes();
                        if grpc {
                            assert_eq!(
                                path,
                                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                            );
                            // Uncompressed flag, length, message.
                            assert_eq!(body.get_u8(), 0, "uncompressed");
                            let len = body.get_u32() as usize;
                            assert_eq!(len, body.len());
                        } else {
                            assert_eq!(path, "/v1/traces");
                        }
                        keep(
                            &kept,
                            ExportTraceServiceRequest::decode(body).expect("OTLP message"),
                        );
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = if grpc {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().expect("value"));
                            vec![
                                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ]
                        } else {
                            vec![Ok(Frame::data(Bytes::new()))]
                        };
                        let content_type = if grpc {
                            "application/grpc"
                        } else {
                            "application/x-protobuf"
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", content_type)
                                .body(StreamBody::new(futures_util::stream::iter(frames)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, spans)
}

/// An authorization service that allows everything and keeps each call's `traceparent`.
async fn authz() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = seen.clone();
    let addr = http_server(move |req: Request<hyper::body::Incoming>| {
        let tp = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        kept.lock().expect("lock").push(tp);
        async { Response::new(Full::new(Bytes::new())) }
    })
    .await;
    (addr, seen)
}

/// Waits until the receiver holds a span of `trace` named as `name` says.
async fn span(spans: &Spans, trace: &str, name: impl Fn(&str) -> bool) -> Got {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = spans
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s.trace == trace && name(&s.name))
        {
            return s.clone();
        }
        assert!(
            Instant::now() < end,
            "no span of trace {trace} among {:#?}",
            spans.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `00-<trace>-<parent>-<flags>` split into its parts.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00", "{traceparent}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

struct Setup {
    port: u16,
    gw: Sluice,
    _app: Echo,
    _dir: TempDir,
}

/// A gateway with `/authz` behind the ext-authz filter (granted the `authz` service)
/// and `/plain` without filters, both to an echo backend, exporting to `otlp`.
async fn gateway(tag: &str, authz: SocketAddr, args: &[&str]) -> Setup {
    let app = echo("app").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    install_filters(&dir, &["ext_authz"]);
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write(
        "svc.yaml",
        &[
            service_yaml("app", &app, None),
            service_yaml_port("authz", authz.port(), None),
        ]
        .join("---\n"),
    );
    dir.write(
        "filters.yaml",
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: authz, namespace: default}\nspec:\n  source: {path: filters/ext_authz.wasm}\n  outbound:\n  - {name: authz, backendRef: {name: authz, port: 80}, timeout: 2s}\n",
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /authz}}}}]\n    filters: [{}]\n    backendRefs: [{{name: app, port: 80}}]\n  - backendRefs: [{{name: app, port: 80}}]\n",
            ext("authz")
        )),
    );
    let cache = dir.0.join("cache");
    let mut all = vec!["--cache-dir", cache.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let gw = Sluice::start(&dir.0, &all).await;
    Setup {
        port,
        gw,
        _app: app,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_the_client_the_gateway_a_filter_its_call_and_the_backend() {
    let (otlp, spans) = receiver().await;
    let (authz_addr, authz_seen) = authz().await;
    let endpoint = format!("http://{otlp}");
    let s = gateway(
        "trace-http",
        authz_addr,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--trace-export-interval",
            "100",
            "--trace-service-name",
            "edge",
        ],
    )
    .await;
    let c = client();

    // A client's sampled trace: the gateway's span is its child, the filter's hook the
    // gateway span's, the filter's call the hook's; each hop names its parent.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = send(
        &c,
        "GET",
        s.port,
        "h",
        "/authz/x",
        &[(
            "traceparent",
            &format!("00-{client_trace}-{client_span}-01"),
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (trace, backend_parent, flags) = parts(&r.seen("traceparent").expect("traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (client_trace, "01"));

    let server = span(&spans, client_trace, |n| n == "GET").await;
    assert_eq!(server.parent, client_span);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        server.id, backend_parent,
        "the backend's parent is the gateway span"
    );
    assert_eq!(server.service, "edge");
    assert_eq!(server.attributes["http.response.status_code"], "200");
    assert_eq!(server.attributes["url.path"], "/authz/x");
    assert_eq!(server.attributes["sluice.route"], "default/r");
    assert!(!server.error);

    let hook = span(&spans, client_trace, |n| {
        n == "filter default/authz on-request"
    })
    .await;
    assert_eq!(hook.parent, server.id);
    assert_eq!(hook.kind, SpanKind::Internal as i32);
    assert_eq!(hook.attributes["sluice.outcome"], "continue");

    let call = span(&spans, client_trace, |n| n.ends_with(" authz")).await;
    assert_eq!(call.parent, hook.id, "the call is the hook's child");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.attributes["http.response.status_code"], "200");
    let seen = authz_seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (trace, parent, _) = parts(&seen[0]);
    assert_eq!(
        (trace.as_str(), parent.as_str()),
        (client_trace, call.id.as_str())
    );

    // The access log names the same trace.
    assert!(
        s.gw.access_log().contains(client_trace),
        "{}",
        s.gw.access_log()
    );

    // No traceparent: a new trace, sampled, passed on to the backend.
    let r = send(&c, "GET", s.port, "h", "/plain", &[]).await;
    let (new_trace, parent, flags) = parts(&r.seen("traceparent").expect("traceparent"));
    assert_eq!(flags, "01");
    let server = span(&spans, &new_trace, |n| n == "GET").await;
    assert_eq!(server.parent, "", "a root span");
    assert_eq!(server.id, parent);

    // A client's trace that is not sampled: passed on as not sampled, not exported.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let r = send(
        &c,
        "GET",
        s.port,
        "h",
        "/authz/y",
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    )
    .await;
    let (trace, _, flags) = parts(&r.seen("traceparent").expect("traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled, "00"));
    let (trace, _, flags) = parts(&authz_seen.lock().expect("lock")[1]);
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled, "00"));
    // A later sampled request's spans arrive; the unsampled trace's never do.
    let r = send(&c, "GET", s.port, "h", "/plain", &[]).await;
    let (later, _, _) = parts(&r.seen("traceparent").expect("traceparent"));
    span(&spans, &later, |n| n == "GET").await;
    assert!(
        !spans
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.trace == unsampled),
        "an unsampled trace was exported"
    );
    assert!(s.gw.metric("sluice_trace_spans_exported_total").await >= 5);
    assert_eq!(s.gw.metric("sluice_trace_export_failures_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_and_an_absent_receiver_costs_requests_nothing() {
    let (otlp, spans) = receiver().await;
    let (authz_addr, _) = authz().await;
    let endpoint = format!("http://{otlp}");
    let s = gateway(
        "trace-grpc",
        authz_addr,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--trace-export-interval",
            "100",
        ],
    )
    .await;
    let r = get(s.port, "h", "/authz/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (trace, _, _) = parts(&r.seen("traceparent").expect("traceparent"));
    let server = span(&spans, &trace, |n| n == "GET").await;
    assert_eq!(server.service, "sluice");
    span(&spans, &trace, |n| n == "filter default/authz on-request").await;

    // Nothing listens at the endpoint: requests are served as ever, the failed exports
    // are counted.
    let closed = free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let s = gateway(
        "trace-absent",
        authz_addr,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--trace-export-interval",
            "100",
            "--otlp-timeout",
            "1",
        ],
    )
    .await;
    let c = client();
    for _ in 0..20 {
        let r = send(&c, "GET", s.port, "h", "/authz/x", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while s.gw.metric("sluice_trace_export_failures_total").await == 0 {
        assert!(Instant::now() < end, "no failed export counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.gw.metric("sluice_trace_spans_exported_total").await, 0);
}
