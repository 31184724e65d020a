//! `build(ir)`: everything the request path needs, compiled once per configuration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use sluice_ir::{
    BackendIr, FilterIr, HeaderModIr, Ir, ListenerIr, Protocol, RuleIr, StreamProtocol,
    UpstreamProtocol,
};

use crate::BuildError;
use crate::hosts::HostTable;
use crate::metrics::{LazyStats, Metrics, Stats, StatsKey};
use crate::router::PathRouter;
use crate::stream::StreamTable;
use crate::tls::tls_acceptor;

/// One immutable configuration. A request loads it once and uses it to the end, so a
/// reload never changes the rules under a request in flight.
pub struct Snapshot {
    /// The IR it was built from, as gzip-compressed compact JSON, for the admin
    /// `/config_dump` ([`Snapshot::config_dump`]). Kept as compressed text rather than
    /// as the IR itself: heaptrack put about 12 MB of live heap at 10,000 rules on the
    /// IR's many small strings and vectors; its JSON is 2.1 MB, gzipped about 0.1 MB.
    config_dump: Box<[u8]>,
    /// Few entries: a scan beats hashing.
    pub(crate) ports: Vec<(SocketAddr, PortTable)>,
    /// TCP, TLS and UDP sockets.
    pub(crate) streams: Vec<(SocketAddr, StreamTable)>,
    /// Requests that matched no route.
    pub(crate) no_route: Arc<Stats>,
}

impl Snapshot {
    pub(crate) fn port(&self, key: &SocketAddr) -> Option<&PortTable> {
        self.ports.iter().find(|(a, _)| a == key).map(|(_, p)| p)
    }

    pub(crate) fn stream(&self, key: &SocketAddr) -> Option<&StreamTable> {
        self.streams.iter().find(|(a, _)| a == key).map(|(_, p)| p)
    }
}

/// A socket to bind: TCP (HTTP, HTTPS, TLS, TCP listeners) or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Socket {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl Snapshot {
    /// The sockets this snapshot serves.
    pub fn sockets(&self) -> Vec<Socket> {
        let mut v: Vec<_> = self.ports.iter().map(|(a, _)| Socket::Tcp(*a)).collect();
        v.extend(self.streams.iter().map(|(a, t)| match t.protocol {
            StreamProtocol::Udp => Socket::Udp(*a),
            StreamProtocol::Tcp | StreamProtocol::Tls => Socket::Tcp(*a),
        }));
        v.sort();
        v.dedup();
        v
    }
}

pub(crate) struct PortTable {
    pub listeners: HostTable<ListenerTable>,
    /// For HTTPS ports: the handshake, with certificates chosen by SNI.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub(crate) struct ListenerTable {
    pub port: u16,
    pub vhosts: HostTable<PathRouter<Arc<Rule>>>,
}

pub(crate) struct Rule {
    pub id: sluice_ir::RuleId,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub total_weight: u64,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<sluice_ir::RetryIr>,
    pub invalid: Option<String>,
    /// For answers given by the rule itself (redirects, CORS preflights, 500s).
    pub local_stats: LazyStats,
}

pub(crate) struct Backend {
    pub name: String,
    /// TLS to the endpoints (BackendTLSPolicy); boxed, as few backends have it.
    pub tls: Option<Box<crate::upstream::TlsClient>>,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<Endpoint>,
    pub next: AtomicUsize,
    pub filters: Vec<Filter>,
    pub invalid: Option<String>,
    pub stats: LazyStats,
}

impl Backend {
    /// The URI of a request to `endpoint` for `path_and_query`: `https` when the
    /// backend has TLS (BackendTLSPolicy), else `http`.
    pub fn uri<P>(
        &self,
        endpoint: http::uri::Authority,
        path_and_query: P,
    ) -> http::Result<http::Uri>
    where
        P: TryInto<http::uri::PathAndQuery>,
        <P as TryInto<http::uri::PathAndQuery>>::Error: Into<http::Error>,
    {
        http::Uri::builder()
            .scheme(if self.tls.is_some() { "https" } else { "http" })
            .authority(endpoint)
            .path_and_query(path_and_query)
            .build()
    }

    /// The HTTP version requests to the backend are sent with.
    pub fn version(&self) -> http::Version {
        match self.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::H2c => http::Version::HTTP_2,
        }
    }
}

/// One address of a backend.
pub(crate) struct Endpoint {
    pub authority: http::uri::Authority,
    /// The address, when the authority is an IP and a port (`h1` sends to those).
    pub addr: Option<std::net::SocketAddr>,
}

#[derive(Clone)]
pub(crate) struct HeaderMod {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMod {
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

pub(crate) enum Filter {
    RequestHeaders(HeaderMod),
    ResponseHeaders(HeaderMod),
    Redirect(sluice_ir::RedirectIr),
    Rewrite(sluice_ir::RewriteIr),
    Mirror {
        backend: Arc<Backend>,
        numerator: u32,
        denominator: u32,
    },
    Cors(crate::cors::Cors),
    Wasm(WasmFilter),
    ExternalAuth(Box<crate::outbound::ExternalAuth>),
}

pub(crate) struct WasmFilter {
    pub pool: Arc<sluice_wasm::Pool>,
    pub fail_open: bool,
    /// The largest body collected for it, when it buffers one.
    pub max_body_bytes: u64,
    /// The backends it may call (`spec.outbound`), if any.
    pub grants: Option<Arc<crate::outbound::Grants>>,
}

/// The instance pools of the WasmFilters a snapshot uses, by `namespace/name`. The
/// provider creates them (compiling and configuring off the request path); `build`
/// only looks them up.
pub type WasmPools = std::collections::HashMap<sluice_ir::FilterKey, Arc<sluice_wasm::Pool>>;

impl Snapshot {
    /// The IR this snapshot was built from, as compact JSON.
    pub fn config_dump(&self) -> Result<String, BuildError> {
        use std::io::Read;
        let mut json = String::new();
        flate2::read::GzDecoder::new(&self.config_dump[..])
            .read_to_string(&mut json)
            .map_err(|e| BuildError(format!("the kept configuration cannot be read: {e}")))?;
        Ok(json)
    }
}

/// The IR as gzip-compressed compact JSON (see `Snapshot::config_dump`). The fastest
/// level: at 10,000 rules it compresses the 2.1 MB about 20 times.
fn config_dump(ir: &Ir) -> Result<Box<[u8]>, BuildError> {
    use std::io::Write;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // serde_json writes a token at a time, and each write into the encoder runs the
    // compressor: buffered, 10,000 rules take about 40 ms, not half a second.
    let mut out = std::io::BufWriter::with_capacity(DUMP_BUFFER, gz);
    // The IR's types hold only strings, numbers, maps and lists, and a Vec takes every
    // write: this cannot fail.
    serde_json::to_writer(&mut out, ir)
        .map_err(std::io::Error::from)
        .and_then(|()| out.flush())
        .and_then(|()| out.into_inner().map_err(|e| e.into_error()))
        .and_then(flate2::write::GzEncoder::finish)
        .map(Vec::into_boxed_slice)
        .map_err(|e| BuildError(format!("the configuration cannot be shown as JSON: {e}")))
}

/// What `config_dump` hands the compressor at a time.
const DUMP_BUFFER: usize = 64 << 10;

/// Compiles the IR. Fails only on values the translator let through but the data plane
/// cannot represent (a header value with a newline, say); the caller keeps the old
/// snapshot then. The IR's JSON for `/config_dump` is made on a second thread meanwhile,
/// so that a reload does not wait for it.
pub fn build(ir: Ir, metrics: &Metrics, wasm: &WasmPools) -> Result<Snapshot, BuildError> {
    std::thread::scope(|s| {
        let dump = s.spawn(|| config_dump(&ir));
        let snapshot = build_without_dump(&ir, metrics, wasm);
        let dump = dump
            .join()
            .map_err(|_| BuildError("the configuration's JSON could not be made".into()))?;
        let mut snapshot = snapshot?;
        snapshot.config_dump = dump?;
        Ok(snapshot)
    })
}

fn build_without_dump(
    ir: &Ir,
    metrics: &Metrics,
    wasm: &WasmPools,
) -> Result<Snapshot, BuildError> {
    let rules: Vec<Arc<Rule>> = ir
        .rules
        .iter()
        .map(|r| build_rule(r, metrics, wasm).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut ports = Vec::new();
    for p in &ir.ports {
        let listeners = p
            .listeners
            .iter()
            .map(|l| Ok((l.hostname.as_deref(), build_listener(l, p.port, &rules)?)))
            .collect::<Result<Vec<_>, BuildError>>()?;
        let tls = match p.protocol {
            Protocol::Https => Some(tls_acceptor(p)?),
            Protocol::Http => None,
        };
        ports.push((
            p.socket_addr(),
            PortTable {
                listeners: HostTable::new(listeners),
                tls,
            },
        ));
    }
    let streams = ir
        .streams
        .iter()
        .map(|p| Ok((p.socket_addr(), crate::stream::build_table(p, metrics)?)))
        .collect::<Result<Vec<_>, BuildError>>()?;
    let no_route = metrics.stats(StatsKey {
        route: String::new(),
        rule: String::new(),
        backend: String::new(),
    });
    Ok(Snapshot {
        config_dump: Box::default(),
        ports,
        streams,
        no_route,
    })
}

fn build_listener(
    l: &ListenerIr,
    port: u16,
    rules: &[Arc<Rule>],
) -> Result<ListenerTable, BuildError> {
    let vhosts = l
        .virtual_hosts
        .iter()
        .map(|v| {
            let router = PathRouter::build(&v.matches, |i| rules[i].clone()).map_err(|e| {
                BuildError(format!(
                    "listener {}/{} host {}: {}",
                    l.gateway, l.name, v.hostname, e.0
                ))
            })?;
            Ok((Some(v.hostname.as_str()), router))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(ListenerTable {
        port,
        vhosts: HostTable::new(vhosts),
    })
}

fn rule_label(r: &RuleIr) -> String {
    r.id.name.clone().unwrap_or_else(|| r.id.index.to_string())
}

fn build_rule(r: &RuleIr, metrics: &Metrics, wasm: &WasmPools) -> Result<Rule, BuildError> {
    let ctx = |e: BuildError| BuildError(format!("{}: {}", r.id, e.0));
    let route = format!("{}/{}", r.id.namespace, r.id.route);
    // Sized exactly: collecting through a `Result` would start at room for four, and a
    // rule has one backend more often than not (10,000 rules held 18 MB of that room).
    let mut backends = Vec::with_capacity(r.backends.len());
    for b in &r.backends {
        backends.push(build_backend(b, &route, &rule_label(r), metrics, wasm).map_err(ctx)?);
    }
    Ok(Rule {
        id: r.id.clone(),
        filters: build_filters(&r.filters, &route, &rule_label(r), metrics, wasm).map_err(ctx)?,
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        request_timeout: r.request_timeout_ms.map(Duration::from_millis),
        backend_timeout: r.backend_request_timeout_ms.map(Duration::from_millis),
        retry: r.retry.clone(),
        invalid: r.invalid.clone(),
        local_stats: LazyStats::new(StatsKey {
            route,
            rule: rule_label(r),
            backend: String::new(),
        }),
    })
}

fn build_backend(
    b: &BackendIr,
    route: &str,
    rule: &str,
    metrics: &Metrics,
    wasm: &WasmPools,
) -> Result<Backend, BuildError> {
    Ok(Backend {
        name: b.name.clone(),
        tls: match &b.tls {
            Some(t) => Some(Box::new(
                crate::upstream::tls_client(t, b.protocol)
                    .map_err(|e| BuildError(format!("backend {}: {e}", b.name)))?,
            )),
            None => None,
        },
        weight: b.weight,
        protocol: b.protocol,
        endpoints: b
            .endpoints
            .iter()
            .map(|e| {
                let authority: http::uri::Authority = e
                    .to_string()
                    .parse()
                    .map_err(|_| BuildError(format!("endpoint {e} is not a valid authority")))?;
                let addr = authority.as_str().parse().ok();
                Ok(Endpoint { authority, addr })
            })
            .collect::<Result<_, _>>()?,
        next: AtomicUsize::new(0),
        filters: build_filters(&b.filters, route, rule, metrics, wasm)?,
        invalid: b.invalid.clone(),
        stats: LazyStats::new(StatsKey {
            route: route.into(),
            rule: rule.into(),
            backend: b.name.clone(),
        }),
    })
}

fn build_filters(
    filters: &[FilterIr],
    route: &str,
    rule: &str,
    metrics: &Metrics,
    wasm: &WasmPools,
) -> Result<Vec<Filter>, BuildError> {
    filters
        .iter()
        .map(|f| {
            Ok(match f {
                FilterIr::RequestHeaders(h) => Filter::RequestHeaders(header_mod(h)?),
                FilterIr::ResponseHeaders(h) => Filter::ResponseHeaders(header_mod(h)?),
                FilterIr::Redirect(r) => Filter::Redirect(r.clone()),
                FilterIr::Rewrite(r) => Filter::Rewrite(r.clone()),
                FilterIr::Mirror(m) => Filter::Mirror {
                    backend: Arc::new(build_backend(
                        &m.backend,
                        route,
                        &format!("{rule}/mirror"),
                        metrics,
                        wasm,
                    )?),
                    numerator: m.numerator,
                    denominator: m.denominator.max(1),
                },
                FilterIr::Cors(c) => Filter::Cors(crate::cors::Cors::new(c)?),
                FilterIr::ExternalAuth(a) => {
                    let names = |v: &[String]| {
                        v.iter()
                            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                            .collect()
                    };
                    Filter::ExternalAuth(Box::new(crate::outbound::ExternalAuth {
                        backend: Arc::new(build_backend(
                            &a.backend,
                            route,
                            &format!("{rule}/external-auth"),
                            metrics,
                            wasm,
                        )?),
                        grpc: a.grpc,
                        prefix: a.path_prefix.clone(),
                        allowed: names(&a.allowed_headers),
                        allowed_response: names(&a.allowed_response_headers),
                        forward_body: a.forward_body,
                    }))
                }
                FilterIr::Wasm(w) => Filter::Wasm(WasmFilter {
                    pool: wasm.get(&w.filter).cloned().ok_or_else(|| {
                        BuildError(format!("WasmFilter {} has no loaded instances", w.filter))
                    })?,
                    fail_open: w.failure_policy == sluice_ir::FailurePolicy::FailOpen,
                    max_body_bytes: w.max_body_bytes,
                    grants: if w.outbound.is_empty() {
                        None
                    } else {
                        Some(Arc::new(crate::outbound::Grants(
                            w.outbound
                                .iter()
                                .map(|o| {
                                    Ok(crate::outbound::Grant {
                                        name: o.name.clone(),
                                        backend: Arc::new(build_backend(
                                            &o.backend,
                                            &format!("WasmFilter {}", w.filter),
                                            &format!("outbound/{}", o.name),
                                            metrics,
                                            wasm,
                                        )?),
                                        timeout: Duration::from_millis(o.timeout_ms),
                                    })
                                })
                                .collect::<Result<_, BuildError>>()?,
                        )))
                    },
                }),
            })
        })
        .collect()
}

fn header_mod(h: &HeaderModIr) -> Result<HeaderMod, BuildError> {
    let pair = |(n, v): &(String, String)| {
        Ok((
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| BuildError(format!("header name {n:?} is not valid")))?,
            HeaderValue::from_str(v).map_err(|_| {
                BuildError(format!(
                    "header {n}: value {v:?} is not a valid header value"
                ))
            })?,
        ))
    };
    Ok(HeaderMod {
        set: h.set.iter().map(pair).collect::<Result<_, BuildError>>()?,
        add: h.add.iter().map(pair).collect::<Result<_, BuildError>>()?,
        remove: h
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| BuildError(format!("header name {n:?} is not valid")))
            })
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod size_tests {
    /// A backend is part of every rule (10,000 rules hold 10,000 of them): its TLS pool,
    /// which few have, is boxed, so the others do not carry its size.
    #[test]
    fn a_backend_without_tls_is_small() {
        let size = std::mem::size_of::<super::Backend>();
        assert!(size <= 160, "Backend is {size} bytes");
    }
}

#[cfg(test)]
mod dump_tests {
    use super::*;

    /// `/config_dump` reads back the JSON the build compressed (the gateway tests check
    /// its content with real configurations).
    #[test]
    fn the_kept_configuration_reads_back_as_its_json() {
        let ir = Ir::default();
        let snap = build(ir.clone(), &Metrics::default(), &WasmPools::default()).unwrap();
        assert_eq!(
            snap.config_dump().unwrap(),
            serde_json::to_string(&ir).unwrap()
        );
        assert_eq!(snap.config_dump().unwrap(), r#"{"ports":[],"rules":[]}"#);
    }
}
