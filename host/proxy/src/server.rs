//! Sockets and connections: bind what the snapshot asks for, serve HTTP/1.1 (with
//! upgrades) and HTTP/2 cleartext on each, and drain gracefully on shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::Gateway;
use crate::client::{Activity, ClientIo, ConnectionLimits, InFlight};
use crate::proxy::{ConnInfo, Tls, handle};
use crate::snapshot::Socket;

/// Open connections, so shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

struct Guard(Arc<Tracker>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The threads that serve connections when there is more than one worker.
///
/// Each runs a current-thread runtime of its own and accepts on its own socket of every
/// TCP listener (`SO_REUSEPORT`: the kernel spreads new connections over the sockets of
/// a port by their addresses), so that a connection, its requests, its filters and the
/// upstream connections they use stay on one thread, as with nginx's and Envoy's
/// workers. A shared work-stealing runtime moved tasks between threads and woke them
/// across threads: two workers gained ×1.01-1.25 over one where nginx gained
/// ×1.20-1.35; with a runtime per worker Sluice gains ×1.46 (docs/performance.md,
/// "Worker threads").
///
/// The configuration, the admin API and everything else that is not a connection run
/// on the thread that started these. Dropping this ends the threads.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads, named `sluice-worker-N`. With `pin`, worker N keeps
    /// to the Nth CPU this process may run on (round robin when there are more workers than CPUs), as nginx's
    /// `worker_cpu_affinity auto` does. Unpinned, the scheduler may leave a runnable
    /// worker waiting a whole tick (4 ms at 250 Hz) behind another busy thread while a
    /// worker of ours holds the other CPU: two workers' p99 doubles in about half the
    /// runs on a loaded 2-core machine (docs/performance.md, "Two workers").
    pub fn start(n: usize, pin: bool) -> io::Result<Workers> {
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stop.push(tx);
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(i, cpu);
                    }
                    rt.block_on(async {
                        let _ = rx.await;
                    })
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stop,
        })
    }

    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }
}

/// The CPUs this thread may run on (its affinity mask, which the cgroup's cpuset
/// bounds), in order; empty if that cannot be read.
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CPUs this process may use; workers are not pinned");
            Vec::new()
        }
    }
}

/// Keeps the calling thread (worker `i`) on `cpu`.
fn pin_to(i: usize, cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    match rustix::thread::sched_setaffinity(None, &set) {
        Ok(()) => tracing::debug!(worker = i, cpu, "worker pinned"),
        Err(e) => tracing::warn!(worker = i, cpu, error = %e, "cannot pin the worker to its CPU"),
    }
}

/// The bound sockets. `sync` makes them match a snapshot; `shutdown` drains.
pub struct Listeners {
    gw: Arc<Gateway>,
    /// The worker threads' runtimes; empty: connections are served on the runtime that
    /// calls [`Listeners::sync`].
    workers: Vec<tokio::runtime::Handle>,
    bound: Mutex<HashMap<Socket, watch::Sender<bool>>>,
    /// Set once on shutdown: every connection finishes its request and closes.
    draining: watch::Sender<bool>,
    tracker: Arc<Tracker>,
    http: Arc<auto::Builder<TokioExecutor>>,
    /// UDP sessions end after this long without a datagram either way.
    udp_idle: Duration,
    limits: ConnectionLimits,
}

impl Listeners {
    pub fn with_limits(gw: Arc<Gateway>, limits: ConnectionLimits) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // No timer for HTTP/1.1: its header timeout is the connection's own timer (see
        // `serve`), where hyper's would make and drop a timer for every request.
        http.http1().header_read_timeout(None);
        http.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.h2_keepalive)
            .keep_alive_timeout(limits.h2_keepalive);
        Listeners {
            gw,
            workers: Vec::new(),
            bound: Mutex::new(HashMap::new()),
            draining: watch::channel(false).0,
            tracker: Arc::default(),
            http: Arc::new(http),
            udp_idle: Duration::from_secs(60),
            limits,
        }
    }

    /// Serves connections on these worker threads' runtimes (see [`Workers`]): each
    /// TCP listener is bound once per worker, with `SO_REUSEPORT`.
    pub fn on_workers(mut self, workers: &Workers) -> Self {
        self.workers = workers.handles.clone();
        self
    }

    /// Sets the UDP session idle timeout (default 60 s).
    pub fn with_udp_idle_timeout(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Binds every socket in `wanted` that is not bound yet, then stops accepting on the
    /// ones no longer wanted (their open connections finish normally). A socket that
    /// cannot be bound (an address the host does not own, a port another process holds)
    /// does not hold back the others: it is returned with its error, naming the address,
    /// and the caller reports it and tries again later.
    pub fn sync(&self, wanted: &[Socket]) -> Vec<(Socket, io::Error)> {
        let mut bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::new();
        let mut failed = Vec::new();
        for sock in wanted {
            if !bound.contains_key(sock) {
                let b = match sock {
                    Socket::Tcp(addr) => self.bind_tcp(*addr).map(Bound::Tcp),
                    Socket::Udp(addr) => {
                        let _rt = self.workers.first().map(|h| h.enter());
                        bind_udp(*addr).map(Bound::Udp)
                    }
                };
                match b {
                    Ok(b) => fresh.push((*sock, b)),
                    Err(e) => {
                        let (kind, addr) = match sock {
                            Socket::Tcp(a) => ("", a),
                            Socket::Udp(a) => (" udp", a),
                        };
                        let msg = format!("cannot listen on{kind} {addr}: {e}");
                        failed.push((*sock, io::Error::new(e.kind(), msg)));
                    }
                }
            }
        }
        for (sock, b) in fresh {
            let (stop, stopped) = watch::channel(false);
            bound.insert(sock, stop);
            match b {
                Bound::Tcp(listeners) => {
                    let Socket::Tcp(addr) = sock else { continue };
                    // The socket's own connections, for its cap, whichever worker
                    // accepted them.
                    let here = Arc::new(Tracker::default());
                    for (i, listener) in listeners.into_iter().enumerate() {
                        let accept = accept_loop(
                            listener,
                            addr,
                            self.gw.clone(),
                            stopped.clone(),
                            self.draining.subscribe(),
                            (self.tracker.clone(), here.clone()),
                            self.http.clone(),
                            self.limits,
                        );
                        match self.workers.get(i) {
                            Some(h) => drop(h.spawn(accept)),
                            None => drop(tokio::spawn(accept)),
                        }
                    }
                }
                Bound::Udp(socket) => {
                    let Socket::Udp(addr) = sock else { continue };
                    let serve = crate::stream::serve_udp(
                        self.gw.clone(),
                        addr,
                        socket,
                        stopped,
                        self.udp_idle,
                    );
                    match self.workers.first() {
                        Some(h) => drop(h.spawn(serve)),
                        None => drop(tokio::spawn(serve)),
                    }
                }
            }
            tracing::info!(socket = ?sock, "listening");
        }
        bound.retain(|sock, stop| {
            let keep = wanted.contains(sock);
            if !keep {
                let _ = stop.send(true);
                tracing::info!(socket = ?sock, "stopped listening");
            }
            keep
        });
        failed
    }

    /// Stops accepting, asks every connection to finish, and waits up to `timeout` for
    /// them to close. Returns how many were still open.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        for stop in self
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = stop.send(true);
        }
        self.gw
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.draining.send(true);
        let wait = async {
            loop {
                let idle = self.tracker.idle.notified();
                if self.tracker.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.tracker.open.load(Ordering::Acquire)
    }
}

impl Listeners {
    /// `addr` bound once, or once per worker (each registered with its worker's
    /// runtime).
    fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
        if self.workers.is_empty() {
            return Ok(vec![bind(addr, false)?]);
        }
        let mut out: Vec<TcpListener> = Vec::with_capacity(self.workers.len());
        for h in &self.workers {
            let _rt = h.enter();
            // Port 0 asks for any free port: the first socket gets one, the others
            // join it there.
            let at = match out.first() {
                Some(l) => l.local_addr()?,
                None => addr,
            };
            out.push(bind(at, true)?);
        }
        Ok(out)
    }
}

enum Bound {
    /// One listener per worker thread.
    Tcp(Vec<TcpListener>),
    Udp(tokio::net::UdpSocket),
}

fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a restarted gateway bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // One socket per worker on the same port. Another process of the same user that
    // asks for SO_REUSEPORT could join the port too, as with nginx's `reuseport` and
    // Envoy's listeners; one that does not gets EADDRINUSE.
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    key: SocketAddr,
    gw: Arc<Gateway>,
    mut stopped: watch::Receiver<bool>,
    draining: watch::Receiver<bool>,
    // Every connection, and this socket's own (for its cap).
    (tracker, here): (Arc<Tracker>, Arc<Tracker>),
    http: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = stopped.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%key, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if here.open.load(Ordering::Acquire) >= limits.max_connections {
            gw.metrics
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%key, %remote, max = limits.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        tracker.open.fetch_add(1, Ordering::AcqRel);
        here.open.fetch_add(1, Ordering::AcqRel);
        let guard = (Guard(tracker.clone()), Guard(here.clone()));
        // The snapshot at accept time decides the handshake; a reload (a rotated
        // certificate) applies to the next connection and leaves this one alone.
        let (is_http, tls) = {
            let snap = gw.snapshot.load();
            let port = snap.port(&key);
            (port.is_some(), port.and_then(|p| p.tls.clone()))
        };
        if !is_http {
            let gw = gw.clone();
            tokio::spawn(async move {
                let _guard = guard;
                crate::stream::serve_tcp(gw, key, stream).await;
            });
            continue;
        }
        let gw = gw.clone();
        let http = http.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => {
                    let info = Arc::new(ConnInfo::new(key, remote, None, limits));
                    serve(stream, gw, info, http, draining).await;
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let sni = stream
                        .get_ref()
                        .1
                        .server_name()
                        .map(str::to_ascii_lowercase);
                    let info = Arc::new(ConnInfo::new(key, remote, Some(Tls { sni }), limits));
                    serve(stream, gw, info, http, draining).await;
                }
            }
        });
    }
}

/// Serves one connection (HTTP/1.1 with upgrades, or HTTP/2) until it closes, or, once
/// draining starts, until its requests in flight finish.
///
/// The connection's deadlines run on one timer, re-armed only when it fires:
/// - HTTP/1.1 (and a client that has not yet said which protocol it speaks) owes a whole
///   request head within the header timeout of accept, or of its previous response; it
///   is closed then, as a slow head or an idle kept-alive connection. A response still
///   being written (the client reads slowly) is held to the send timeout instead.
/// - HTTP/2 with no request in flight for the idle timeout gets GOAWAY.
/// - An HTTP/1.1 connection idle for the idle timeout (when set below the header
///   timeout) is closed as well.
async fn serve<I>(
    stream: I,
    gw: Arc<Gateway>,
    info: Arc<ConnInfo>,
    http: Arc<auto::Builder<TokioExecutor>>,
    mut draining: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = info.remote;
    let (header_timeout, idle_timeout) = (info.limits.header_timeout, info.limits.idle_timeout);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ClientIo::new(stream, &info.limits, activity.clone()));
    let counted = activity.clone();
    let svc =
        service_fn(move |req| handle(gw.clone(), info.clone(), req, InFlight::begin(&counted)));
    let conn = http.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // Draining: HTTP/2 gets GOAWAY at once. An HTTP/1.1 connection answers its next
    // request with `Connection: close` (see `handle`) and closes after it; one that sends
    // nothing within DRAIN_IDLE is closed then.
    let mut shut = false;
    let mut drain_idle: Option<Instant> = None;
    if *draining.borrow() {
        conn.as_mut().graceful_shutdown();
        shut = true;
    }
    // What the client owes: a head (HTTP/1.1, or not yet known) or, on HTTP/2, only a
    // request now and then. Read again whenever the timer fires: the preface may have
    // come since.
    let limit = |http2: bool| {
        if http2 {
            idle_timeout
        } else {
            idle_timeout.min(header_timeout)
        }
    };
    loop {
        // Once HTTP/2 has had its GOAWAY, only its requests in flight are left.
        let wake = (!(activity.http2() && shut)).then(|| {
            let at = activity.idle_deadline(limit(activity.http2()));
            drain_idle.map_or(at, |d| at.min(d))
        });
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection error");
                }
                return;
            }
            _ = draining.changed(), if !shut && drain_idle.is_none() => {
                if activity.http2() {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                } else {
                    drain_idle = Some(Instant::now() + DRAIN_IDLE);
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                if drain_idle.is_some_and(|d| d <= Instant::now()) {
                    drain_idle = None;
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                    continue;
                }
                let http2 = activity.http2();
                let limit = limit(http2);
                if !activity.idle_for(limit) {
                    continue;
                }
                if http2 {
                    tracing::debug!(%remote, "idle timeout; closing the connection");
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                } else {
                    // Dropped, not shut down gracefully: hyper would wait for a head
                    // that has started to come, however slowly.
                    tracing::debug!(%remote, ?limit, "no request head in time; closing the connection");
                    return;
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How long a kept-alive HTTP/1.1 connection may stay idle once draining starts.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to the hard one: each connection takes a
/// descriptor, and the common soft default (1024) would let about a thousand idle
/// clients refuse service to everyone.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = ?limit.current,
            to = ?limit.maximum,
            "raised the open files limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
