//! Request metrics, lock-free on the request path.
//!
//! `build()` resolves every (route rule, backend) pair to an `Arc<Stats>` once, so a
//! request only bumps atomics. The registry's mutex is taken when a snapshot is built
//! and when `/metrics` is scraped, never per request. Entries outlive snapshots, so
//! counters keep counting across reloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatsKey {
    /// `namespace/name` of the route, empty for requests no route matched.
    pub route: String,
    /// Rule index, or its name where it has one.
    pub rule: String,
    /// `namespace/service:port`, empty for answers given without a backend.
    pub backend: String,
}

pub struct Stats {
    /// Responses by status code; index is `code - 100`.
    codes: Box<[AtomicU64]>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        if let Some(c) = self.codes.get(usize::from(status.saturating_sub(100))) {
            c.fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

/// Counters outside the request path (reloads, filters later).
#[derive(Default)]
pub struct Counters {
    pub reloads_ok: AtomicU64,
    pub reloads_rejected: AtomicU64,
    pub mirror_errors: AtomicU64,
}

/// Per TCPRoute, TLSRoute or UDPRoute: connections (UDP: sessions) and bytes.
#[derive(Default)]
pub struct StreamStats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Bytes from clients to backends.
    pub rx_bytes: AtomicU64,
    /// Bytes from backends to clients.
    pub tx_bytes: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    stats: Mutex<BTreeMap<StatsKey, Arc<Stats>>>,
    /// By (route kind, `namespace/name`).
    streams: Mutex<BTreeMap<(String, String), Arc<StreamStats>>>,
    pub counters: Counters,
}

impl Metrics {
    /// The shared entry for `key`, created on first use.
    pub fn stats(&self, key: StatsKey) -> Arc<Stats> {
        let mut map = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| Arc::new(Stats::new()))
            .clone()
    }

    /// The shared entry for a stream route (`kind`, `namespace/name`).
    pub fn stream(&self, kind: &str, route: &str) -> Arc<StreamStats> {
        let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((kind.to_string(), route.to_string()))
            .or_default()
            .clone()
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let map = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::with_capacity(4096);
        let labels = |k: &StatsKey| {
            format!(
                "route=\"{}\",rule=\"{}\",backend=\"{}\"",
                escape(&k.route),
                escape(&k.rule),
                escape(&k.backend)
            )
        };
        out.push_str("# HELP sluice_http_requests_total HTTP responses sent, by route rule, backend and status code.\n");
        out.push_str("# TYPE sluice_http_requests_total counter\n");
        for (k, s) in &map {
            let l = labels(k);
            for (i, c) in s.codes.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sluice_http_requests_total{{{l},code=\"{}\"}} {n}",
                        i + 100
                    );
                }
            }
        }
        out.push_str("# HELP sluice_http_request_duration_seconds Time from request received to response headers sent.\n");
        out.push_str("# TYPE sluice_http_request_duration_seconds histogram\n");
        for (k, s) in &map {
            let l = labels(k);
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(&s.buckets) {
                cumulative += n.load(Relaxed);
                let _ = writeln!(
                    out,
                    "sluice_http_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {cumulative}"
                );
            }
            let count = s.count.load(Relaxed);
            let _ = writeln!(
                out,
                "sluice_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "sluice_http_request_duration_seconds_sum{{{l}}} {}",
                s.sum_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "sluice_http_request_duration_seconds_count{{{l}}} {count}"
            );
        }
        self.render_streams(&mut out);
        let c = &self.counters;
        for (name, help, v) in [
            (
                "sluice_config_reloads_total{result=\"ok\"}",
                "Configuration reloads, by result.",
                &c.reloads_ok,
            ),
            (
                "sluice_config_reloads_total{result=\"rejected\"}",
                "",
                &c.reloads_rejected,
            ),
            (
                "sluice_mirror_errors_total",
                "Mirrored requests that failed (the primary is unaffected).",
                &c.mirror_errors,
            ),
        ] {
            let metric = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            }
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        }
        out
    }
}

impl Metrics {
    fn render_streams(&self, out: &mut String) {
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if streams.is_empty() {
            return;
        }
        type Field = fn(&StreamStats) -> &AtomicU64;
        let families: [(&str, &str, &str, Field, &str); 5] = [
            (
                "sluice_stream_connections_total",
                "counter",
                "Connections (UDP: sessions) accepted, by route.",
                |s| &s.connections,
                "",
            ),
            (
                "sluice_stream_active",
                "gauge",
                "Connections (UDP: sessions) open now, by route.",
                |s| &s.active,
                "",
            ),
            (
                "sluice_stream_connect_errors_total",
                "counter",
                "Backend connections that could not be made, by route.",
                |s| &s.connect_errors,
                "",
            ),
            (
                "sluice_stream_bytes_total",
                "counter",
                "Bytes forwarded, by route and direction (rx: from clients, tx: to clients).",
                |s| &s.rx_bytes,
                ",direction=\"rx\"",
            ),
            (
                "sluice_stream_bytes_total",
                "counter",
                "",
                |s| &s.tx_bytes,
                ",direction=\"tx\"",
            ),
        ];
        for (name, kind, help, field, extra) in families {
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            }
            for ((k, route), s) in &streams {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{}\",route=\"{}\"{extra}}} {}",
                    escape(k),
                    escape(route),
                    field(s).load(Relaxed)
                );
            }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
