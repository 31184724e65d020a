//! Access logs: one line per HTTP request, written to stdout by a thread of its own.
//!
//! The request path only pushes its finished record onto a lock-free queue: no
//! formatting, no write, no wakeup. The writer thread formats and writes what is queued
//! every few milliseconds. When it falls behind (a slow pipe, a full disk) records are
//! dropped and counted (`sluice_access_log_dropped_total`) instead of stalling requests.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use http::{Method, Version};

use crate::metrics::Stats;

/// Requests waiting for the writer; past this many, new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// How often the writer looks for lines when it found none.
const POLL: Duration = Duration::from_millis(5);

/// How lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (for log collectors).
    Json,
    /// `key=value` pairs, for people reading a terminal.
    Text,
}

/// A request whose response has been sent, waiting to be written.
struct Finished {
    record: Box<Record>,
    bytes_out: u64,
}

/// Where access log lines go, how they look, and which requests get one.
pub struct AccessLog {
    /// The share of requests logged, 0 to 1.
    sample: f64,
    queue: Arc<ArrayQueue<Finished>>,
    /// Lines dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Lines handed to the writer.
    pub written: AtomicU64,
}

impl AccessLog {
    /// Starts the writer thread, which writes to stdout.
    pub fn to_stdout(format: Format, sample: f64) -> std::io::Result<Arc<AccessLog>> {
        let queue = Arc::new(ArrayQueue::<Finished>::new(QUEUE));
        let from = queue.clone();
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let mut line = String::with_capacity(512);
                loop {
                    let mut any = false;
                    while let Some(f) = from.pop() {
                        line.clear();
                        match format {
                            Format::Json => json_line(&mut line, &f.record, f.bytes_out),
                            Format::Text => text_line(&mut line, &f.record, f.bytes_out),
                        }
                        let _ = out.write_all(line.as_bytes());
                        any = true;
                    }
                    if any {
                        let _ = out.flush();
                    } else if Arc::strong_count(&from) == 1 {
                        return;
                    } else {
                        std::thread::sleep(POLL);
                    }
                }
            })?;
        Ok(Arc::new(AccessLog {
            sample: sample.clamp(0.0, 1.0),
            queue,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }))
    }

    /// Whether this request gets a line.
    pub(crate) fn sampled(&self) -> bool {
        self.sample >= 1.0 || (self.sample > 0.0 && fastrand::f64() < self.sample)
    }

    /// Queues a request's line; the writer thread formats and writes it.
    pub(crate) fn write(&self, record: Box<Record>, bytes_out: u64) {
        match self.queue.push(Finished { record, bytes_out }) {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (up to `limit`) until the writer has taken every queued line: on shutdown,
    /// so the last requests are not lost.
    pub fn flush(&self, limit: Duration) {
        let end = Instant::now() + limit;
        while !self.queue.is_empty() && Instant::now() < end {
            std::thread::sleep(POLL);
        }
        // The line being written when the queue emptied.
        std::thread::sleep(POLL);
    }
}

impl sluice_metrics::Collect for AccessLog {
    fn collect(&self, out: &mut sluice_metrics::Encoder) {
        use sluice_metrics::{Labels, Type};
        let name = "sluice_access_log_lines_total";
        out.family(
            name,
            Type::Counter,
            "Access log lines handed to the writer.",
        );
        out.sample(name, &Labels::new(), self.written.load(Ordering::Relaxed));
        let name = "sluice_access_log_dropped_total";
        out.family(
            name,
            Type::Counter,
            "Access log lines dropped because the writer (stdout) fell behind.",
        );
        out.sample(name, &Labels::new(), self.dropped.load(Ordering::Relaxed));
    }
}

/// What a filter did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FilterOutcome {
    Continue,
    Respond,
    /// It failed (a trap, its time or memory limit) and its FailOpen policy skipped it.
    Skipped(sluice_wasm::ErrorKind),
    /// It failed and its FailClosed policy failed the request.
    Failed(sluice_wasm::ErrorKind),
    /// The body it asked for was past its `limits.maxBodyBytes`: it was skipped
    /// (FailOpen) or the request failed (FailClosed).
    BodyTooLarge {
        skipped: bool,
    },
}

impl FilterOutcome {
    fn as_str(self) -> &'static str {
        match self {
            FilterOutcome::Continue => "continue",
            FilterOutcome::Respond => "respond",
            FilterOutcome::Skipped(_) => "skipped",
            FilterOutcome::Failed(_) => "failed",
            FilterOutcome::BodyTooLarge { skipped: true } => "skipped",
            FilterOutcome::BodyTooLarge { skipped: false } => "failed",
        }
    }

    /// Why it failed: `trap`, `timeout`, `memory` or `config`.
    fn error(self) -> Option<&'static str> {
        match self {
            FilterOutcome::Skipped(k) | FilterOutcome::Failed(k) => Some(k.as_str()),
            FilterOutcome::BodyTooLarge { .. } => Some("body_too_large"),
            _ => None,
        }
    }
}

/// One request's line, filled in as the request goes and written when its response
/// has been sent (or abandoned).
pub(crate) struct Record {
    /// `None` when the request is traced but gets no line.
    pub log: Option<Arc<AccessLog>>,
    pub time: SystemTime,
    pub start: Instant,
    pub listener: SocketAddr,
    pub remote: SocketAddr,
    pub method: Method,
    /// The path without its query (queries carry tokens too often to log by default).
    pub path: String,
    pub version: Version,
    pub status: u16,
    /// Route, rule and backend, from the stats entry the request was counted in.
    pub stats: Option<Arc<Stats>>,
    pub endpoint: Option<String>,
    /// Request body bytes read from the client.
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub upstream: Option<Duration>,
    /// Each Wasm filter that ran and what it did (its name is read by the writer).
    pub filters: Vec<(Arc<sluice_wasm::Pool>, FilterOutcome)>,
    /// The request's trace: its own span's when tracing is on, else the client's W3C
    /// `traceparent`'s when it sent a valid one.
    pub trace_id: Option<String>,
    /// The request's server span, when tracing is on.
    pub trace: Option<crate::trace::RequestSpan>,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub(crate) fn trace_id(traceparent: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(traceparent).ok()?;
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_string())
}

pub(crate) fn route_fields(r: &Record) -> (&str, &str, &str) {
    match &r.stats {
        Some(s) => (
            s.key.route.as_str(),
            s.key.rule.as_str(),
            s.key.backend.as_str(),
        ),
        None => ("", "", ""),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Writes `v` as a JSON string (quoted and escaped).
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One JSON object, written field by field (no intermediate value tree: this runs for
/// every request).
fn json_line(s: &mut String, r: &Record, bytes_out: u64) {
    let (route, rule, backend) = route_fields(r);
    s.push_str("{\"time\":");
    json_str(s, &rfc3339(r.time));
    let _ = write!(
        s,
        ",\"listener\":\"{}\",\"client\":\"{}\",\"protocol\":\"{:?}\",\"method\":",
        r.listener, r.remote, r.version
    );
    json_str(s, r.method.as_str());
    s.push_str(",\"path\":");
    json_str(s, &r.path);
    let _ = write!(s, ",\"status\":{},\"route\":", r.status);
    json_str(s, route);
    s.push_str(",\"rule\":");
    json_str(s, rule);
    s.push_str(",\"backend\":");
    json_str(s, backend);
    s.push_str(",\"endpoint\":");
    match &r.endpoint {
        Some(e) => json_str(s, e),
        None => s.push_str("null"),
    }
    let _ = write!(
        s,
        ",\"bytes_in\":{},\"bytes_out\":{bytes_out},\"duration_ms\":{}",
        r.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed)),
        ms(r.start.elapsed())
    );
    match r.upstream {
        Some(u) => {
            let _ = write!(s, ",\"upstream_ms\":{}", ms(u));
        }
        None => s.push_str(",\"upstream_ms\":null"),
    }
    s.push_str(",\"filters\":[");
    for (i, (pool, o)) in r.filters.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"filter\":");
        json_str(s, pool.name());
        let _ = write!(s, ",\"outcome\":\"{}\"", o.as_str());
        if let Some(e) = o.error() {
            let _ = write!(s, ",\"error\":\"{e}\"");
        }
        s.push('}');
    }
    s.push_str("],\"trace_id\":");
    match &r.trace_id {
        Some(t) => json_str(s, t),
        None => s.push_str("null"),
    }
    s.push_str("}\n");
}

fn text_line(s: &mut String, r: &Record, bytes_out: u64) {
    let (route, rule, backend) = route_fields(r);
    let _ = write!(
        s,
        "{} {} {} {:?} {} status={} route={} rule={} backend={} endpoint={} in={} out={} duration_ms={}",
        rfc3339(r.time),
        r.remote,
        r.method,
        r.path,
        match r.version {
            Version::HTTP_2 => "h2",
            Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        },
        r.status,
        or_dash(route),
        or_dash(rule),
        or_dash(backend),
        r.endpoint.as_deref().unwrap_or("-"),
        r.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed)),
        bytes_out,
        ms(r.start.elapsed()),
    );
    if let Some(u) = r.upstream {
        let _ = write!(s, " upstream_ms={}", ms(u));
    }
    for (pool, o) in &r.filters {
        let _ = write!(s, " filter[{}]={}", pool.name(), o.as_str());
        if let Some(e) = o.error() {
            let _ = write!(s, "({e})");
        }
    }
    if let Some(t) = &r.trace_id {
        let _ = write!(s, " trace_id={t}");
    }
    s.push('\n');
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `2026-12-01T21:45:07.123Z`.
/// `t` as RFC 3339 in UTC with milliseconds (`2026-12-01T21:45:07.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_161_507_123);
        assert_eq!(rfc3339(t), "2026-12-01T21:45:07.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn trace_ids_come_only_from_valid_traceparents() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(ok).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
