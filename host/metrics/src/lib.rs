//! One metrics registry for the whole process, and the one Prometheus text encoder.
//!
//! The request path only touches atomics that were looked up when a snapshot was built
//! (a route rule's [`Histogram`], a filter's counters); labels are resolved then, never
//! per request. Scraping `/metrics` asks every registered [`Collect`] to write its
//! families through one [`Encoder`], which owns the text format: `# HELP` and `# TYPE`
//! once per family, label escaping, cumulative histogram buckets.
//!
//! Why not the `prometheus-client` crate: its `Histogram::observe` takes a lock per
//! observation and its `Family` a hashed lookup per label set; Sluice's hot counters
//! (per route rule and status code, per filter) are plain atomics found at build time,
//! which this small module keeps while giving every part one registry and one format.

#![forbid(unsafe_code)]

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A part of the process that has metrics to show (routes, filters, the status writer).
pub trait Collect: Send + Sync {
    /// Writes this part's families. Called on each scrape, off the request path.
    fn collect(&self, out: &mut Encoder);
}

/// Every [`Collect`] in the process, encoded in registration order.
#[derive(Default)]
pub struct Registry {
    parts: Mutex<Vec<Arc<dyn Collect>>>,
}

impl Registry {
    pub fn register(&self, part: Arc<dyn Collect>) {
        self.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(part);
    }

    /// The Prometheus text exposition format (version 0.0.4) of every part.
    pub fn encode(&self) -> String {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut enc = Encoder::default();
        for p in parts {
            p.collect(&mut enc);
        }
        enc.finish()
    }
}

/// What a family's samples mean to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// Writes the text format. Start each family with [`Encoder::family`], then write its
/// samples; every sample of a family must follow its header.
#[derive(Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// `# HELP` and `# TYPE` for the family `name`.
    pub fn family(&mut self, name: &str, kind: Type, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &Labels, value: impl Display) {
        if labels.0.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.0);
        }
    }

    /// A histogram's `_bucket` (cumulative, ending in `+Inf`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &Labels, h: &HistogramSnapshot) {
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.buckets) {
            cumulative += n;
            let l = labels.clone().with("le", bound);
            self.sample(&format!("{name}_bucket"), &l, cumulative);
        }
        let l = labels.clone().with("le", "+Inf");
        self.sample(&format!("{name}_bucket"), &l, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample's labels, escaped as the text format requires.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Labels(String);

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    /// Adds `key="value"`.
    pub fn with(mut self, key: &str, value: impl Display) -> Self {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        let value = value.to_string();
        let _ = write!(self.0, "{key}=\"");
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
        self
    }
}

/// A monotonic count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Latency buckets for requests, in seconds: 0.5 ms to 10 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Latency buckets for filter calls, in seconds: 1 µs to 10 ms.
pub const CALL_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];
/// Prometheus's default buckets, for values whose scale is unknown (a filter's own).
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A bucketed histogram, lock-free: each observation is three relaxed atomic adds
/// (bucket, count, sum).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); an observation above the last bound is only
    /// counted in `count` (the `+Inf` bucket).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum, in `f64` bits.
    sum: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum: f64::from_bits(self.sum.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Part(Histogram, Counter);
    impl Collect for Part {
        fn collect(&self, out: &mut Encoder) {
            out.family("t_total", Type::Counter, "A count.");
            out.sample(
                "t_total",
                &Labels::new().with("route", "a\"b\\c\nd"),
                self.1.get(),
            );
            out.family("t_seconds", Type::Histogram, "A latency.");
            out.histogram(
                "t_seconds",
                &Labels::new().with("k", "v"),
                &self.0.snapshot(),
            );
        }
    }

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let p = Arc::new(Part(Histogram::new(&[0.1, 1.0]), Counter::default()));
        p.0.observe(0.05);
        p.0.observe(0.5);
        p.0.observe(5.0);
        p.0.observe(f64::NAN);
        p.1.add(3);
        let r = Registry::default();
        r.register(p);
        let text = r.encode();
        assert_eq!(
            text,
            "# HELP t_total A count.\n# TYPE t_total counter\n\
             t_total{route=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP t_seconds A latency.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{k=\"v\",le=\"0.1\"} 1\n\
             t_seconds_bucket{k=\"v\",le=\"1\"} 2\n\
             t_seconds_bucket{k=\"v\",le=\"+Inf\"} 3\n\
             t_seconds_sum{k=\"v\"} 5.55\n\
             t_seconds_count{k=\"v\"} 3\n"
        );
    }
}
