//! The IR: what the data plane needs to serve traffic, and nothing else.
//!
//! `translate()` produces it from [`Resources`](../sluice_resources); `build()` in the
//! proxy crate compiles it (regexes, path tries, upstream clients) into a snapshot. It is
//! plain data (`Clone + Eq + Serialize`), golden-tested, and shown live at the admin
//! `/config_dump`. Every piece points back to the Gateway API object it came from, so
//! errors, metrics and status can name it.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ir {
    /// One entry per socket the gateway binds.
    pub ports: Vec<PortIr>,
    /// Route rules, referred to by index from [`MatchIr::rule`]. A rule attached to
    /// several listeners or hostnames appears here once.
    pub rules: Vec<RuleIr>,
    /// TCP, TLS and UDP listeners: connections and datagrams forwarded, not parsed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamPortIr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum StreamProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    /// Routed by the ClientHello's server name; passed through, or terminated when the
    /// listener has certificates.
    #[serde(rename = "TLS")]
    Tls,
    #[serde(rename = "UDP")]
    Udp,
}

/// A socket for TCPRoutes, TLSRoutes or UDPRoutes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPortIr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: StreamProtocol,
    pub listeners: Vec<StreamListenerIr>,
}

impl StreamPortIr {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamListenerIr {
    pub gateway: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// TLS listeners in Terminate mode: the gateway's certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminate: Option<ListenerTlsIr>,
    /// Attached routes, oldest first. TCP and UDP listeners use the first; TLS
    /// listeners pick by server name.
    pub routes: Vec<StreamRouteIr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRouteIr {
    /// `Kind namespace/name`.
    pub route: String,
    /// For TLSRoutes: the server names served (already intersected with the listener's
    /// hostname); empty means any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub backends: Vec<BackendIr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP over TLS terminated by the gateway; every listener on the port has `tls`.
    #[serde(rename = "HTTPS")]
    Https,
}

/// A bound socket, shared by every listener (of any Gateway) with the same address and port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortIr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Told apart by the request's host: the most specific hostname wins (exact, then the
    /// longest wildcard, then a listener without a hostname).
    pub listeners: Vec<ListenerIr>,
}

impl PortIr {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerIr {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Certificates for an HTTPS listener, chosen by SNI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsIr>,
    /// One per effective hostname (the intersection of the route's and the listener's
    /// hostnames); `*` stands for "any host".
    pub virtual_hosts: Vec<VirtualHostIr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsIr {
    /// The valid certificateRefs, in order; the first whose names cover the SNI serves.
    pub certificates: Vec<CertificateIr>,
    /// Client certificate validation (the Gateway's spec.tls.frontend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidationIr>,
}

#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidationIr {
    /// `namespace/name` of each CA reference.
    pub ca_refs: Vec<String>,
    /// The CA bundle, PEM.
    #[serde(skip)]
    pub ca_pem: Vec<u8>,
    /// `AllowInsecureFallback`: clients without a valid certificate are served too.
    pub allow_insecure_fallback: bool,
}

impl std::fmt::Debug for ClientValidationIr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientValidationIr")
            .field("ca_refs", &self.ca_refs)
            .finish_non_exhaustive()
    }
}

/// A certificate and key from a `kubernetes.io/tls` Secret. The PEM is kept out of
/// `/config_dump`: the key is a secret.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateIr {
    /// `namespace/name` of the Secret.
    pub secret: String,
    #[serde(skip)]
    pub chain_pem: Vec<u8>,
    #[serde(skip)]
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for CertificateIr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateIr")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHostIr {
    pub hostname: String,
    /// In precedence order: the first that matches a request wins.
    pub matches: Vec<MatchIr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchIr {
    /// Index into [`Ir::rules`].
    pub rule: usize,
    pub path: PathMatchIr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchIr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatchIr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatchIr {
    Exact(String),
    /// Segment-wise, without a trailing slash (`/` for everything).
    Prefix(String),
    /// A full match of the whole path, in the `regex` crate's syntax.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatchIr {
    /// Header names are lowercase; query param names are exact.
    pub name: String,
    pub regex: bool,
    pub value: String,
}

/// Where a rule came from: route kind, namespace, name, rule index and optional name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleId {
    pub namespace: String,
    pub route: String,
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTPRoute {}/{} rule {}",
            self.namespace, self.route, self.index
        )?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// A rule's retries (HTTPRoute `retry`): connection errors and backend request
/// timeouts are retried, and answers with one of `codes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryIr {
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The least wait before the first retry; each later one waits twice as long.
    pub backoff_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleIr {
    pub id: RuleId,
    /// Run in order on the request; header modifiers for the response run at response time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterIr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendIr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_request_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryIr>,
    /// When set, every request matching the rule gets a 500 (the Gateway API's answer to a
    /// rule that cannot be served: all backends invalid, or an unresolvable filter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum UpstreamProtocol {
    #[serde(rename = "HTTP/1.1")]
    Http1,
    /// HTTP/2 cleartext with prior knowledge (appProtocol `kubernetes.io/h2c`).
    #[serde(rename = "h2c")]
    H2c,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendIr {
    /// `namespace/service:port`.
    pub name: String,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
    /// Ready endpoints. Empty means 503 (the Service exists but nothing serves it).
    pub endpoints: Vec<SocketAddr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterIr>,
    /// When set, requests sent to this backend get a 500, in proportion to its weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// TLS to the endpoints, from a BackendTLSPolicy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsIr>,
}

/// How the gateway speaks TLS to a backend.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTlsIr {
    /// `namespace/name` of the BackendTLSPolicy.
    pub policy: String,
    /// The SNI, and the name verified unless `subjectAltNames` is set.
    pub hostname: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// subjectAltNames of type URI (e.g. SPIFFE IDs): the certificate must carry one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_name_uris: Vec<String>,
    /// Trust the system's roots (`wellKnownCACertificates: System`).
    pub system_roots: bool,
    /// The CA certificates from caCertificateRefs, PEM.
    #[serde(skip)]
    pub ca_pem: Vec<u8>,
    /// The Gateway's client certificate (spec.tls.backend.clientCertificateRef).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificateIr>,
}

impl std::fmt::Debug for UpstreamTlsIr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsIr")
            .field("policy", &self.policy)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FilterIr {
    RequestHeaders(HeaderModIr),
    ResponseHeaders(HeaderModIr),
    Redirect(RedirectIr),
    Rewrite(RewriteIr),
    Mirror(Box<MirrorIr>),
    Cors(CorsIr),
    /// A WasmFilter, by ExtensionRef.
    Wasm(WasmIr),
    /// HTTPRoute `ExternalAuth` (HTTP protocol).
    ExternalAuth(Box<ExternalAuthIr>),
}

/// An `ExternalAuth` filter: the authorization service, and what goes to it and back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuthIr {
    pub backend: BackendIr,
    /// The Envoy ext_authz gRPC protocol (`Authorization/Check`) instead of HTTP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
    /// Put before the client's path on the authorization request.
    pub path_prefix: String,
    /// Lowercase client headers sent besides host, authorization and content-length
    /// (HTTP); the client headers sent, all when empty (gRPC).
    pub allowed_headers: Vec<String>,
    /// Lowercase headers of the service's 200 copied to the request; empty: all but
    /// host and hop-by-hop ones.
    pub allowed_response_headers: Vec<String>,
    /// `forwardBody.maxSize`: the request body is sent too, and a larger one is
    /// answered 413; 0: no body.
    #[serde(skip_serializing_if = "is_zero")]
    pub forward_body: u64,
}

/// The largest `forwardBody.maxSize` of an ExternalAuth filter: the body is held in
/// memory while the service decides.
pub const EXTERNAL_AUTH_MAX_FORWARD_BODY: u64 = 16 << 20;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FailurePolicy {
    FailClosed,
    FailOpen,
}

/// A WasmFilter's memory limit when `spec.limits.memory` is not set.
pub const WASM_DEFAULT_MEMORY: u64 = 16 << 20;
/// A WasmFilter's time limit per hook call when `spec.limits.timeout` is not set.
pub const WASM_DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);

/// Names a WasmFilter: the key its instance pool is found by when a snapshot is built.
/// Shown (and serialized) as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilterKey {
    pub namespace: String,
    pub name: String,
}

impl FilterKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        FilterKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for FilterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for FilterKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmIr {
    /// The WasmFilter.
    pub filter: FilterKey,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// The JSON handed to `configure`.
    pub config: String,
    pub failure_policy: FailurePolicy,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub min_instances: u32,
    /// The largest body collected for the filter when it asks for a buffered body (and
    /// the largest answer to one of its outbound calls).
    pub max_body_bytes: u64,
    /// The backends it may call, by grant name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundIr>,
}

/// A backend a filter may call (`spec.outbound`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundIr {
    pub name: String,
    /// Resolved as a route's backendRef; `invalid` says why it cannot be called.
    pub backend: BackendIr,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModIr {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathRewriteIr {
    Full(String),
    /// Replace the matched `prefix` with `with`, segment-wise.
    Prefix {
        prefix: String,
        with: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectIr {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewriteIr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteIr {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewriteIr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorIr {
    pub backend: BackendIr,
    /// Mirror `numerator / denominator` of requests.
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsIr {
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: u32,
}
