//! Serving TLS: certificates chosen by SNI, and client certificate verification, for
//! HTTPS listeners and TLS routes alike.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sluice_ir::{ListenerTlsIr, PortIr};

use crate::BuildError;
use crate::hosts::HostTable;

/// Picks a listener's certificate by the ClientHello's server name, the way requests
/// pick a listener by host: exact, then the longest wildcard, then a listener without a
/// hostname. Among a listener's certificates, those whose DNS names cover the server
/// name come first, as Envoy and CDNs choose: a `*.example.com` listener holding
/// certificates for `a.example.com` and `b.example.com` serves each its own. The key
/// type only breaks ties: the first candidate whose key suits the client's signature
/// schemes wins (an ECDSA and an RSA certificate can serve side by side).
struct SniResolver {
    by_name: HostTable<Vec<Served>>,
    /// For clients that send no SNI and a port without a catch-all listener.
    fallback: Vec<Served>,
}

/// A certificate and the DNS names it is valid for, read once when the snapshot is
/// built rather than on each handshake.
#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    /// Lowercase subjectAltName DNS entries (`*.example.com` kept as written).
    names: Vec<String>,
}

impl Served {
    fn new(key: Arc<CertifiedKey>) -> Served {
        let names = key
            .end_entity_cert()
            .ok()
            .and_then(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
                let san = cert.subject_alternative_name().ok()??;
                Some(
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                Some(d.to_ascii_lowercase())
                            }
                            _ => None,
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        Served { key, names }
    }

    /// Whether the certificate is valid for `name` (lowercase).
    fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| dns_name_covers(n, name))
    }
}

/// Whether the DNS entry `pattern` is valid for `name`: equal, or a wildcard entry
/// standing for exactly one leftmost label (RFC 6125 6.4.3).
fn dns_name_covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
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
        pick(certs, &name, hello.signature_schemes())
    }
}

/// Among `certs`, those covering `name` (all of them if none does), and among those
/// the first whose key signs with one of `schemes` (the first if none does).
fn pick(
    certs: &[Served],
    name: &str,
    schemes: &[rustls::SignatureScheme],
) -> Option<Arc<CertifiedKey>> {
    let named = certs.iter().any(|c| c.covers(name));
    let candidates = || certs.iter().filter(move |c| !named || c.covers(name));
    candidates()
        .find(|c| c.key.key.choose_scheme(schemes).is_some())
        .or_else(|| candidates().next())
        .map(|c| c.key.clone())
}

pub(crate) fn tls_acceptor(p: &PortIr) -> Result<tokio_rustls::TlsAcceptor, BuildError> {
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
                    .map(Served::new)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(dns_name_covers("*.example.com", "a.example.com"));
        assert!(dns_name_covers("exact.test", "exact.test"));
        assert!(!dns_name_covers("*.example.com", "example.com"));
        assert!(!dns_name_covers("*.example.com", "a.b.example.com"));
        assert!(!dns_name_covers("*.example.com", ".example.com"));
        assert!(!dns_name_covers("exact.test", "other.test"));
        assert!(!dns_name_covers("exact.test", ""));
    }
}
