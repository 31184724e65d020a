//! `build(ir)`: everything the request path needs, compiled once per configuration.

use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sluice_ir::{
    BackendIr, FilterIr, HeaderModIr, Ir, ListenerIr, ListenerTlsIr, PortIr, Protocol, RuleIr,
    StreamProtocol, UpstreamProtocol,
};

use crate::BuildError;
use crate::metrics::{Metrics, Stats, StatsKey};
use crate::router::PathRouter;
use crate::stream::StreamTable;

/// One immutable configuration. A request loads it once and uses it to the end, so a
/// reload never changes the rules under a request in flight.
pub struct Snapshot {
    pub ir: Arc<Ir>,
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

/// Hostname lookup: exact names, then wildcard suffixes longest first, then "any".
pub(crate) struct HostTable<T> {
    exact: HashMap<String, T>,
    /// (`.example.com`, value), longest suffix first.
    wildcard: Vec<(String, T)>,
    any: Option<T>,
}

impl<T> HostTable<T> {
    pub(crate) fn new(entries: Vec<(Option<&str>, T)>) -> Self {
        let mut t = HostTable {
            exact: HashMap::default(),
            wildcard: Vec::new(),
            any: None,
        };
        for (host, v) in entries {
            match host {
                None | Some("*") => {
                    if t.any.is_none() {
                        t.any = Some(v);
                    }
                }
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => t.wildcard.push((suffix.to_string(), v)),
                    None => {
                        t.exact.entry(h.to_string()).or_insert(v);
                    }
                },
            }
        }
        t.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        t
    }

    pub fn get(&self, host: &str) -> Option<&T> {
        self.exact
            .get(host)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, v)| v)
            })
            .or(self.any.as_ref())
    }
}

pub(crate) struct PortTable {
    pub listeners: HostTable<ListenerTable>,
    /// For HTTPS ports: the handshake, with certificates chosen by SNI.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Picks a listener's certificate by the ClientHello's server name, the way requests
/// pick a listener by host: exact, then the longest wildcard, then a listener without a
/// hostname. Among a listener's certificates, the first whose key suits the client's
/// signature schemes wins (an ECDSA and an RSA certificate can serve side by side).
struct SniResolver {
    by_name: HostTable<Vec<Arc<CertifiedKey>>>,
    /// For clients that send no SNI and a port without a catch-all listener.
    fallback: Vec<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or("").to_ascii_lowercase();
        let certs = self.by_name.get(&name).unwrap_or(&self.fallback);
        let schemes = hello.signature_schemes();
        certs
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .or(certs.first())
            .cloned()
    }
}

fn tls_acceptor(p: &PortIr) -> Result<tokio_rustls::TlsAcceptor, BuildError> {
    let entries: Vec<_> = p
        .listeners
        .iter()
        .filter_map(|l| Some((l.hostname.as_deref(), l.tls.as_ref()?)))
        .collect();
    tls_acceptor_for(&entries, &[b"h2", b"http/1.1"])
}

/// A TLS server config choosing among `listeners`' certificates by SNI, offering `alpn`.
pub(crate) fn tls_acceptor_for(
    listeners: &[(Option<&str>, &ListenerTlsIr)],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, BuildError> {
    let mut entries = Vec::new();
    for (hostname, tls) in listeners {
        let keys = tls
            .certificates
            .iter()
            .map(|c| {
                sluice_tls::certified_key(&c.chain_pem, &c.key_pem)
                    .map_err(|e| BuildError(format!("Secret {}: {e}", c.secret)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.push((*hostname, keys));
    }
    let fallback = entries.first().map(|(_, k)| k.clone()).unwrap_or_default();
    let resolver = SniResolver {
        by_name: HostTable::new(entries),
        fallback,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError(format!("TLS: {e}")))?;
    // Client certificates are checked per port: the first listener that asks decides.
    let validation = listeners
        .iter()
        .find_map(|(_, t)| t.client_validation.as_ref());
    let builder = match validation {
        None => builder.with_no_client_auth(),
        Some(v) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in sluice_tls::certificates(&v.ca_pem, "ca.crt").map_err(BuildError)? {
                roots
                    .add(c)
                    .map_err(|e| BuildError(format!("client CA: {e}")))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if v.allow_insecure_fallback {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| BuildError(format!("client CA: {e}")))?;
            if v.allow_insecure_fallback {
                builder.with_client_cert_verifier(Arc::new(InsecureFallback(verifier)))
            } else {
                builder.with_client_cert_verifier(verifier)
            }
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// `AllowInsecureFallback`: a client certificate is asked for and checked, but a client
/// whose certificate does not verify is served like one that sent none (the mode's
/// point is a migration path; the Gateway says `InsecureFrontendValidationMode`). The
/// handshake signature is still checked, so the client holds the key it presents.
#[derive(Debug)]
struct InsecureFallback(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if let Err(e) = self.0.verify_client_cert(end_entity, intermediates, now) {
            tracing::debug!(error = %e, "client certificate not valid; served anyway (AllowInsecureFallback)");
        }
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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
    pub invalid: Option<String>,
    /// For answers given by the rule itself (redirects, CORS preflights, 500s).
    pub local_stats: Arc<Stats>,
}

pub(crate) struct Backend {
    pub name: String,
    /// TLS to the endpoints (BackendTLSPolicy).
    pub tls: Option<crate::upstream::TlsClient>,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<http::uri::Authority>,
    pub next: AtomicUsize,
    pub filters: Vec<Filter>,
    pub invalid: Option<String>,
    pub stats: Arc<Stats>,
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
}

pub(crate) struct WasmFilter {
    pub pool: Arc<sluice_wasm::Pool>,
    pub fail_open: bool,
}

/// The instance pools of the WasmFilters a snapshot uses, by `namespace/name`. The
/// provider creates them (compiling and configuring off the request path); `build`
/// only looks them up.
pub type WasmPools = HashMap<sluice_ir::FilterKey, Arc<sluice_wasm::Pool>>;

/// Compiles the IR. Fails only on values the translator let through but the data plane
/// cannot represent (a header value with a newline, say); the caller keeps the old
/// snapshot then.
pub fn build(ir: Ir, metrics: &Metrics, wasm: &WasmPools) -> Result<Snapshot, BuildError> {
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
        ir: Arc::new(ir),
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
    let backends = r
        .backends
        .iter()
        .map(|b| build_backend(b, &route, &rule_label(r), metrics, wasm))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx)?;
    Ok(Rule {
        id: r.id.clone(),
        filters: build_filters(&r.filters, &route, &rule_label(r), metrics, wasm).map_err(ctx)?,
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        request_timeout: r.request_timeout_ms.map(Duration::from_millis),
        backend_timeout: r.backend_request_timeout_ms.map(Duration::from_millis),
        invalid: r.invalid.clone(),
        local_stats: metrics.stats(StatsKey {
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
            Some(t) => Some(
                crate::upstream::tls_client(t, b.protocol)
                    .map_err(|e| BuildError(format!("backend {}: {e}", b.name)))?,
            ),
            None => None,
        },
        weight: b.weight,
        protocol: b.protocol,
        endpoints: b
            .endpoints
            .iter()
            .map(|e| {
                e.to_string()
                    .parse()
                    .map_err(|_| BuildError(format!("endpoint {e} is not a valid authority")))
            })
            .collect::<Result<_, _>>()?,
        next: AtomicUsize::new(0),
        filters: build_filters(&b.filters, route, rule, metrics, wasm)?,
        invalid: b.invalid.clone(),
        stats: metrics.stats(StatsKey {
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
                FilterIr::Wasm(w) => Filter::Wasm(WasmFilter {
                    pool: wasm.get(&w.filter).cloned().ok_or_else(|| {
                        BuildError(format!("WasmFilter {} has no loaded instances", w.filter))
                    })?,
                    fail_open: w.failure_policy == sluice_ir::FailurePolicy::FailOpen,
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
