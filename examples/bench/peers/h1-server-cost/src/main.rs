//! `h1-server-cost MODE PORT`: answers every request on 127.0.0.1:PORT with `200 ok`,
//! on one current-thread runtime (as a Sluice worker), in one of three ways:
//! - `auto`: hyper-util's auto (HTTP/1.1 or HTTP/2) server with upgrades, as Sluice's
//!   listeners serve today;
//! - `h1`: hyper's HTTP/1.1 server alone;
//! - `raw`: a hand-written loop doing what a gateway needs of the same request: the
//!   head parsed with httparse into an `http::Request` (method, URI, a `HeaderMap`), a
//!   `Response` built and its head encoded from its `HeaderMap`, one write per
//!   response (pipelined requests answered in one write).
//!
//! The difference in CPU per request between `auto` and `raw` bounds what serving
//! client connections without hyper could save.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18400);
    if !matches!(mode.as_str(), "auto" | "h1" | "raw") {
        eprintln!("usage: h1-server-cost auto|h1|raw PORT");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mode = mode.clone();
            tokio::spawn(async move {
                match mode.as_str() {
                    "auto" => auto(stream).await,
                    "h1" => h1(stream).await,
                    _ => raw(stream).await,
                }
            });
        }
    });
}

fn answer() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

async fn service(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    std::hint::black_box(req.headers().len());
    Ok(answer())
}

async fn auto(stream: TcpStream) {
    let b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let _ = b
        .serve_connection_with_upgrades(
            hyper_util::rt::TokioIo::new(stream),
            hyper::service::service_fn(service),
        )
        .await;
}

async fn h1(stream: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper::service::service_fn(service),
        )
        .await;
}

async fn raw(mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(1024);
    loop {
        // Answer every whole head in the buffer, then write once.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            let len = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let mut map = HeaderMap::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) else {
                    return;
                };
                map.append(name, value);
            }
            let Ok(uri) = req.path.unwrap_or("/").parse::<http::Uri>() else {
                return;
            };
            let Ok(method) = http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
            else {
                return;
            };
            let mut request = Request::new(());
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = map;
            std::hint::black_box(request.headers().len());
            drop(request);
            let _ = buf.split_to(len);
            let resp = answer();
            encode(&resp, &mut out);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

thread_local! {
    /// The `date` header's value, made again when the second changes (as hyper does).
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

fn encode(resp: &Response<Full<Bytes>>, out: &mut Vec<u8>) {
    use http_body_util::BodyExt as _;
    let status: StatusCode = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in resp.headers() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = resp.body().clone();
    let len = http_body::Body::size_hint(&body).exact().unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
    out.extend_from_slice(format!("content-length: {len}\r\n\r\n").as_bytes());
    // The body is whole and ready: take it without a runtime.
    let mut fut = std::pin::pin!(body.collect());
    let waker = std::task::Waker::noop();
    if let std::task::Poll::Ready(Ok(c)) =
        std::future::Future::poll(fut.as_mut(), &mut std::task::Context::from_waker(waker))
    {
        out.extend_from_slice(&c.to_bytes());
    }
}
