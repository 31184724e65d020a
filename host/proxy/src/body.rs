//! Bodies held whole: for the filters that ask for a buffered body (filter API 0.2),
//! for mirrors, and for the answers the gateway makes itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::client::Streamed;

/// A body the gateway holds whole: its bytes, then the trailers it came with, if any.
/// Cloning it is cheap (the bytes are shared).
#[derive(Clone, Debug, Default)]
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    pub fn new(data: Bytes) -> Self {
        Buffered {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// The bytes (a cheap clone), for a mirror.
    pub fn data(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }

    pub fn with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Buffered {
            trailers,
            ..Buffered::new(data)
        }
    }
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// What reading a body up to a limit gave.
pub(crate) enum Collected {
    /// All of it.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the limit. The body is handed back whole: what was read is put back in
    /// front of what was not, so it can still be streamed on.
    TooLarge(Streamed),
    /// The peer failed while sending it (or, for a client, sent it too slowly).
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads `body` whole if it is at most `limit` bytes. A body that declares a larger
/// length is not read at all.
pub(crate) async fn collect(mut body: Streamed, limit: u64) -> Collected {
    if body.size_hint().lower() > limit {
        return Collected::TooLarge(body);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Collected::Failed(e),
        };
        match frame.into_data() {
            Ok(d) => {
                total += d.len() as u64;
                chunks.push(d);
                if total > limit {
                    body.unread(chunks);
                    return Collected::TooLarge(body);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            // Both bounded by `limit`, which is at most 64 MiB.
            let mut all = BytesMut::with_capacity(total as usize);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    };
    Collected::Whole { data, trailers }
}

/// Frames read from a body and put back, served before the rest of it: data chunks,
/// then the trailers when the body was read to its end.
#[derive(Default)]
pub(crate) struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub fn push(&mut self, chunks: Vec<Bytes>) {
        self.chunks.extend(chunks);
    }
    /// The body's trailers, served after the chunks (only for a body read to its end).
    pub fn push_trailers(&mut self, trailers: HeaderMap) {
        self.trailers = Some(trailers);
    }
    pub fn pop(&mut self) -> Option<Frame<Bytes>> {
        match self.chunks.pop_front() {
            Some(c) => Some(Frame::data(c)),
            None => self.trailers.take().map(Frame::trailers),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// Reads `body` whole, as [`collect`], and puts what it read back, so the same body
/// still goes on whole (with its length and trailers): `Ok(None)` when it is larger
/// than `limit`.
pub(crate) async fn peek_whole(
    body: &mut Streamed,
    limit: u64,
) -> Result<Option<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    let taken = std::mem::replace(body, Streamed::empty());
    match collect(taken, limit).await {
        Collected::Whole { data, trailers } => {
            // The inner body ended; it is served from the replay alone.
            let mut again = Streamed::empty();
            if !data.is_empty() {
                again.unread(vec![data.clone()]);
            }
            if let Some(t) = trailers {
                again.unread_trailers(t);
            }
            *body = again;
            Ok(Some(data))
        }
        Collected::TooLarge(rest) => {
            *body = rest;
            Ok(None)
        }
        Collected::Failed(e) => Err(e),
    }
}

/// One frame of a streamed body, or why it stopped.
pub(crate) type Frames = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

/// A streamed body was cut because a FailClosed filter failed on it (a trap, its time
/// limit): a request is answered 500 if the backend has not answered yet; a response is
/// cut off.
#[derive(Debug, thiserror::Error)]
#[error("a filter failed while the body streamed through it")]
pub(crate) struct StreamFilterFailed;

/// The frames that come out of [`filter`]'s task: at most one waits here, so a body
/// of any size holds a chunk or two of memory.
pub(crate) struct Filtered {
    rx: tokio::sync::mpsc::Receiver<Frames>,
    done: bool,
}

impl Filtered {
    /// The frames `rx` gets, until its senders are gone.
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Frames>) -> Self {
        Filtered { rx, done: false }
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frames>> {
        if self.done {
            return Poll::Ready(None);
        }
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
        }
        r
    }
    pub(crate) fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One filter a streamed body passes through.
pub(crate) struct Stage {
    pub stream: sluice_wasm::BodyStream,
    pub fail_open: bool,
}

/// Passes `body` through `stages`, in order, chunk by chunk, in a task of its own: each
/// chunk goes through every filter before the next is read (so a slow filter slows the
/// sender, as a slow peer would), then the trailers go through every filter's end.
/// When the reader goes away in the middle of the body (the peer closed, the backend
/// answered early), the task stops at once and the filters' instances are dropped. A
/// reader that goes away once it has the whole body (a body with a `content-length` is
/// complete at its last byte) does not cut the filters' ends short: they run, and what
/// they add has nowhere to go.
pub(crate) fn filter(body: crate::Body, stages: Vec<Stage>) -> Streamed {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut stages: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
        let mut body = body;
        let ended = tokio::select! {
            () = tx.closed() => body.is_end_stream().then(HeaderMap::new),
            t = pump(&mut body, &mut stages, &tx) => t,
        };
        if let Some(trailers) = ended {
            finish(stages, trailers, &tx).await;
        }
    });
    Streamed::filtered(Filtered::new(rx))
}

/// Passes the body's data through the filters. Returns its trailers (or none) when it
/// ended, `None` when it had to stop.
async fn pump(
    body: &mut crate::Body,
    stages: &mut [Option<Stage>],
    tx: &tokio::sync::mpsc::Sender<Frames>,
) -> Option<HeaderMap> {
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // The peer's own failure (too slow, reset): passed on as it is.
                let _ = tx.send(Err(e)).await;
                return None;
            }
        };
        match frame.into_data() {
            Ok(d) => {
                if !through(stages, 0, d, tx).await {
                    return None;
                }
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers = t;
                }
            }
        }
    }
    Some(trailers)
}

/// Ends each filter in turn; what one adds at its end goes through the filters after
/// it before they end. Then the trailers, if any, go out.
async fn finish(
    mut stages: Vec<Option<Stage>>,
    mut trailers: HeaderMap,
    tx: &tokio::sync::mpsc::Sender<Frames>,
) {
    for k in 0..stages.len() {
        let Some(stage) = stages[k].take() else {
            continue;
        };
        let pool = stage.stream.pool().clone();
        match stage.stream.end(&mut trailers).await {
            Ok(tail) => {
                if !tail.is_empty()
                    && !through(&mut stages, k + 1, Bytes::from(tail), tx).await
                    && !tx.is_closed()
                {
                    return;
                }
            }
            Err(_) if stage.fail_open => skipped(&pool),
            Err(_) => {
                let _ = tx.send(Err(Box::new(StreamFilterFailed))).await;
                return;
            }
        }
    }
    if !trailers.is_empty() {
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    }
}

/// Passes one chunk through `stages[from..]` and sends what comes out. Returns false
/// when the body must stop: a FailClosed filter failed, or nobody reads any more. A
/// FailOpen filter that fails is dropped from the stream; the chunk and the rest of the
/// body pass it unfiltered.
async fn through(
    stages: &mut [Option<Stage>],
    from: usize,
    mut data: Bytes,
    tx: &tokio::sync::mpsc::Sender<Frames>,
) -> bool {
    for slot in stages.iter_mut().skip(from) {
        if data.is_empty() {
            // Dropped: the filters after it have nothing to see.
            return true;
        }
        let Some(stage) = slot else {
            continue;
        };
        match stage.stream.chunk(data.clone()).await {
            Ok(None) => {}
            Ok(Some(b)) => data = Bytes::from(b),
            Err(_) if stage.fail_open => {
                skipped(stage.stream.pool());
                *slot = None;
            }
            Err(_) => {
                let _ = tx.send(Err(Box::new(StreamFilterFailed))).await;
                return false;
            }
        }
    }
    data.is_empty() || tx.send(Ok(Frame::data(data))).await.is_ok()
}

fn skipped(pool: &sluice_wasm::Pool) {
    pool.stats()
        .skipped
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `chunks` then `trailers`, as frames come from a peer.
    fn body_of(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Streamed {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for c in chunks {
            tx.try_send(Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                .expect("room");
        }
        if let Some(t) = trailers {
            tx.try_send(Ok(Frame::trailers(t))).expect("room");
        }
        Streamed::filtered(Filtered::new(rx))
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("42"));
        t
    }

    #[tokio::test]
    async fn a_peeked_body_goes_on_whole_with_its_length_and_trailers() {
        let mut body = body_of(&["hel", "lo"], Some(trailers()));
        let seen = peek_whole(&mut body, 5).await.expect("read");
        assert_eq!(seen.as_deref(), Some(&b"hello"[..]));
        assert_eq!(body.size_hint().exact(), Some(5));
        match collect(body, 5).await {
            Collected::Whole { data, trailers: t } => {
                assert_eq!(&data[..], b"hello");
                assert_eq!(t, Some(trailers()));
            }
            _ => panic!("not whole"),
        }
    }

    #[tokio::test]
    async fn a_body_above_the_limit_is_not_peeked_and_stays_whole() {
        let mut body = body_of(&["hel", "lo", "!"], None);
        assert_eq!(peek_whole(&mut body, 4).await.expect("read"), None);
        match collect(body, 100).await {
            Collected::Whole { data, trailers } => {
                assert_eq!(&data[..], b"hello!");
                assert_eq!(trailers, None);
            }
            _ => panic!("not whole"),
        }
    }
}
