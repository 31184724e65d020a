//! What one client may take, and the wrappers that hold it to that: on its socket (writes
//! that make progress), on its requests' bodies (a pace), and on its connection as a
//! whole (requests in flight and responses being sent, for the head and idle deadlines).
//!
//! The defaults follow what operators of other proxies expect: a head within 30 s (as
//! Envoy's `request_headers_timeout` is often set), an idle connection closed after
//! 180 s (Traefik's `idleTimeout`), a stalled write given 60 s (nginx's `send_timeout`),
//! a request body that waits at most 60 s for its next bytes (nginx's
//! `client_body_timeout`) and, past that first minute, averages at least 1 KiB/s (as
//! Apache's `mod_reqtimeout` `MinRate` does).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::Body;
use crate::access_log::Record;
use crate::body::Replay;

/// What one client connection may take. Every limit has a flag on `sluice run`.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections per listening socket; past it new connections are closed at
    /// once (and counted), so a flood on one port cannot take every file descriptor.
    pub max_connections: usize,
    /// Time from accept to the end of the TLS handshake, on TLS listeners.
    pub handshake_timeout: Duration,
    /// Time from accept (or the end of the TLS handshake) to the complete request head:
    /// a connection that sends nothing, or a head slowly, is closed. For HTTP/1.1 this
    /// is also how long a kept-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// HTTP/2: a PING every this often; a connection that does not answer within the
    /// same time is closed.
    pub h2_keepalive: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with
    /// GOAWAY). HTTP/1.1 connections idle between requests meet `header_timeout` first
    /// unless that is set longer.
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress for this long (a client that stopped
    /// reading its response) closes the connection.
    pub send_timeout: Duration,
    /// A request body may wait this long for its next bytes, and is given this long
    /// before `body_min_rate` applies. Zero turns both off.
    pub body_timeout: Duration,
    /// Bytes per second a request body must average once `body_timeout` has passed
    /// since it started; zero turns the rate off.
    pub body_min_rate: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            h2_keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(180),
            send_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
        }
    }
}

/// A client's socket. It tells the connection's [`Activity`] whether the client speaks
/// HTTP/2 (its first bytes are the connection preface) and whether a response is still
/// waiting for room in the socket; and a write that cannot proceed (the client stopped
/// reading) fails after the send timeout, which frees the response it pinned. The head
/// and idle deadlines are the connection's own timer (`server::serve`): one timer per
/// connection, not one per request.
pub(crate) struct ClientIo<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes of the HTTP/2 preface matched so far; `SNIFFED` once the protocol is known.
    sniffed: u8,
    send_timeout: Duration,
    write_stall: Stall,
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SNIFFED: u8 = u8::MAX;

/// A timer for "no progress since": armed when an operation first stays pending,
/// disarmed by progress. Its timer is made once, at the first stall, and reset after.
#[derive(Default)]
struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    fn progress(&mut self) {
        self.armed = false;
    }

    /// For an operation that is pending: arms the timer for `at()` unless it already
    /// runs, and says whether it has fired.
    fn expired(&mut self, cx: &mut Context<'_>, at: impl FnOnce() -> Instant) -> bool {
        if !self.armed {
            let at = at();
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

impl<I> ClientIo<I> {
    pub fn new(inner: I, limits: &ConnectionLimits, activity: Arc<Activity>) -> Self {
        ClientIo {
            inner,
            activity,
            sniffed: 0,
            send_timeout: limits.send_timeout,
            write_stall: Stall::default(),
        }
    }

    /// Matches the client's first bytes against the HTTP/2 preface, until they differ
    /// or it is whole.
    fn sniff(&mut self, read: &[u8]) {
        for &b in read {
            let at = usize::from(self.sniffed);
            if PREFACE.get(at) != Some(&b) {
                self.sniffed = SNIFFED;
                return;
            }
            self.sniffed += 1;
            if usize::from(self.sniffed) == PREFACE.len() {
                self.activity.http2.store(true, Ordering::Relaxed);
                self.sniffed = SNIFFED;
                return;
            }
        }
    }

    /// Passes a write's result through, failing it once writes have made no progress
    /// for the send timeout.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !r.is_pending() {
            if self.write_stall.armed {
                self.activity.sending.store(false, Ordering::Relaxed);
            }
            self.write_stall.progress();
            return r;
        }
        if !self.write_stall.armed {
            self.activity.sending.store(true, Ordering::Relaxed);
        }
        let limit = self.send_timeout;
        if self.write_stall.expired(cx, || Instant::now() + limit) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within the send timeout",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.sniffed != SNIFFED && matches!(r, Poll::Ready(Ok(()))) {
            let read = &buf.filled()[before..];
            if read.is_empty() {
                self.sniffed = SNIFFED;
            } else {
                self.sniff(read);
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch_write(cx, r)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, r)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch_write(cx, r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests in flight on one connection, and since when it has had none.
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when `in_flight` last fell to zero.
    idle_since: AtomicU64,
    /// The client speaks HTTP/2: its first bytes were the connection preface.
    http2: AtomicBool,
    /// A write to the client is waiting for room in its socket: a response is still
    /// being sent (held to the send timeout, not the head or idle deadline).
    sending: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            sending: AtomicBool::new(false),
        }
    }

    pub fn http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// When the connection will have been idle for `limit`, if nothing starts before.
    /// With a request in flight, or a response still being sent: `limit` from now
    /// (checked again then).
    pub fn idle_deadline(&self, limit: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.sending.load(Ordering::Relaxed) {
            return Instant::now() + limit;
        }
        self.born + Duration::from_millis(self.idle_since.load(Ordering::Acquire)) + limit
    }

    /// No request in flight and no response waiting for the socket, and none for at
    /// least `limit`.
    pub fn idle_for(&self, limit: Duration) -> bool {
        self.idle_deadline(limit) <= Instant::now()
    }
}

/// One request in flight on a connection, from its head until its response's last
/// byte was handed to the connection.
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.0.born.elapsed().as_millis();
            self.0
                .idle_since
                .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is sent, and
/// writes the request's access log line then (with the bytes sent).
pub(crate) struct Tracked {
    body: Body,
    _in_flight: InFlight,
    record: Option<Box<Record>>,
    bytes_out: u64,
}

impl Tracked {
    pub fn new(body: Body, in_flight: InFlight, record: Option<Box<Record>>) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
            record,
            bytes_out: 0,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            if let Some(span) = r.trace.take() {
                crate::trace::finish(span, &r, self.bytes_out);
            }
            if let Some(log) = r.log.clone() {
                log.write(r, self.bytes_out);
            }
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if this.record.is_some()
            && let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(d) = frame.data_ref()
        {
            this.bytes_out += d.len() as u64;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A body streamed from a peer: a backend's response, or a client's request body held
/// to the body timeout and minimum rate.
pub struct Streamed {
    inner: Source,
    pace: Option<Box<Pace>>,
    /// Data bytes passed through, when an access log line wants them.
    counted: Option<Arc<AtomicU64>>,
    /// Chunks read and put back (a body too large to buffer), served first.
    replay: Replay,
}

/// Where a streamed body's frames come from.
enum Source {
    /// The peer's connection.
    Peer(Incoming),
    /// A backend's connection read by the request's own task (`h1`).
    H1(crate::h1::Body),
    /// The task that passes a body through filters chunk by chunk (`body::filter`).
    Filtered(crate::body::Filtered),
    /// Nothing more: what there was is in the replay.
    Ended,
}

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<crate::body::Frames>> {
        match self {
            Source::Peer(i) => Pin::new(i)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Source::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Source::Filtered(f) => f.poll_frame(cx),
            Source::Ended => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Peer(i) => i.is_end_stream(),
            Source::H1(b) => b.is_end_stream(),
            Source::Filtered(f) => f.is_end_stream(),
            Source::Ended => true,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Peer(i) => i.size_hint(),
            Source::H1(b) => b.size_hint(),
            Source::Filtered(_) => SizeHint::default(),
            Source::Ended => SizeHint::with_exact(0),
        }
    }
}

/// The request body came too slowly; the request is answered 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body timeout or at the minimum rate")]
pub(crate) struct BodyTooSlow;

struct Pace {
    timeout: Duration,
    min_rate: u64,
    /// Set at the first poll: the clock starts when the body is wanted.
    start: Option<Instant>,
    last_progress: Instant,
    received: u64,
    stall: Stall,
}

impl Streamed {
    /// A backend's body, passed through as it comes.
    pub fn upstream(inner: Incoming) -> Self {
        Streamed {
            inner: Source::Peer(inner),
            pace: None,
            counted: None,
            replay: Replay::default(),
        }
    }

    /// A backend's body read on the request's own task (`h1`).
    pub(crate) fn upstream_h1(inner: crate::h1::Body) -> Self {
        Streamed {
            inner: Source::H1(inner),
            pace: None,
            counted: None,
            replay: Replay::default(),
        }
    }

    /// A body that comes out of filters chunk by chunk.
    pub(crate) fn filtered(inner: crate::body::Filtered) -> Self {
        Streamed {
            inner: Source::Filtered(inner),
            pace: None,
            counted: None,
            replay: Replay::default(),
        }
    }

    /// A body with nothing (more) to send, but what is put back with [`Self::unread`].
    pub(crate) fn empty() -> Self {
        Streamed {
            inner: Source::Ended,
            pace: None,
            counted: None,
            replay: Replay::default(),
        }
    }

    /// Puts chunks read from this body back in front of the rest (they were counted
    /// when first read).
    pub(crate) fn unread(&mut self, chunks: Vec<Bytes>) {
        self.replay.push(chunks);
    }

    /// Puts the trailers of a body read to its end back, after its chunks.
    pub(crate) fn unread_trailers(&mut self, trailers: http::HeaderMap) {
        self.replay.push_trailers(trailers);
    }

    /// From now on, counts the data bytes that pass into the returned counter.
    pub(crate) fn count_bytes(&mut self) -> Arc<AtomicU64> {
        self.counted.get_or_insert_with(Arc::default).clone()
    }

    /// A client's request body, held to `limits`' body timeout and rate.
    pub fn client(inner: Incoming, limits: &ConnectionLimits) -> Self {
        let pace = (!limits.body_timeout.is_zero() && !inner.is_end_stream()).then(|| {
            Box::new(Pace {
                timeout: limits.body_timeout,
                min_rate: limits.body_min_rate,
                start: None,
                last_progress: Instant::now(),
                received: 0,
                stall: Stall::default(),
            })
        });
        Streamed {
            inner: Source::Peer(inner),
            pace,
            counted: None,
            replay: Replay::default(),
        }
    }
}

/// The moment a request body is too slow if no more bytes come: the gap since its last
/// bytes reaches the timeout, or (with a rate) the bytes so far no longer buy time past
/// the grace of one timeout.
fn body_deadline(
    start: Instant,
    last_progress: Instant,
    timeout: Duration,
    min_rate: u64,
    received: u64,
) -> Instant {
    let gap = last_progress + timeout;
    if min_rate == 0 {
        return gap;
    }
    let bought = Duration::from_secs_f64(received as f64 / min_rate as f64);
    gap.min(start + timeout + bought)
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.replay.pop() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let r = this.inner.poll_frame(cx);
        if let (Some(c), Poll::Ready(Some(Ok(frame)))) = (&this.counted, &r)
            && let Some(d) = frame.data_ref()
        {
            c.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        let Some(pace) = this.pace.as_deref_mut() else {
            return r;
        };
        let Pace {
            timeout,
            min_rate,
            start,
            last_progress,
            received,
            stall,
        } = pace;
        let start = *start.get_or_insert_with(|| {
            let now = Instant::now();
            *last_progress = now;
            now
        });
        match r {
            Poll::Pending => {
                let at = || body_deadline(start, *last_progress, *timeout, *min_rate, *received);
                if stall.expired(cx, at) {
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *received += d.len() as u64;
                    *last_progress = Instant::now();
                    stall.progress();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.replay.is_empty() && self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        if self.replay.is_empty() {
            return hint;
        }
        let n = self.replay.len();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower() + n);
        if let Some(u) = hint.upper() {
            sum.set_upper(u + n);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether the server side takes the client for HTTP/2 after reading `pieces`, one
    /// write each.
    async fn sniffed(pieces: &[&[u8]]) -> bool {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::new());
        let mut io = ClientIo::new(server, &ConnectionLimits::default(), activity.clone());
        let mut buf = [0u8; 64];
        for p in pieces {
            client.write_all(p).await.expect("write");
            let n = io.read(&mut buf).await.expect("read");
            assert_eq!(n, p.len());
        }
        activity.http2()
    }

    #[tokio::test]
    async fn the_http2_preface_marks_the_connection_even_in_pieces() {
        assert!(sniffed(&[PREFACE]).await);
        assert!(sniffed(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]).await);
        assert!(sniffed(&[b"P", b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"]).await);
        assert!(!sniffed(&[b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"]).await);
        assert!(!sniffed(&[b"PRI * HTTP/1.1\r\n", b"\r\nSM\r\n\r\n"]).await);
    }

    #[tokio::test]
    async fn a_write_waiting_for_the_client_keeps_the_connection_from_idling() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new());
        let mut io = ClientIo::new(server, &ConnectionLimits::default(), activity.clone());
        let limit = Duration::from_millis(10);
        let writer = tokio::spawn(async move {
            io.write_all(&[b'x'; 1024]).await.expect("write");
            io
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(activity.sending.load(Ordering::Relaxed));
        assert!(
            !activity.idle_for(limit),
            "a response is still being written"
        );
        let mut got = vec![0u8; 1024];
        client.read_exact(&mut got).await.expect("read");
        let _io = writer.await.expect("writer");
        assert!(!activity.sending.load(Ordering::Relaxed));
        assert!(
            activity.idle_for(limit),
            "idle since it was made, 50 ms ago"
        );
    }
}
