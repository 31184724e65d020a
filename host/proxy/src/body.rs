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
#[derive(Debug, Default)]
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

/// Chunks read from a body and put back, served before the rest of it.
#[derive(Default)]
pub(crate) struct Replay(VecDeque<Bytes>);

impl Replay {
    pub fn push(&mut self, chunks: Vec<Bytes>) {
        self.0.extend(chunks);
    }
    pub fn pop(&mut self) -> Option<Bytes> {
        self.0.pop_front()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> u64 {
        self.0.iter().map(|c| c.len() as u64).sum()
    }
}
