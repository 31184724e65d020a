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

pub struct FilterStats {
    pub calls: AtomicU64,
    errors: [AtomicU64; 4],
    pub skipped: AtomicU64,
    pub instances: AtomicI64,
    latency: Histogram,
    guest_counters: Mutex<BTreeMap<String, u64>>,
    guest_histograms: Mutex<BTreeMap<String, Histogram>>,
}

impl Default for FilterStats {
    fn default() -> Self {
        FilterStats {
            calls: AtomicU64::new(0),
            errors: Default::default(),
            skipped: AtomicU64::new(0),
            instances: AtomicI64::new(0),
            latency: Histogram::new(CALL_BUCKETS),
            guest_counters: Mutex::default(),
            guest_histograms: Mutex::default(),
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

impl FilterStats {
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
    let simple: [(&str, Type, &str, Value); 2] = [
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
