//! TLS material as rustls takes it: a certificate chain with its key, and CA bundles,
//! parsed from PEM the same way for status (the translator checks a Secret once) and
//! for serving (the data plane builds its certificate resolvers and verifiers).

#![forbid(unsafe_code)]

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate chain with its key, ready to serve.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(chain_pem, "tls.crt")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key: no PEM private key ({e})"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "tls.key does not match the certificate in tls.crt".to_string()
            }
            e => format!("tls.key: {e}"),
        })
}

/// Every certificate in a PEM bundle; at least one.
pub fn certificates(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{field}: not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{field}: no PEM certificate"));
    }
    Ok(certs)
}

pub mod signing;
