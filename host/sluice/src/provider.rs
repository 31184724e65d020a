//! The provider: load, translate, build, swap; then watch and do it again.
//!
//! The objects come from a folder (file mode) or from the API server (Kubernetes mode,
//! [`sluice_kube`]); everything after loading is the same. [`App`] is built from one
//! [`Config`] and owns what lives across reloads: the Wasm runtime, the filter sources,
//! the listeners, the admin state and the address pool.
//!
//! A reload is all or nothing. Load errors (bad YAML, an unknown field, a value the
//! CRD schema refuses) and build errors leave the running snapshot in place, and the
//! error names the file, the object and the field. In Kubernetes mode the API server
//! has already admitted each object, so an object Sluice cannot read is left out (and
//! logged) rather than holding back every other change. A socket that cannot be bound
//! does not hold back the rest: the translator says so in its Gateway's status.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use notify::{RecursiveMode, Watcher};
use sluice_kube::Cluster;
use sluice_kube::lease::Election;
use sluice_kube::status::{self, AddressSource, StatusStats};
use sluice_loader::fetch::Downloads;
use sluice_loader::oci::OciSources;
use sluice_loader::{Prepared, Sources};
use sluice_proxy::{Gateway, Listeners, Metrics, Snapshot, Socket, WasmPools};
use sluice_resources::Resources;
use sluice_translate::{FilterKey, Inputs, Kind, Translation, Unbound};
use sluice_wasm::Runtime;
use tokio::sync::mpsc;

use crate::address_pool::{self, AddressPool};
use crate::admin::{self, AdminState};

/// Everything `sluice run` is told, in one place.
pub struct Config {
    pub from: From,
    /// Kubernetes mode's settings (`None` in file mode).
    pub cluster: Option<ClusterOptions>,
    /// Replaces the default `0.0.0.0` (e.g. a Pod's own IP).
    pub bind_address: Option<IpAddr>,
    /// Gives each Gateway without `spec.addresses` an address of its own.
    pub address_pool: Option<AddressPool>,
    /// Where Ingresses are served.
    pub ingress: sluice_translate::ingress::Options,
    /// Where WasmFilter `source.path` is read from instead of the config folder; in
    /// Kubernetes mode, path sources are refused without it.
    pub filter_dir: Option<PathBuf>,
    pub admin: SocketAddr,
    /// How long to keep serving after SIGTERM, not ready, before draining.
    pub shutdown_delay: Duration,
    /// How long open connections get to finish on SIGTERM.
    pub drain: Duration,
    /// How long changes must pause before a reload (see [`settle`]).
    pub reload_settle: Duration,
    pub cache_dir: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub udp_idle: Duration,
    pub limits: sluice_proxy::ConnectionLimits,
    /// The threads that serve connections; `None`: the runtime `run` is called on.
    pub workers: Option<sluice_proxy::Workers>,
    /// Log lines per second each Wasm filter may write.
    pub filter_log_lines: u64,
    /// Live Wasm instances across all filters.
    pub wasm_instances: u32,
    /// Linear memory one WasmFilter's idle instances may hold.
    pub wasm_idle_memory: usize,
    /// The access log's format and the share of requests it logs; `None`: off.
    pub access_log: Option<(sluice_proxy::access_log::Format, f64)>,
    /// Where spans go; `None`: tracing is off.
    pub tracing: Option<sluice_proxy::trace::Config>,
}

/// Where the objects come from.
#[derive(Clone)]
pub enum From {
    /// A YAML file, or a folder of them.
    Files(PathBuf),
    /// The API server, through the watchers' cache.
    Cluster(Arc<Cluster>),
}

impl From {
    fn describe(&self) -> String {
        match self {
            From::Files(p) => p.display().to_string(),
            From::Cluster(_) => "the Kubernetes API".into(),
        }
    }
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            From::Cluster(c) => Some(c),
            From::Files(_) => None,
        }
    }
}

/// Kubernetes mode's settings.
pub struct ClusterOptions {
    /// `--gateway`: serve this Gateway only, and write no status.
    pub gateway: Option<(String, String)>,
    pub data_plane: sluice_kube::infra::Options,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub addresses: Option<AddressSource>,
}

/// What loading reads and keeps between reloads; shared with the blocking threads that
/// load.
struct Loader {
    from: From,
    bind_address: Option<IpAddr>,
    address_pool: Option<AddressPool>,
    ingress: sluice_translate::ingress::Options,
    filter_dir: Option<PathBuf>,
    runtime: Arc<Runtime>,
    sources: Sources,
    serve: sluice_translate::Serve,
    /// File mode: the files that loaded, so a reload parses only those that changed.
    files: sluice_resources::FileCache,
}

/// A loaded config: the objects and what the translator was given, its translation,
/// the filter pools, and the filters still being pulled (with what each waits for).
struct Loaded {
    resources: Resources,
    inputs: Inputs,
    translation: Translation,
    pools: WasmPools,
    pending: Vec<(FilterKey, String)>,
}

impl Loader {
    /// Reads the objects, loads their WasmFilters and translates; the error lists every
    /// problem found. Slow when a filter must be compiled: run it off the request path.
    /// `unbound` is what the listeners could not bind last time.
    fn load(&self, unbound: Vec<Unbound>) -> Result<Loaded, String> {
        // Where `source.path` is read: the config folder, or `--filter-dir`; in
        // Kubernetes mode only `--filter-dir`.
        let start = std::time::Instant::now();
        let (mut loaded, paths) = match &self.from {
            From::Files(path) => {
                let loaded = sluice_resources::load_path_cached(path, &self.files)
                    .map_err(|e| e.to_string())?;
                let base = if path.is_dir() {
                    path.clone()
                } else {
                    path.parent().unwrap_or(Path::new(".")).to_path_buf()
                };
                (loaded, Some(self.filter_dir.clone().unwrap_or(base)))
            }
            From::Cluster(c) => (c.load(), self.filter_dir.clone()),
        };
        let mut assigned = Default::default();
        if let Some(pool) = &self.address_pool {
            let reported = match &self.from {
                From::Cluster(c) => address_pool::reported(&c.list(Kind::Gateway.as_str())),
                From::Files(_) => Default::default(),
            };
            // The Gateways with data planes of their own report their Services'.
            let own = sluice_translate::infra::per_gateway(&loaded.resources);
            let shared;
            let res = if own.is_empty() {
                &loaded.resources
            } else {
                let mut r = loaded.resources.clone();
                r.gateways.retain(|g| {
                    !own.contains(&(
                        g.metadata.namespace_or_default().to_string(),
                        g.metadata.name.clone(),
                    ))
                });
                shared = r;
                &shared
            };
            let (a, warnings) = pool.assign(res, &reported);
            assigned = a;
            loaded.warnings.extend(warnings);
        }
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // The WasmFilters that serve Ingress annotations load with the others.
        let ingress_filters =
            sluice_translate::ingress::convert(&loaded.resources, &self.ingress).wasm_filters;
        let with_ingress_filters;
        let filters_of = if ingress_filters.is_empty() {
            &loaded.resources
        } else {
            let mut r = loaded.resources.clone();
            r.wasm_filters.extend(ingress_filters);
            with_ingress_filters = r;
            &with_ingress_filters
        };
        let read = start.elapsed();
        let Prepared {
            states,
            pools,
            pending,
        } = sluice_loader::prepare(filters_of, paths.as_deref(), &self.runtime, &self.sources);
        let prepared = start.elapsed();
        let inputs = Inputs {
            wasm: states,
            default_address: self.bind_address,
            assigned,
            unbound,
            ingress: self.ingress.clone(),
            serve: self.serve.clone(),
        };
        let translation = sluice_translate::translate(&loaded.resources, &inputs);
        tracing::debug!(
            read_ms = millis(read),
            filters_ms = millis(prepared - read),
            translate_ms = millis(start.elapsed() - prepared),
            "configuration loaded"
        );
        Ok(Loaded {
            resources: loaded.resources,
            inputs,
            translation,
            pools,
            pending,
        })
    }
}

/// `sluice check`: loads and translates a folder without serving or pulling. Problems
/// are conditions that are not True and the parts of Ingresses that are not served.
pub fn check(path: &Path, cache_dir: Option<PathBuf>) -> Result<(String, Vec<String>), String> {
    let loader = Loader {
        from: From::Files(path.to_path_buf()),
        bind_address: None,
        address_pool: None,
        ingress: Default::default(),
        filter_dir: None,
        runtime: Runtime::new(cache_dir.clone()).map_err(|e| e.to_string())?,
        sources: Sources::new(
            Arc::new(Downloads::new(cache_dir.map(|d| d.join("sources")))),
            None,
        ),
        serve: sluice_translate::Serve::All,
        files: Default::default(),
    };
    let t = loader.load(Vec::new())?.translation;
    let mut problems = Vec::new();
    for o in &t.statuses {
        let status = serde_json::to_value(&o.status).map_err(|e| e.to_string())?;
        let name = match o.metadata.namespace.as_str() {
            "" => o.metadata.name.clone(),
            ns => format!("{ns}/{}", o.metadata.name),
        };
        not_accepted(&format!("{} {name}", o.kind), &status, &mut problems);
        if let sluice_translate::Status::Ingress(i) = &o.status {
            for n in &i.notes {
                if n.level == sluice_translate::ingress::Level::Error {
                    problems.push(format!("Ingress {name}: {}: {}", n.field, n.message));
                }
            }
        }
    }
    let v = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    Ok((
        serde_norway::to_string(&v).map_err(|e| e.to_string())?,
        problems,
    ))
}

/// The `Accepted`, `Ready`, `ResolvedRefs` and `Programmed` conditions under `v` (a
/// status, with its listeners, parents and ancestors) that are not `True`, as
/// `OBJECT (WHICH): TYPE is STATUS (REASON): MESSAGE`.
fn not_accepted(at: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(ty)), Some(Value::String(status))) =
                (m.get("type"), m.get("status"))
                && matches!(
                    ty.as_str(),
                    "Accepted" | "Ready" | "ResolvedRefs" | "Programmed"
                )
                && status != "True"
            {
                let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
                out.push(format!(
                    "{at}: {ty} is {status} ({}): {}",
                    text("reason"),
                    text("message")
                ));
                return;
            }
            for (k, v) in m {
                // Lists say which listener, parent or ancestor by its name (below).
                let label = match k.as_str() {
                    "listeners" | "parents" | "ancestors" | "conditions" => at.to_string(),
                    _ => format!("{at} {k}"),
                };
                not_accepted(&label, v, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                let label = match item
                    .get("name")
                    .or_else(|| item.get("parentRef").and_then(|p| p.get("name")))
                    .or_else(|| item.get("ancestorRef").and_then(|p| p.get("name")))
                    .and_then(Value::as_str)
                {
                    Some(n) if item.get("type").is_none() => format!("{at} ({n})"),
                    _ => at.to_string(),
                };
                not_accepted(&label, item, out);
            }
        }
        _ => {}
    }
}

/// How soon a socket that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// The running gateway.
pub struct App {
    loader: Arc<Loader>,
    gw: Arc<Gateway>,
    listeners: Arc<Listeners>,
    state: Arc<AdminState>,
    /// Reload requests: file changes, finished or failed OCI pulls, bind retries.
    wake: mpsc::UnboundedSender<()>,
    /// Whether a bind retry is scheduled: one in flight, however many reloads fail.
    retry_pending: Arc<AtomicBool>,
    /// What the listeners could not bind at the last reload.
    unbound: Vec<Unbound>,
    /// Counts [`App::release_memory`] calls, so that only the last one's second
    /// release runs.
    releases: Arc<AtomicU64>,
}

impl App {
    /// Loads the first config, binds its sockets and starts the admin API; waits for
    /// the API server's first lists and for each OCI filter's first pull (each attempt
    /// is bounded; a failed one reports and stops blocking).
    pub async fn run(config: Config) -> anyhow::Result<()> {
        let Config {
            from,
            cluster: cluster_options,
            bind_address,
            address_pool,
            ingress,
            filter_dir,
            admin: admin_addr,
            shutdown_delay,
            drain,
            reload_settle,
            cache_dir,
            insecure_registries,
            udp_idle,
            limits,
            workers,
            filter_log_lines,
            wasm_instances,
            wasm_idle_memory,
            access_log,
            tracing: trace_config,
        } = config;
        let metrics = Arc::new(Metrics::default());
        let downloads = Arc::new(Downloads::new(
            cache_dir.as_ref().map(|d| d.join("sources")),
        ));
        let (wake, mut rx) = mpsc::unbounded_channel::<()>();
        // Watch before the first load: a change made while starting (or right after
        // readiness) then wakes a reload instead of being missed until the next one.
        let _watcher = match &from {
            From::Files(path) => Some(watch(path, wake.clone())?),
            From::Cluster(_) => None,
        };
        let oci = OciSources::new(
            cache_dir.clone(),
            downloads.clone(),
            tokio::runtime::Handle::current(),
            wake.clone(),
            insecure_registries,
        );
        let from_cluster = from.cluster().is_some();
        let runtime = Runtime::with_instances(cache_dir, wasm_instances)
            .map_err(|e| anyhow!("cannot start the Wasm runtime: {e}"))?;
        runtime.set_log_lines_per_second(filter_log_lines);
        runtime.set_idle_memory(wasm_idle_memory);
        let loader = Arc::new(Loader {
            from,
            bind_address,
            address_pool,
            ingress,
            filter_dir,
            runtime: runtime.clone(),
            sources: Sources::new(downloads, Some(oci)),
            serve: match (&from_cluster, &cluster_options) {
                (false, _) => sluice_translate::Serve::All,
                (
                    true,
                    Some(ClusterOptions {
                        gateway: Some((ns, name)),
                        ..
                    }),
                ) => sluice_translate::Serve::Gateway(ns.clone(), name.clone()),
                (true, _) => sluice_translate::Serve::Shared,
            },
            files: Default::default(),
        });
        if let Some(c) = loader.from.cluster() {
            c.watch(wake.clone());
            tracing::info!("waiting for the first list of every kind from the API server");
            while !c.synced() {
                rx.recv().await;
            }
        }
        let mut first = load_blocking(&loader, Vec::new())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        while !first.pending.is_empty() {
            for (name, what) in &first.pending {
                tracing::info!(filter = %name, "waiting: {what}");
            }
            rx.recv().await;
            first = load_blocking(&loader, Vec::new())
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
        let ir = std::mem::take(&mut first.translation.ir);
        let pools = first.pools.clone();
        let m = metrics.clone();
        // On the blocking pool, as a reload's build is (see `release_memory`).
        let snapshot = tokio::task::spawn_blocking(move || sluice_proxy::build(ir, &m, &pools))
            .await
            .map_err(|e| anyhow!("build task failed: {e}"))?
            .map_err(|e| anyhow!("{}: {e}", loader.from.describe()))?;
        let sockets = snapshot.sockets();
        let access_log = match access_log {
            Some((format, share)) => Some(
                sluice_proxy::access_log::AccessLog::to_stdout(format, share)
                    .map_err(|e| anyhow!("cannot start the access log writer: {e}"))?,
            ),
            None => None,
        };
        let tracing = match &trace_config {
            Some(c) => Some(
                sluice_proxy::trace::Tracing::otlp(c, tokio::runtime::Handle::current())
                    .map_err(|e| anyhow!("{e}"))?,
            ),
            None => None,
        };
        let gw = Gateway::new(snapshot, metrics, access_log.clone(), tracing.clone());
        let mut listeners =
            Listeners::with_limits(gw.clone(), limits).with_udp_idle_timeout(udp_idle);
        if let Some(w) = &workers {
            listeners = listeners.on_workers(w);
        }
        let listeners = Arc::new(listeners);
        let state = Arc::new(AdminState::new(gw.clone(), runtime, Vec::new()));
        if let Some(log) = access_log {
            state.metrics.register(log);
        }
        if let Some(t) = tracing {
            state.metrics.register(t);
        }
        let mut app = App {
            loader,
            gw,
            listeners,
            state,
            wake,
            retry_pending: Arc::new(AtomicBool::new(false)),
            unbound: Vec::new(),
            releases: Arc::default(),
        };
        let statuses = app.bind(&sockets, first).await;
        app.publish(statuses);
        app.release_memory().await;

        // Kubernetes mode: the lease holder writes statuses.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut election = None;
        let cluster_options = cluster_options.filter(|o| {
            // A Gateway's own data plane serves; the controller writes its statuses.
            if let Some((ns, name)) = &o.gateway {
                tracing::info!("serving Gateway {ns}/{name} only; statuses are the controller's");
            }
            o.gateway.is_none()
        });
        if let (Some(c), Some(o)) = (app.loader.from.cluster(), cluster_options) {
            let stats = Arc::new(StatusStats::default());
            app.state.metrics.register(stats.clone());
            let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
            let e = Election {
                namespace: o.lease_namespace,
                name: o.lease_name,
                identity: o.identity,
                duration: o.lease_duration,
            };
            election = Some(tokio::spawn(e.run(c.client.clone(), leader_tx, stop_rx)));
            let infra_stats = Arc::new(sluice_kube::infra::InfraStats::default());
            app.state.metrics.register(infra_stats.clone());
            tokio::spawn(sluice_kube::infra::run(
                c.clone(),
                leader_rx.clone(),
                o.data_plane,
                infra_stats,
            ));
            tokio::spawn(status::run(c.clone(), leader_rx, o.addresses, stats));
        }
        admin::spawn(admin_addr, app.state.clone())?;
        app.state.ready.store(true, Ordering::Release);
        tracing::info!(config = %app.loader.from.describe(), %admin_addr, "sluice is serving");

        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    settle(&mut rx, reload_settle).await;
                    app.reload().await;
                }
                _ = hup.recv() => app.reload().await,
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        app.state.ready.store(false, Ordering::Release);
        if !shutdown_delay.is_zero() {
            tracing::info!(delay = ?shutdown_delay, "not ready; serving on until the delay ends");
            tokio::time::sleep(shutdown_delay).await;
        }
        tracing::info!(timeout = ?drain, "draining connections");
        // Hand the lease over first, so another replica takes up status writing now.
        let _ = stop_tx.send(true);
        if let Some(e) = election {
            let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
        }
        let left = app.listeners.shutdown(drain).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "drain timeout reached; closing remaining connections"
            );
        }
        if let Some(log) = &app.gw.access_log {
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(2))).await;
        }
        if let Some(t) = &app.gw.tracing {
            // The exporter's calls run on this runtime: wait for them off its workers.
            let t = t.clone();
            let _ = tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5))).await;
        }
        Ok(())
    }

    /// The statuses in force, shown at `/status` and written by the status writer.
    fn publish(&self, statuses: Vec<sluice_translate::ObjectStatus>) {
        if let Some(c) = self.loader.from.cluster() {
            c.publish(statuses.clone());
        }
        self.state.statuses.store(Arc::new(statuses));
    }

    /// Binds `sockets` and returns the final statuses: translated again, with the
    /// sockets that failed, when those differ from what `loaded` was translated with.
    async fn bind(
        &mut self,
        sockets: &[Socket],
        loaded: Loaded,
    ) -> Vec<sluice_translate::ObjectStatus> {
        let failed: Vec<Unbound> = self
            .listeners
            .sync(sockets)
            .into_iter()
            .map(|(sock, err)| {
                let (address, udp) = match sock {
                    Socket::Tcp(a) => (a, false),
                    Socket::Udp(a) => (a, true),
                };
                Unbound {
                    address,
                    udp,
                    address_not_ours: err.kind() == std::io::ErrorKind::AddrNotAvailable,
                    error: err.to_string(),
                }
            })
            .collect();
        for f in &failed {
            tracing::error!(
                "{}; the rest of the configuration is served, and this is retried",
                f.error
            );
        }
        if !failed.is_empty() {
            self.retry_bind();
        }
        self.unbound = failed.clone();
        if let Some(c) = self.loader.from.cluster() {
            c.publish_data_planes(loaded.translation.data_planes.clone());
        }
        if failed == loaded.inputs.unbound {
            return loaded.translation.statuses;
        }
        // Only statuses depend on what was bound; the IR being served is the same.
        let Loaded {
            resources,
            mut inputs,
            translation,
            ..
        } = loaded;
        inputs.unbound = failed;
        tokio::task::spawn_blocking(move || sluice_translate::translate(&resources, &inputs))
            .await
            .map(|t| t.statuses)
            .unwrap_or(translation.statuses)
    }

    /// Asks for a reload in a few seconds, unless one is already asked for.
    fn retry_bind(&self) {
        if !self.retry_pending.swap(true, Ordering::AcqRel) {
            let (pending, wake) = (self.retry_pending.clone(), self.wake.clone());
            tokio::spawn(async move {
                tokio::time::sleep(BIND_RETRY).await;
                pending.store(false, Ordering::Release);
                let _ = wake.send(());
            });
        }
    }

    async fn reload(&mut self) {
        let start = std::time::Instant::now();
        // Loading, downloading and compiling filters is blocking work: keep it off the
        // serving threads.
        let loaded = match load_blocking(&self.loader, self.unbound.clone()).await {
            Ok(l) if !l.pending.is_empty() => {
                // A filter this config needs is still being pulled: keep serving the
                // previous snapshot, and say in the filter's status what it waits for.
                for (name, what) in &l.pending {
                    tracing::info!(filter = %name, "holding the previous configuration: {what}");
                }
                let names: Vec<FilterKey> = l.pending.iter().map(|(n, _)| n.clone()).collect();
                let statuses = sluice_translate::with_pending(
                    &self.state.statuses.load(),
                    l.translation.statuses,
                    &names,
                );
                self.publish(statuses);
                return;
            }
            Ok(l) => l,
            Err(e) => return self.rejected(e),
        };
        let mut loaded = loaded;
        let loaded_at = start.elapsed();
        let metrics = self.gw.metrics.clone();
        let ir = std::mem::take(&mut loaded.translation.ir);
        let pools = std::mem::take(&mut loaded.pools);
        let built = tokio::task::spawn_blocking(move || {
            sluice_proxy::build(ir, &metrics, &pools).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        let snap: Snapshot = match built {
            Ok(s) => s,
            Err(e) => return self.rejected(e),
        };
        let built_at = start.elapsed();
        let sockets = snap.sockets();
        let statuses = self.bind(&sockets, loaded).await;
        self.gw.snapshot.store(Arc::new(snap));
        let live_at = start.elapsed();
        self.publish(statuses);
        self.state.set_last_error(None);
        self.release_memory().await;
        let counters = &self.gw.metrics.counters;
        counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            config = %self.loader.from.describe(),
            load_ms = millis(loaded_at),
            build_ms = millis(built_at - loaded_at),
            bind_ms = millis(live_at - built_at),
            "configuration reloaded"
        );
    }

    /// Returns what a load, translation and build freed to the system (see
    /// [`crate::memory`]), on a blocking thread: the loads, translations and builds run
    /// on the blocking pool, whose one idle thread is reused for each, so that is the
    /// thread that owns their freed pages. What follows a reload frees memory too, after
    /// this: in Kubernetes mode the status writes and the watch events they cause, the
    /// old snapshot's last connections. So it runs again [`RELEASE_AGAIN_AFTER`] later,
    /// unless another reload came first (its own second release covers both).
    async fn release_memory(&self) {
        let _ = tokio::task::spawn_blocking(crate::memory::release).await;
        let this = self.releases.fetch_add(1, Ordering::Relaxed) + 1;
        let releases = self.releases.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_AGAIN_AFTER).await;
            if releases.load(Ordering::Relaxed) == this {
                let _ = tokio::task::spawn_blocking(crate::memory::release).await;
            }
        });
    }

    fn rejected(&self, e: String) {
        let counters = &self.gw.metrics.counters;
        counters.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!("configuration rejected, still serving the previous one:\n{e}");
        self.state.set_last_error(Some(e));
    }
}

/// For logs: a phase's duration in milliseconds, to the tenth.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// How long after a reload memory is released a second time (see
/// [`App::release_memory`]): past mimalloc's purge delay (1 s) and the status writes
/// that follow a reload.
const RELEASE_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// Loads on a blocking thread.
async fn load_blocking(loader: &Arc<Loader>, unbound: Vec<Unbound>) -> Result<Loaded, String> {
    let loader = loader.clone();
    tokio::task::spawn_blocking(move || loader.load(unbound))
        .await
        .unwrap_or_else(|e| Err(format!("load task failed: {e}")))
}

/// After a change, waits until no further change has come for `quiet`, or ten times
/// that (at least a second) has passed since the first, so that a steady stream of
/// changes still reloads: editors, `cp` and `kubectl apply` write in bursts, and one
/// reload of the finished files beats several of half-written ones (which would fail to
/// load and keep the running config, but log errors).
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + (quiet * 10).max(Duration::from_secs(1));
    loop {
        while rx.try_recv().is_ok() {}
        let until = (tokio::time::Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            _ => break,
        }
    }
    while rx.try_recv().is_ok() {}
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
