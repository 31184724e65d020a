//! TLS material from Secrets: the `kubernetes.io/tls` pair (`tls.crt`, `tls.key`) and CA
//! bundles, parsed and checked once, the same way for status and for serving.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::Secret;

pub const TLS_SECRET: &str = "kubernetes.io/tls";

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

/// The `tls.crt` and `tls.key` of a `kubernetes.io/tls` Secret, checked: both present,
/// valid PEM, and the key matches the certificate.
pub fn secret_pair(s: &Secret) -> Result<(Vec<u8>, Vec<u8>), String> {
    if s.type_.as_deref() != Some(TLS_SECRET) {
        return Err(format!(
            "has type {:?}; certificateRefs need a {TLS_SECRET} Secret",
            s.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let crt = s.value("tls.crt").ok_or("has no tls.crt")?;
    let key = s.value("tls.key").ok_or("has no tls.key")?;
    certified_key(&crt, &key)?;
    Ok((crt, key))
}
