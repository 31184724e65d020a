//! Backend resolution: a backendRef to a Service, through its EndpointSlices, to ready
//! endpoints, the way kube-proxy does it.

use std::net::{IpAddr, SocketAddr};

use sluice_ir::{BackendIr, UpstreamProtocol};

use sluice_resources::{BackendObjectReference, Resources, SERVICE_NAME_LABEL};

use crate::grants::ref_permitted_from;
use crate::status::{Kind, Problem, Reason};

/// Resolves one backendRef of an HTTPRoute in `route_ns`. An unresolvable reference still
/// yields a backend (with `invalid` set) so that it keeps its share of the weight: the
/// spec wants requests that would have gone to it to fail with 500, not to spill over.
pub(crate) fn resolve(
    res: &Resources,
    route_ns: &str,
    b: &BackendObjectReference,
    weight: u32,
) -> (BackendIr, Option<Problem>) {
    resolve_for(res, Kind::HTTPRoute, route_ns, b, weight)
}

/// As [`resolve`], for a route of `route_kind` (which ReferenceGrants name).
pub(crate) fn resolve_for(
    res: &Resources,
    route_kind: Kind,
    route_ns: &str,
    b: &BackendObjectReference,
    weight: u32,
) -> (BackendIr, Option<Problem>) {
    resolve_from(
        res,
        (sluice_resources::GATEWAY_GROUP, route_kind.as_str()),
        route_ns,
        b,
        weight,
    )
}

/// As [`resolve`], for a referrer of any group and kind: `(group, kind)`, which
/// ReferenceGrants name (a WasmFilter's outbound grants are `sluice.dev` `WasmFilter`).
pub(crate) fn resolve_from(
    res: &Resources,
    from: (&str, &str),
    route_ns: &str,
    b: &BackendObjectReference,
    weight: u32,
) -> (BackendIr, Option<Problem>) {
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let port = b.port.unwrap_or(0);
    let mut ir = BackendIr {
        name: format!("{ns}/{}:{port}", b.name),
        weight,
        protocol: UpstreamProtocol::Http1,
        endpoints: Vec::new(),
        filters: Vec::new(),
        invalid: None,
        tls: None,
    };
    let problem = resolve_service(res, from, route_ns, ns, group, kind, b, port, &mut ir);
    if let Some((_, msg)) = &problem {
        ir.invalid = Some(msg.clone());
    }
    (ir, problem)
}

#[allow(clippy::too_many_arguments)]
fn resolve_service(
    res: &Resources,
    (from_group, route_kind): (&str, &str),
    route_ns: &str,
    ns: &str,
    group: &str,
    kind: &str,
    b: &BackendObjectReference,
    port: u16,
    ir: &mut BackendIr,
) -> Option<Problem> {
    if !(group.is_empty() && kind == "Service") {
        let g = if group.is_empty() { "core" } else { group };
        return Some((
            Reason::InvalidKind,
            format!(
                "backendRef {}: kind {g}/{kind} is not supported; use a Service",
                b.name
            ),
        ));
    }
    if !ref_permitted_from(
        res,
        (from_group, route_kind),
        route_ns,
        "",
        "Service",
        ns,
        &b.name,
    ) {
        return Some((
            Reason::RefNotPermitted,
            format!(
                "backendRef {ns}/{}: no ReferenceGrant in namespace {ns} allows {route_kind}s from {route_ns} to refer to it",
                b.name
            ),
        ));
    }
    let Some(svc) = res
        .services
        .iter()
        .find(|s| s.metadata.name == b.name && s.metadata.namespace.as_deref() == Some(ns))
    else {
        return Some((
            Reason::BackendNotFound,
            format!("backendRef {ns}/{}: Service not found", b.name),
        ));
    };
    let Some(sp) = svc.spec.ports.iter().find(|p| p.port == port) else {
        return Some((
            Reason::BackendNotFound,
            format!("backendRef {ns}/{}: the Service has no port {port}", b.name),
        ));
    };
    if sp.app_protocol.as_deref() == Some("kubernetes.io/h2c") {
        ir.protocol = UpstreamProtocol::H2c;
    }
    if let Some(policy) = crate::policies::policy_for(res, ns, &b.name, sp.name.as_deref()) {
        match crate::policies::upstream_tls(res, policy) {
            Ok(tls) => ir.tls = Some(tls),
            // The policy's own status says what is wrong; requests fail rather than
            // go out without the TLS it asks for.
            Err((_, msg)) => ir.invalid = Some(msg),
        }
    }
    for slice in res.endpoint_slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns)
            && s.metadata
                .labels
                .get(SERVICE_NAME_LABEL)
                .map(String::as_str)
                == Some(b.name.as_str())
    }) {
        // The slice port that serves this Service port has the same name (both unnamed
        // for a single-port Service).
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &slice.endpoints {
            // A nil `ready` means "unknown", which consumers must treat as ready.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    let sa = SocketAddr::new(ip, target);
                    if !ir.endpoints.contains(&sa) {
                        ir.endpoints.push(sa);
                    }
                }
            }
        }
    }
    ir.endpoints.sort();
    None
}
