//! Request metrics, lock-free on the request path.
//!
//! `build()` gives every (route rule, backend) pair a [`LazyStats`]: the first request
//! that answers through it resolves it to an `Arc<Stats>` in the registry, and later
//! requests only bump atomics. The registry's mutex is taken by that first request and
//! when `/metrics` is scraped, never again per request. Entries outlive snapshots, so
//! counters keep counting across reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sluice_metrics::{Collect, Encoder, Histogram, Labels, REQUEST_BUCKETS, Type};

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
    /// What the entry counts (the access log names it too).
    pub key: StatsKey,
    /// Responses by status code, in a block of 100 per class (1xx to 5xx) made on the
    /// class's first response: a rule that only ever answers 2xx holds one block
    /// (800 bytes) instead of all five, and one never used holds none.
    codes: [OnceLock<Box<[AtomicU64; 100]>>; 5],
    latency: Histogram,
    /// Requests sent again (HTTPRoute `retry`).
    pub retries: AtomicU64,
}

impl Stats {
    fn new(key: StatsKey) -> Self {
        Stats {
            key,
            codes: Default::default(),
            latency: Histogram::new(REQUEST_BUCKETS),
            retries: AtomicU64::new(0),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = usize::from(status.saturating_sub(100));
        if let Some(class) = self.codes.get(i / 100) {
            class.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))))[i % 100]
                .fetch_add(1, Relaxed);
        }
        self.latency.observe_duration(elapsed);
    }
}

/// A rule's or backend's entry, made on its first response: a snapshot holds one for
/// every rule and backend, and at 10,000 rules making them all in advance took 10 MB
/// (an entry, its histogram and its registry slot each) for series that mostly never
/// count anything. The first request that needs it takes the registry's lock once;
/// later ones read the cell.
pub struct LazyStats {
    /// Boxed: a backend is part of every rule, and the key is only read once.
    key: Box<StatsKey>,
    cell: OnceLock<Arc<Stats>>,
}

impl LazyStats {
    pub fn new(key: StatsKey) -> Self {
        LazyStats {
            key: Box::new(key),
            cell: OnceLock::new(),
        }
    }

    /// The entry, from `metrics`' registry (where an earlier snapshot may have made it
    /// already: counters keep counting across reloads).
    pub fn get(&self, metrics: &Metrics) -> &Arc<Stats> {
        self.cell.get_or_init(|| metrics.stats((*self.key).clone()))
    }
}

/// Counters outside the request path (reloads, filters later).
#[derive(Default)]
pub struct Counters {
    pub reloads_ok: AtomicU64,
    pub reloads_rejected: AtomicU64,
    pub mirror_errors: AtomicU64,
    /// Connections closed at accept because their listener was at its cap.
    pub connections_refused: AtomicU64,
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
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Stats::new(key)))
            .clone()
    }

    /// The shared entry for a stream route (`kind`, `namespace/name`).
    pub fn stream(&self, kind: &str, route: &str) -> Arc<StreamStats> {
        let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((kind.to_string(), route.to_string()))
            .or_default()
            .clone()
    }
}

impl Collect for Metrics {
    fn collect(&self, out: &mut Encoder) {
        // Only the entries that counted a response: an entry can exist without one (a
        // request that failed before its answer was recorded), and printing unused ones
        // (a histogram each) made /metrics 9 MB at 10k rules. A series appears with its first request, as a Prometheus
        // client's labelled series do. The Arcs are taken under the lock; the encoding
        // runs without it.
        let map: Vec<Arc<Stats>> = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.latency.count() > 0)
            .cloned()
            .collect();
        let labels = |k: &StatsKey| {
            Labels::new()
                .with("route", &k.route)
                .with("rule", &k.rule)
                .with("backend", &k.backend)
        };
        let name = "sluice_http_requests_total";
        out.family(
            name,
            Type::Counter,
            "HTTP responses sent, by route rule, backend and status code.",
        );
        for s in &map {
            for (class, block) in s.codes.iter().enumerate() {
                for (i, c) in block.get().into_iter().flat_map(|b| b.iter().enumerate()) {
                    let n = c.load(Relaxed);
                    if n > 0 {
                        out.sample(name, &labels(&s.key).with("code", 100 * (class + 1) + i), n);
                    }
                }
            }
        }
        let name = "sluice_http_retries_total";
        out.family(
            name,
            Type::Counter,
            "Requests sent to a backend again (HTTPRoute retry), by route rule and backend.",
        );
        for s in &map {
            let n = s.retries.load(Relaxed);
            if n > 0 {
                out.sample(name, &labels(&s.key), n);
            }
        }
        let name = "sluice_http_request_duration_seconds";
        out.family(
            name,
            Type::Histogram,
            "Time from request received to response headers sent.",
        );
        for s in &map {
            out.histogram(name, &labels(&s.key), &s.latency.snapshot());
        }
        self.collect_streams(out);
        let c = &self.counters;
        let name = "sluice_config_reloads_total";
        out.family(name, Type::Counter, "Configuration reloads, by result.");
        for (result, v) in [("ok", &c.reloads_ok), ("rejected", &c.reloads_rejected)] {
            out.sample(name, &Labels::new().with("result", result), v.load(Relaxed));
        }
        let name = "sluice_mirror_errors_total";
        out.family(
            name,
            Type::Counter,
            "Mirrored requests that failed (the primary is unaffected).",
        );
        out.sample(name, &Labels::new(), c.mirror_errors.load(Relaxed));
        let name = "sluice_connections_refused_total";
        out.family(
            name,
            Type::Counter,
            "Connections closed at accept because their listener had --max-connections open.",
        );
        out.sample(name, &Labels::new(), c.connections_refused.load(Relaxed));
    }
}

impl Metrics {
    fn collect_streams(&self, out: &mut Encoder) {
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if streams.is_empty() {
            return;
        }
        type Field = fn(&StreamStats) -> &AtomicU64;
        /// Name, type, help, and each value with its `direction` label, if any.
        type Family<'a> = (&'a str, Type, &'a str, &'a [(Field, Option<&'a str>)]);
        let families: [Family; 4] = [
            (
                "sluice_stream_connections_total",
                Type::Counter,
                "Connections (UDP: sessions) accepted, by route.",
                &[(|s| &s.connections, None)],
            ),
            (
                "sluice_stream_active",
                Type::Gauge,
                "Connections (UDP: sessions) open now, by route.",
                &[(|s| &s.active, None)],
            ),
            (
                "sluice_stream_connect_errors_total",
                Type::Counter,
                "Backend connections that could not be made, by route.",
                &[(|s| &s.connect_errors, None)],
            ),
            (
                "sluice_stream_bytes_total",
                Type::Counter,
                "Bytes forwarded, by route and direction (rx: from clients, tx: to clients).",
                &[(|s| &s.rx_bytes, Some("rx")), (|s| &s.tx_bytes, Some("tx"))],
            ),
        ];
        for (name, kind, help, fields) in families {
            out.family(name, kind, help);
            for (field, direction) in fields {
                for ((k, route), s) in &streams {
                    let mut l = Labels::new().with("kind", k).with("route", route);
                    if let Some(d) = direction {
                        l = l.with("direction", d);
                    }
                    out.sample(name, &l, field(s).load(Relaxed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_entry_is_made_on_first_use_and_shared_across_snapshots() {
        let m = Metrics::default();
        let key = || StatsKey {
            route: "default/r".into(),
            rule: "0".into(),
            backend: "default/a:80".into(),
        };
        let entries = |m: &Metrics| m.stats.lock().map(|s| s.len()).unwrap_or(0);
        let old = LazyStats::new(key());
        let new = LazyStats::new(key());
        let _never = LazyStats::new(StatsKey {
            rule: "1".into(),
            ..key()
        });
        assert_eq!(entries(&m), 0, "nothing is registered before a request");
        old.get(&m).record(200, Duration::from_millis(1));
        assert_eq!(entries(&m), 1);
        // The same rule in the next snapshot counts on in the same entry.
        new.get(&m).record(200, Duration::from_millis(1));
        assert_eq!(entries(&m), 1);
        assert!(Arc::ptr_eq(old.get(&m), new.get(&m)));
        assert_eq!(new.get(&m).latency.snapshot().count, 2);
    }

    #[test]
    fn a_rule_series_appears_with_its_first_response() {
        let m = Arc::new(Metrics::default());
        let key = |rule: &str| StatsKey {
            route: "default/r".into(),
            rule: rule.into(),
            backend: "default/a:80".into(),
        };
        let used = m.stats(key("used"));
        let _unused = m.stats(key("unused"));
        used.record(200, Duration::from_millis(3));
        let registry = sluice_metrics::Registry::default();
        registry.register(m.clone());
        let text = registry.encode();
        assert!(
            text.contains(r#"sluice_http_requests_total{route="default/r",rule="used",backend="default/a:80",code="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_http_request_duration_seconds_count{route="default/r",rule="used",backend="default/a:80"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"rule="unused""#), "{text}");
        // The families are declared even before any request.
        let empty = sluice_metrics::Registry::default();
        empty.register(Arc::new(Metrics::default()));
        assert!(
            empty
                .encode()
                .contains("# TYPE sluice_http_request_duration_seconds histogram")
        );
    }
}
