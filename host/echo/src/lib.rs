//! A small echo backend for the quickstart and the tests.
//!
//! Every request gets a JSON answer describing what arrived: method, path, host,
//! protocol, headers, body size, and the namespace, service and pod this instance
//! stands for (the shape of the Gateway API's echo-basic). It speaks HTTP/1.1 and
//! HTTP/2 cleartext, echoes WebSocket messages, and obeys a few request headers that
//! tests use to make it misbehave on purpose:
//!
//! - `x-echo-delay-ms: N`: wait N milliseconds before answering;
//! - `x-echo-status: N`: answer with status N;
//! - `x-echo-set-header: name: value`: add a response header (repeatable);
//! - `x-echo-bytes: N`: answer with N bytes of `x` (at most 1 GiB) instead of the JSON;
//! - `x-echo-reflect: 1`: answer with the request's body and content type instead of
//!   the JSON, and say in `x-echo-request-content-length` what content-length the
//!   request came with (`none` without one), and each trailer the request body ended
//!   with as `x-echo-request-trailer-<name>`.
//!
//! The JSON lists the request's trailers under `trailers`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

/// Who this echo instance says it is.
#[derive(Debug, Default)]
pub struct Identity {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    /// Requests answered so far (tests read it to see mirrored traffic arrive).
    pub requests: AtomicU64,
}

impl Identity {
    pub fn new(namespace: &str, service: &str, pod: &str) -> Self {
        Identity {
            namespace: namespace.into(),
            service: service.into(),
            pod: pod.into(),
            requests: AtomicU64::new(0),
        }
    }
}

/// Serves until the listener fails. Each connection runs on its own task.
pub async fn serve(listener: TcpListener, id: Arc<Identity>) -> std::io::Result<()> {
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, remote) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, id.clone(), remote));
            let _ = http
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    mut req: Request<Incoming>,
    id: Arc<Identity>,
    remote: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    id.requests.fetch_add(1, Ordering::Relaxed);
    if is_websocket(&req) {
        return Ok(websocket(&mut req));
    }
    let h = req.headers();
    let delay = h
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let status = h
        .get("x-echo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    // A body of this many bytes instead of the JSON (at most 1 GiB), for tests of large
    // responses.
    let filler = h
        .get("x-echo-bytes")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map(|n| n.min(1 << 30));
    let reflect = h.contains_key("x-echo-reflect").then(|| {
        (
            h.get(header::CONTENT_TYPE).cloned(),
            h.get(header::CONTENT_LENGTH)
                .cloned()
                .unwrap_or(HeaderValue::from_static("none")),
        )
    });
    let extra: Vec<(String, String)> = h
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| {
            let (n, v) = v.to_str().ok()?.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut headers = serde_json::Map::new();
    for name in h.keys() {
        let values: Vec<serde_json::Value> = h
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_string(), serde_json::Value::Array(values));
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let proto = format!("{:?}", req.version());
    // The body is held only to reflect it; otherwise it is counted and dropped as it
    // comes, so an upload of any size costs no memory here.
    let mut body = req.into_body();
    let mut kept = reflect.as_ref().map(|_| Vec::new());
    let mut trailers = header::HeaderMap::new();
    let mut body_len = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        match frame.into_data() {
            Ok(d) => {
                body_len += d.len();
                if let Some(k) = kept.as_mut() {
                    k.extend_from_slice(&d);
                }
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers = t;
                }
            }
        }
    }
    let received = Bytes::from(kept.unwrap_or_default());
    let trailer_json: serde_json::Map<String, serde_json::Value> = trailers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let json = serde_json::json!({
        "path": path,
        "host": host,
        "method": method,
        "proto": proto,
        "headers": headers,
        "bodyLength": body_len,
        "trailers": trailer_json,
        "remote": remote.to_string(),
        "namespace": id.namespace,
        "service": id.service,
        "pod": id.pod,
    });
    let body = match (filler, &reflect) {
        (_, Some(_)) => received,
        (Some(n), None) => Bytes::from(vec![b'x'; n]),
        (None, None) => Bytes::from(json.to_string()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    match reflect {
        Some((content_type, length)) => {
            if let Some(ct) = content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp.headers_mut()
                .insert("x-echo-request-content-length", length);
            for (n, v) in &trailers {
                if let Ok(n) =
                    header::HeaderName::from_bytes(format!("x-echo-request-trailer-{n}").as_bytes())
                {
                    resp.headers_mut().append(n, v.clone());
                }
            }
        }
        None => {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    for (n, v) in extra {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Accepts the WebSocket handshake and echoes every text and binary message.
fn websocket(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"missing Sec-WebSocket-Key\n",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
