//! Upstream connection pools: keep-alive HTTP/1.1, and HTTP/2 cleartext with prior
//! knowledge for backends whose appProtocol is `kubernetes.io/h2c`.

use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_ir::{UpstreamProtocol, UpstreamTlsIr};

use crate::Body;

struct Upstream {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

thread_local! {
    /// Each thread's own cleartext pools. A worker thread serves its connections from
    /// start to end (see [`crate::Workers`]), so an upstream connection is opened, used
    /// and driven on the thread of the requests that use it: no pool shared between
    /// threads, and no request waking a connection task on another thread. Each worker
    /// keeps its own idle connections to a backend, as Envoy's workers do.
    static UPSTREAM: Upstream = Upstream::new();
}

/// Sends `req` on this thread's cleartext pool for `p`.
pub(crate) fn request(
    p: UpstreamProtocol,
    req: hyper::Request<Body>,
) -> hyper_util::client::legacy::ResponseFuture {
    UPSTREAM.with(|u| u.client(p).request(req))
}

/// The time a connection to a backend may take to open, unless
/// [`set_connect_timeout`] sets another (`--connect-timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static CONNECT_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the time a connection to a backend (HTTP, TLS, TCP and TLS passthrough routes)
/// may take to open, once per process, before the first connection; later calls are
/// ignored.
pub fn set_connect_timeout(d: Duration) {
    let _ = CONNECT_TIMEOUT.set(d);
}

pub(crate) fn connect_timeout() -> Duration {
    CONNECT_TIMEOUT
        .get()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// A TCP connection to a backend opened the way the gateway opens them all: within
/// [`connect_timeout`] (`Err(None)` when it ran out), with Nagle's algorithm off.
pub(crate) async fn connect_tcp(
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream, Option<std::io::Error>> {
    let io = tokio::time::timeout(connect_timeout(), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
    io.set_nodelay(true).map_err(Some)?;
    Ok(io)
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout()));
    c.enforce_http(true);
    c
}

impl Upstream {
    fn new() -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector());
        Upstream { http1, h2c }
    }

    fn client(&self, p: UpstreamProtocol) -> &Client<HttpConnector, Body> {
        match p {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::H2c => &self.h2c,
        }
    }
}

/// A pool speaking TLS to one backend, as its BackendTLSPolicy says.
pub(crate) type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Builds the TLS pool for a backend: trust (the policy's CAs or the system's roots),
/// SNI and name checks from `hostname` (or the subjectAltNames), the Gateway's client
/// certificate when it has one, and ALPN for the backend's protocol.
pub(crate) fn tls_client(
    t: &UpstreamTlsIr,
    protocol: UpstreamProtocol,
) -> Result<TlsClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if t.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
    } else {
        for c in sluice_tls::certificates(&t.ca_pem, "ca.crt")? {
            roots.add(c).map_err(|e| format!("ca.crt: {e}"))?;
        }
    }
    let roots = Arc::new(roots);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("BackendTLSPolicy {}: {e}", t.policy))?;
    let verifier: Arc<dyn ServerCertVerifier> =
        if t.subject_alt_names.is_empty() && t.subject_alt_name_uris.is_empty() {
            webpki
        } else {
            Arc::new(SanVerifier {
                inner: webpki,
                names: t
                    .subject_alt_names
                    .iter()
                    .filter_map(|n| ServerName::try_from(n.clone()).ok())
                    .collect(),
                uris: t.subject_alt_name_uris.clone(),
                roots,
                algorithms: provider.signature_verification_algorithms,
            })
        };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cfg = match &t.client_certificate {
        Some(c) => {
            let chain = sluice_tls::certificates(&c.chain_pem, "tls.crt")?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&c.key_pem)
                .map_err(|e| format!("tls.key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", c.secret))?
        }
        None => builder.with_no_client_auth(),
    };
    let sni = ServerName::try_from(t.hostname.clone())
        .map_err(|e| format!("hostname {:?}: {e}", t.hostname))?;
    // hyper-rustls sets ALPN from the protocols enabled: h2 for gRPC-style backends,
    // http/1.1 otherwise.
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sni));
    let mut tcp = connector();
    // The TLS connector hands https:// URIs to the TCP one.
    tcp.enforce_http(false);
    let https = match protocol {
        UpstreamProtocol::H2c => builder.enable_http2().wrap_connector(tcp),
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(tcp),
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1024);
    if protocol == UpstreamProtocol::H2c {
        b.http2_only(true).timer(TokioTimer::new());
    }
    Ok(b.build(https))
}

/// Accepts a certificate valid for any of `names` or carrying any of `uris`
/// (BackendTLSPolicy subjectAltNames of type Hostname and URI), whatever name was sent
/// as SNI.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
    uris: Vec<String>,
    roots: Arc<rustls::RootCertStore>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SanVerifier {
    /// The chain checked as webpki checks it for a server (trust anchors, validity,
    /// signatures, serverAuth usage), then a URI subjectAltName looked for, since
    /// webpki matches DNS names and IP addresses only.
    fn verify_uri(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("certificate chain: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        let found = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value.general_names.iter().any(|n| {
                    matches!(n, x509_parser::extensions::GeneralName::URI(u) if self.uris.iter().any(|w| w == u))
                })
            });
        if found {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for n in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, n, ocsp_response, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        if !self.uris.is_empty() {
            match self.verify_uri(end_entity, intermediates, now) {
                Ok(()) => return Ok(ServerCertVerified::assertion()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
