//! Step 3b: TCPRoutes, TLSRoutes and UDPRoutes, attached to TCP, TLS and UDP listeners.

use sluice_ir::{StreamListenerIr, StreamPortIr, StreamProtocol, StreamRouteIr};
use sluice_resources::{Resources, StreamRoute};

use crate::backends;
use crate::gateways::GatewayState;
use crate::routes::{RouteRef, attach};
use crate::status::Problem;
use crate::status::{Kind, ObjectStatus};

/// Attaches every stream route and returns the stream sockets to serve.
pub(crate) fn stream_routes(
    res: &Resources,
    gws: &mut [GatewayState],
    out: &mut Vec<ObjectStatus>,
) -> Vec<StreamPortIr> {
    // (creationTimestamp, (gateway, listener), route), in route order (namespace/name).
    let mut attached: Vec<(Option<&str>, (usize, usize), StreamRouteIr)> = Vec::new();
    for (kind, api_version, routes) in [
        // v1 in the Gateway API v1.6 standard channel; v1alpha2 is read too.
        (Kind::TCPRoute, "v1", &res.tcp_routes),
        (Kind::TLSRoute, "v1", &res.tls_routes),
        (Kind::UDPRoute, "v1", &res.udp_routes),
    ] {
        for route in routes {
            let created = route.metadata.creation_timestamp.as_deref();
            attached.extend(
                stream_route(res, gws, out, kind, api_version, route)
                    .into_iter()
                    .map(|(at, r)| (created, at, r)),
            );
        }
    }
    // Where routes compete for one listener (no hostnames to tell them apart), the
    // oldest wins, as the spec's conflict rules say: the snapshot keeps the first route
    // per hostname, so order by creationTimestamp (RFC 3339 in UTC sorts as text); the
    // stable sort keeps namespace/name order among equals and for objects from files.
    attached.sort_by_key(|(created, _, _)| *created);
    let mut ports: Vec<StreamPortIr> = Vec::new();
    for (gi, gw) in gws.iter().enumerate() {
        for (li, l) in gw.listeners.iter().enumerate() {
            let protocol = match l.spec.protocol.as_str() {
                "TCP" => StreamProtocol::Tcp,
                "TLS" => StreamProtocol::Tls,
                "UDP" => StreamProtocol::Udp,
                _ => continue,
            };
            if !l.programmed() {
                continue;
            }
            let listener = StreamListenerIr {
                gateway: format!("{}/{}", gw.namespace, gw.name),
                name: l.spec.name.clone(),
                hostname: l.spec.hostname.clone(),
                terminate: l.tls.clone(),
                routes: attached
                    .iter()
                    .filter(|(_, at, _)| *at == (gi, li))
                    .map(|(_, _, r)| r.clone())
                    .collect(),
            };
            for addr in &gw.bind {
                match ports
                    .iter_mut()
                    .find(|p| p.address == *addr && p.port == l.spec.port && p.protocol == protocol)
                {
                    Some(p) => p.listeners.push(listener.clone()),
                    None => ports.push(StreamPortIr {
                        address: *addr,
                        port: l.spec.port,
                        protocol,
                        listeners: vec![listener.clone()],
                    }),
                }
            }
        }
    }
    ports.sort_by_key(|p| (p.port, p.address));
    ports
}

fn stream_route(
    res: &Resources,
    gws: &mut [GatewayState],
    out: &mut Vec<ObjectStatus>,
    kind: Kind,
    api_version: &'static str,
    route: &StreamRoute,
) -> Vec<((usize, usize), StreamRouteIr)> {
    let ns = route.metadata.namespace_or_default();
    let mut backends = Vec::new();
    let mut unresolved: Option<Problem> = None;
    for rule in &route.spec.rules {
        for b in &rule.backend_refs {
            let (ir, problem) =
                backends::resolve_for(res, kind, ns, &b.backend, b.weight.unwrap_or(1));
            if let Some(p) = problem {
                unresolved.get_or_insert(p);
            }
            backends.push(ir);
        }
    }
    let targets = attach(
        res,
        gws,
        out,
        RouteRef {
            kind,
            api_version,
            namespace: ns,
            name: &route.metadata.name,
            generation: route.metadata.generation(),
            parent_refs: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        },
        unresolved.as_ref(),
        None,
    );
    targets
        .into_iter()
        .map(|(gi, li, hosts)| {
            (
                (gi, li),
                StreamRouteIr {
                    route: format!("{kind} {ns}/{}", route.metadata.name),
                    hostnames: hosts
                        .into_iter()
                        .map(|(h, _)| h)
                        .filter(|h| h != "*")
                        .collect(),
                    backends: backends.clone(),
                },
            )
        })
        .collect()
}
