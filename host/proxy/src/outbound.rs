//! Outbound calls from Wasm filters (filter API 0.2 `outbound.send`): only to the
//! backends the WasmFilter's `spec.outbound` grants, through the same upstream pools,
//! endpoints and BackendTLSPolicy as routes.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::Either;
use tokio::time::Instant;

use sluice_wasm::{CallError, CallFuture, Outbound, OutboundRequest, OutboundResponse};

use crate::Gateway;
use crate::body::{Buffered, Collected, collect};
use crate::client::Streamed;
use crate::snapshot::Backend;

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

impl Outbound for Calls {
    fn send(&self, grant: &str, req: OutboundRequest) -> CallFuture {
        let Some(g) = self.grants.0.iter().find(|g| g.name == grant) else {
            return Box::pin(std::future::ready(Err(CallError::NotGranted)));
        };
        let backend = g.backend.clone();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = g.timeout.min(left);
        let gw = self.gw.clone();
        let max_body = self.max_body;
        Box::pin(async move {
            if let Some(why) = &backend.invalid {
                return Err(CallError::Unavailable(why.clone()));
            }
            if timeout.is_zero() {
                return Err(CallError::Timeout);
            }
            let Some(endpoint) = crate::proxy::next_endpoint(&backend).cloned() else {
                return Err(CallError::Unavailable(format!(
                    "{}: no ready endpoints",
                    backend.name
                )));
            };
            let uri = Uri::builder()
                .scheme(if backend.tls.is_some() {
                    "https"
                } else {
                    "http"
                })
                .authority(endpoint.clone())
                .path_and_query(req.path)
                .build()
                .map_err(|e| CallError::InvalidRequest(e.to_string()))?;
            let mut out = Request::new(Either::Right(Buffered::new(req.body)));
            *out.method_mut() = req.method;
            *out.uri_mut() = uri;
            *out.headers_mut() = req.headers;
            *out.version_mut() = match backend.protocol {
                sluice_ir::UpstreamProtocol::Http1 => http::Version::HTTP_11,
                sluice_ir::UpstreamProtocol::H2c => http::Version::HTTP_2,
            };
            if !out.headers().contains_key(header::HOST)
                && let Ok(h) = HeaderValue::from_str(endpoint.as_str())
            {
                out.headers_mut().insert(header::HOST, h);
            }
            let start = Instant::now();
            let call = async {
                let resp = crate::proxy::send(&gw, &backend, out)
                    .await
                    .map_err(|e| CallError::Failed(describe(&e)))?;
                let (parts, body) = resp.into_parts();
                backend.stats.record(parts.status.as_u16(), start.elapsed());
                match collect(Streamed::upstream(body), max_body).await {
                    Collected::Whole { data, .. } => Ok(OutboundResponse {
                        status: parts.status,
                        headers: parts.headers,
                        body: data,
                    }),
                    Collected::TooLarge(_) => Err(CallError::ResponseTooLarge),
                    Collected::Failed(e) => Err(CallError::Failed(e.to_string())),
                }
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout),
            }
        })
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
