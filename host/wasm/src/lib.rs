//! The filter runtime: wasmtime's component model, running components that export the
//! `sluice:filter/filter` world.
//!
//! - One [`Engine`] per process, with the pooling allocator and epoch interruption.
//! - Components are compiled once per SHA-256 digest and cached on disk (AOT), so a
//!   restart loads them in well under a millisecond instead of recompiling.
//! - One `InstancePre` per digest; one [`Pool`] per (WasmFilter, digest, config,
//!   limits). A pool hands out instances that serve one call at a time; `configure`
//!   runs once per instance; an instance that failed is dropped, never reused.
//! - Each call gets a time budget, each instance a memory limit. Calls are async: a
//!   running guest yields to the executor at every epoch tick (1 ms), and only the ticks
//!   it spends running count against its budget, so a looping filter neither holds a
//!   worker thread nor is cut early because it waited for one.
//! - A filter gets no files, environment, sockets or wall clock (see `sandbox`). Only
//!   the WIT imports reach the host.
#![deny(unsafe_code)]

mod bindings;
mod capture;
mod digest;
mod host;
mod kv;
mod outbound;
mod sandbox;
pub mod stats;
mod ticker;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use ticker::{TICK, Ticker};

use http::{HeaderMap, Method, StatusCode, Uri};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    Trap, UpdateDeadline,
};

use bindings::v0_1::sluice::filter0_1_0::types::{DirectResponse, RequestAction};
pub use capture::{
    ALWAYS_REDACTED, CaptureSpec, CapturedRequest, CapturedResponse, Failure, REDACTED,
};
use host::TrailersCtx;
pub use host::{Context, ContextFull, RequestCtx, ResponseCtx};
use host::{HostState, MemoryLimiter};
pub use kv::{KvBackend, RedisSpec, redacted as redacted_redis_url};
pub use outbound::{
    BodySink, CallError, CallFuture, Outbound, OutboundRequest, OutboundResponse, SpanIds,
    WriteFuture,
};
pub use stats::{BodyEvent, Direction, ErrorKind, FilterStats};

/// Runs `fut` to completion on this thread, for callers outside async code (the loader
/// on its blocking thread, `sluice check`, the test harness). Filter calls need no
/// reactor: their yields are plain wake-ups, and the epoch ticks come from a thread of
/// the runtime's own.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The largest memory any WasmFilter may ask for; the pool reserves address space for it.
/// The loader refuses a larger `spec.limits.memory` (`sluice_resources::WASM_MAX_MEMORY`).
pub const MAX_MEMORY: usize = 1 << 30;
/// Time `configure` may take (it may parse a large config).
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle instances a pool keeps at least. Under load it keeps as many as were in use
/// at once lately (1,000 requests waiting on outbound calls come back as 1,000 idle
/// instances, ready for the next 1,000), and every `TRIM_EVERY` drops what the last
/// period did not need, on a thread of its own: a burst neither instantiates nor
/// drops a thousand instances at once on a proxy thread each time it comes back.
const POOL_CAPACITY: usize = 64;
/// The linear memory one WasmFilter's idle instances may hold between calls, by
/// default (`sluice run --wasm-idle-memory`). It caps the idle instances kept above:
/// a Rust filter's instance has about 1 MiB of linear memory, so this keeps some 240
/// of them; a Python or JavaScript one has 9 to 13 MiB (its interpreter's heap), so it
/// keeps a dozen or two, not 64 or the last burst's peak. `minInstances` is kept
/// whatever it costs.
pub const DEFAULT_IDLE_MEMORY: usize = 256 << 20;
/// How often pools give back the idle instances the last period did not use.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Live instances across all filters by default (`sluice run --wasm-instances`). An
/// instance is held for each hook call in flight, including one waiting on an outbound
/// call, so this bounds the requests that can wait on calls at once. The pooling
/// allocator reserves address space (not memory) for each: about 1 GiB of memory slot
/// and a 2 MiB stack, so 4,096 reserve some 4 TiB of the 128 TiB a process has.
pub const DEFAULT_INSTANCES: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid component for the sluice:filter/filter world: {0}")]
    Compile(String),
    #[error("the component does not fit the sluice:filter/filter world: {0}")]
    Link(String),
}

/// What a WasmFilter's spec asks of its instances.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FilterSpec {
    /// `namespace/name`, for logs and metrics.
    pub name: String,
    /// The JSON handed to `configure`.
    pub config: String,
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub min_instances: usize,
    /// Where `kv` lives (`spec.kv`).
    pub kv: KvBackend,
    /// Which failures to keep (`spec.debug`).
    pub capture: CaptureSpec,
}

/// Everything the instances of one WasmFilter share.
pub struct FilterShared {
    pub name: String,
    pub stats: Arc<FilterStats>,
    /// The in-memory store, kept across reloads (a rate limit survives an upgrade).
    kv: Arc<kv::Kv>,
    /// Log lines per second this filter may write (`Runtime::set_log_lines_per_second`).
    log_lines_per_second: u64,
    /// The last failures, when the filter captures them (kept across reloads).
    failures: capture::Failures,
}

impl FilterShared {
    /// Whether one more line about this filter may be logged now. The first line after
    /// some were dropped says how many.
    pub(crate) fn may_log(&self) -> bool {
        match self.stats.log_permit(self.log_lines_per_second) {
            stats::LogPermit::Write { dropped_before } => {
                if dropped_before > 0 {
                    tracing::warn!(
                        filter = %self.name,
                        dropped = dropped_before,
                        limit = self.log_lines_per_second,
                        "log lines of this filter were dropped past its per-second budget"
                    );
                }
                true
            }
            stats::LogPermit::Drop => false,
        }
    }
}

/// A component compiled for this engine and linked: instantiation is all that is left.
pub struct Compiled {
    pub digest: String,
    pre: Pre,
    /// The `sluice:filter` version the component speaks (read from its imports and
    /// exports when it was loaded).
    pub api: ApiVersion,
}

pub struct Runtime {
    engine: Engine,
    /// Advances the engine's epoch while guest code runs.
    ticker: Arc<Ticker>,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    pools: Mutex<HashMap<(String, FilterSpec), Weak<Pool>>>,
    /// Per WasmFilter name, for as long as the process lives: its metrics and its
    /// key-value store outlive reloads and upgrades.
    shared: Mutex<BTreeMap<String, Arc<FilterShared>>>,
    /// Calls that run past one epoch tick continue only while they hold a place here:
    /// half the cores (at least one). Quick calls never touch it; slow ones (a loop, a
    /// heavy body) take turns, so they can never occupy every worker thread and the
    /// routes without such filters keep at least half the machine.
    slow_lane: Arc<tokio::sync::Semaphore>,
    /// Copied into each filter's `FilterShared` when it is first seen.
    log_lines_per_second: AtomicU64,
    /// The linear memory each pool's idle instances may hold (`set_idle_memory`).
    idle_memory: AtomicUsize,
}

/// Where a trap happened in the filter's own code: the first frame whose DWARF (a
/// debug build) names a source file outside the Rust standard library, the registry
/// and the SDK, as `file:line:column`.
fn source_line(e: &wasmtime::Error) -> Option<String> {
    let bt = e.downcast_ref::<wasmtime::WasmBacktrace>()?;
    bt.frames().iter().flat_map(|f| f.symbols()).find_map(|s| {
        let file = s.file()?;
        let foreign = ["/rustc/", "/.cargo/registry/", "/library/", "/sdk/src/"]
            .iter()
            .any(|p| file.contains(p));
        let line = s.line()?;
        (!foreign).then(|| format!("{file}:{line}:{}", s.column().unwrap_or(0)))
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// Creates the engine and starts its epoch ticker. `cache_dir` holds precompiled
    /// components; `None` keeps them in memory only.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, SetupError> {
        Self::with_instances(cache_dir, DEFAULT_INSTANCES)
    }

    /// As [`Runtime::new`], with room for `instances` live instances across all
    /// filters (at least 64); past it, a hook call that needs a new instance fails
    /// (`kind="trap"`, the filter's failure policy applies).
    pub fn with_instances(
        cache_dir: Option<PathBuf>,
        instances: u32,
    ) -> Result<Arc<Self>, SetupError> {
        let instances = instances.max(64);
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // A trap names the source file and line of each frame when the component
        // carries DWARF (a debug build): the log and the WasmFilter's status then say
        // where, not only which function. Components without it (release builds,
        // usually stripped) cost nothing more.
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(2))
            .total_stacks(instances)
            .max_memory_size(MAX_MEMORY)
            .max_core_instances_per_component(50)
            .max_memories_per_component(4)
            .max_tables_per_component(8);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => {
                // The pool reserves address space up front; where that is refused (a
                // tight ulimit -v), run with on-demand allocation instead of not at all.
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).map_err(|e| SetupError(e.to_string()))?
            }
        };
        let mut linker = Linker::new(&engine);
        // 0.1's interfaces (0.2 imports them unchanged), then 0.2's own.
        bindings::v0_1::Filter::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::context::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::outbound::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::wall_clock::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)
        .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::connection::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)
        .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::digest::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SetupError(e.to_string()))?;
        bindings::v0_2::sluice::filter0_2_0::body::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SetupError(e.to_string()))?;
        let ticker = Ticker::start(engine.weak()).map_err(|e| SetupError(e.to_string()))?;
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the Wasm cache folder; compiling in memory only");
        }
        let runtime = Arc::new(Runtime {
            engine,
            ticker,
            linker,
            cache_dir,
            compiled: Mutex::default(),
            pools: Mutex::default(),
            shared: Mutex::default(),
            slow_lane: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
            log_lines_per_second: AtomicU64::new(stats::LOG_LINES_PER_SECOND),
            idle_memory: AtomicUsize::new(DEFAULT_IDLE_MEMORY),
        });
        let weak = Arc::downgrade(&runtime);
        std::thread::Builder::new()
            .name("sluice-wasm-trim".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    let Some(rt) = weak.upgrade() else { break };
                    let pools: Vec<Arc<Pool>> = rt
                        .pools
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .filter_map(Weak::upgrade)
                        .collect();
                    drop(rt);
                    for pool in pools {
                        drop(pool.trim());
                    }
                }
            })
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(runtime)
    }

    /// Sets how many log lines per second each filter may write (default
    /// [`stats::LOG_LINES_PER_SECOND`]); call it before any filter is loaded.
    pub fn set_log_lines_per_second(&self, n: u64) {
        self.log_lines_per_second.store(n, Ordering::Relaxed);
    }

    /// Sets the linear memory, in bytes, that one WasmFilter's idle instances may hold
    /// between calls (default [`DEFAULT_IDLE_MEMORY`]). Past it, an instance that
    /// finishes a call is dropped instead of kept, whatever the recent peak; the
    /// filter's `minInstances` are kept regardless.
    pub fn set_idle_memory(&self, bytes: usize) {
        self.idle_memory.store(bytes, Ordering::Relaxed);
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{digest}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles (or loads from the AOT cache) and links a component. Slow on a cache
    /// miss (tens of milliseconds): call it off the request path.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Compiled>, LoadError> {
        self.load_digested(&sha256_hex(bytes), bytes)
    }

    /// As [`Runtime::load`], for a caller that has already computed `sha256_hex(bytes)`
    /// (to check a pinned digest) and should not hash the bytes again.
    pub fn load_digested(&self, digest: &str, bytes: &[u8]) -> Result<Arc<Compiled>, LoadError> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(c.clone());
        }
        let component = self.component(digest, bytes)?;
        // Each component gets the WASI answers its own imports need (see `sandbox`).
        let mut linker = self.linker.clone();
        sandbox::link(&mut linker, &component, &self.engine)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let (pre, api) = Pre::new(pre)?;
        let c = Arc::new(Compiled {
            digest: digest.to_string(),
            pre,
            api,
        });
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), c.clone());
        Ok(c)
    }

    fn component(&self, digest: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let path = self.cache_path(digest);
        if let Some(p) = path.as_deref().filter(|p| p.exists()) {
            // SAFETY: `deserialize_file` trusts that the file holds code this engine
            // produced. The file is written only by `store_cache` below, from
            // `Component::serialize` of this engine's compilation, under a name that
            // carries the source digest and the engine's compatibility hash, and it is
            // renamed into place only once complete. wasmtime also checks the header
            // (version, target, engine flags) and refuses a mismatch, which we then
            // treat as a cache miss.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, p) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "ignoring unusable Wasm cache entry")
                }
            }
        }
        is_component(bytes).map_err(LoadError::Compile)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        tracing::info!(digest, elapsed = ?started.elapsed(), "compiled Wasm component");
        if let Some(p) = path {
            store_cache(&p, &component);
        }
        Ok(component)
    }

    fn shared(&self, name: &str) -> Arc<FilterShared> {
        // The key-value store belongs to the WasmFilter, not to one digest or config,
        // so a rate limit survives a filter upgrade.
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(FilterShared {
                    name: name.to_string(),
                    stats: Arc::default(),
                    kv: Arc::default(),
                    log_lines_per_second: self.log_lines_per_second.load(Ordering::Relaxed),
                    failures: capture::Failures::default(),
                })
            })
            .clone()
    }

    /// The pool for this filter, reused when nothing about it changed. Creating one
    /// instantiates and configures a first instance, so config errors surface here.
    pub async fn pool(
        self: &Arc<Self>,
        compiled: &Arc<Compiled>,
        spec: &FilterSpec,
    ) -> Result<Arc<Pool>, FilterError> {
        let key = (compiled.digest.clone(), spec.clone());
        if let Some(p) = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(p);
        }
        let shared = self.shared(&spec.name);
        let store = match &spec.kv {
            KvBackend::Memory => kv::Store::Memory(shared.kv.clone()),
            KvBackend::Redis(r) => {
                let handle = tokio::runtime::Handle::try_current().ok();
                kv::Store::Redis(kv::RedisKv::new(&spec.name, r, handle).map_err(|e| {
                    FilterError {
                        kind: ErrorKind::Config,
                        message: format!("spec.kv.redis.url: {e}"),
                        config_errors: Vec::new(),
                    }
                })?)
            }
        };
        let pool = Arc::new(Pool {
            runtime: self.clone(),
            compiled: compiled.clone(),
            spec: spec.clone(),
            kv: Arc::new(store),
            shared,
            idle: Mutex::new(Vec::new()),
            peak: std::sync::atomic::AtomicUsize::new(0),
            instance_memory: std::sync::atomic::AtomicUsize::new(0),
            deadline_ticks: ticks(spec.timeout),
            needs: std::sync::OnceLock::new(),
        });
        for _ in 0..spec.min_instances.max(1) {
            let inst = pool.instantiate().await?;
            pool.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(inst);
        }
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, w| w.strong_count() > 0);
        pools.insert(key, Arc::downgrade(&pool));
        Ok(pool)
    }
}

impl Runtime {
    /// The failures kept by every WasmFilter that captures them, oldest first per
    /// filter, filters by name.
    pub fn failures(&self) -> Vec<Failure> {
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut names: Vec<_> = shared.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        names
            .into_iter()
            .flat_map(|(_, s)| s.failures.list())
            .collect()
    }

    /// Ticks of the epoch clock since the runtime started. The clock ticks every
    /// millisecond only while some guest call has run across a tick or yielded lately;
    /// while calls end quickly it ticks every `SLOW_TICK`, and it stops when no guest
    /// code runs.
    pub fn epoch_ticks(&self) -> u64 {
        self.ticker.ticks()
    }
}

/// Every WasmFilter seen so far.
impl sluice_metrics::Collect for Runtime {
    fn collect(&self, out: &mut sluice_metrics::Encoder) {
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let filters: Vec<(&str, &FilterStats)> = shared
            .iter()
            .map(|(name, s)| (name.as_str(), &*s.stats))
            .collect();
        stats::collect(out, &filters);
    }
}

/// Gives back the store's place in the slow lane, if its last guest run took one.
fn leave_slow_lane(store: &Store<HostState>) {
    let slot = &store.data().slow_permit;
    drop(slot.lock().unwrap_or_else(|p| p.into_inner()).take());
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros().div_ceil(TICK.as_micros()) as u64).max(1) + 1
}

fn store_cache(path: &Path, component: &Component) {
    let Ok(bytes) = component.serialize() else {
        return;
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let ok = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(file = %path.display(), error = %e, "cannot write the Wasm cache");
    }
}

/// Why a filter call did not complete.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct FilterError {
    pub kind: ErrorKind,
    pub message: String,
    /// For `Config`: the filter's own errors, `(path, message)`.
    pub config_errors: Vec<(String, String)>,
}

struct Instance {
    store: Store<HostState>,
    /// Boxed: the exports are 264 bytes, and an instance is held inline in every hook
    /// call's future.
    filter: Box<Exports>,
}

/// Whether `bytes` are a Wasm component, by their header; else what they are and how
/// to build a filter instead. The gateway, the harness and `sluice filter push` all ask
/// this first, so a core module (a `wasm32-wasip1` or `wasm32-unknown-unknown` build)
/// is refused with the fix rather than with the component parser's complaint.
pub fn is_component(bytes: &[u8]) -> Result<(), String> {
    const BUILD: &str = "build the filter with `cargo build --release --target wasm32-wasip2` \
        (its Cargo.toml needs `[lib] crate-type = [\"cdylib\"]`)";
    match bytes {
        [] => Err(format!("the file is empty: {BUILD}")),
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Err(format!(
            "this is a core Wasm module, not a component (a wasm32-wasip1 or \
             wasm32-unknown-unknown build): {BUILD}"
        )),
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(()),
        [0, b'a', b's', b'm', ..] => Err(format!(
            "this Wasm binary is neither a core module nor a component of a version \
             Sluice reads: {BUILD}"
        )),
        _ => Err(format!(
            "this is not a Wasm binary (it does not start with \\0asm): {BUILD}"
        )),
    }
}

/// A `sluice:filter` API version a component can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    V0_1,
    V0_2,
}

/// A linked component of either version, ready to instantiate.
enum Pre {
    V0_1(bindings::v0_1::FilterPre<HostState>),
    V0_2(bindings::v0_2::FilterPre<HostState>),
}

impl Pre {
    /// Reads the version from the component. World exports carry no version, so the
    /// imports decide: a component that imports a 0.2 interface must export the 0.2
    /// world. One that imports none is run as 0.1 when its exports have 0.1's types
    /// (a 0.2 filter that uses nothing new is exactly a 0.1 filter), else as 0.2.
    fn new(
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> Result<(Pre, ApiVersion), LoadError> {
        let engine = pre.component().engine().clone();
        let speaks_0_2 = pre
            .component()
            .component_type()
            .imports(&engine)
            .any(|(name, _)| name.starts_with("sluice:filter/") && name.ends_with("@0.2.0"));
        let link = |e: wasmtime::Error| LoadError::Link(format!("{e:#}"));
        // Without a 0.2 import, 0.1's exports first; if they do not match either,
        // 0.1's error is the one that says what is missing.
        let v0_1_error = if speaks_0_2 {
            None
        } else {
            match bindings::v0_1::FilterPre::new(pre.clone()) {
                Ok(p) => return Ok((Pre::V0_1(p), ApiVersion::V0_1)),
                Err(e) => Some(e),
            }
        };
        match bindings::v0_2::FilterPre::new(pre) {
            Ok(p) => Ok((Pre::V0_2(p), ApiVersion::V0_2)),
            Err(e) => Err(link(v0_1_error.unwrap_or(e))),
        }
    }

    async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Exports> {
        Ok(match self {
            Pre::V0_1(p) => Exports::V0_1(p.instantiate_async(store).await?),
            Pre::V0_2(p) => Exports::V0_2(p.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports, of either version. The hooks take and return the same
/// (0.1) types in both.
enum Exports {
    V0_1(bindings::v0_1::Filter),
    V0_2(bindings::v0_2::Filter),
}

type ConfigResult = Result<Needs, Vec<bindings::v0_1::sluice::filter0_1_0::types::ConfigError>>;

impl Exports {
    async fn configure(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<ConfigResult> {
        use bindings::v0_2::sluice::filter0_2_0::body::BodyMode as Wit;
        let mode = |m: Wit| match m {
            Wit::None => BodyMode::None,
            Wit::Buffered => BodyMode::Buffered,
            Wit::Streamed => BodyMode::Streamed,
        };
        Ok(match self {
            Exports::V0_1(f) => f
                .call_configure(store, config)
                .await?
                .map(|()| Needs::default()),
            Exports::V0_2(f) => f.call_configure(store, config).await?.map(|n| Needs {
                request_body: mode(n.request_body),
                response_body: mode(n.response_body),
            }),
        })
    }
}

/// How a filter wants a body (API 0.2, from `configure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyMode {
    /// The body streams past the filter.
    #[default]
    None,
    /// The whole body, up to `limits.maxBodyBytes`, in one body hook call.
    Buffered,
    /// Chunk by chunk, through a [`BodyStream`]: any size, one chunk held at a time.
    Streamed,
}

/// Which bodies a filter needs. A 0.1 filter needs none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub request_body: BodyMode,
    pub response_body: BodyMode,
}

/// Live instances of one WasmFilter at one digest and config.
pub struct Pool {
    runtime: Arc<Runtime>,
    compiled: Arc<Compiled>,
    spec: FilterSpec,
    shared: Arc<FilterShared>,
    /// Where this pool's `kv` calls go.
    kv: Arc<kv::Store>,
    idle: Mutex<Vec<Instance>>,
    /// The most instances of this pool in use at once since the last trim.
    peak: std::sync::atomic::AtomicUsize,
    /// The most linear memory one of its instances has had, in bytes.
    instance_memory: std::sync::atomic::AtomicUsize,
    deadline_ticks: u64,
    /// What the first instance's `configure` returned (all of a pool's instances run
    /// the same component with the same config).
    needs: std::sync::OnceLock<Needs>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.store
            .data()
            .shared
            .stats
            .instances
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `on-request` decided.
pub enum RequestOutcome {
    Continue,
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    },
}

impl Pool {
    pub fn stats(&self) -> &Arc<FilterStats> {
        &self.shared.stats
    }

    /// The WasmFilter's `namespace/name`.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The `sluice:filter` version the filter's component speaks.
    pub fn api(&self) -> ApiVersion {
        self.compiled.api
    }

    /// The most linear memory one of this pool's instances has had at the end of a
    /// call, in bytes (0 before the first call ends): what each idle instance counts
    /// against the idle memory.
    pub fn instance_memory(&self) -> usize {
        self.instance_memory.load(Ordering::Relaxed)
    }

    /// Which bodies the filter asked for from `configure`.
    pub fn needs(&self) -> Needs {
        self.needs.get().copied().unwrap_or_default()
    }

    async fn instantiate(&self) -> Result<Instance, FilterError> {
        let limiter = MemoryLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(self.spec.memory_bytes)
                .instances(64)
                .build(),
            limit: self.spec.memory_bytes,
            exceeded: false,
            size: 0,
        };
        let state = HostState {
            table: ResourceTable::new(),
            limiter,
            shared: self.shared.clone(),
            kv: self.kv.clone(),
            last_error: None,
            ticks_left: ticks(CONFIGURE_TIMEOUT),
            ticked: false,
            slow_lane: self.runtime.slow_lane.clone(),
            slow_permit: Arc::default(),
            context: Context::default(),
            stream_start: false,
            hashers: 0,
            calls: 0,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At each tick the guest is running, one tick of its budget is spent, and the
        // clock is hurried. A call running at a tick for the first time goes on: most
        // such calls end within microseconds, and one that runs on is met by the next
        // tick, a millisecond later at most (the clock may have been ticking slowly).
        // From its second tick on it yields at each, so that other tasks on this
        // thread run. Ticks that pass while it waits to be polled again are not
        // counted: the deadline is set anew on resumption. A call still running at a
        // tick gives up its place in the slow lane (if it has one) and waits for a
        // place for its next tick, so slow calls take turns.
        let ticker = self.runtime.ticker.clone();
        store.epoch_deadline_callback(move |mut ctx| {
            // Running at a tick: the clock goes fast, or stays fast (a yield whose
            // place in the slow lane is free at once does not return `Pending`, so
            // `Ticker::around` would not see it).
            ticker.hurry();
            let s = ctx.data_mut();
            s.ticks_left = s.ticks_left.saturating_sub(1);
            if s.ticks_left == 0 {
                return Ok(UpdateDeadline::Interrupt);
            }
            if !std::mem::replace(&mut s.ticked, true) {
                return Ok(UpdateDeadline::Continue(1));
            }
            let slot = s.slow_permit.clone();
            let lane = s.slow_lane.clone();
            drop(slot.lock().unwrap_or_else(|p| p.into_inner()).take());
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    // The semaphore is never closed, so acquiring only waits.
                    if let Ok(p) = lane.acquire_owned().await {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
                    }
                }),
            ))
        });
        store.set_epoch_deadline(1);
        let ticker = self.runtime.ticker.clone();
        let filter = match ticker
            .around(self.compiled.pre.instantiate(&mut store))
            .await
        {
            Ok(f) => f,
            Err(e) => return Err(self.fail(&mut store, e)),
        };
        self.shared.stats.instances.fetch_add(1, Ordering::Relaxed);
        let mut inst = Instance {
            store,
            filter: Box::new(filter),
        };
        let configured = ticker
            .around(inst.filter.configure(&mut inst.store, &self.spec.config))
            .await;
        // A slow start may have taken a place in the slow lane: the instance must not
        // keep it while it sits in the pool.
        leave_slow_lane(&inst.store);
        match configured {
            Ok(Ok(needs)) => {
                let _ = self.needs.set(needs);
                Ok(inst)
            }
            Ok(Err(errors)) => {
                self.shared.stats.error(ErrorKind::Config);
                Err(FilterError {
                    kind: ErrorKind::Config,
                    message: errors
                        .iter()
                        .map(|e| format!("{}: {}", e.path, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    config_errors: errors.into_iter().map(|e| (e.path, e.message)).collect(),
                })
            }
            Err(e) => Err(self.fail(&mut inst.store, e)),
        }
    }

    /// Classifies a failure, counts it and logs what the guest printed.
    fn fail(&self, store: &mut Store<HostState>, e: wasmtime::Error) -> FilterError {
        let state = store.data_mut();
        let kind = if state.limiter.exceeded {
            ErrorKind::Memory
        } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            ErrorKind::Timeout
        } else {
            ErrorKind::Trap
        };
        let printed = state.last_error.take().unwrap_or_default();
        let message = match kind {
            ErrorKind::Timeout => format!("ran past its time limit of {:?}", self.spec.timeout),
            ErrorKind::Memory => format!(
                "tried to use more than its memory limit of {} bytes",
                self.spec.memory_bytes
            ),
            // The root cause first (a host function's refusal, or the trap's kind),
            // then what the guest printed, then where it was: the backtrace is the
            // outermost layer and says least.
            _ => {
                let cause = e.root_cause().to_string();
                let mut m = cause.clone();
                if let Some(at) = source_line(&e) {
                    m = format!("{m} at {at}");
                }
                if !printed.is_empty() {
                    m = format!("{m}: {printed}");
                }
                let outer = e.to_string();
                if outer != cause {
                    m = format!("{m}\n{outer}");
                }
                m
            }
        };
        self.shared.stats.error(kind);
        if self.shared.may_log() {
            tracing::warn!(filter = %self.spec.name, kind = kind.as_str(), "{message}");
        }
        FilterError {
            kind,
            message,
            config_errors: Vec::new(),
        }
    }

    fn live(&self) -> usize {
        usize::try_from(self.shared.stats.instances.load(Ordering::Relaxed)).unwrap_or(0)
    }

    async fn checkout(&self) -> Result<Instance, FilterError> {
        let (popped, idle) = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            (idle.pop(), idle.len())
        };
        let inst = match popped {
            Some(i) => i,
            // Boxed: instantiating (and `configure`) is the cold path, and its state
            // inline made every hook call's future 3,472 bytes instead of 2,208, copied
            // as each layer of the call is entered.
            None => Box::pin(self.instantiate()).await?,
        };
        // In use: the filter's live instances but the idle ones (an estimate while a
        // reload runs two pools of one filter; it only sizes what is kept). Below
        // `POOL_CAPACITY` live instances the peak cannot matter (at least that many are
        // kept anyway), so the common case costs one load, not a shared write.
        let live = self.live();
        if live > POOL_CAPACITY {
            self.peak
                .fetch_max(live.saturating_sub(idle), Ordering::Relaxed);
        }
        Ok(inst)
    }

    /// How many idle instances to keep, given the most in use at once lately: that
    /// many, at least `POOL_CAPACITY`, but no more than the runtime's idle memory
    /// holds, and at least `minInstances` (and one).
    fn keep(&self, peak: usize) -> usize {
        let each = self.instance_memory.load(Ordering::Relaxed).max(1);
        let fits = self.runtime.idle_memory.load(Ordering::Relaxed) / each;
        POOL_CAPACITY
            .max(peak)
            .min(fits)
            .max(self.spec.min_instances)
            .max(1)
    }

    fn checkin(&self, inst: Instance) {
        // A shared write only when an instance grew past the most seen (rare): the
        // common case is one load.
        let size = inst.store.data().limiter.size;
        if size > self.instance_memory.load(Ordering::Relaxed) {
            self.instance_memory.fetch_max(size, Ordering::Relaxed);
        }
        let keep = self.keep(self.peak.load(Ordering::Relaxed));
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < keep {
            idle.push(inst);
        } else {
            drop(idle);
            drop(inst);
        }
    }

    /// Ends a trim period: returns the idle instances beyond what the period needed
    /// (`Pool::keep`: the most in use at once within the idle memory, and at least
    /// `minInstances`), for the caller to drop off the request path.
    fn trim(&self) -> Vec<Instance> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let in_use = self.live().saturating_sub(idle.len());
        let peak = self.peak.swap(in_use, Ordering::Relaxed);
        let keep = self.keep(peak);
        if idle.len() > keep {
            idle.split_off(keep)
        } else {
            Vec::new()
        }
    }

    /// One hook call: takes an instance, runs `hook` on it (see [`Pool::run`]), and
    /// puts it back in the pool only if the call succeeded; a call whose future is
    /// dropped midway (the client went away) drops its instance with it.
    async fn call<H: Hook>(
        &self,
        hook: H,
        ctx: H::Resource,
        context: &mut Context,
    ) -> (Option<H::Resource>, Result<H::Out, FilterError>)
    where
        H::Resource: capture::Input,
    {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (Some(ctx), Err(e)),
        };
        // Boxed: held across the call, and a capture is the rare case.
        let input = self.spec.capture.on().then(|| {
            Box::new(capture::Input::capture(
                &ctx,
                &self.spec.capture,
                hook.body(),
                context,
            ))
        });
        let (back, result) = self.run(&mut inst, hook, ctx, context).await;
        match result {
            Ok(r) => {
                self.checkin(inst);
                (back, Ok(r))
            }
            Err(e) => {
                let e = self.fail(&mut inst.store, e);
                if let Some((request, response)) = input.map(|b| *b) {
                    self.keep_failure(H::NAME, &e, request, response);
                }
                (back, Err(e))
            }
        }
    }

    /// Keeps a failed call's input for `sluice filter replay` (`spec.debug`).
    fn keep_failure(
        &self,
        hook: &'static str,
        e: &FilterError,
        request: Option<CapturedRequest>,
        response: Option<CapturedResponse>,
    ) {
        let f = Failure {
            time: std::time::SystemTime::now(),
            filter: self.spec.name.clone(),
            digest: format!("sha256:{}", self.compiled.digest),
            config: self.spec.config.clone(),
            hook,
            kind: e.kind.as_str(),
            message: e.message.clone(),
            request,
            response,
        };
        self.shared.failures.push(f, self.spec.capture.failures);
    }

    /// Runs `hook` on `inst` with a fresh time budget: moves `hook`'s resource and the
    /// request's context into the store for the call, and hands both back afterwards
    /// whatever happened (a trap included).
    async fn run<H: Hook>(
        &self,
        inst: &mut Instance,
        hook: H,
        ctx: H::Resource,
        context: &mut Context,
    ) -> (Option<H::Resource>, wasmtime::Result<H::Out>) {
        let start = Instant::now();
        inst.store.data_mut().ticks_left = self.deadline_ticks;
        inst.store.data_mut().ticked = false;
        inst.store.set_epoch_deadline(1);
        // The table only refuses a push past u32::MAX live entries; a store holds one.
        let res = match inst.store.data_mut().table.push(ctx) {
            Ok(r) => r,
            Err(e) => return (None, Err(e.into())),
        };
        let borrowed = Resource::<H::Resource>::new_borrow(res.rep());
        inst.store.data_mut().context = std::mem::take(context);
        // Boxed: wasmtime's call future is most of a hook call's state. Inline, every
        // layer above it (this function, `call`, the `*_parts` functions and the
        // proxy's filter loop) would hold a copy of its size and move it once as it is
        // entered; one allocation costs less than those copies (docs/performance.md).
        let result = self
            .runtime
            .ticker
            .around(Box::pin(hook.call(&inst.filter, &mut inst.store, borrowed)))
            .await;
        *context = std::mem::take(&mut inst.store.data_mut().context);
        // A place in the slow lane is only taken from a call's second tick on, and
        // `ticked` is set at its first: a call that never met a tick (nearly all of
        // them) holds none, and skips the lock.
        if inst.store.data().ticked {
            leave_slow_lane(&inst.store);
        }
        let back = inst.store.data_mut().table.delete(res).ok();
        self.shared.stats.call(start.elapsed());
        (back, result)
    }

    /// Runs `hook` on a request's method, URI and headers, which move into the store
    /// for the call and back out, whatever happens.
    async fn on_request_parts<H: Hook<Resource = RequestCtx>>(
        &self,
        hook: H,
        method: &mut Method,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        context: &mut Context,
    ) -> Result<H::Out, FilterError> {
        let ctx = RequestCtx {
            method: std::mem::replace(method, Method::GET),
            uri: std::mem::take(uri),
            headers: std::mem::take(headers),
        };
        let (back, result) = self.call(hook, ctx, context).await;
        if let Some(ctx) = back {
            *method = ctx.method;
            *uri = ctx.uri;
            *headers = ctx.headers;
        }
        result
    }

    /// Runs `hook` on a response's status and headers.
    async fn on_response_parts<H: Hook<Resource = ResponseCtx>>(
        &self,
        hook: H,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
        context: &mut Context,
    ) -> Result<H::Out, FilterError> {
        let ctx = ResponseCtx {
            status: *status,
            headers: std::mem::take(headers),
        };
        let (back, result) = self.call(hook, ctx, context).await;
        if let Some(ctx) = back {
            *status = ctx.status;
            *headers = ctx.headers;
        }
        result
    }

    /// Runs `on-request`.
    pub async fn on_request(
        &self,
        method: &mut Method,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        context: &mut Context,
    ) -> Result<RequestOutcome, FilterError> {
        Ok(
            match self
                .on_request_parts(OnRequest, method, uri, headers, context)
                .await?
            {
                RequestAction::Continue => RequestOutcome::Continue,
                RequestAction::Respond(r) => {
                    let (status, headers, body) = direct(r);
                    RequestOutcome::Respond {
                        status,
                        headers,
                        body,
                    }
                }
            },
        )
    }

    /// Runs `on-request-body` (API 0.2) with the whole request body.
    pub async fn on_request_body(
        &self,
        method: &mut Method,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        context: &mut Context,
        body: bytes::Bytes,
    ) -> Result<BodyOutcome, FilterError> {
        self.on_request_parts(OnRequestBody(body), method, uri, headers, context)
            .await
    }

    /// Runs `on-response` on a response's status and headers.
    pub async fn on_response(
        &self,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
        context: &mut Context,
    ) -> Result<(), FilterError> {
        self.on_response_parts(OnResponse, status, headers, context)
            .await
    }

    /// Runs `on-response-body` (API 0.2) with the whole response body.
    pub async fn on_response_body(
        &self,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
        context: &mut Context,
        body: bytes::Bytes,
    ) -> Result<BodyOutcome, FilterError> {
        self.on_response_parts(OnResponseBody(body), status, headers, context)
            .await
    }
}

impl Pool {
    /// Starts a streamed request body (API 0.2 `on-request-stream-start`): takes an
    /// instance for the whole stream, and lets the filter change the request's head
    /// before it leaves. The stream's hooks see `context` as it is now; what they
    /// store stays with the stream.
    pub async fn request_stream(
        self: &Arc<Self>,
        method: &mut Method,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        context: Context,
    ) -> Result<BodyStream, FilterError> {
        let ctx = RequestCtx {
            method: std::mem::replace(method, Method::GET),
            uri: std::mem::take(uri),
            headers: std::mem::take(headers),
        };
        let (back, stream) = self
            .stream(RequestStreamStart, Direction::Request, ctx, context)
            .await;
        if let Some(ctx) = back {
            *method = ctx.method;
            *uri = ctx.uri;
            *headers = ctx.headers;
        }
        stream
    }

    /// Starts a streamed response body (`on-response-stream-start`), as
    /// [`Pool::request_stream`] does a request's.
    pub async fn response_stream(
        self: &Arc<Self>,
        status: &mut StatusCode,
        headers: &mut HeaderMap,
        context: Context,
    ) -> Result<BodyStream, FilterError> {
        let ctx = ResponseCtx {
            status: *status,
            headers: std::mem::take(headers),
        };
        let (back, stream) = self
            .stream(ResponseStreamStart, Direction::Response, ctx, context)
            .await;
        if let Some(ctx) = back {
            *status = ctx.status;
            *headers = ctx.headers;
        }
        stream
    }

    async fn stream<H: Hook<Out = ()>>(
        self: &Arc<Self>,
        start: H,
        direction: Direction,
        ctx: H::Resource,
        mut context: Context,
    ) -> (Option<H::Resource>, Result<BodyStream, FilterError>) {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (Some(ctx), Err(e)),
        };
        inst.store.data_mut().stream_start = true;
        let (back, result) = self.run(&mut inst, start, ctx, &mut context).await;
        inst.store.data_mut().stream_start = false;
        let stream = match result {
            Ok(()) => Ok(BodyStream {
                pool: self.clone(),
                inst: Some(inst),
                context,
                direction,
            }),
            Err(e) => Err(self.fail(&mut inst.store, e)),
        };
        (back, stream)
    }
}

/// A streamed body passing through one filter: the instance that sees all of it, from
/// its start to its end. Dropped before [`BodyStream::end`] (the peer went away, the
/// filter failed), the instance is dropped with it, never reused mid-stream.
pub struct BodyStream {
    pool: Arc<Pool>,
    /// `None` once a call failed.
    inst: Option<Instance>,
    context: Context,
    direction: Direction,
}

impl BodyStream {
    /// The filter's pool (its name, stats and failure policy).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Runs `on-*-chunk`. `Ok(None)`: forward `chunk` as it is; `Ok(Some(b))`: forward
    /// `b` instead (empty drops the chunk).
    pub async fn chunk(&mut self, chunk: bytes::Bytes) -> Result<Option<Vec<u8>>, FilterError> {
        let hook = Chunk(self.direction, chunk);
        self.run(hook, ()).await.1
    }

    /// Runs `on-*-stream-end` with the body's trailers, which the filter may change.
    /// Returns the bytes to send after the last chunk. The instance goes back to the
    /// pool.
    pub async fn end(mut self, trailers: &mut HeaderMap) -> Result<Vec<u8>, FilterError> {
        let ctx = TrailersCtx(std::mem::take(trailers));
        let (back, result) = self.run(StreamEnd(self.direction), ctx).await;
        if let Some(back) = back {
            *trailers = back.0;
        }
        let tail = result?;
        if let Some(inst) = self.inst.take() {
            self.pool.checkin(inst);
        }
        Ok(tail)
    }

    async fn run<H: Hook>(
        &mut self,
        hook: H,
        ctx: H::Resource,
    ) -> (Option<H::Resource>, Result<H::Out, FilterError>) {
        let BodyStream {
            pool,
            inst: slot,
            context,
            ..
        } = self;
        let Some(inst) = slot.as_mut() else {
            return (
                Some(ctx),
                Err(FilterError {
                    kind: ErrorKind::Trap,
                    message: "the filter failed earlier in this stream".into(),
                    config_errors: Vec::new(),
                }),
            );
        };
        let (back, result) = pool.run(inst, hook, ctx, context).await;
        match result {
            Ok(r) => (back, Ok(r)),
            Err(e) => {
                let err = pool.fail(&mut inst.store, e);
                *slot = None;
                (back, Err(err))
            }
        }
    }
}

/// What a body hook decided.
pub enum BodyOutcome {
    /// Keep the body.
    Continue,
    /// Send these bytes instead.
    Replace(Vec<u8>),
    /// Answer with this instead.
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    },
}

/// One export call: the hook's own arguments, and the resource it borrows (the request
/// or the response).
trait Hook: Send + 'static {
    type Resource: Send + 'static;
    type Out: Send;
    /// The WIT export's name, for captures.
    const NAME: &'static str;
    /// The body the hook is given, for captures.
    fn body(&self) -> Option<&bytes::Bytes> {
        None
    }
    fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<Self::Resource>,
    ) -> impl std::future::Future<Output = wasmtime::Result<Self::Out>> + Send + 'a;
}

struct OnRequest;
struct OnResponse;
struct OnRequestBody(bytes::Bytes);
struct OnResponseBody(bytes::Bytes);

impl Hook for OnRequest {
    type Resource = RequestCtx;
    type Out = RequestAction;
    const NAME: &'static str = "on-request";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<RequestCtx>,
    ) -> wasmtime::Result<RequestAction> {
        match f {
            Exports::V0_1(f) => f.call_on_request(store, r).await,
            Exports::V0_2(f) => f.call_on_request(store, r).await,
        }
    }
}

impl Hook for OnResponse {
    type Resource = ResponseCtx;
    type Out = ();
    const NAME: &'static str = "on-response";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<ResponseCtx>,
    ) -> wasmtime::Result<()> {
        match f {
            Exports::V0_1(f) => f.call_on_response(store, r).await,
            Exports::V0_2(f) => f.call_on_response(store, r).await,
        }
    }
}

impl Hook for OnRequestBody {
    type Resource = RequestCtx;
    type Out = BodyOutcome;
    const NAME: &'static str = "on-request-body";
    fn body(&self) -> Option<&bytes::Bytes> {
        Some(&self.0)
    }
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<RequestCtx>,
    ) -> wasmtime::Result<BodyOutcome> {
        match f {
            // 0.1 has no body hooks and asks for no body.
            Exports::V0_1(_) => Ok(BodyOutcome::Continue),
            Exports::V0_2(f) => Ok(body_outcome(
                f.call_on_request_body(store, r, &self.0).await?,
            )),
        }
    }
}

impl Hook for OnResponseBody {
    type Resource = ResponseCtx;
    type Out = BodyOutcome;
    const NAME: &'static str = "on-response-body";
    fn body(&self) -> Option<&bytes::Bytes> {
        Some(&self.0)
    }
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<ResponseCtx>,
    ) -> wasmtime::Result<BodyOutcome> {
        match f {
            Exports::V0_1(_) => Ok(BodyOutcome::Continue),
            Exports::V0_2(f) => Ok(body_outcome(
                f.call_on_response_body(store, r, &self.0).await?,
            )),
        }
    }
}

struct RequestStreamStart;
struct ResponseStreamStart;
/// `on-request-chunk` or `on-response-chunk`.
struct Chunk(Direction, bytes::Bytes);
/// `on-request-stream-end` or `on-response-stream-end`.
struct StreamEnd(Direction);

impl Hook for RequestStreamStart {
    type Resource = RequestCtx;
    type Out = ();
    const NAME: &'static str = "on-request-stream-start";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<RequestCtx>,
    ) -> wasmtime::Result<()> {
        match f {
            // 0.1 asks for no body, so it is never streamed.
            Exports::V0_1(_) => Ok(()),
            Exports::V0_2(f) => f.call_on_request_stream_start(store, r).await,
        }
    }
}

impl Hook for ResponseStreamStart {
    type Resource = ResponseCtx;
    type Out = ();
    const NAME: &'static str = "on-response-stream-start";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<ResponseCtx>,
    ) -> wasmtime::Result<()> {
        match f {
            Exports::V0_1(_) => Ok(()),
            Exports::V0_2(f) => f.call_on_response_stream_start(store, r).await,
        }
    }
}

impl Hook for Chunk {
    /// A chunk borrows nothing from the host.
    type Resource = ();
    type Out = Option<Vec<u8>>;
    const NAME: &'static str = "on-chunk";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        _: Resource<()>,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        use bindings::v0_2::sluice::filter0_2_0::body::ChunkAction;
        let Exports::V0_2(f) = f else {
            return Ok(None);
        };
        let action = match self.0 {
            Direction::Request => f.call_on_request_chunk(store, &self.1).await?,
            Direction::Response => f.call_on_response_chunk(store, &self.1).await?,
        };
        Ok(match action {
            ChunkAction::Pass => None,
            ChunkAction::Replace(b) => Some(b),
        })
    }
}

impl Hook for StreamEnd {
    type Resource = TrailersCtx;
    type Out = Vec<u8>;
    const NAME: &'static str = "on-stream-end";
    async fn call<'a>(
        self,
        f: &'a Exports,
        store: &'a mut Store<HostState>,
        r: Resource<TrailersCtx>,
    ) -> wasmtime::Result<Vec<u8>> {
        let Exports::V0_2(f) = f else {
            return Ok(Vec::new());
        };
        match self.0 {
            Direction::Request => f.call_on_request_stream_end(store, r).await,
            Direction::Response => f.call_on_response_stream_end(store, r).await,
        }
    }
}

fn body_outcome(a: bindings::v0_2::sluice::filter0_2_0::body::BodyAction) -> BodyOutcome {
    use bindings::v0_2::sluice::filter0_2_0::body::BodyAction;
    match a {
        BodyAction::Continue => BodyOutcome::Continue,
        BodyAction::Replace(b) => BodyOutcome::Replace(b),
        BodyAction::Respond(r) => {
            let (status, headers, body) = direct(r);
            BodyOutcome::Respond {
                status,
                headers,
                body,
            }
        }
    }
}

fn direct(r: DirectResponse) -> (StatusCode, HeaderMap, Vec<u8>) {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    for (n, v) in r.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            headers.append(n, v);
        }
    }
    (status, headers, r.body)
}

/// The runtime could not start (engine, linker or epoch thread).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook call's future is small: wasmtime's call future, an instance's exports and
    /// a capture are boxed, so the layers above them, up to the proxy's per-request
    /// future, do not each hold and move a copy (`on_request`'s future was 2,208 bytes
    /// and `on_response`'s 1,792; now 944 and 608).
    #[test]
    fn a_hook_calls_future_holds_no_copy_of_wasmtimes() {
        let bytes = include_bytes!("../../../sdk/harness/tests/fixtures/headers-0.1.0.wasm");
        let rt = Runtime::new(None).expect("runtime");
        let compiled = rt.load(bytes).expect("load the fixture");
        let spec = FilterSpec {
            name: "test/future-size".into(),
            config: "null".into(),
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(1),
            min_instances: 1,
            kv: KvBackend::Memory,
            capture: CaptureSpec::default(),
        };
        let pool = block_on(rt.pool(&compiled, &spec)).expect("pool");
        let (mut method, mut uri, mut headers) = (Method::GET, Uri::default(), HeaderMap::new());
        let mut status = StatusCode::OK;
        let mut context = Context::default();
        let request = std::mem::size_of_val(&pool.on_request(
            &mut method,
            &mut uri,
            &mut headers,
            &mut context,
        ));
        let response =
            std::mem::size_of_val(&pool.on_response(&mut status, &mut headers, &mut context));
        assert!(request <= 1024, "on_request's future is {request} bytes");
        assert!(response <= 1024, "on_response's future is {response} bytes");
    }
}
