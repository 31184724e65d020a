//! BackendTLSPolicy: which Services get TLS from the gateway, with what trust, and the
//! policies' status.

use std::collections::BTreeSet;

use sluice_ir::UpstreamTlsIr;
use sluice_resources::{BackendTlsPolicy, GATEWAY_GROUP, ParentReference, Resources};

use crate::CONTROLLER_NAME;
use crate::certs::read_ca;
use crate::gateways::GatewayState;
use crate::status::*;

/// The policy for Service `svc` port `port_name` in `ns`: the most specific target wins
/// (one naming the port over one naming the Service), then the oldest policy.
pub(crate) fn policy_for<'a>(
    res: &'a Resources,
    ns: &str,
    svc: &str,
    port_name: Option<&str>,
) -> Option<&'a BackendTlsPolicy> {
    let targets = |p: &BackendTlsPolicy, with_section: bool| {
        p.metadata.namespace_or_default() == ns
            && p.spec.target_refs.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Service"
                    && t.name == svc
                    && match (&t.section_name, with_section) {
                        (Some(s), true) => Some(s.as_str()) == port_name,
                        (None, false) => true,
                        _ => false,
                    }
            })
    };
    let oldest = |with_section| {
        res.backend_tls_policies
            .iter()
            .filter(|p| targets(p, with_section))
            .min_by(|a, b| {
                (&a.metadata.creation_timestamp, &a.metadata.name)
                    .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
            })
    };
    oldest(true).or_else(|| oldest(false))
}

/// The policy that wins every Service and sectionName `p` targets instead of `p`
/// ([`policy_for`]'s choice), when there is one: `p` then applies nowhere (Conflicted).
fn shadowed_by<'a>(res: &'a Resources, p: &BackendTlsPolicy) -> Option<&'a str> {
    let ns = p.metadata.namespace_or_default();
    let mut winner = None;
    for t in p
        .spec
        .target_refs
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
    {
        let w = policy_for(res, ns, &t.name, t.section_name.as_deref())?;
        if std::ptr::eq(w, p) {
            return None;
        }
        winner = Some(w.metadata.name.as_str());
    }
    winner
}

/// The upstream TLS a policy asks for, or why it cannot be used.
pub(crate) fn upstream_tls(
    res: &Resources,
    p: &BackendTlsPolicy,
) -> Result<UpstreamTlsIr, Problem> {
    let ns = p.metadata.namespace_or_default();
    let name = format!("{ns}/{}", p.metadata.name);
    let v = &p.spec.validation;
    let system = v.well_known_ca_certificates.as_deref() == Some("System");
    if let Some(w) = &v.well_known_ca_certificates
        && w != "System"
    {
        return Err((
            Reason::InvalidCACertificateRef,
            format!(
                "BackendTLSPolicy {name}: wellKnownCACertificates {w:?} is not supported; use System"
            ),
        ));
    }
    if system != v.ca_certificate_refs.is_empty() {
        return Err((
            Reason::InvalidCACertificateRef,
            format!(
                "BackendTLSPolicy {name}: set exactly one of caCertificateRefs and wellKnownCACertificates"
            ),
        ));
    }
    let mut ca_pem = Vec::new();
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        let what = format!(
            "BackendTLSPolicy {name}: validation.caCertificateRefs[{i}] ({}/{})",
            r.kind, r.name
        );
        ca_pem.extend(read_ca(res, ns, &r.group, &r.kind, &r.name, &what)?);
    }
    let mut subject_alt_names = Vec::new();
    let mut subject_alt_name_uris = Vec::new();
    for (i, san) in v.subject_alt_names.iter().enumerate() {
        match (san.type_.as_str(), &san.hostname, &san.uri) {
            ("Hostname", Some(h), _) => subject_alt_names.push(h.clone()),
            ("URI", _, Some(u)) => subject_alt_name_uris.push(u.clone()),
            (t, _, _) => {
                return Err((
                    Reason::UnsupportedValue,
                    format!(
                        "BackendTLSPolicy {name}: validation.subjectAltNames[{i}]: type {t:?} needs its {} field; types Hostname and URI are supported",
                        if t == "URI" { "uri" } else { "hostname" }
                    ),
                ));
            }
        }
    }
    Ok(UpstreamTlsIr {
        policy: name,
        hostname: v.hostname.clone(),
        subject_alt_names,
        subject_alt_name_uris,
        system_roots: system,
        ca_pem,
        client_certificate: None,
    })
}

/// Status for each policy, under each Gateway whose routes use a Service it targets.
/// `services` holds (Service `namespace/name`, gateway index) pairs.
pub(crate) fn statuses(
    res: &Resources,
    gws: &[GatewayState],
    services: &BTreeSet<(String, usize)>,
    out: &mut Vec<ObjectStatus>,
) {
    for p in &res.backend_tls_policies {
        let ns = p.metadata.namespace_or_default();
        let targets: Vec<String> = p
            .spec
            .target_refs
            .iter()
            .filter(|t| t.group.is_empty() && t.kind == "Service")
            .map(|t| format!("{ns}/{}", t.name))
            .collect();
        let used: BTreeSet<usize> = services
            .iter()
            .filter(|(svc, _)| targets.contains(svc))
            .map(|(_, gi)| *gi)
            .collect();
        let g = p.metadata.generation();
        let conditions = if let Some(winner) = shadowed_by(res, p) {
            let msg = format!(
                "BackendTLSPolicy {ns}/{winner} targets the same Service and sectionName and takes precedence (it is older, or as old and first by name)"
            );
            vec![
                Condition::new(ConditionType::Accepted, false, Reason::Conflicted, msg, g),
                Condition::new(
                    ConditionType::ResolvedRefs,
                    true,
                    Reason::ResolvedRefs,
                    "all references resolved",
                    g,
                ),
            ]
        } else {
            match upstream_tls(res, p) {
                Ok(_) => vec![
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "policy accepted",
                        g,
                    ),
                    Condition::new(
                        ConditionType::ResolvedRefs,
                        true,
                        Reason::ResolvedRefs,
                        "all references resolved",
                        g,
                    ),
                ],
                Err((reason, msg)) => vec![
                    Condition::new(
                        ConditionType::Accepted,
                        false,
                        if reason == Reason::UnsupportedValue {
                            Reason::UnsupportedValue
                        } else {
                            Reason::NoValidCACertificate
                        },
                        msg.clone(),
                        g,
                    ),
                    Condition::new(ConditionType::ResolvedRefs, false, reason, msg, g),
                ],
            }
        };
        let ancestors: Vec<PolicyAncestorStatus> = used
            .iter()
            .filter_map(|gi| gws.get(*gi))
            .map(|gw| PolicyAncestorStatus {
                ancestor_ref: ParentReference {
                    group: Some(GATEWAY_GROUP.into()),
                    kind: Some(Kind::Gateway.as_str().into()),
                    namespace: Some(gw.namespace.clone()),
                    name: gw.name.clone(),
                    section_name: None,
                    port: None,
                },
                controller_name: CONTROLLER_NAME.into(),
                conditions: conditions.clone(),
            })
            .collect();
        if ancestors.is_empty() {
            continue;
        }
        out.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: Kind::BackendTLSPolicy,
            metadata: StatusMeta {
                namespace: ns.into(),
                name: p.metadata.name.clone(),
                generation: g,
            },
            status: Status::Policy(PolicyStatus { ancestors }),
        });
    }
}
