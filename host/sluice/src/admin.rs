//! The admin API: health, readiness, metrics, the live IR and every object's status.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_metrics::Registry;
use sluice_proxy::Gateway;
use sluice_translate::ObjectStatus;
use tokio::net::TcpListener;

pub struct AdminState {
    gw: Arc<Gateway>,
    runtime: Arc<sluice_wasm::Runtime>,
    /// Routes, streams, filters and (Kubernetes mode) the status writer.
    pub metrics: Registry,
    pub statuses: ArcSwap<Vec<ObjectStatus>>,
    pub ready: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl AdminState {
    pub fn new(
        gw: Arc<Gateway>,
        runtime: Arc<sluice_wasm::Runtime>,
        statuses: Vec<ObjectStatus>,
    ) -> Self {
        let metrics = Registry::default();
        metrics.register(gw.metrics.clone());
        metrics.register(runtime.clone());
        AdminState {
            gw,
            runtime,
            metrics,
            statuses: ArcSwap::from_pointee(statuses),
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }
    pub fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// Starts the admin API on a thread and a runtime of its own, so that a busy or stalled
/// data plane (every worker in a slow filter, a connection flood) cannot keep
/// `/readyz`, `/metrics` or `/status` from answering.
pub fn spawn(addr: std::net::SocketAddr, state: Arc<AdminState>) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on the admin address {addr}"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let served = rt.map(|rt| {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener, state).await;
                    Ok::<(), std::io::Error>(())
                })
            });
            if let Err(e) | Ok(Err(e)) = served {
                tracing::error!("the admin API stopped: {e}");
            }
        })?;
    Ok(())
}

async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => respond(StatusCode::OK, "application/json", s + "\n"),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

async fn answer(
    req: Request<Incoming>,
    s: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if s.ready.load(Ordering::Acquire) {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            s.metrics.encode(),
        ),
        "/config_dump" => {
            let snap = s.gw.snapshot.load();
            let last_error = s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            // The snapshot keeps its IR as compressed JSON (see `Snapshot::config_dump`).
            let last_error = serde_json::to_string(&last_error).unwrap_or_default();
            match snap.config_dump() {
                Ok(ir) => respond(
                    StatusCode::OK,
                    "application/json",
                    format!("{{\"ir\": {ir}, \"lastReloadError\": {last_error}}}\n"),
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/status" => {
            let statuses = s.statuses.load();
            json(&serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": &**statuses }))
        }
        "/filters/failures" => {
            let only = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("filter="))
                    .map(str::to_string)
            });
            let failures: Vec<_> = s
                .runtime
                .failures()
                .iter()
                .filter(|f| only.as_deref().is_none_or(|o| o == f.filter))
                .map(failure_json)
                .collect();
            json(&serde_json::json!({ "failures": failures }))
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /healthz /readyz /metrics /config_dump /status /filters/failures\n"
                .into(),
        ),
    })
}

/// A kept filter failure (WasmFilter `spec.debug.captureFailures`) as
/// `sluice filter replay` reads it: `request` and `response` are written as
/// `sluice filter test` reads them.
fn failure_json(f: &sluice_wasm::Failure) -> serde_json::Value {
    let config: serde_json::Value =
        serde_json::from_str(&f.config).unwrap_or(serde_json::Value::Null);
    let request = f.request.as_ref().map(|r| {
        serde_json::json!({
            "method": r.method,
            "path": r.path,
            "headers": r.headers,
            "body": r.body,
            "client": r.client,
        })
    });
    let response = f
        .response
        .as_ref()
        .map(|r| serde_json::json!({ "status": r.status, "headers": r.headers, "body": r.body }));
    let mut redacted: Vec<&str> = Vec::new();
    let mut notes = serde_json::Map::new();
    if let Some(r) = &f.request {
        redacted.extend(r.redacted.iter().map(String::as_str));
        if let Some(n) = &r.body_note {
            notes.insert("requestBody".into(), n.clone().into());
        }
    }
    if let Some(r) = &f.response {
        redacted.extend(r.redacted.iter().map(String::as_str));
        if let Some(n) = &r.body_note {
            notes.insert("responseBody".into(), n.clone().into());
        }
    }
    serde_json::json!({
        "time": sluice_proxy::access_log::rfc3339(f.time),
        "filter": f.filter,
        "digest": f.digest,
        "config": config,
        "hook": f.hook,
        "kind": f.kind,
        "message": f.message,
        "request": request,
        "response": response,
        "redactedHeaders": redacted,
        "notes": notes,
    })
}
