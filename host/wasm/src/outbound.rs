//! Outbound calls (filter API 0.2 `outbound`): what the gateway implements to send
//! them, and the conversions from and to the WIT types.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::bindings::v0_2::sluice::filter0_2_0::outbound as wit;

/// A call a filter makes.
#[derive(Debug)]
pub struct OutboundRequest {
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The span of the hook making the call, when the request is traced.
    pub span: Option<SpanIds>,
}

/// A traced span's W3C trace context ids, carried from the gateway's filter call into
/// the calls the filter makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Its answer, read whole.
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a call got no answer (the WIT `call-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    NotGranted,
    Unavailable(String),
    Timeout,
    Failed(String),
    InvalidRequest(String),
    ResponseTooLarge,
}

pub type CallFuture = Pin<Box<dyn Future<Output = Result<OutboundResponse, CallError>> + Send>>;

pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CallError>> + Send + 'a>>;

/// Sends the outbound calls of one filter during one request: the gateway resolves
/// `grant` among the WasmFilter's `spec.outbound` and refuses any other name with
/// [`CallError::NotGranted`].
pub trait Outbound: Send + Sync {
    fn send(&self, grant: &str, request: OutboundRequest) -> CallFuture;
    /// Starts a call whose body goes on after `request.body` with [`BodySink::write`].
    fn start(&self, grant: &str, request: OutboundRequest) -> Result<Box<dyn BodySink>, CallError>;
}

/// The rest of a started call's body, and then its answer. Dropped before `finish`, the
/// call is cancelled.
pub trait BodySink: Send {
    /// Sends more of the body; waits while the backend is not taking it.
    fn write(&mut self, data: Bytes) -> WriteFuture<'_>;
    /// Ends the body and waits for the answer.
    fn finish(self: Box<Self>) -> CallFuture;
}

pub(crate) fn request(r: wit::OutboundRequest) -> Result<OutboundRequest, String> {
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", r.method))?;
    if !r.path.starts_with('/') {
        return Err(format!("the path {:?} must start with /", r.path));
    }
    let path = PathAndQuery::try_from(r.path.as_str())
        .map_err(|e| format!("the path {:?} is not valid: {e}", r.path))?;
    let mut headers = HeaderMap::new();
    for (n, v) in r.headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("{n:?} is not a header name"))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|_| format!("the value of {n} is not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(OutboundRequest {
        method,
        path,
        headers,
        body: Bytes::from(r.body),
        span: None,
    })
}

pub(crate) fn error_to_wit(e: CallError) -> wit::CallError {
    match e {
        CallError::NotGranted => wit::CallError::NotGranted,
        CallError::Unavailable(m) => wit::CallError::Unavailable(m),
        CallError::Timeout => wit::CallError::Timeout,
        CallError::Failed(m) => wit::CallError::Failed(m),
        CallError::InvalidRequest(m) => wit::CallError::InvalidRequest(m),
        CallError::ResponseTooLarge => wit::CallError::ResponseTooLarge,
    }
}

pub(crate) fn to_wit(
    r: Result<OutboundResponse, CallError>,
) -> Result<wit::OutboundResponse, wit::CallError> {
    match r {
        Ok(resp) => Ok(wit::OutboundResponse {
            status: resp.status.as_u16(),
            headers: resp
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: resp.body.to_vec(),
        }),
        Err(e) => Err(error_to_wit(e)),
    }
}
