//! HTTP/1.1 to a backend with no connection task: the request's own task writes the
//! request on a connection from this thread's idle list and reads the response, and the
//! response body sends the rest of the request body, reads the rest of the response,
//! and hands the connection back when both ended.
//!
//! This serves the common proxied request: cleartext HTTP/1.1 to an IP endpoint, with no
//! upgrade and no `Expect` (see [`target`]). The pooled client of [`crate::upstream`]
//! drives each connection from a task of its own: every request there is passed through
//! a channel, wakes that task, and looks its pool up under a lock with a SipHash key.
//! Here the request's task does the I/O itself. Everything else (upgrades, `Expect`,
//! h2c, TLS, host-name endpoints) still goes through [`crate::upstream`].
//!
//! The request body is sent as hyper's client sends it: as its `Content-Length` says,
//! else with the length it knows exactly, else chunked with its trailers. It goes on
//! being sent while the response comes back: a backend may answer before it read the
//! whole request (a 413 to an upload) or stream its answer as it reads (an echo).
//!
//! The response is read as hyper's client reads it (RFC 9112 §6.3): no body for `HEAD`,
//! 1xx, 204 and 304; chunked when `Transfer-Encoding` ends in `chunked`; otherwise to
//! the end of the connection when `Transfer-Encoding` is present or `Content-Length`
//! absent; else `Content-Length` bytes, all of its values agreeing. Interim 1xx heads
//! are skipped, and a custom reason phrase is kept as hyper's `ReasonPhrase`. A
//! connection is kept after a response that HTTP/1.1 (or `Connection: keep-alive` on
//! HTTP/1.0) allows to be followed by another, that was read to its exact end, and whose
//! request was sent whole.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rustc_hash::FxHashMap;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::snapshot::Backend;

/// Most header fields in a backend's response head, or in its trailers (as hyper's
/// client allows).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest response head, or trailer section, in bytes (hyper's client's read limit).
pub(crate) const MAX_HEAD: usize = 400 * 1024;
/// Longest chunk-size line, chunk extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// How long an idle connection is kept, as for the pooled client.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a thread's idle connections are checked for age and for the backend
/// having closed them.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Most idle connections a thread keeps to one endpoint, as for the pooled client.
const MAX_IDLE: usize = 1024;
/// First read size for a body; doubled while reads fill it, up to [`MAX_READ`].
const READ_SIZE: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Why a request on this path failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("connect to {0}: no connection within {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("backend connection: {0}")]
    Io(#[from] io::Error),
    #[error("the backend closed the connection before the response ended")]
    Closed,
    #[error("invalid response from the backend: {0}")]
    Invalid(String),
    /// Reading the request body failed (the client's fault, a filter's, or a timeout).
    #[error("request body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The connection could not be opened (answered 503, as for the pooled client).
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(..) | Error::ConnectTimeout(..))
    }

    /// Reading the request body failed, not the backend.
    pub(crate) fn is_body(&self) -> bool {
        matches!(self, Error::Body(_))
    }
}

/// The endpoint to send `parts` to on this path, when it is one this path serves.
pub(crate) fn target(
    backend: &Backend,
    endpoint: Option<SocketAddr>,
    parts: &http::request::Parts,
) -> Option<SocketAddr> {
    if backend.tls.is_some()
        || backend.protocol != sluice_ir::UpstreamProtocol::Http1
        || !plain(parts)
    {
        return None;
    }
    endpoint
}

/// A request with nothing that needs the pooled client: no upgrade, no `Expect`, not
/// `CONNECT`, and a `Content-Length` that is one number if any.
fn plain(parts: &http::request::Parts) -> bool {
    let h = &parts.headers;
    if parts.method == Method::CONNECT
        || h.contains_key(header::UPGRADE)
        || h.contains_key(header::EXPECT)
    {
        return false;
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => true,
        Some(v) => content_length(v).is_some() && lengths.next().is_none(),
    }
}

fn content_length(v: &HeaderValue) -> Option<u64> {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Sends a request to `addr`, on an idle connection of this thread's when one is open,
/// and returns the response head with its body still to come.
///
/// The request body, if any, is sent as its `Content-Length` says, else with the
/// length it knows exactly, else chunked (with its trailers), as hyper's client sends
/// it. The response is read while the body is still being sent: a backend that answers
/// early (a 413 before reading an upload) is answered, and the connection is closed
/// after that response.
///
/// A request that fails on a reused connection before any byte of the response came
/// back (the backend closed it while it sat idle) is sent once more on a new
/// connection: when writing its head failed, and for an idempotent method without a
/// body when the connection closed after it, as nginx's `proxy_next_upstream error`
/// does.
///
/// A plain `fn` that returns its future, where an `async fn` would hold its arguments
/// twice in the future's state: each caller that awaits a future moves all of it, once
/// per request.
pub(crate) fn send(
    addr: SocketAddr,
    parts: &http::request::Parts,
    body: crate::Body,
) -> impl Future<Output = Result<Response<Body>, Error>> + use<> {
    let head_request = parts.method == Method::HEAD;
    let idempotent = parts.method.is_idempotent();
    let body = (!body.is_end_stream()).then_some(body);
    let mut head = BytesMut::with_capacity(512);
    let mut ready = encode(parts, addr, body.as_ref(), &mut head)
        .and_then(|sending| Upload::new(body, sending));
    async move {
        let upload = match &mut ready {
            Ok(upload) => upload,
            Err(e) => return Err(std::mem::replace(e, Error::Closed)),
        };
        let mut kept = checkout(addr);
        loop {
            let reused = kept.is_some();
            let conn = match kept.take() {
                Some(conn) => conn,
                // Boxed: a new connection is the rare case, and the request's future
                // stays the size of the exchange on a kept one.
                None => Box::pin(connect(addr)).await?,
            };
            match exchange(conn, &head, upload, head_request).await {
                Ok((conn, parts, framing, keep_alive)) => {
                    let upload = std::mem::replace(upload, Upload::sent());
                    return Ok(answer(conn, parts, framing, keep_alive, upload, addr));
                }
                Err(Failure {
                    error,
                    sent,
                    nothing_back,
                }) => {
                    // Sent once more on a new connection only when the failed one was a
                    // kept one and nothing came back: before its head was written, if
                    // nothing of its body was read; after, if it is bodiless and idempotent.
                    let again = if sent {
                        upload.bodiless() && idempotent
                    } else {
                        !upload.touched || upload.bodiless()
                    };
                    if !(reused && nothing_back && again) {
                        return Err(error);
                    }
                    upload.failed = None;
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Conn, Error> {
    let io = crate::upstream::connect_tcp(addr)
        .await
        .map_err(|e| match e {
            Some(e) => Error::Connect(addr, e),
            None => Error::ConnectTimeout(addr, crate::upstream::connect_timeout()),
        })?;
    Ok(Conn {
        io,
        buf: BytesMut::new(),
        read_size: READ_SIZE,
    })
}

/// How a request body goes on the wire.
#[derive(Clone, Copy)]
enum Sending {
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// The request line and header fields, as hyper's client writes them: names in lower
/// case, `Host` from the endpoint when the request has none, and for a body without a
/// `Content-Length` either the length it knows exactly or chunked encoding.
fn encode(
    parts: &http::request::Parts,
    addr: SocketAddr,
    body: Option<&crate::Body>,
    out: &mut BytesMut,
) -> Result<Sending, Error> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
    }
    write_fields(
        out,
        parts
            .headers
            .iter()
            .filter(|(n, _)| *n != header::TRANSFER_ENCODING),
    );
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(content_length);
    let sending = match (body, declared) {
        (None, Some(n)) if n > 0 => {
            return Err(Error::Body(
                "the request body ended before its Content-Length".into(),
            ));
        }
        (None, _) => Sending::Length(0),
        (Some(_), Some(n)) => Sending::Length(n),
        (Some(b), None) => match b.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                Sending::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Sending::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    Ok(sending)
}

/// Header (or trailer) fields as `name: value` lines.
fn write_fields<'a>(
    out: &mut BytesMut,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A failed exchange, with what the retry decision needs.
struct Failure {
    error: Error,
    /// The request head was written.
    sent: bool,
    /// Not one byte of a response came back.
    nothing_back: bool,
}

/// What is left to send of a request body: encoded bytes, then the rest of the body.
/// It goes on being sent while the response comes back (a backend may answer before
/// it has read the whole request, and stream its answer while it reads).
struct Upload {
    queue: std::collections::VecDeque<Bytes>,
    /// A streamed body still to read from (`None` once it ended).
    body: Option<crate::Body>,
    sending: Sending,
    /// Trailers held for the end of a chunked body.
    trailers: Option<HeaderMap>,
    /// Writing failed: nothing more is sent, and the connection is not used again.
    failed: Option<io::Error>,
    had_body: bool,
    /// Something was read from the streamed body: it cannot be sent again.
    touched: bool,
}

/// Most queued pieces before the body is read further (a chunk is three: its size line,
/// its data and its CRLF), within one write's 16 slices.
const GATHER: usize = 12;

impl Upload {
    fn new(body: Option<crate::Body>, sending: Sending) -> Result<Self, Error> {
        let mut up = Upload {
            queue: std::collections::VecDeque::new(),
            body: None,
            sending,
            trailers: None,
            failed: None,
            had_body: body.is_some(),
            touched: false,
        };
        match body {
            None => {}
            // A body that is whole from the start is queued at once; the queue holds it
            // for a second try.
            Some(http_body_util::Either::Right(whole)) => {
                up.push(whole.data())?;
                up.end()?;
            }
            Some(streamed) => up.body = Some(streamed),
        }
        Ok(up)
    }

    /// The request had no body.
    fn bodiless(&self) -> bool {
        !self.had_body
    }

    /// What is left of an upload handed to its response's body: nothing.
    fn sent() -> Upload {
        Upload {
            queue: std::collections::VecDeque::new(),
            body: None,
            sending: Sending::Length(0),
            trailers: None,
            failed: None,
            had_body: false,
            touched: false,
        }
    }

    /// Writes what it can after `head[*head_at..]`: `Ready(Ok)` once everything is
    /// written (or writing failed, which `failed` keeps), `Ready(Err)` when the request
    /// body failed.
    fn poll_send(
        &mut self,
        io: &mut TcpStream,
        head: &[u8],
        head_at: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.failed.is_some() {
                return Poll::Ready(Ok(()));
            }
            // What the body has ready goes out in the same write as what is queued (the
            // head and the first chunk in one segment, as hyper's client sends them).
            let mut waiting = false;
            while self.queue.len() < GATHER
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.touched = true;
                        match frame.into_data() {
                            Ok(data) => self.push(data)?,
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    self.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                                }
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::Body(e))),
                    Poll::Ready(None) => {
                        self.body = None;
                        self.end()?;
                    }
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                }
            }
            let rest = &head[*head_at..];
            if rest.is_empty() && self.queue.is_empty() {
                return if waiting || self.body.is_some() {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            let mut slices = [io::IoSlice::new(&[]); 16];
            let mut n = 0;
            if !rest.is_empty() {
                slices[0] = io::IoSlice::new(rest);
                n = 1;
            }
            for b in self.queue.iter().take(slices.len() - n) {
                slices[n] = io::IoSlice::new(b);
                n += 1;
            }
            let head_left = rest.len();
            match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => self.failed = Some(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => {
                    let from_head = written.min(head_left);
                    *head_at += from_head;
                    let mut written = written - from_head;
                    while written > 0 {
                        let Some(front) = self.queue.front_mut() else {
                            break;
                        };
                        let take = written.min(front.len());
                        front.advance(take);
                        written -= take;
                        if front.is_empty() {
                            self.queue.pop_front();
                        }
                    }
                }
                Poll::Ready(Err(e)) => self.failed = Some(e),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn push(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.sending {
            Sending::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(Error::Body(
                        "the request body is longer than its Content-Length".into(),
                    ));
                }
                *left -= n;
                self.queue.push_back(data);
            }
            Sending::Chunked => {
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Error> {
        match self.sending {
            Sending::Length(0) => Ok(()),
            Sending::Length(_) => Err(Error::Body(
                "the request body ended before its Content-Length".into(),
            )),
            Sending::Chunked => {
                let mut last = BytesMut::from(&b"0\r\n"[..]);
                write_fields(&mut last, self.trailers.iter().flatten());
                last.extend_from_slice(b"\r\n");
                self.queue.push_back(last.freeze());
                Ok(())
            }
        }
    }

    /// Everything was written.
    fn done(&self) -> bool {
        self.failed.is_none() && self.queue.is_empty() && self.body.is_none()
    }
}

/// Writes the request on `conn` and reads the response head, sending the request body
/// as far as the backend takes it meanwhile.
async fn exchange(
    mut conn: Conn,
    head: &[u8],
    upload: &mut Upload,
    head_request: bool,
) -> Result<(Conn, http::response::Parts, Framing, bool), Failure> {
    let mut head_at = 0;
    let mut got_any = false;
    let answer = std::future::poll_fn(|cx| {
        if let Poll::Ready(Err(e)) = upload.poll_send(&mut conn.io, head, &mut head_at, cx) {
            return Poll::Ready(Err((e, got_any)));
        }
        loop {
            match parse_head(&mut conn.buf, head_request) {
                Ok(Head::Final(parts, framing, keep_alive)) => {
                    return Poll::Ready(Ok((parts, framing, keep_alive)));
                }
                Ok(Head::Interim) => continue,
                Ok(Head::Partial) => {}
                Err(e) => return Poll::Ready(Err((e, true))),
            }
            if conn.buf.len() >= MAX_HEAD {
                let e = Error::Invalid(format!("a response head over {MAX_HEAD} bytes"));
                return Poll::Ready(Err((e, true)));
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let e = match upload.failed.take() {
                        Some(e) => e.into(),
                        None => Error::Closed,
                    };
                    return Poll::Ready(Err((e, got_any)));
                }
                Poll::Ready(Ok(_)) => got_any = true,
                Poll::Ready(Err(e)) => {
                    let e = upload.failed.take().unwrap_or(e);
                    return Poll::Ready(Err((e.into(), got_any)));
                }
            }
        }
    })
    .await;
    let sent = head_at == head.len();
    match answer {
        Ok((parts, framing, keep_alive)) => Ok((conn, parts, framing, keep_alive && sent)),
        Err((error, got_any)) => Err(Failure {
            error,
            sent,
            nothing_back: !got_any,
        }),
    }
}

/// The response, with its body read from `conn` as it is polled. The rest of the
/// request goes on being sent as the response is read; a response that ends before it
/// (or before its head was written) ends the connection.
fn answer(
    conn: Conn,
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
    upload: Upload,
    addr: SocketAddr,
) -> Response<Body> {
    let upload = (!upload.done()).then(|| Box::new(upload));
    let mut body = Body {
        conn: Some(conn),
        framing,
        keep_alive,
        upload,
        addr,
    };
    body.settle();
    Response::from_parts(parts, body)
}

enum Head {
    /// A final response head, with how its body is framed and whether the connection
    /// may carry another request after it.
    Final(http::response::Parts, Framing, bool),
    /// A 1xx head, consumed and skipped.
    Interim,
    /// More bytes are needed.
    Partial,
}

/// Parses a response head at the start of `buf`, and consumes it when complete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Head, Error> {
    if buf.is_empty() {
        return Ok(Head::Partial);
    }
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Invalid(format!(
                "more than {MAX_HEADERS} header fields"
            )));
        }
        Err(e) => return Err(Error::Invalid(e.to_string())),
    };
    let code = res.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| Error::Invalid(format!("status code {code}")))?;
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = res
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    // Where each field lies, so that the values can share the head's bytes once the
    // head is split off the buffer.
    let base = buf.as_ptr() as usize;
    let count = res.headers.len();
    let mut at = [[0u32; 4]; MAX_HEADERS];
    for (slot, h) in at.iter_mut().zip(res.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *slot = [
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        ];
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Invalid(
                "101 to a request that asked for no upgrade".into(),
            ));
        }
        return Ok(Head::Interim);
    }
    let mut headers = HeaderMap::with_capacity(count);
    let mut close = false;
    let mut keep_alive = false;
    for [ns, ne, vs, ve] in at.iter().take(count).copied() {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Error::Invalid("a header field name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Error::Invalid(format!("the value of {name}")))?;
        if name == header::CONNECTION {
            close |= has_token(&value, "close");
            keep_alive |= has_token(&value, "keep-alive");
        }
        headers.append(name, value);
    }
    let (framing, exact) = framing(&headers, status, version, head_request)?;
    let keep_alive = exact
        && !close
        && (version == Version::HTTP_11 || keep_alive)
        && !matches!(framing, Framing::Eof);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    if let Some(r) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
        parts.extensions.insert(r);
    }
    Ok(Head::Final(parts, framing, keep_alive))
}

/// How the body is framed, and whether its end is known exactly (a response framed by
/// both `Transfer-Encoding` and `Content-Length` is not followed by another).
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    version: Version,
    head_request: bool,
) -> Result<(Framing, bool), Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response".into(),
            ));
        }
        let exact = !headers.contains_key(header::CONTENT_LENGTH);
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked(Chunked::Size), exact)
        } else {
            (Framing::Eof, false)
        });
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let v = v
            .to_str()
            .map_err(|_| Error::Invalid("Content-Length".into()))?;
        for part in v.split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .ok()
                .filter(|_| part.trim().bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| Error::Invalid(format!("Content-Length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("Content-Length values that differ".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Eof, false),
    })
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    // Most often the whole value is the one token.
    if v.as_bytes().eq_ignore_ascii_case(token.as_bytes()) {
        return true;
    }
    v.to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A connection to a backend, with what was read from it and not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    read_size: usize,
}

impl Conn {
    /// Reads more into the buffer: the number of bytes read, 0 at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Reads more, where the connection's end comes before the response's.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(Error::Closed)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// The backend has not closed the connection, nor sent anything unasked, as far as
    /// the reactor has seen; no system call unless it saw the socket readable.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.io.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// How a response body ends.
enum Framing {
    /// After this many more bytes.
    Length(u64),
    Chunked(Chunked),
    /// When the backend closes the connection.
    Eof,
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it to come.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and the final CRLF.
    Trailers,
    Done,
}

/// A backend's response body read from its connection by whichever task polls it.
/// The connection goes back to this thread's idle list when the body ends exactly
/// and the response allows it; it is closed if the body is dropped before its end.
pub(crate) struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// The rest of the request body, still being sent.
    upload: Option<Box<Upload>>,
    addr: SocketAddr,
}

impl Body {
    /// Hands the connection back as soon as the body is known to be complete (hyper
    /// stops polling a body of known length once it has all of it).
    fn settle(&mut self) {
        let ended = match self.framing {
            Framing::Length(0) | Framing::Chunked(Chunked::Done) => true,
            Framing::Length(_) | Framing::Chunked(_) | Framing::Eof => false,
        };
        if ended
            && let Some(conn) = self.conn.take()
            && self.keep_alive
            && self.upload.is_none()
            && conn.buf.is_empty()
        {
            checkin(self.addr, conn);
        }
    }

    /// Sends more of the request, if any is left; a request body that fails or a write
    /// that fails stops the sending and keeps the connection from being used again.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        let (Some(up), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) else {
            return;
        };
        let mut at = 0;
        match up.poll_send(&mut conn.io, &[], &mut at, cx) {
            Poll::Ready(Ok(())) if up.done() => self.upload = None,
            Poll::Ready(Ok(())) | Poll::Pending => {}
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "request body stopped while its response came back");
                up.failed = Some(io::ErrorKind::Interrupted.into());
            }
        }
    }

    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Framing::Chunked(state) = self.framing else {
                return Poll::Ready(None);
            };
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            let next = match state {
                Chunked::Done => return Poll::Ready(None),
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        Some(if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        })
                    }
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(Error::Invalid(format!(
                            "a chunk-size line over {MAX_CHUNK_LINE} bytes"
                        )))));
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => {
                        return Poll::Ready(Some(Err(Error::Invalid("a chunk size".into()))));
                    }
                },
                Chunked::Data(left) if !buf.is_empty() => {
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.framing = Framing::Chunked(if left == n as u64 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n as u64)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Chunked::Data(_) => None,
                Chunked::DataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        Some(Chunked::Size)
                    }
                    Some(_) => {
                        return Poll::Ready(Some(Err(Error::Invalid(
                            "no CRLF after a chunk's data".into(),
                        ))));
                    }
                    None => None,
                },
                Chunked::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields.iter() {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    trailers.append(n, v);
                                }
                            }
                            buf.advance(used);
                            self.framing = Framing::Chunked(Chunked::Done);
                            self.settle();
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                            return Poll::Ready(Some(Err(Error::Invalid(format!(
                                "a trailer section over {MAX_HEAD} bytes"
                            )))));
                        }
                        Ok(httparse::Status::Partial) => None,
                        Err(httparse::Error::TooManyHeaders) => {
                            return Poll::Ready(Some(Err(Error::Invalid(format!(
                                "more than {MAX_HEADERS} trailer fields"
                            )))));
                        }
                        Err(e) => {
                            return Poll::Ready(Some(Err(Error::Invalid(format!(
                                "trailers: {e}"
                            )))));
                        }
                    }
                }
            };
            match next {
                Some(s) => self.framing = Framing::Chunked(s),
                None => {
                    if let Err(e) = ready!(conn.poll_more(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        this.poll_upload(cx);
        match this.framing {
            Framing::Chunked(_) => this.poll_chunked(cx),
            Framing::Length(0) => Poll::Ready(None),
            Framing::Length(left) => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty()
                    && let Err(e) = ready!(conn.poll_more(cx))
                {
                    return Poll::Ready(Some(Err(e)));
                }
                let n = (conn.buf.len() as u64).min(left) as usize;
                let data = conn.buf.split_to(n).freeze();
                this.framing = Framing::Length(left - n as u64);
                this.settle();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::Eof => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                let data = conn.buf.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.framing {
            Framing::Length(n) => n == 0,
            Framing::Chunked(Chunked::Done) => true,
            Framing::Chunked(_) => false,
            Framing::Eof => self.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Idle for less than [`IDLE_TIMEOUT`] at `now`, and not closed by the backend.
    fn usable(&mut self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < IDLE_TIMEOUT && self.conn.is_open()
    }
}

/// This thread's idle connections by endpoint. A worker thread serves its client
/// connections from start to end (see [`crate::Workers`]), so each worker keeps its own
/// idle connections, as for the pooled client.
#[derive(Default)]
struct Pool {
    idle: FxHashMap<SocketAddr, Vec<Idle>>,
    /// A sweep task runs on this thread.
    sweeping: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// The connection to `addr` this thread used last, if it is still open and fresh.
fn checkout(addr: SocketAddr) -> Option<Conn> {
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(&addr)?;
        while let Some(mut idle) = list.pop() {
            if idle.usable(Instant::now()) {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to `addr`, within [`MAX_IDLE`], and starts this
/// thread's sweep if it is not running.
fn checkin(addr: SocketAddr, conn: Conn) {
    checkin_within(addr, conn, MAX_IDLE);
}

fn checkin_within(addr: SocketAddr, mut conn: Conn, max_idle: usize) {
    // Outside a runtime (a body dropped at shutdown) there is no sweep to run: the
    // connection is closed instead.
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    conn.read_size = READ_SIZE;
    // An idle connection holds no large read buffer from a large response it carried.
    if conn.buf.capacity() > READ_SIZE {
        conn.buf = BytesMut::new();
    }
    POOL.with_borrow_mut(|p| {
        let list = p.idle.entry(addr).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !p.sweeping {
            p.sweeping = true;
            tokio::spawn(sweep());
        }
    });
}

/// Closes this thread's idle connections that are past [`IDLE_TIMEOUT`] or that the
/// backend closed, every [`SWEEP_EVERY`], until none is left.
async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if !sweep_once(Instant::now()) {
            return;
        }
    }
}

/// One sweep at `now`: whether any idle connection is left (else the sweep stops, and
/// the next connection kept starts it again).
fn sweep_once(now: Instant) -> bool {
    POOL.with_borrow_mut(|p| {
        p.idle.retain(|_, list| {
            list.retain_mut(|i| i.usable(now));
            !list.is_empty()
        });
        p.sweeping = !p.idle.is_empty();
        p.sweeping
    })
}

/// The largest read buffer an idle connection of this thread's holds (for tests).
#[cfg(test)]
fn idle_buffer_max() -> usize {
    POOL.with_borrow(|p| {
        p.idle
            .values()
            .flatten()
            .map(|i| i.conn.buf.capacity())
            .max()
            .unwrap_or(0)
    })
}

/// Idle connections this thread holds (for tests).
#[cfg(test)]
fn idle_count() -> usize {
    POOL.with_borrow(|p| p.idle.values().map(Vec::len).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend that answers each request head it reads with the next of `answers`
    /// and counts the connections it accepts; `None` closes the connection instead of
    /// answering, and an HTTP/1.0 answer is followed by a close. Scripted at the byte
    /// level because the cases here are exact wire forms (chunk extensions, trailers,
    /// interim heads, conflicting framing, a close right after a request) that no
    /// stock server can be made to send on cue.
    async fn scripted(answers: Vec<Option<&'static [u8]>>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut seen = Vec::new();
                'conn: loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut b = [0u8; 4096];
                        match tcp.read(&mut b).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => seen.extend_from_slice(&b[..n]),
                        }
                    }
                    seen.clear();
                    match answers.next() {
                        Some(Some(a)) => {
                            if tcp.write_all(a).await.is_err() || a.starts_with(b"HTTP/1.0") {
                                break 'conn;
                            }
                        }
                        _ => break 'conn,
                    }
                }
            }
        });
        (addr, accepted)
    }

    fn request(method: Method) -> http::request::Parts {
        http::Request::builder()
            .method(method)
            .uri("/path?q=1")
            .header("host", "example.com")
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    async fn get(
        addr: SocketAddr,
        method: Method,
    ) -> Result<(Response<()>, Bytes, Option<HeaderMap>), Error> {
        let none = http_body_util::Either::Right(crate::body::Buffered::new(Bytes::new()));
        let (parts, body) = send(addr, &request(method), none).await?.into_parts();
        let all = body.collect().await?;
        let trailers = all.trailers().cloned();
        Ok((Response::from_parts(parts, ()), all.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn a_sized_body_is_read_and_its_connection_used_again() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let (addr, accepted) = scripted(vec![Some(ok), Some(ok)]).await;
        for _ in 0..2 {
            let (r, body, _) = get(addr, Method::GET).await.expect("answer");
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(body, "hello");
            assert_eq!(idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_keeps_no_large_read_buffer() {
        let mut large = b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n".to_vec();
        large.resize(large.len() + 4 * 1024 * 1024, b'x');
        let large: &'static [u8] = Box::leak(large.into_boxed_slice());
        let (addr, _) = scripted(vec![Some(large)]).await;
        let (_, body, _) = get(addr, Method::GET).await.expect("answer");
        assert_eq!(body.len(), 4 * 1024 * 1024);
        assert_eq!(idle_count(), 1);
        assert!(idle_buffer_max() <= READ_SIZE, "{}", idle_buffer_max());
    }

    #[tokio::test]
    async fn chunked_bodies_keep_their_trailers_and_interim_heads_are_skipped() {
        let chunked: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
            HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
        let (addr, accepted) = scripted(vec![Some(chunked), Some(chunked)]).await;
        for _ in 0..2 {
            let (r, body, trailers) = get(addr, Method::GET).await.expect("answer");
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(body, "hello world");
            assert_eq!(trailers.expect("trailers")["x-sum"], "11");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_to_the_close_is_read_whole_and_its_connection_not_kept() {
        let (addr, accepted) = scripted(vec![
            Some(b"HTTP/1.0 200 Fine\r\n\r\nuntil the end"),
            Some(b"HTTP/1.0 204 No Content\r\n\r\n"),
        ])
        .await;
        let (r, body, _) = get(addr, Method::GET).await.expect("answer");
        assert_eq!(body, "until the end");
        assert_eq!(r.version(), Version::HTTP_10);
        let reason = r
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .expect("reason kept");
        assert_eq!(reason.as_bytes(), b"Fine");
        assert_eq!(idle_count(), 0);
        get(addr, Method::GET).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn head_and_204_answers_have_no_body_whatever_their_length() {
        let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        let empty: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (addr, accepted) = scripted(vec![Some(head), Some(empty), Some(ok)]).await;
        let (r, body, _) = get(addr, Method::HEAD).await.expect("answer");
        assert_eq!(
            (r.headers()["content-length"].as_bytes(), body.len()),
            (&b"10"[..], 0)
        );
        let (r, _, _) = get(addr, Method::GET).await.expect("answer");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let (_, body, _) = get(addr, Method::GET).await.expect("answer");
        assert_eq!(body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_closed_under_a_request_is_retried_for_idempotent_methods() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // The second request on the first connection is read and not answered: the
        // connection closes, as when a backend's idle timeout fires just then.
        let (addr, accepted) = scripted(vec![Some(ok), None, Some(ok), None]).await;
        get(addr, Method::GET).await.expect("first");
        let (_, body, _) = get(addr, Method::GET)
            .await
            .expect("sent again on a new connection");
        assert_eq!(body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST may have been acted on: it is not sent twice.
        let e = get(addr, Method::POST).await.expect_err("closed");
        assert!(matches!(e, Error::Closed), "{e}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_it_cannot_frame_or_that_is_too_large_is_an_error() {
        let differ: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok";
        let upgrade: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n";
        let bad_chunk: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        let many: &'static [u8] = {
            let mut s = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..=MAX_HEADERS {
                s.push_str(&format!("x-{i}: v\r\n"));
            }
            s.push_str("content-length: 0\r\n\r\n");
            Box::leak(s.into_bytes().into_boxed_slice())
        };
        let (addr, _) = scripted(vec![
            Some(differ),
            Some(upgrade),
            Some(bad_chunk),
            Some(many),
        ])
        .await;
        for want in ["differ", "101", "chunk size", "more than 100 header fields"] {
            let e = get(addr, Method::GET).await.expect_err(want);
            assert!(e.to_string().contains(want), "{e} should say {want}");
            assert!(!e.is_connect());
        }
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn a_backend_that_refuses_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = get(addr, Method::GET).await.expect_err("refused");
        assert!(e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn idle_connections_go_when_the_backend_closes_them_or_after_the_idle_timeout() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (kept, _) = scripted(vec![Some(ok)]).await;
        // A backend that closes each connection right after its answer, which said
        // nothing of closing: its idle timeout firing at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closing = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut b = [0u8; 4096];
                let _ = tcp.read(&mut b).await;
                let _ = tcp.write_all(ok).await;
            }
        });
        get(kept, Method::GET).await.expect("answer");
        get(closing, Method::GET).await.expect("answer");
        assert_eq!(idle_count(), 2);
        let mut waited = 0;
        while idle_count() == 2 && waited < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            sweep_once(Instant::now());
            waited += 1;
        }
        assert_eq!(
            idle_count(),
            1,
            "the closed connection is dropped, the open one kept"
        );
        assert!(sweep_once(Instant::now() + IDLE_TIMEOUT / 2));
        assert!(!sweep_once(Instant::now() + IDLE_TIMEOUT));
        assert_eq!(idle_count(), 0);
    }

    /// Each layer that awaits the request's future moves all of it, once per request:
    /// it holds the request once (an `async fn` held its arguments twice, 2,224 bytes),
    /// and `within` adds only its timer (its `async fn` held the call twice).
    #[tokio::test]
    async fn the_send_future_holds_the_request_once() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let none = || http_body_util::Either::Right(crate::body::Buffered::new(Bytes::new()));
        let call = send(addr, &request(Method::GET), none());
        let size = std::mem::size_of_val(&call);
        assert!(size <= 1100, "h1::send's future is {size} bytes");
        let timed = crate::proxy::within_for_test(send(addr, &request(Method::GET), none()));
        let over = std::mem::size_of_val(&timed) - size;
        assert!(
            over <= 160,
            "within adds {over} bytes to the call it bounds"
        );
    }

    #[tokio::test]
    async fn a_worker_keeps_at_most_its_limit_of_idle_connections_per_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        for _ in 0..3 {
            let conn = connect(addr).await.expect("connect");
            checkin_within(addr, conn, 2);
        }
        assert_eq!(idle_count(), 2);
    }

    #[test]
    fn only_plain_requests_take_this_path() {
        let with = |method: Method, name: &'static str, value: &'static str| {
            let mut p = request(method);
            p.headers.insert(name, HeaderValue::from_static(value));
            plain(&p)
        };
        assert!(plain(&request(Method::GET)));
        assert!(!plain(&request(Method::CONNECT)));
        assert!(with(Method::POST, "content-length", "0"));
        assert!(with(Method::POST, "content-length", "5"));
        assert!(!with(Method::POST, "content-length", "5, 5"));
        assert!(!with(Method::POST, "content-length", "-1"));
        assert!(!with(Method::GET, "expect", "100-continue"));
        assert!(!with(Method::GET, "upgrade", "websocket"));
    }

    /// A real HTTP/1.1 server (hyper's) that answers with what it received: the body,
    /// its framing headers as `x-content-length` and `x-transfer-encoding`, and the
    /// value of a trailer `x-sum` as a header. Or, for `/early`, 413 without reading.
    async fn echo() -> SocketAddr {
        use http_body_util::Full;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let mut r = http::Response::builder();
                            let full =
                                |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed();
                            if req.uri().path() == "/early" {
                                return Ok::<_, std::convert::Infallible>(
                                    r.status(413)
                                        .body(full(Bytes::from_static(b"too big")))
                                        .expect("response"),
                                );
                            }
                            if req.uri().path() == "/duplex" {
                                // The answer starts at once and streams the request body back
                                // as it comes.
                                return Ok(r.body(req.into_body().boxed()).expect("response"));
                            }
                            for (n, to) in [
                                ("content-length", "x-content-length"),
                                ("transfer-encoding", "x-transfer-encoding"),
                            ] {
                                if let Some(v) = req.headers().get(n) {
                                    r = r.header(to, v);
                                }
                            }
                            let all = req.into_body().collect().await.expect("request body");
                            if let Some(v) = all.trailers().and_then(|t| t.get("x-sum")) {
                                r = r.header("x-sum", v);
                            }
                            Ok(r.body(full(all.to_bytes())).expect("response"))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// A streamed request body: the frames, then the end (or, with `open`, never).
    fn streamed(frames: Vec<crate::body::Frames>, open: bool) -> crate::Body {
        let (tx, rx) = tokio::sync::mpsc::channel(frames.len() + 1);
        for f in frames {
            tx.try_send(f).expect("room");
        }
        if open {
            std::mem::forget(tx);
        }
        http_body_util::Either::Left(crate::client::Streamed::filtered(
            crate::body::Filtered::new(rx),
        ))
    }

    async fn post(
        addr: SocketAddr,
        path: &str,
        headers: &[(&'static str, &'static str)],
        body: crate::Body,
    ) -> Result<(Response<()>, Bytes), Error> {
        let mut p = request(Method::POST);
        p.uri = path.parse().expect("path");
        for (n, v) in headers {
            p.headers.insert(*n, HeaderValue::from_static(v));
        }
        let (parts, body) = send(addr, &p, body).await?.into_parts();
        Ok((
            Response::from_parts(parts, ()),
            body.collect().await?.to_bytes(),
        ))
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_chunked_with_trailers() {
        let addr = echo().await;
        let whole =
            http_body_util::Either::Right(crate::body::Buffered::new(Bytes::from_static(b"hello")));
        let (r, body) = post(addr, "/", &[], whole).await.expect("answer");
        assert_eq!(
            (body.as_ref(), r.headers()["x-content-length"].as_bytes()),
            (&b"hello"[..], &b"5"[..])
        );

        let declared = streamed(
            vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Ok(Frame::data(Bytes::from_static(b"cd"))),
            ],
            false,
        );
        let (r, body) = post(addr, "/", &[("content-length", "4")], declared)
            .await
            .expect("answer");
        assert_eq!(
            (body.as_ref(), r.headers()["x-content-length"].as_bytes()),
            (&b"abcd"[..], &b"4"[..])
        );

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("11"));
        let chunked = streamed(
            vec![
                Ok(Frame::data(Bytes::from_static(b"hello"))),
                Ok(Frame::data(Bytes::from_static(b" world"))),
                Ok(Frame::trailers(trailers)),
            ],
            false,
        );
        let (r, body) = post(addr, "/", &[], chunked).await.expect("answer");
        assert_eq!(body, "hello world");
        assert_eq!(r.headers()["x-transfer-encoding"], "chunked");
        assert_eq!(r.headers()["x-sum"], "11");
        assert!(!r.headers().contains_key("x-content-length"));
        // All three went on the one connection.
        assert_eq!(idle_count(), 1);
    }

    #[tokio::test]
    async fn the_request_body_goes_on_being_sent_while_the_answer_streams_back() {
        let addr = echo().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = http_body_util::Either::Left(crate::client::Streamed::filtered(
            crate::body::Filtered::new(rx),
        ));
        let mut p = request(Method::POST);
        p.uri = "/duplex".parse().expect("path");
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping"))))
            .await
            .expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(10), send(addr, &p, body))
            .await
            .expect("head in time")
            .expect("answer");
        let mut back = answer.into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), back.frame())
            .await
            .expect("echo in time");
        assert_eq!(
            first
                .expect("frame")
                .expect("data")
                .into_data()
                .expect("data"),
            "ping"
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"pong"))))
            .await
            .expect("send");
        drop(tx);
        let rest = tokio::time::timeout(Duration::from_secs(10), back.collect())
            .await
            .expect("rest in time")
            .expect("rest");
        assert_eq!(rest.to_bytes(), "pong");
        assert_eq!(
            idle_count(),
            1,
            "the whole request was sent: the connection is kept"
        );
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_sent_is_passed_on_and_ends_the_connection() {
        let addr = echo().await;
        let endless = streamed(
            vec![Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))],
            true,
        );
        let (r, body) =
            tokio::time::timeout(Duration::from_secs(10), post(addr, "/early", &[], endless))
                .await
                .expect("answered while the body was still open")
                .expect("answer");
        assert_eq!(
            (r.status(), body.as_ref()),
            (StatusCode::PAYLOAD_TOO_LARGE, &b"too big"[..])
        );
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn a_request_body_that_fails_or_breaks_its_length_is_a_body_error() {
        let addr = echo().await;
        let failing = streamed(
            vec![
                Ok(Frame::data(Bytes::from_static(b"ab"))),
                Err("the client went away".into()),
            ],
            false,
        );
        let e = post(addr, "/", &[], failing)
            .await
            .expect_err("body failed");
        assert!(e.is_body() && e.to_string().contains("went away"), "{e}");
        let short = streamed(vec![Ok(Frame::data(Bytes::from_static(b"ab")))], false);
        let e = post(addr, "/", &[("content-length", "4")], short)
            .await
            .expect_err("short");
        assert!(e.is_body() && e.to_string().contains("ended before"), "{e}");
        let long = streamed(vec![Ok(Frame::data(Bytes::from_static(b"abcdef")))], false);
        let e = post(addr, "/", &[("content-length", "4")], long)
            .await
            .expect_err("long");
        assert!(e.is_body() && e.to_string().contains("longer"), "{e}");
    }
}
