//! The data plane: compile the IR into a [`Snapshot`], serve sockets, route requests,
//! run filters, forward to upstream pools, count everything.
//!
//! The request path loads the current snapshot once (one atomic load), then works only
//! on immutable data: no locks, no configuration work, no allocation of routing tables.
#![forbid(unsafe_code)]

pub mod access_log;
mod body;
mod client;
mod cors;
mod ext_authz;
mod h1;
mod hosts;
pub mod metrics;
mod outbound;
mod proxy;
mod router;
mod server;
mod snapshot;
mod stream;
mod tls;
pub mod trace;
mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http_body_util::Either;

pub use body::Buffered;
pub use client::{ConnectionLimits, Streamed};
pub use metrics::Metrics;
pub use server::raise_open_files_limit;
pub use server::{Listeners, Workers};
pub use snapshot::{Snapshot, Socket, WasmPools, build};
pub use upstream::{DEFAULT_CONNECT_TIMEOUT, set_connect_timeout};

/// A body the gateway sends: streamed from a peer, or held whole (made here, or
/// collected for a filter or a mirror).
pub type Body = Either<Streamed, Buffered>;

/// A snapshot could not be built from the IR; the old one keeps serving.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// What every connection shares: the live snapshot and the metrics (the cleartext upstream
/// pools are per thread; a backend's TLS pool is in the snapshot).
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown drains: HTTP/1.1 responses then say `Connection: close`.
    draining: std::sync::atomic::AtomicBool,
    /// Where access log lines go; `None` when they are off.
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// Where spans go; `None` when tracing is off.
    pub tracing: Option<Arc<trace::Tracing>>,
}

impl Gateway {
    pub fn new(
        initial: Snapshot,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<access_log::AccessLog>>,
        tracing: Option<Arc<trace::Tracing>>,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(initial),
            metrics,
            draining: std::sync::atomic::AtomicBool::new(false),
            access_log,
            tracing,
        })
    }
}
