//! Certificates and CA bundles read from Secrets and ConfigMaps, checked once, for
//! listeners (serving and client validation) and for BackendTLSPolicies.

use sluice_resources::Resources;

use crate::status::{Problem, Reason};

/// The PEM CA bundle under key `ca.crt` of a ConfigMap or Secret `ns/name`, checked to
/// hold at least one certificate. `what` names the reference in errors.
pub(crate) fn read_ca(
    res: &Resources,
    ns: &str,
    group: &str,
    kind: &str,
    name: &str,
    what: &str,
) -> Result<Vec<u8>, Problem> {
    let not_found = || {
        (
            Reason::InvalidCACertificateRef,
            format!("{what}: not found"),
        )
    };
    let no_key = || {
        (
            Reason::InvalidCACertificateRef,
            format!("{what}: has no ca.crt"),
        )
    };
    let mut pem = match (group, kind) {
        ("", "ConfigMap") => res
            .config_map(ns, name)
            .ok_or_else(not_found)?
            .data
            .get("ca.crt")
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(no_key)?,
        ("", "Secret") => res
            .secret(ns, name)
            .ok_or_else(not_found)?
            .value("ca.crt")
            .ok_or_else(no_key)?,
        _ => {
            return Err((
                Reason::InvalidKind,
                format!("{what}: refer to a ConfigMap or a Secret"),
            ));
        }
    };
    sluice_tls::certificates(&pem, "ca.crt")
        .map_err(|e| (Reason::InvalidCACertificateRef, format!("{what}: {e}")))?;
    pem.push(b'\n');
    Ok(pem)
}

const TLS_SECRET: &str = "kubernetes.io/tls";

/// The `tls.crt` and `tls.key` of a `kubernetes.io/tls` Secret, checked: both present,
/// valid PEM, and the key matches the certificate.
pub(crate) fn secret_pair(s: &sluice_resources::Secret) -> Result<(Vec<u8>, Vec<u8>), String> {
    if s.type_.as_deref() != Some(TLS_SECRET) {
        return Err(format!(
            "has type {:?}; certificateRefs need a {TLS_SECRET} Secret",
            s.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let crt = s.value("tls.crt").ok_or("has no tls.crt")?;
    let key = s.value("tls.key").ok_or("has no tls.key")?;
    sluice_tls::certified_key(&crt, &key)?;
    Ok((crt, key))
}
