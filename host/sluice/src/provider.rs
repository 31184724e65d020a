//! The provider: load, translate, build, swap; then watch and do it again.
//!
//! The objects come from a folder (file mode) or from the API server (Kubernetes mode,
//! [`crate::cluster`]); everything after loading is the same.
//!
//! A reload is all or nothing. Load errors (bad YAML, an unknown field, a value the
//! CRD schema refuses), build errors and bind errors all leave the running snapshot in
//! place, and the error names the file, the object and the field. In Kubernetes mode
//! the API server has already admitted each object, so an object Sluice cannot read is
//! left out (and logged) rather than holding back every other change.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow};
use notify::{RecursiveMode, Watcher};
use sluice_proxy::{Gateway, Listeners, Metrics, WasmPools};
use sluice_translate::{ObjectStatus, Translation};
use sluice_wasm::Runtime;
use tokio::sync::mpsc;

use crate::address_pool::AddressPool;
use crate::admin::{self, AdminState};
use crate::unbound;
use sluice_kube::Cluster;
use sluice_kube::lease::Election;
use sluice_kube::status::{self, AddressSource, StatusStats};
use sluice_loader::fetch::Downloads;
use sluice_loader::oci::OciSources;
use sluice_loader::{self as wasm, Sources};

/// A loaded config: its translation, the filter pools, and the filters still being
/// pulled (name, what it waits for).
struct Loaded {
    translation: Translation,
    pools: WasmPools,
    pending: Vec<(String, String)>,
}

/// Where the objects come from, and where Gateways without `spec.addresses` bind.
#[derive(Clone)]
pub struct Source {
    pub from: From,
    /// Replaces the default `0.0.0.0` (e.g. a Pod's own IP).
    pub bind_address: Option<IpAddr>,
    /// Gives each Gateway without `spec.addresses` an address of its own.
    pub address_pool: Option<Arc<AddressPool>>,
}

#[derive(Clone)]
pub enum From {
    /// A YAML file, or a folder of them.
    Files(PathBuf),
    /// The API server, through the watchers' cache.
    Cluster(Arc<Cluster>),
}

impl Source {
    fn describe(&self) -> String {
        match &self.from {
            From::Files(p) => p.display().to_string(),
            From::Cluster(_) => "the Kubernetes API".into(),
        }
    }
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.from {
            From::Cluster(c) => Some(c),
            From::Files(_) => None,
        }
    }
}

/// Kubernetes mode's settings.
pub struct ClusterOptions {
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub addresses: Option<AddressSource>,
}

/// Reads the objects, loads their WasmFilters and translates; the error lists every
/// problem found. Slow when a filter must be compiled: run it off the request path.
fn load(source: &Source, runtime: &Arc<Runtime>, sources: &Sources) -> Result<Loaded, String> {
    let (mut loaded, base) = match &source.from {
        From::Files(path) => {
            let loaded = sluice_resources::load_path(path).map_err(|e| e.to_string())?;
            let base = if path.is_dir() {
                path.clone()
            } else {
                path.parent().unwrap_or(Path::new(".")).to_path_buf()
            };
            (loaded, base)
        }
        // `path` sources are read relative to the working directory.
        From::Cluster(c) => (c.load(), PathBuf::from(".")),
    };
    if let Some(pool) = &source.address_pool {
        let reported = match &source.from {
            From::Cluster(c) => crate::address_pool::reported(&c.list("Gateway")),
            From::Files(_) => Default::default(),
        };
        loaded
            .warnings
            .extend(pool.assign(&mut loaded.resources, &reported));
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let prepared = wasm::prepare(&loaded.resources, &base, runtime, sources);
    let mut translation = sluice_translate::translate_with(&loaded.resources, &prepared.states);
    if let Some(ip) = source.bind_address {
        rebind(&mut translation, ip);
    }
    Ok(Loaded {
        translation,
        pools: prepared.pools,
        pending: prepared.pending,
    })
}

pub fn check(path: &Path) -> Result<String, String> {
    let runtime = Runtime::new(None).map_err(|e| e.to_string())?;
    let sources = Sources::new(Arc::new(Downloads::new(None)), None);
    let source = Source {
        from: From::Files(path.to_path_buf()),
        bind_address: None,
        address_pool: None,
    };
    let t = load(&source, &runtime, &sources)?.translation;
    let v = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    serde_norway::to_string(&v).map_err(|e| e.to_string())
}

/// Loads on a blocking thread.
async fn load_blocking(
    source: &Source,
    runtime: &Arc<Runtime>,
    sources: &Arc<Sources>,
) -> Result<Loaded, String> {
    let (source, runtime, sources) = (source.clone(), runtime.clone(), sources.clone());
    tokio::task::spawn_blocking(move || load(&source, &runtime, &sources))
        .await
        .unwrap_or_else(|e| Err(format!("load task failed: {e}")))
}

pub async fn run(
    source: Source,
    cluster_options: Option<ClusterOptions>,
    admin_addr: SocketAddr,
    drain: Duration,
    cache_dir: Option<PathBuf>,
    insecure_registries: Vec<String>,
    udp_idle: Duration,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let downloads = Arc::new(Downloads::new(
        cache_dir.as_ref().map(|d| d.join("sources")),
    ));
    // Reload requests: file changes, and OCI pulls that finished or failed.
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let oci = OciSources::new(
        cache_dir.clone(),
        downloads.clone(),
        tokio::runtime::Handle::current(),
        tx.clone(),
        insecure_registries,
    );
    let sources = Arc::new(Sources::new(downloads, Some(oci)));
    let runtime =
        Runtime::new(cache_dir).map_err(|e| anyhow!("cannot start the Wasm runtime: {e}"))?;
    if let Some(c) = source.cluster() {
        c.watch(tx.clone());
        tracing::info!("waiting for the first list of every kind from the API server");
        while !c.synced() {
            rx.recv().await;
        }
    }
    // The first snapshot waits for the first pull of each OCI filter (each attempt is
    // bounded; a failed one reports and stops blocking).
    let mut first = load_blocking(&source, &runtime, &sources)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    while !first.pending.is_empty() {
        for (name, what) in &first.pending {
            tracing::info!(filter = %name, "waiting: {what}");
        }
        rx.recv().await;
        first = load_blocking(&source, &runtime, &sources)
            .await
            .map_err(|e| anyhow!("{e}"))?;
    }
    let Loaded {
        mut translation,
        pools,
        ..
    } = first;
    let snapshot = sluice_proxy::build(translation.ir.clone(), &metrics, &pools)
        .map_err(|e| anyhow!("{}: {e}", source.describe()))?;
    let sockets = snapshot.sockets();
    let gw = Gateway::new(snapshot, metrics);
    let listeners = Arc::new(Listeners::new(gw.clone()).with_udp_idle_timeout(udp_idle));
    let failed = listeners.sync(&sockets);
    bind_failures(
        &mut translation.statuses,
        &translation.bindings,
        &failed,
        &tx,
    );
    if let Some(c) = source.cluster() {
        c.publish(translation.statuses.clone());
    }
    let mut state = AdminState::new(gw.clone(), runtime.clone(), translation.statuses);
    // Kubernetes mode: the lease holder writes statuses.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut election = None;
    if let (Some(c), Some(o)) = (source.cluster(), cluster_options) {
        let stats = Arc::new(StatusStats::default());
        state.metrics.register(stats.clone());
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        let e = Election {
            namespace: o.lease_namespace,
            name: o.lease_name,
            identity: o.identity,
            duration: o.lease_duration,
        };
        election = Some(tokio::spawn(e.run(c.client.clone(), leader_tx, stop_rx)));
        tokio::spawn(status::run(c.clone(), leader_rx, o.addresses, stats));
    }
    let state = Arc::new(state);
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen on the admin address {admin_addr}"))?;
    tokio::spawn(admin::serve(admin_listener, state.clone()));
    state.ready.store(true, Ordering::Release);
    tracing::info!(config = %source.describe(), %admin_addr, "sluice is serving");

    let _watcher = match &source.from {
        From::Files(path) => Some(watch(path, tx.clone())?),
        From::Cluster(_) => None,
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Editors write in several steps; wait for the burst to settle.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while rx.try_recv().is_ok() {}
                reload(&source, &gw, &listeners, &state, &runtime, &sources, &tx).await;
            }
            _ = hup.recv() => reload(&source, &gw, &listeners, &state, &runtime, &sources, &tx).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!(timeout = ?drain, "draining connections");
    state.ready.store(false, Ordering::Release);
    // Hand the lease over first, so another replica takes up status writing now.
    let _ = stop_tx.send(true);
    if let Some(e) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    let left = listeners.shutdown(drain).await;
    if left > 0 {
        tracing::warn!(
            open = left,
            "drain timeout reached; closing remaining connections"
        );
    }
    Ok(())
}

async fn reload(
    source: &Source,
    gw: &Arc<Gateway>,
    listeners: &Listeners,
    state: &AdminState,
    runtime: &Arc<Runtime>,
    sources: &Arc<Sources>,
    retry: &mpsc::UnboundedSender<()>,
) {
    // Loading, downloading and compiling filters is blocking work: keep it off the
    // serving threads.
    let prepared = match load_blocking(source, runtime, sources).await {
        Ok(l) if !l.pending.is_empty() => {
            // A filter this config needs is still being pulled: keep serving the
            // previous snapshot, and say in the filter's status what it waits for.
            for (name, what) in &l.pending {
                tracing::info!(filter = %name, "holding the previous configuration: {what}");
            }
            let names: Vec<&str> = l.pending.iter().map(|(n, _)| n.as_str()).collect();
            let statuses = pending_statuses(&state.statuses.load(), l.translation.statuses, &names);
            if let Some(c) = source.cluster() {
                c.publish(statuses.clone());
            }
            state.statuses.store(Arc::new(statuses));
            return;
        }
        Ok(l) => {
            let gw = gw.clone();
            tokio::task::spawn_blocking(move || {
                let snap = sluice_proxy::build(l.translation.ir, &gw.metrics, &l.pools)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((snap, l.translation.statuses, l.translation.bindings))
            })
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")))
        }
        Err(e) => Err(e),
    };
    let result = prepared.map(|(snap, mut statuses, binds)| {
        let failed = listeners.sync(&snap.sockets());
        bind_failures(&mut statuses, &binds, &failed, retry);
        (snap, statuses)
    });
    let c = &gw.metrics.counters;
    match result {
        Ok((snap, statuses)) => {
            gw.snapshot.store(Arc::new(snap));
            if let Some(c) = source.cluster() {
                c.publish(statuses.clone());
            }
            state.statuses.store(Arc::new(statuses));
            state.set_last_error(None);
            c.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(config = %source.describe(), "configuration reloaded");
        }
        Err(e) => {
            c.reloads_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!("configuration rejected, still serving the previous one:\n{e}");
            state.set_last_error(Some(e));
        }
    }
}

/// Reports sockets that could not be bound in their Gateways' statuses, logs them, and
/// asks for another reload in a few seconds.
fn bind_failures(
    statuses: &mut [ObjectStatus],
    binds: &[sluice_translate::GatewayBinding],
    failed: &[(sluice_proxy::Socket, std::io::Error)],
    retry: &mpsc::UnboundedSender<()>,
) {
    if failed.is_empty() {
        return;
    }
    for (_, e) in failed {
        tracing::error!("{e}; the rest of the configuration is served, and this is retried");
    }
    unbound::report(statuses, binds, failed);
    // One retry in flight at a time, however many reloads fail meanwhile.
    if !RETRY_PENDING.swap(true, Ordering::AcqRel) {
        let retry = retry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(BIND_RETRY).await;
            RETRY_PENDING.store(false, Ordering::Release);
            let _ = retry.send(());
        });
    }
}

/// Whether a bind retry is scheduled (one gateway per process).
static RETRY_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How soon a socket that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// Gateways without `spec.addresses` bind `0.0.0.0`; `--bind-address` narrows that.
fn rebind(t: &mut Translation, ip: IpAddr) {
    let any = |a: &IpAddr| a.is_unspecified();
    for p in t.ir.ports.iter_mut().filter(|p| any(&p.address)) {
        p.address = ip;
    }
    for p in t.ir.streams.iter_mut().filter(|p| any(&p.address)) {
        p.address = ip;
    }
    let bound = t.bindings.iter_mut().flat_map(|b| &mut b.addresses);
    for a in bound.filter(|a| any(a)) {
        *a = ip;
    }
}

/// The statuses in force, with the WasmFilters named in `pending` taken from `new`:
/// the rest of the new config is not serving yet, so its status is not shown yet.
fn pending_statuses(
    current: &[ObjectStatus],
    new: Vec<ObjectStatus>,
    pending: &[&str],
) -> Vec<ObjectStatus> {
    let is_pending = |s: &ObjectStatus| {
        s.kind == "WasmFilter"
            && pending.contains(&format!("{}/{}", s.metadata.namespace, s.metadata.name).as_str())
    };
    let mut out: Vec<ObjectStatus> = current.iter().filter(|s| !is_pending(s)).cloned().collect();
    out.extend(new.into_iter().filter(is_pending));
    out
}

/// Watches `path` (a folder recursively, or a file's folder) and signals on change.
fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> anyhow::Result<notify::RecommendedWatcher> {
    let target = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let is_dir = target.is_dir();
    let file = target.clone();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = is_dir || ev.paths.iter().any(|p| p == &file);
        if relevant {
            let _ = tx.send(());
        }
    })?;
    if is_dir {
        w.watch(&target, RecursiveMode::Recursive)?;
    } else {
        // Editors replace files by renaming; watching the folder survives that.
        let dir = target.parent().unwrap_or(Path::new("/"));
        w.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}
