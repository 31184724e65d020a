//! Per-WasmFilter metrics: calls, errors by kind, latency, live instances, fail-open
//! skips, and the filter's own counters and histograms.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluice_metrics::{CALL_BUCKETS, DEFAULT_BUCKETS, Encoder, Histogram, Labels, Type};

const MAX_GUEST_METRICS: usize = 32;

/// Why a filter call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The guest trapped (including a Rust panic).
    Trap,
    /// The call ran past the WasmFilter's time limit.
    Timeout,
    /// The guest tried to grow memory past the WasmFilter's limit.
    Memory,
    /// `configure` refused the config (for a fresh instance).
    Config,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Config => "config",
        }
    }
    const ALL: [ErrorKind; 4] = [
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::Config,
    ];
}

/// Which body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// What became of a body a filter asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEvent {
    /// Collected whole and handed to the body hook.
    Buffered,
    /// Larger than `limits.maxBodyBytes`: answered 413 or 502, or the filter skipped.
    TooLarge,
    /// A stream (gRPC, WebSocket) that is never buffered: the body hook was not called.
    Streamed,
    /// Passed through the filter chunk by chunk (it asked for the body streamed).
    Chunked,
}

impl BodyEvent {
    const ALL: [BodyEvent; 4] = [
        BodyEvent::Buffered,
        BodyEvent::TooLarge,
        BodyEvent::Streamed,
        BodyEvent::Chunked,
    ];
    fn as_str(self) -> &'static str {
        match self {
            BodyEvent::Buffered => "buffered",
            BodyEvent::TooLarge => "too_large",
            BodyEvent::Streamed => "streamed",
            BodyEvent::Chunked => "chunked",
        }
    }
}

/// One grant's numbers for `/metrics`: name, calls, errors, latency.
type GrantRow = (String, u64, u64, sluice_metrics::HistogramSnapshot);

/// Outbound calls to one grant.
struct OutboundStats {
    calls: u64,
    errors: u64,
    latency: Histogram,
}

pub struct FilterStats {
    pub calls: AtomicU64,
    /// Outbound calls by grant name (bounded by `spec.outbound`).
    outbound: Mutex<BTreeMap<String, OutboundStats>>,
    outbound_refused: AtomicU64,
    /// By direction, then by event.
    bodies: [[AtomicU64; 4]; 2],
    log: LogBudget,
    errors: [AtomicU64; 4],
    pub skipped: AtomicU64,
    pub instances: AtomicI64,
    latency: Histogram,
    guest_counters: Mutex<BTreeMap<String, u64>>,
    guest_histograms: Mutex<BTreeMap<String, Histogram>>,
    kv_errors: AtomicU64,
}

impl Default for FilterStats {
    fn default() -> Self {
        FilterStats {
            calls: AtomicU64::new(0),
            outbound: Mutex::default(),
            outbound_refused: AtomicU64::new(0),
            bodies: Default::default(),
            log: LogBudget::default(),
            errors: Default::default(),
            skipped: AtomicU64::new(0),
            instances: AtomicI64::new(0),
            latency: Histogram::new(CALL_BUCKETS),
            guest_counters: Mutex::default(),
            guest_histograms: Mutex::default(),
            kv_errors: AtomicU64::new(0),
        }
    }
}

fn valid_metric_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

/// Lines one filter may put in the gateway's log per second by default: its own `log`
/// calls and the gateway's lines about its failures. A filter that logs (or fails) on
/// every request would otherwise flood the log and spend the gateway's CPU on it.
pub const LOG_LINES_PER_SECOND: u64 = 100;

/// A per-second budget of log lines; lines past it are counted, not written.
#[derive(Default)]
struct LogBudget {
    /// The second (since the process started) the budget is counted in.
    window: AtomicU64,
    used: AtomicU64,
    /// Dropped since the last line that reported drops.
    unreported: AtomicU64,
    dropped: AtomicU64,
}

/// Whether a log line may be written.
pub(crate) enum LogPermit {
    /// Write it; first say that this many earlier lines were dropped, if any.
    Write {
        dropped_before: u64,
    },
    Drop,
}

fn seconds_since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
}

impl FilterStats {
    /// Counts a call to a name `spec.outbound` does not grant.
    pub fn outbound_refused(&self) {
        self.outbound_refused.fetch_add(1, Relaxed);
    }

    /// Counts an outbound call to the grant `grant`.
    pub fn outbound_call(&self, grant: &str, ok: bool, elapsed: Duration) {
        let mut m = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(grant) {
            m.insert(
                grant.to_string(),
                OutboundStats {
                    calls: 0,
                    errors: 0,
                    latency: Histogram::new(DEFAULT_BUCKETS),
                },
            );
        }
        if let Some(s) = m.get_mut(grant) {
            s.calls += 1;
            s.errors += u64::from(!ok);
            s.latency.observe(elapsed.as_secs_f64());
        }
    }

    /// Calls refused as not granted.
    pub fn outbound_refusals(&self) -> u64 {
        self.outbound_refused.load(Relaxed)
    }

    /// Counts what became of a body the filter asked for.
    pub fn body(&self, direction: Direction, event: BodyEvent) {
        self.bodies[direction as usize][event as usize].fetch_add(1, Relaxed);
    }

    pub fn bodies(&self, direction: Direction, event: BodyEvent) -> u64 {
        self.bodies[direction as usize][event as usize].load(Relaxed)
    }

    /// Takes one line from this second's budget of `per_second` lines.
    pub(crate) fn log_permit(&self, per_second: u64) -> LogPermit {
        let b = &self.log;
        let now = seconds_since_start();
        let w = b.window.load(Relaxed);
        if w != now && b.window.compare_exchange(w, now, Relaxed, Relaxed).is_ok() {
            b.used.store(0, Relaxed);
        }
        if b.used.fetch_add(1, Relaxed) < per_second {
            LogPermit::Write {
                dropped_before: b.unreported.swap(0, Relaxed),
            }
        } else {
            b.unreported.fetch_add(1, Relaxed);
            b.dropped.fetch_add(1, Relaxed);
            LogPermit::Drop
        }
    }

    pub fn log_lines_dropped(&self) -> u64 {
        self.log.dropped.load(Relaxed)
    }

    pub fn call(&self, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.latency.observe_duration(elapsed);
    }
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Relaxed)
    }
    pub(crate) fn kv_error(&self) {
        self.kv_errors.fetch_add(1, Relaxed);
    }

    /// `kv` calls that failed because the WasmFilter's Redis store did not answer.
    pub fn kv_errors(&self) -> u64 {
        self.kv_errors.load(Relaxed)
    }

    /// What the filter has added to its counter `name` (`metrics.counter-add`).
    pub fn counter(&self, name: &str) -> u64 {
        self.guest_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn guest_counter(&self, name: &str, v: u64) {
        if !valid_metric_name(name) {
            return;
        }
        let mut m = self
            .guest_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if m.len() < MAX_GUEST_METRICS || m.contains_key(name) {
            *m.entry(name.to_string()).or_default() += v;
        }
    }
    pub(crate) fn guest_histogram(&self, name: &str, v: f64) {
        if !valid_metric_name(name) || !v.is_finite() {
            return;
        }
        let mut m = self
            .guest_histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if m.len() < MAX_GUEST_METRICS || m.contains_key(name) {
            m.entry(name.to_string())
                .or_insert_with(|| Histogram::new(DEFAULT_BUCKETS))
                .observe(v);
        }
    }
}

/// Writes every filter's metrics, a family at a time: the built-in families, then each
/// filter's own counters and histograms (`sluice_filter_<name>_total`, `_bucket`...).
pub fn collect<'a>(out: &mut Encoder, filters: &[(&'a str, &'a FilterStats)]) {
    if filters.is_empty() {
        return;
    }
    let label = |f: &str| Labels::new().with("filter", f);
    type Value = fn(&FilterStats) -> i64;
    let simple: [(&str, Type, &str, Value); 4] = [
        (
            "sluice_wasm_calls_total",
            Type::Counter,
            "Filter hook calls, per WasmFilter.",
            |s| s.calls.load(Relaxed) as i64,
        ),
        (
            "sluice_wasm_failopen_skips_total",
            Type::Counter,
            "Requests on which a failing FailOpen filter was skipped.",
            |s| s.skipped.load(Relaxed) as i64,
        ),
        (
            "sluice_wasm_log_lines_dropped_total",
            Type::Counter,
            "Log lines of the filter (its own, and the gateway's about its failures) dropped past its per-second budget.",
            |s| s.log_lines_dropped() as i64,
        ),
        (
            "sluice_wasm_kv_errors_total",
            Type::Counter,
            "kv calls that failed because the WasmFilter's Redis store (spec.kv.redis) did not answer; the call traps and the failurePolicy decides.",
            |s| s.kv_errors() as i64,
        ),
    ];
    for (name, kind, help, value) in simple {
        out.family(name, kind, help);
        for (f, s) in filters {
            out.sample(name, &label(f), value(s));
        }
    }
    let name = "sluice_wasm_errors_total";
    out.family(
        name,
        Type::Counter,
        "Failed filter calls, by kind (trap, timeout, memory, config).",
    );
    for (f, s) in filters {
        for k in ErrorKind::ALL {
            out.sample(name, &label(f).with("kind", k.as_str()), s.errors(k));
        }
    }
    let name = "sluice_wasm_outbound_refused_total";
    out.family(
        name,
        Type::Counter,
        "Outbound calls to a name the WasmFilter's spec.outbound does not grant.",
    );
    for (f, s) in filters {
        out.sample(name, &label(f), s.outbound_refusals() as i64);
    }
    let calls = "sluice_wasm_outbound_calls_total";
    let errors = "sluice_wasm_outbound_errors_total";
    let latency = "sluice_wasm_outbound_duration_seconds";
    let grants: Vec<(&str, Vec<GrantRow>)> = filters
        .iter()
        .map(|(f, s)| {
            let m = s.outbound.lock().unwrap_or_else(|p| p.into_inner());
            let rows = m
                .iter()
                .map(|(g, o)| (g.clone(), o.calls, o.errors, o.latency.snapshot()))
                .collect();
            (*f, rows)
        })
        .collect();
    out.family(
        calls,
        Type::Counter,
        "Outbound calls of a filter, per granted destination.",
    );
    for (f, rows) in &grants {
        for (g, c, _, _) in rows {
            out.sample(calls, &label(f).with("grant", g), *c as i64);
        }
    }
    out.family(
        errors,
        Type::Counter,
        "Outbound calls that got no answer (timeout, connection failure, unavailable backend), per granted destination.",
    );
    for (f, rows) in &grants {
        for (g, _, e, _) in rows {
            out.sample(errors, &label(f).with("grant", g), *e as i64);
        }
    }
    out.family(
        latency,
        Type::Histogram,
        "Time an outbound call took, per granted destination.",
    );
    for (f, rows) in &grants {
        for (g, _, _, h) in rows {
            out.histogram(latency, &label(f).with("grant", g), h);
        }
    }
    let name = "sluice_wasm_bodies_total";
    out.family(
        name,
        Type::Counter,
        "Bodies a filter asked for, by direction and outcome: buffered (handed to its body hook), too_large (past limits.maxBodyBytes), streamed (gRPC or WebSocket, never buffered).",
    );
    for (f, s) in filters {
        for (d, dir) in [
            (Direction::Request, "request"),
            (Direction::Response, "response"),
        ] {
            for e in BodyEvent::ALL {
                out.sample(
                    name,
                    &label(f).with("direction", dir).with("outcome", e.as_str()),
                    s.bodies(d, e),
                );
            }
        }
    }
    let name = "sluice_wasm_instances";
    out.family(name, Type::Gauge, "Live instances in the filter's pools.");
    for (f, s) in filters {
        out.sample(name, &label(f), s.instances.load(Relaxed));
    }
    let name = "sluice_wasm_call_duration_seconds";
    out.family(name, Type::Histogram, "Time in one filter hook call.");
    for (f, s) in filters {
        out.histogram(name, &label(f), &s.latency.snapshot());
    }
    // A filter's own metrics: one family per name, across the filters that report it.
    let mut counters: BTreeMap<String, Vec<(&str, u64)>> = BTreeMap::new();
    let mut histograms: BTreeMap<String, Vec<(&str, sluice_metrics::HistogramSnapshot)>> =
        BTreeMap::new();
    for (f, s) in filters {
        let c = s.guest_counters.lock().unwrap_or_else(|p| p.into_inner());
        for (n, v) in c.iter() {
            counters.entry(n.clone()).or_default().push((f, *v));
        }
        let h = s.guest_histograms.lock().unwrap_or_else(|p| p.into_inner());
        for (n, v) in h.iter() {
            histograms
                .entry(n.clone())
                .or_default()
                .push((f, v.snapshot()));
        }
    }
    for (n, samples) in counters {
        let name = format!("sluice_filter_{n}_total");
        out.family(&name, Type::Counter, "A counter the filter reports.");
        for (f, v) in samples {
            out.sample(&name, &label(f), v);
        }
    }
    for (n, samples) in histograms {
        let name = format!("sluice_filter_{n}");
        out.family(&name, Type::Histogram, "A histogram the filter reports.");
        for (f, h) in samples {
            out.histogram(&name, &label(f), &h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_metrics_render_as_prometheus_counters_and_histograms() {
        let s = FilterStats::default();
        s.guest_counter("hits", 2);
        s.guest_counter("Bad-Name", 1);
        s.guest_histogram("size", 0.2);
        s.guest_histogram("size", 3.0);
        let mut enc = Encoder::default();
        collect(&mut enc, &[("ns/f", &s)]);
        let out = enc.finish();
        assert!(
            out.contains(r#"sluice_filter_hits_total{filter="ns/f"} 2"#),
            "{out}"
        );
        assert!(!out.contains("Bad-Name"), "invalid names are ignored");
        assert!(
            out.contains(r#"sluice_filter_size_bucket{filter="ns/f",le="0.25"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sluice_filter_size_bucket{filter="ns/f",le="5"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sluice_filter_size_count{filter="ns/f"} 2"#),
            "{out}"
        );
    }
}
