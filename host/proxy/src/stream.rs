//! TCP, TLS and UDP listeners: bytes and datagrams forwarded to a backend, not parsed.
//!
//! - TCP: the listener's first route; both directions copied, and a half-close (one
//!   side's FIN) passed on while the other direction keeps flowing.
//! - TLS: the ClientHello is read (not consumed) to learn the server name, which picks
//!   the listener and the TLSRoute. Passthrough replays the ClientHello to the backend,
//!   which completes the handshake itself; Terminate completes it here with the
//!   listener's certificates and forwards the plaintext.
//! - UDP: one session per client address, each with its own upstream socket, closed
//!   after the idle timeout.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use sluice_ir::{BackendIr, StreamListenerIr, StreamPortIr, StreamProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::hosts::HostTable;
use crate::metrics::{Metrics, StreamStats};
use crate::tls::tls_acceptor_for;
use crate::{BuildError, Gateway};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is refused.
const HELLO_LIMIT: usize = 16 << 10;

pub(crate) struct StreamTable {
    pub protocol: StreamProtocol,
    /// By listener hostname (the SNI for TLS; TCP and UDP listeners have one entry).
    pub listeners: HostTable<StreamListener>,
}

pub(crate) struct StreamListener {
    pub terminate: Option<tokio_rustls::TlsAcceptor>,
    /// By route hostname (TLSRoutes); TCP and UDP use the catch-all, the first route.
    pub routes: HostTable<Arc<StreamRoute>>,
}

pub(crate) struct StreamRoute {
    pub name: String,
    pub stats: Arc<StreamStats>,
    pub backends: Vec<StreamBackend>,
    pub total_weight: u64,
}

pub(crate) struct StreamBackend {
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
    pub next: AtomicUsize,
}

impl StreamRoute {
    /// A weighted pick among backends, then round robin among its endpoints.
    fn endpoint(&self) -> Option<SocketAddr> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = fastrand::u64(0..self.total_weight);
        let b = self.backends.iter().find(|b| {
            let w = u64::from(b.weight);
            if n < w {
                true
            } else {
                n -= w;
                false
            }
        })?;
        match b.endpoints.len() {
            0 => None,
            len => b
                .endpoints
                .get(b.next.fetch_add(1, Ordering::Relaxed) % len)
                .copied(),
        }
    }
}

pub(crate) fn build_table(p: &StreamPortIr, metrics: &Metrics) -> Result<StreamTable, BuildError> {
    let mut listeners = Vec::new();
    for l in &p.listeners {
        listeners.push((l.hostname.as_deref(), build_listener(l, metrics)?));
    }
    Ok(StreamTable {
        protocol: p.protocol,
        listeners: HostTable::new(listeners),
    })
}

fn build_listener(l: &StreamListenerIr, metrics: &Metrics) -> Result<StreamListener, BuildError> {
    let terminate = match &l.terminate {
        // No ALPN: the gateway does not know what the bytes inside are.
        Some(tls) => Some(tls_acceptor_for(&[(l.hostname.as_deref(), tls)], &[])?),
        None => None,
    };
    let mut routes = Vec::new();
    for r in &l.routes {
        let (kind, name) = r.route.split_once(' ').unwrap_or(("", &r.route));
        let route = Arc::new(StreamRoute {
            name: r.route.clone(),
            stats: metrics.stream(kind, name),
            // Invalid backends keep their share (with no endpoints), so the connections
            // that would have gone to them are refused rather than moved elsewhere.
            total_weight: r.backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends: r.backends.iter().map(backend).collect(),
        });
        if r.hostnames.is_empty() {
            routes.push((None, route));
        } else {
            for h in &r.hostnames {
                routes.push((Some(h.clone()), route.clone()));
            }
        }
    }
    let routes = routes
        .iter()
        .map(|(h, r)| (h.as_deref(), r.clone()))
        .collect();
    Ok(StreamListener {
        terminate,
        routes: HostTable::new(routes),
    })
}

fn backend(b: &BackendIr) -> StreamBackend {
    StreamBackend {
        weight: b.weight,
        endpoints: if b.invalid.is_some() {
            Vec::new()
        } else {
            b.endpoints.clone()
        },
        next: AtomicUsize::new(0),
    }
}

/// Serves one TCP connection on a TCP or TLS listener.
pub(crate) async fn serve_tcp(gw: Arc<Gateway>, key: SocketAddr, mut client: TcpStream) {
    let snap = gw.snapshot.load_full();
    let Some(table) = snap.stream(&key) else {
        return;
    };
    if table.protocol == StreamProtocol::Tcp {
        let Some(route) = table
            .listeners
            .get("")
            .and_then(|l| l.routes.get(""))
            .cloned()
        else {
            return;
        };
        drop(snap);
        if let Some(mut upstream) = connect(&route).await {
            pipe(&route, &mut client, &mut upstream).await;
        }
        return;
    }
    let (hello, sni) =
        match tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(&mut client)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no TLS ClientHello");
                return;
            }
            Err(_) => return,
        };
    let Some(listener) = table.listeners.get(&sni) else {
        return;
    };
    let Some(route) = listener.routes.get(&sni).cloned() else {
        tracing::debug!(%sni, "no TLSRoute for this server name");
        return;
    };
    let terminate = listener.terminate.clone();
    drop(snap);
    let client = Prefixed {
        prefix: hello,
        inner: client,
    };
    match terminate {
        Some(acceptor) => {
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(client)).await
            else {
                return;
            };
            if let Some(mut upstream) = connect(&route).await {
                pipe(&route, &mut tls, &mut upstream).await;
            }
        }
        None => {
            let mut client = client;
            if let Some(mut upstream) = connect(&route).await {
                // The ClientHello goes first, replayed from `prefix`.
                pipe(&route, &mut client, &mut upstream).await;
            }
        }
    }
}

/// Copies both ways until both sides have closed, counting the connection and bytes.
async fn pipe<A, B>(route: &StreamRoute, client: &mut A, upstream: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let s = &route.stats;
    s.connections.fetch_add(1, Ordering::Relaxed);
    s.active.fetch_add(1, Ordering::Relaxed);
    if let Ok((rx, tx)) = tokio::io::copy_bidirectional(client, upstream).await {
        s.rx_bytes.fetch_add(rx, Ordering::Relaxed);
        s.tx_bytes.fetch_add(tx, Ordering::Relaxed);
    }
    s.active.fetch_sub(1, Ordering::Relaxed);
}

async fn connect(route: &StreamRoute) -> Option<TcpStream> {
    let Some(addr) = route.endpoint() else {
        tracing::debug!(route = %route.name, "no ready endpoint");
        route.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    match crate::upstream::connect_tcp(addr).await {
        Ok(s) => Some(s),
        Err(e) => {
            if let Some(e) = e {
                tracing::debug!(route = %route.name, %addr, error = %e, "connect failed");
            }
            route.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Reads until a whole ClientHello is buffered; returns the bytes read and its server
/// name (lowercase; empty when the client sent none).
async fn read_client_hello(s: &mut TcpStream) -> io::Result<(Bytes, String)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > HELLO_LIMIT {
            return Err(io::Error::other("ClientHello too large"));
        }
        acceptor.read_tls(&mut &chunk[..n])?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                return Ok((Bytes::from(buf), sni));
            }
            Ok(None) => continue,
            Err((e, _)) => return Err(io::Error::other(e)),
        }
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Session {
    stats: Arc<StreamStats>,
    upstream: Arc<UdpSocket>,
    closed: Arc<AtomicBool>,
    activity: Arc<Activity>,
}

/// When a session last saw a datagram, either way.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Serves a UDP socket until `stopped`: each client address gets a session with its
/// own upstream socket, ended after `idle` without traffic either way.
pub(crate) async fn serve_udp(
    gw: Arc<Gateway>,
    key: SocketAddr,
    sock: UdpSocket,
    mut stopped: watch::Receiver<bool>,
    idle: Duration,
) {
    let sock = Arc::new(sock);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut last_sweep = Instant::now();
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, client) = tokio::select! {
            _ = stopped.changed() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%key, error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        if sessions
            .get(&client)
            .is_some_and(|s| s.closed.load(Ordering::Acquire))
        {
            sessions.remove(&client);
        }
        // Closed sessions of clients that went quiet are swept now and then.
        if last_sweep.elapsed() > idle {
            sessions.retain(|_, s| !s.closed.load(Ordering::Acquire));
            last_sweep = Instant::now();
        }
        let session = match sessions.get(&client) {
            Some(s) => s,
            None => {
                let Some(s) = open_session(&gw, key, client, sock.clone(), idle).await else {
                    continue;
                };
                sessions.entry(client).or_insert(s)
            }
        };
        session.activity.touch();
        session
            .stats
            .rx_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = session.upstream.send(&buf[..n]).await {
            tracing::debug!(%client, error = %e, "udp send upstream failed");
        }
    }
}

async fn open_session(
    gw: &Gateway,
    key: SocketAddr,
    client: SocketAddr,
    downstream: Arc<UdpSocket>,
    idle: Duration,
) -> Option<Session> {
    let route = {
        let snap = gw.snapshot.load();
        snap.stream(&key)?
            .listeners
            .get("")?
            .routes
            .get("")?
            .clone()
    };
    let Some(addr) = route.endpoint() else {
        route.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let upstream = Arc::new(UdpSocket::bind(local).await.ok()?);
    upstream.connect(addr).await.ok()?;
    let closed = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let stats = route.stats.clone();
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let (up, done, seen, counts) = (
        upstream.clone(),
        closed.clone(),
        activity.clone(),
        stats.clone(),
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        // Replies flow back until the session has been idle for `idle`; a datagram from
        // the client counts as activity too.
        let mut wait = idle;
        loop {
            match tokio::time::timeout(wait, up.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    seen.touch();
                    counts.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let _ = downstream.send_to(&buf[..n], client).await;
                    wait = idle;
                }
                Ok(Err(_)) => break,
                Err(_) => {
                    let quiet = seen.idle_for();
                    if quiet >= idle {
                        break;
                    }
                    wait = idle - quiet;
                }
            }
        }
        done.store(true, Ordering::Release);
        counts.active.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(%client, "udp session closed");
    });
    tracing::debug!(%client, upstream = %addr, route = %route.name, "udp session opened");
    Some(Session {
        stats,
        upstream,
        closed,
        activity,
    })
}
