//! `translate(&Resources, &Inputs) -> Translation { ir, statuses }`.
//!
//! Pure: no I/O, no clock, no randomness, so the same input always gives the same output
//! and the golden tests in `testdata/` pin it down. Everything it reads besides the
//! objects comes in [`Inputs`] (what the loader and the listeners found, the operator's
//! flags), and what comes out is final: nothing patches the IR or the statuses
//! afterwards. The steps run in a fixed order, each needing the one before:
//!
//! 1. GatewayClasses: find ours; a Gateway of another class is not ours to touch.
//! 2. Gateways and listeners: validate them and detect conflicts, since routes may only
//!    attach to listeners that are valid.
//! 3. Routes: attach each parentRef to listeners (section, port, allowed namespaces and
//!    kinds, hostnames), resolve backends and filters, and count attachments back onto
//!    the listeners' statuses.
//! 4. IR: group the attached routes by socket, listener and effective hostname, and sort
//!    each host's matches by the Gateway API precedence rules.
//! 5. Addresses: Gateways without addresses bind the default address; sockets that could
//!    not be bound are said in their Gateways' statuses.
#![forbid(unsafe_code)]

mod backends;
mod certs;
mod gateways;
mod grants;
pub mod infra;
pub mod ingress;
mod policies;
mod routes;
pub mod status;
mod streams;
pub mod trust;
mod unbound;
pub mod wasm;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use sluice_ir::{Ir, ListenerIr, MatchIr, PathMatchIr, PortIr, Protocol, VirtualHostIr};
use sluice_resources::Resources;

pub use gateways::asks_for_address;
pub use sluice_ir::FilterKey;
pub use status::*;
pub use wasm::{WasmState, WasmStates};

/// The `controllerName` a GatewayClass names to be handled by Sluice.
pub const CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Translation {
    pub statuses: Vec<ObjectStatus>,
    pub ir: Ir,
    /// What each of our Gateways binds, to say in its status which sockets could not be
    /// bound (the IR merges Gateways that share a socket).
    #[serde(skip)]
    pub bindings: Vec<GatewayBinding>,
    /// What the controller creates for the Gateways of `PerGateway` classes.
    #[serde(rename = "dataPlanes", skip_serializing_if = "Vec::is_empty")]
    pub data_planes: Vec<infra::DataPlane>,
}

/// A Gateway's addresses (`0.0.0.0` when it names none) and its listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayBinding {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<std::net::IpAddr>,
    pub listeners: Vec<ListenerBinding>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerBinding {
    pub name: String,
    pub port: u16,
    pub udp: bool,
}

/// What the translator reads besides the objects. The default is what `sluice check`
/// sees: no filter loaded (each WasmFilter is `Pending`), `0.0.0.0`, no pool, every
/// socket bound.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// What loading each WasmFilter gave (the loader's answer).
    pub wasm: WasmStates,
    /// Where Gateways without `spec.addresses` bind instead of `0.0.0.0`
    /// (`--bind-address`, e.g. a Pod's own IP).
    pub default_address: Option<IpAddr>,
    /// Addresses `--gateway-address-pool` gave Gateways that ask for one, by
    /// (namespace, name): bound and reported as if the Gateway had named them.
    pub assigned: Assignments,
    /// Sockets the listeners could not bind on the last attempt.
    pub unbound: Vec<Unbound>,
    /// Where Ingresses are served (`--ingress-http`, `--ingress-https`).
    pub ingress: ingress::Options,
    /// Which Gateways this process serves.
    pub serve: Serve,
}

/// Which Gateways a process serves; the statuses are the same whichever.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Serve {
    /// Every Gateway (file mode, `sluice check`): no controller creates data planes.
    #[default]
    All,
    /// The shared fleet in Kubernetes mode: the Gateways of `PerGateway` classes are
    /// served by their own Deployments.
    Shared,
    /// A Gateway's own data plane (`--gateway NAMESPACE/NAME`): that one only.
    Gateway(String, String),
}

/// Pool addresses by Gateway (namespace, name).
pub type Assignments = BTreeMap<(String, String), IpAddr>;

/// A socket the listeners could not bind, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbound {
    pub address: SocketAddr,
    pub udp: bool,
    /// The host does not own the address (`EADDRNOTAVAIL`); otherwise the port is
    /// taken or needs privileges.
    pub address_not_ours: bool,
    /// The error as the system gave it.
    pub error: String,
}

/// Translates `res`, given everything else the answer depends on.
pub fn translate(res: &Resources, inputs: &Inputs) -> Translation {
    let wasm = &inputs.wasm;
    // Ingresses are served as the Gateway API objects they convert to.
    let converted = ingress::convert(res, &inputs.ingress);
    let with_ingress;
    let res = if converted.is_empty() {
        res
    } else {
        with_ingress = ingress::serving_resources(res, &converted);
        &with_ingress
    };
    let mut statuses = Vec::new();
    let classes = gateways::gateway_classes(res, &mut statuses);
    let mut gws = gateways::gateways(res, &classes, &inputs.assigned);
    // WasmFilters before routes: a route's ExtensionRef needs the filter's outcome.
    wasm::statuses(res, wasm, &mut statuses);
    let attached = routes::http_routes(res, wasm, &mut gws, &mut statuses);
    let streams = streams::stream_routes(res, &mut gws, &mut statuses);
    policies::statuses(res, &gws, &attached.services, &mut statuses);
    let mut shadowed = Vec::new();
    let mut ir = build_ir(&gws, attached, &mut shadowed);
    ir.streams = streams;
    serve_only(&mut ir, &gws, &inputs.serve);
    // Gateway statuses go last: attachedRoutes is counted while routes attach.
    for gw in &gws {
        statuses.push(gw.status());
        statuses.extend((0..gw.sets.len()).map(|si| gw.set_status(si)));
    }
    if !converted.is_empty() {
        let ip = Some(inputs.ingress.http.ip())
            .filter(|ip| !ip.is_unspecified())
            .or(inputs.default_address);
        ingress::statuses(&converted, &shadowed, &mut statuses, ip);
    }
    statuses.sort_by(|a, b| {
        // By the kind's name, as the golden files and /status list them.
        (a.kind.as_str(), &a.metadata.namespace, &a.metadata.name).cmp(&(
            b.kind.as_str(),
            &b.metadata.namespace,
            &b.metadata.name,
        ))
    });
    let mut t = Translation {
        statuses,
        ir,
        bindings: gws
            .iter()
            .filter(|g| serves(&inputs.serve, g))
            .map(|g| {
                let mut b = g.binding();
                if let Serve::Gateway(..) = inputs.serve {
                    b.addresses = vec![IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)];
                }
                b
            })
            .collect(),
        data_planes: gws.iter().filter_map(|g| g.data_plane.clone()).collect(),
    };
    if let Some(ip) = inputs.default_address {
        rebind(&mut t, ip);
    }
    unbound::report(&mut t.statuses, &t.bindings, &inputs.unbound);
    t
}

/// Whether this process serves the Gateway `g`.
fn serves(serve: &Serve, g: &gateways::GatewayState) -> bool {
    match serve {
        Serve::All => true,
        Serve::Shared => g.data_plane.is_none(),
        Serve::Gateway(ns, name) => g.namespace == *ns && g.name == *name,
    }
}

/// Leaves out of the IR the listeners of the Gateways another process serves.
fn serve_only(ir: &mut Ir, gws: &[gateways::GatewayState], serve: &Serve) {
    if *serve == Serve::All {
        return;
    }
    let keep: std::collections::BTreeSet<String> = gws
        .iter()
        .filter(|g| serves(serve, g))
        .map(|g| format!("{}/{}", g.namespace, g.name))
        .collect();
    for p in &mut ir.ports {
        p.listeners.retain(|l| keep.contains(&l.gateway));
    }
    ir.ports.retain(|p| !p.listeners.is_empty());
    for p in &mut ir.streams {
        p.listeners.retain(|l| keep.contains(&l.gateway));
    }
    ir.streams.retain(|p| !p.listeners.is_empty());
    if let Serve::Gateway(..) = serve {
        // A Gateway's own data plane listens on its Pod's addresses: `spec.addresses`
        // are its Service's (external IPs). One socket per port, whichever address
        // the IR had it on.
        let any = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let mut seen = std::collections::BTreeSet::new();
        ir.ports.retain_mut(|p| {
            p.address = any;
            seen.insert((p.port, false))
        });
        ir.streams.retain_mut(|p| {
            p.address = any;
            seen.insert((p.port, p.protocol == sluice_ir::StreamProtocol::Udp))
        });
    }
}

/// Gateways without `spec.addresses` (and listeners that name `0.0.0.0`) bind `ip`:
/// done on the finished IR, so that which listeners conflict does not depend on it.
fn rebind(t: &mut Translation, ip: IpAddr) {
    let any = |a: &IpAddr| a.is_unspecified();
    for p in t.ir.ports.iter_mut().filter(|p| any(&p.address)) {
        p.address = ip;
    }
    for p in t.ir.streams.iter_mut().filter(|p| any(&p.address)) {
        p.address = ip;
    }
    let bound = t.bindings.iter_mut().flat_map(|b| &mut b.addresses);
    for a in bound.filter(|a| any(a)) {
        *a = ip;
    }
}

/// A route match placed on a listener's virtual host, with what its precedence needs.
pub(crate) struct Placed {
    pub listener: (usize, usize),
    pub hostname: String,
    pub key: PrecedenceKey,
    pub m: MatchIr,
}

/// The Gateway API's precedence order among matches, as a key whose maximum wins.
///
/// Hostnames come first: the route whose matching hostname has the most non-wildcard
/// characters, then the most characters, wins (HTTPRouteSpec.hostnames). Then path kind (Exact, then RegularExpression, then PathPrefix) and length first, then a
/// method, then more header matches, then more query matches; ties go to the older
/// route, then namespace/name order, then rule order, then match order. Regular
/// expressions are implementation-specific in the spec; ranking them between Exact and
/// PathPrefix means a catch-all `/` prefix cannot shadow them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrecedenceKey {
    /// Characters in the route's matching hostname if it is not a wildcard, else 0.
    pub host_exact: usize,
    /// Characters in the route's matching hostname (0 for a route without hostnames).
    pub host_len: usize,
    pub path_rank: u8,
    pub path_len: usize,
    pub method: bool,
    pub headers: usize,
    pub query: usize,
    pub created: Option<String>,
    pub namespace: String,
    pub name: String,
    pub rule: usize,
    pub index: usize,
}

impl Ord for PrecedenceKey {
    fn cmp(&self, o: &Self) -> Ordering {
        (
            self.host_exact,
            self.host_len,
            self.path_rank,
            self.path_len,
            self.method,
            self.headers,
            self.query,
        )
            .cmp(&(
                o.host_exact,
                o.host_len,
                o.path_rank,
                o.path_len,
                o.method,
                o.headers,
                o.query,
            ))
            // Older (smaller timestamp) wins, so the comparison flips; a missing
            // timestamp counts as the newest.
            .then_with(|| match (&self.created, &o.created) {
                (Some(a), Some(b)) => b.cmp(a),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| {
                (&o.namespace, &o.name, o.rule, o.index).cmp(&(
                    &self.namespace,
                    &self.name,
                    self.rule,
                    self.index,
                ))
            })
    }
}

impl PartialOrd for PrecedenceKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

pub(crate) fn path_rank(p: &PathMatchIr) -> (u8, usize) {
    match p {
        PathMatchIr::Exact(v) => (3, v.len()),
        PathMatchIr::Regex(v) => (2, v.len()),
        PathMatchIr::Prefix(v) => (1, v.len()),
    }
}

/// A listener's matches by effective hostname, each with its precedence key.
type HostMatches = BTreeMap<String, Vec<(PrecedenceKey, MatchIr)>>;

/// An effective hostname and its precedence `(non-wildcard characters, characters)`.
pub(crate) type RankedHost = (String, (usize, usize));

/// An Ingress's host that an HTTPRoute on the same socket also names: the HTTPRoute's
/// rules answer for it.
#[derive(Clone, Debug)]
pub(crate) struct Shadowed {
    /// The Ingress's rule.
    pub rule: sluice_ir::RuleId,
    pub hostname: String,
    /// `namespace/name` of the Gateway and the listener that serves the host.
    pub gateway: String,
    pub listener: String,
}

fn build_ir(
    gws: &[gateways::GatewayState],
    attached: routes::Attached,
    shadowed: &mut Vec<Shadowed>,
) -> Ir {
    let routes::Attached {
        rules, mut placed, ..
    } = attached;
    // An Ingress listener that shares a Gateway listener's socket and hostname serves
    // through it, except for the hosts the Gateway's routes name.
    let merged = |l: (usize, usize)| gws[l.0].listeners[l.1].merge_into;
    let claimed: std::collections::BTreeSet<((usize, usize), String)> = placed
        .iter()
        .filter(|p| merged(p.listener).is_none())
        .map(|p| (p.listener, p.hostname.clone()))
        .collect();
    placed.retain_mut(|p| {
        let Some(target) = merged(p.listener) else {
            return true;
        };
        if claimed.contains(&(target, p.hostname.clone())) {
            let (gw, l) = (&gws[target.0], &gws[target.0].listeners[target.1]);
            shadowed.push(Shadowed {
                rule: rules[p.m.rule].id.clone(),
                hostname: p.hostname.clone(),
                gateway: format!("{}/{}", gw.namespace, gw.name),
                listener: l.spec.name.clone(),
            });
            return false;
        }
        p.listener = target;
        true
    });
    // listener -> hostname -> matches
    let mut per_listener: BTreeMap<(usize, usize), HostMatches> = BTreeMap::new();
    for p in placed {
        per_listener
            .entry(p.listener)
            .or_default()
            .entry(p.hostname)
            .or_default()
            .push((p.key, p.m));
    }
    let mut ports: Vec<PortIr> = Vec::new();
    for (gi, gw) in gws.iter().enumerate() {
        for (li, l) in gw.listeners.iter().enumerate() {
            if !l.programmed()
                || l.merge_into.is_some()
                || !matches!(l.spec.protocol.as_str(), "HTTP" | "HTTPS")
            {
                continue;
            }
            let hosts = per_listener.remove(&(gi, li)).unwrap_or_default();
            // A request picks the most specific virtual host, so each one also carries the
            // matches of the wildcard hosts that cover it (at their lower precedence):
            // a route for `*.example.com` still serves `foo.example.com/other` when the
            // route for `foo.example.com` does not match that path.
            let mut vhosts: Vec<VirtualHostIr> = hosts
                .iter()
                .map(|(hostname, own)| {
                    let mut ms: Vec<(PrecedenceKey, MatchIr)> = own.clone();
                    for (other, theirs) in &hosts {
                        if other != hostname && (other == "*" || hostname_matches(other, hostname))
                        {
                            ms.extend(theirs.iter().cloned());
                        }
                    }
                    (hostname.clone(), ms)
                })
                .map(|(hostname, mut ms)| {
                    ms.sort_by(|a, b| b.0.cmp(&a.0));
                    VirtualHostIr {
                        hostname,
                        matches: ms.into_iter().map(|(_, m)| m).collect(),
                    }
                })
                .collect();
            vhosts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
            let listener = ListenerIr {
                gateway: format!("{}/{}", gw.namespace, gw.name),
                name: l.spec.name.clone(),
                hostname: l.spec.hostname.clone(),
                tls: l.tls.clone(),
                virtual_hosts: vhosts,
            };
            let protocol = if l.tls.is_some() {
                Protocol::Https
            } else {
                Protocol::Http
            };
            for addr in &gw.bind {
                match ports
                    .iter_mut()
                    .find(|p| p.address == *addr && p.port == l.spec.port)
                {
                    Some(p) => p.listeners.push(listener.clone()),
                    None => ports.push(PortIr {
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
    Ir {
        ports,
        rules,
        streams: Vec::new(),
    }
}

/// Does `host` (a request or route hostname, no wildcard) match `pattern` (exact or `*.suffix`)?
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // `*.example.com` matches any number of labels before `.example.com`, never the
        // bare `example.com`.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The hostnames a route serves on a listener: the intersection of the two sets
/// (`None` for "any host").
#[cfg(test)]
pub(crate) fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
    intersect_hostnames_ranked(listener, route)
        .into_iter()
        .map(|(h, _)| h)
        .collect()
}

/// Like [`intersect_hostnames`], with each result's hostname precedence
/// `(non-wildcard characters, characters)` taken from the route hostname it came from.
pub(crate) fn intersect_hostnames_ranked(
    listener: Option<&str>,
    route: &[String],
) -> Vec<RankedHost> {
    let rank = |r: &str| {
        if r.starts_with('*') {
            (0, r.len())
        } else {
            (r.len(), r.len())
        }
    };
    let Some(l) = listener else {
        return if route.is_empty() {
            vec![("*".into(), (0, 0))]
        } else {
            route.iter().map(|r| (r.clone(), rank(r))).collect()
        };
    };
    if route.is_empty() {
        return vec![(l.to_string(), (0, 0))];
    }
    let mut out: Vec<RankedHost> = Vec::new();
    for r in route {
        let hit = if hostname_matches(l, r) || l == r {
            Some(r.as_str())
        } else if hostname_matches(r, l) {
            Some(l)
        } else {
            None
        };
        if let Some(h) = hit
            && !out.iter().any(|(o, _)| o == h)
        {
            out.push((h.to_string(), rank(r)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hostnames_need_at_least_one_label() {
        assert!(hostname_matches("*.example.com", "a.example.com"));
        assert!(hostname_matches("*.example.com", "a.b.example.com"));
        assert!(!hostname_matches("*.example.com", "example.com"));
        assert!(!hostname_matches("*.example.com", "aexample.com"));
    }

    #[test]
    fn intersection_keeps_the_more_specific_side() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            intersect_hostnames(Some("*.example.com"), &r(&["foo.example.com", "bar.org"])),
            r(&["foo.example.com"])
        );
        assert_eq!(
            intersect_hostnames(Some("foo.example.com"), &r(&["*.example.com"])),
            r(&["foo.example.com"])
        );
        assert_eq!(
            intersect_hostnames(Some("*.example.com"), &r(&["*.foo.example.com"])),
            r(&["*.foo.example.com"])
        );
        assert_eq!(
            intersect_hostnames(Some("*.foo.example.com"), &r(&["*.example.com"])),
            r(&["*.foo.example.com"])
        );
        assert_eq!(intersect_hostnames(None, &[]), r(&["*"]));
        assert!(intersect_hostnames(Some("a.com"), &r(&["b.com"])).is_empty());
    }
}
