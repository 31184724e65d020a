//! Per-WasmFilter metrics: calls, errors by kind, latency, live instances, fail-open
//! skips, and the filter's own counters and histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];
const MAX_GUEST_METRICS: usize = 32;
/// Buckets of filters' own histograms: Prometheus's defaults.
const GUEST_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct GuestHistogram {
    buckets: [u64; GUEST_BUCKETS.len()],
    count: u64,
    sum: f64,
}

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

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe_secs(&self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add((secs * 1e9) as u64, Relaxed);
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut c = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            c += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_nanos.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Default)]
pub struct FilterStats {
    pub calls: AtomicU64,
    errors: [AtomicU64; 4],
    pub skipped: AtomicU64,
    pub instances: AtomicI64,
    latency: Histogram,
    guest_counters: Mutex<BTreeMap<String, u64>>,
    guest_histograms: Mutex<BTreeMap<String, GuestHistogram>>,
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
        self.latency.observe_secs(elapsed.as_secs_f64());
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
            let h = m.entry(name.to_string()).or_default();
            if let Some(i) = GUEST_BUCKETS.iter().position(|b| v <= *b) {
                h.buckets[i] += 1;
            }
            h.count += 1;
            h.sum += v;
        }
    }

    pub fn render(&self, out: &mut String, filter: &str) {
        let l = format!(
            "filter=\"{}\"",
            filter.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let _ = writeln!(
            out,
            "sluice_wasm_calls_total{{{l}}} {}",
            self.calls.load(Relaxed)
        );
        for k in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "sluice_wasm_errors_total{{{l},kind=\"{}\"}} {}",
                k.as_str(),
                self.errors(k)
            );
        }
        let _ = writeln!(
            out,
            "sluice_wasm_failopen_skips_total{{{l}}} {}",
            self.skipped.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "sluice_wasm_instances{{{l}}} {}",
            self.instances.load(Relaxed)
        );
        self.latency
            .render(out, "sluice_wasm_call_duration_seconds", &l);
        for (n, v) in self
            .guest_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "sluice_filter_{n}_total{{{l}}} {v}");
        }
        for (n, h) in self
            .guest_histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let mut cumulative = 0;
            for (b, c) in GUEST_BUCKETS.iter().zip(h.buckets) {
                cumulative += c;
                let _ = writeln!(
                    out,
                    "sluice_filter_{n}_bucket{{{l},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "sluice_filter_{n}_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "sluice_filter_{n}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "sluice_filter_{n}_count{{{l}}} {}", h.count);
        }
    }
}

pub const HELP: &str = "\
# HELP sluice_wasm_calls_total Filter hook calls, per WasmFilter.
# TYPE sluice_wasm_calls_total counter
# HELP sluice_wasm_errors_total Failed filter calls, by kind (trap, timeout, memory, config).
# TYPE sluice_wasm_errors_total counter
# HELP sluice_wasm_failopen_skips_total Requests on which a failing FailOpen filter was skipped.
# TYPE sluice_wasm_failopen_skips_total counter
# HELP sluice_wasm_instances Live instances in the filter's pools.
# TYPE sluice_wasm_instances gauge
# HELP sluice_wasm_call_duration_seconds Time in one filter hook call.
# TYPE sluice_wasm_call_duration_seconds histogram
";

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
        let mut out = String::new();
        s.render(&mut out, "ns/f");
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
