//! What a filter costs by the language it is written in: the same `hello` filter as a
//! Rust component (the baseline, built here from `filters/hello`) and as any other
//! components named on the command line, each measured the way the gateway uses it:
//!
//! - size of the component and of its compiled code in the AOT cache;
//! - compile time (a cache miss), and load time from the AOT cache (every later start);
//! - instantiate time (instantiate and `configure`, as a pool does for a new instance);
//! - memory per instance: private (anonymous) memory after `configure` and after its
//!   first request, which each instance pays for itself, and resident memory, which
//!   also counts the pages of the component's memory image it shares with the others;
//! - the cost of one `on-request` and one `on-response` call on a warm instance.
//!
//!   cargo bench -p sluice-harness --bench components -- python=hello-py.wasm js=hello-js.wasm
//!
//! `examples/bench/languages.sh` builds the Python and JavaScript hello examples and
//! runs this with them. Each figure is printed with its ratio to the Rust filter's,
//! measured in the same run: compare ratios, not absolute numbers (these machines are
//! shared).

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::best_of;
use http::{HeaderMap, Method, StatusCode, Uri};
use sluice_wasm::{CaptureSpec, Context, FilterSpec, KvBackend, Pool, Runtime, block_on};

/// Instances measured for instantiate time and memory.
const INSTANCES: usize = 16;
/// Every component gets the memory limit docs/filters.md gives Python and JavaScript.
const MEMORY: usize = 64 << 20;

struct Figures {
    name: String,
    size: u64,
    cached: u64,
    compile: Duration,
    cache_load: Duration,
    instantiate: Duration,
    linear: f64,
    private_configured: f64,
    private_called: f64,
    resident_called: f64,
    on_request: f64,
    on_response: f64,
}

fn main() {
    let mut components = vec![(
        "rust".to_string(),
        sluice_harness::repo_filters()
            .expect("building filters/")
            .join("hello.wasm"),
    )];
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with("--")) {
        let Some((name, path)) = arg.split_once('=') else {
            panic!("expected NAME=COMPONENT.wasm, got {arg:?}");
        };
        components.push((name.to_string(), PathBuf::from(path)));
    }
    let figures: Vec<Figures> = components
        .iter()
        .map(|(name, path)| measure_component(name, path))
        .collect();
    report(&figures);
}

fn measure_component(name: &str, path: &Path) -> Figures {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cache = tempdir(name);
    // A cache miss: compile, link, write the cache entry.
    let rt = Runtime::with_instances(Some(cache.clone()), 64).expect("runtime");
    let t = Instant::now();
    rt.load(&bytes).expect("compile");
    let compile = t.elapsed();
    drop(rt);
    let cached = dir_size(&cache);
    // A later start: a new runtime (a new engine) finds the entry on disk.
    let rt = Runtime::with_instances(Some(cache.clone()), 256).expect("runtime");
    let t = Instant::now();
    let compiled = rt.load(&bytes).expect("load from cache");
    let cache_load = t.elapsed();

    // INSTANCES pools of one instance each (a pool per WasmFilter name), so that each
    // instance can then serve a request of its own.
    let (private_before, resident_before) = (memory("RssAnon"), memory("VmRSS"));
    let t = Instant::now();
    let pools: Vec<Arc<Pool>> = (0..INSTANCES)
        .map(|i| block_on(rt.pool(&compiled, &spec(name, i))).expect("instantiate"))
        .collect();
    let instantiate = t.elapsed() / u32::try_from(INSTANCES).unwrap_or(1);
    let per_instance = |before: f64, key: &str| (memory(key) - before) / INSTANCES as f64;
    let private_configured = per_instance(private_before, "RssAnon");
    for p in &pools {
        call(p);
    }
    let private_called = per_instance(private_before, "RssAnon");
    let resident_called = per_instance(resident_before, "VmRSS");

    let linear = pools.iter().map(|p| p.instance_memory()).max().unwrap_or(0) as f64;
    let pool = &pools[0];
    let n = if name == "rust" { 50_000 } else { 2_000 };
    for _ in 0..n / 10 {
        call(pool);
    }
    let on_request = best_of(n, || {
        let (mut method, mut uri, mut headers) = request();
        let mut cx = Context::default();
        black_box(
            block_on(pool.on_request(&mut method, &mut uri, &mut headers, &mut cx))
                .expect("on_request"),
        );
    });
    let on_response = best_of(n, || {
        let mut status = StatusCode::OK;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().expect("header"));
        let mut cx = Context::default();
        block_on(pool.on_response(&mut status, &mut headers, &mut cx)).expect("on_response");
        black_box(headers);
    });
    drop(pools);
    let _ = std::fs::remove_dir_all(&cache);
    Figures {
        name: name.to_string(),
        size: bytes.len() as u64,
        cached,
        compile,
        cache_load,
        instantiate,
        linear,
        private_configured,
        private_called,
        resident_called,
        on_request,
        on_response,
    }
}

fn spec(name: &str, i: usize) -> FilterSpec {
    FilterSpec {
        name: format!("bench/{name}-{i}"),
        config: r#"{"greeting":"hi"}"#.to_string(),
        memory_bytes: MEMORY,
        timeout: Duration::from_secs(5),
        min_instances: 1,
        kv: KvBackend::Memory,
        capture: CaptureSpec::default(),
    }
}

fn request() -> (Method, Uri, HeaderMap) {
    let mut headers = HeaderMap::new();
    headers.insert("host", "example.com".parse().expect("header"));
    headers.insert("user-agent", "bench".parse().expect("header"));
    headers.insert("accept", "*/*".parse().expect("header"));
    (Method::GET, Uri::from_static("/bench"), headers)
}

/// One request through the filter: `on-request`, then `on-response`.
fn call(pool: &Pool) {
    let (mut method, mut uri, mut headers) = request();
    let mut cx = Context::default();
    block_on(pool.on_request(&mut method, &mut uri, &mut headers, &mut cx)).expect("on_request");
    assert_eq!(
        headers.get("x-hello").map(|v| v.as_bytes()),
        Some(&b"hi"[..]),
        "the hello filter sets x-hello from its config"
    );
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    block_on(pool.on_response(&mut status, &mut headers, &mut cx)).expect("on_response");
}

/// One of this process's memory figures in /proc/self/status (`VmRSS`, `RssAnon`), in
/// bytes.
fn memory(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
        .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A table row: its label, the figure and the figure's unit.
type Row<'a> = (&'a str, &'a dyn Fn(&Figures) -> f64, &'a str);

fn report(figures: &[Figures]) {
    let base = &figures[0];
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rows: [Row; 11] = [
        ("component size", &|f| mib(f.size as f64), "MiB"),
        (
            "compiled code (AOT cache)",
            &|f| mib(f.cached as f64),
            "MiB",
        ),
        ("compile (cache miss)", &|f| ms(f.compile), "ms"),
        ("load from the AOT cache", &|f| ms(f.cache_load), "ms"),
        ("instantiate + configure", &|f| ms(f.instantiate), "ms"),
        ("linear memory per instance", &|f| mib(f.linear), "MiB"),
        (
            "private memory per instance",
            &|f| mib(f.private_configured),
            "MiB",
        ),
        (
            "  after its first request",
            &|f| mib(f.private_called),
            "MiB",
        ),
        (
            "resident, image pages included",
            &|f| mib(f.resident_called),
            "MiB",
        ),
        ("on-request call", &|f| f.on_request / 1e3, "us"),
        ("on-response call", &|f| f.on_response / 1e3, "us"),
    ];
    print!("{:<38}", "");
    for f in figures {
        print!("{:>22}", f.name);
    }
    println!();
    for (label, get, unit) in rows {
        print!("{:<38}", format!("{label} ({unit})"));
        let b = get(base);
        for f in figures {
            let v = get(f);
            if std::ptr::eq(f, base) {
                print!("{v:>22.3}");
            } else {
                print!("{:>22}", format!("{v:.3} (x{:.0})", v / b));
            }
        }
        println!();
    }
}
