//! Steps 1 and 2: GatewayClasses, Gateways and their listeners.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use sluice_ir::{CertificateIr, ClientValidationIr, ListenerTlsIr};
use sluice_resources::{
    FromNamespaces, GATEWAY_GROUP, Gateway, GatewayAddress, Listener, ParentReference, Resources,
    RouteGroupKind,
};

use crate::certs::{read_ca, secret_pair};
use crate::grants::ref_permitted;

use crate::CONTROLLER_NAME;
use crate::status::*;

pub(crate) fn gateway_classes(res: &Resources, out: &mut Vec<ObjectStatus>) -> BTreeSet<String> {
    let mut ours = BTreeSet::new();
    for gc in &res.gateway_classes {
        if gc.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let generation = gc.metadata.generation();
        let mut conditions = vec![Condition::new(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "Handled by Sluice",
            generation,
        )];
        if gc.spec.parameters_ref.is_some() {
            conditions[0] = Condition::new(
                ConditionType::Accepted,
                false,
                Reason::InvalidParameters,
                "Sluice takes no parametersRef; remove spec.parametersRef",
                generation,
            );
        } else {
            ours.insert(gc.metadata.name.clone());
        }
        conditions.push(Condition::new(
            ConditionType::SupportedVersion,
            true,
            Reason::SupportedVersion,
            "Gateway API v1.6",
            generation,
        ));
        out.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: Kind::GatewayClass,
            metadata: StatusMeta {
                namespace: String::new(),
                name: gc.metadata.name.clone(),
                generation,
            },
            status: Status::Conditions(ConditionsStatus { conditions }),
        });
    }
    ours
}

pub(crate) struct GatewayState {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub bind: Vec<IpAddr>,
    /// `(condition, reason, message)` when an address cannot be used.
    pub address_problem: Option<(ConditionType, Reason, String)>,
    pub spec_addresses: Vec<StatusAddress>,
    pub listeners: Vec<ListenerState>,
    /// spec.tls.backend.clientCertificateRef, resolved.
    pub backend_client_cert: Option<CertificateIr>,
    /// Some spec.tls.frontend validation lets clients without a valid certificate in.
    pub insecure_fallback: bool,
    /// Why spec.tls.backend.clientCertificateRef does not resolve.
    pub client_cert_problem: Option<(Reason, String)>,
}

pub(crate) struct ListenerState {
    pub spec: Listener,
    pub supported_kinds: Vec<RouteGroupKind>,
    /// `(reason, message)` for Accepted=False.
    pub unaccepted: Option<(Reason, String)>,
    /// `(reason, message)` for ResolvedRefs=False.
    pub unresolved: Option<(Reason, String)>,
    /// Conflicted=True reason.
    pub conflict: Option<Reason>,
    /// An Ingress listener on the socket and hostname of a Gateway's listener: its
    /// routes are served by that listener (`(gateway, listener)` indices), where no
    /// HTTPRoute names the same host.
    pub merge_into: Option<(usize, usize)>,
    pub attached_routes: u32,
    /// For HTTPS: the certificates that resolved (none means not programmed).
    pub tls: Option<ListenerTlsIr>,
}

impl ListenerState {
    /// Whether routes may attach and traffic is served.
    pub fn programmed(&self) -> bool {
        self.unaccepted.is_none()
            && self.conflict.is_none()
            && self.tls.as_ref().is_none_or(|t| !t.certificates.is_empty())
    }

    pub fn allows_namespace(&self, res: &Resources, gateway_ns: &str, route_ns: &str) -> bool {
        let ns = self
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match ns.and_then(|n| n.from).unwrap_or(FromNamespaces::Same) {
            FromNamespaces::All => true,
            FromNamespaces::Same => gateway_ns == route_ns,
            FromNamespaces::Selector => ns
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| s.matches(&res.namespace_labels(route_ns))),
        }
    }

    pub fn allows_kind(&self, kind: Kind) -> bool {
        self.supported_kinds.iter().any(|k| {
            k.kind == kind.as_str() && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        })
    }
}

/// Route kinds a listener of each protocol can carry.
fn kinds_for(protocol: &str) -> &'static [Kind] {
    match protocol {
        "HTTP" | "HTTPS" => &[Kind::HTTPRoute, Kind::GRPCRoute],
        "TLS" => &[Kind::TLSRoute],
        "TCP" => &[Kind::TCPRoute],
        "UDP" => &[Kind::UDPRoute],
        _ => &[],
    }
}

pub(crate) fn gateways(
    res: &Resources,
    classes: &BTreeSet<String>,
    assigned: &crate::Assignments,
) -> Vec<GatewayState> {
    let mut out: Vec<GatewayState> = res
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .map(|g| {
            let key = (
                g.metadata.namespace_or_default().to_string(),
                g.metadata.name.clone(),
            );
            gateway(res, g, &addresses(g, assigned.get(&key).copied()))
        })
        .collect();
    // The Gateways that serve Ingresses go last, so that on a shared socket a
    // Gateway's listener keeps its place and the Ingress's routes join it.
    out.sort_by_key(|g| g.namespace == crate::ingress::SERVING_NAMESPACE);
    detect_conflicts(&mut out);
    out
}

/// Whether an address entry asks for an address (an `IPAddress` without a value) rather
/// than naming one; `--gateway-address-pool` fills these in.
pub fn asks_for_address(a: &GatewayAddress) -> bool {
    a.value.is_empty() && a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress"
}

/// The Gateway's addresses, with the one the pool gave it in place of those it asks for.
fn addresses(gw: &Gateway, assigned: Option<IpAddr>) -> Vec<GatewayAddress> {
    let mut out = gw.spec.addresses.clone();
    if let Some(ip) = assigned {
        out.retain(|a| !asks_for_address(a));
        out.push(GatewayAddress {
            type_: Some("IPAddress".into()),
            value: ip.to_string(),
        });
    }
    out
}

fn gateway(res: &Resources, gw: &Gateway, addresses: &[GatewayAddress]) -> GatewayState {
    let mut bind = Vec::new();
    let mut address_problem = None;
    let mut spec_addresses = Vec::new();
    for (i, a) in addresses.iter().enumerate() {
        let t = a.type_.as_deref().unwrap_or("IPAddress");
        if t != "IPAddress" {
            address_problem = Some((
                ConditionType::Accepted,
                Reason::UnsupportedAddress,
                format!(
                    "spec.addresses[{i}]: type {t} is not supported; Sluice binds IPAddress addresses"
                ),
            ));
            continue;
        }
        if a.value.is_empty() {
            // An address of this type, whichever: `--gateway-address-pool` fills these
            // in; without one the Gateway listens where Gateways without addresses do.
            continue;
        }
        match a.value.parse::<IpAddr>() {
            Ok(ip) => {
                bind.push(ip);
                spec_addresses.push(StatusAddress {
                    type_: "IPAddress".into(),
                    value: ip.to_string(),
                });
            }
            Err(_) => {
                address_problem = Some((
                    ConditionType::Programmed,
                    Reason::AddressNotUsable,
                    format!("spec.addresses[{i}]: {:?} is not an IP address", a.value),
                ))
            }
        }
    }
    if bind.is_empty() {
        bind.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    let ns = gw.metadata.namespace_or_default();
    let (mut backend_client_cert, mut client_cert_problem) = (None, None);
    if let Some(r) = gw
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    {
        let (mut certs, problem) = certificates(res, ns, std::slice::from_ref(r));
        backend_client_cert = certs.pop();
        client_cert_problem = problem.map(|(reason, msg)| {
            let reason = if reason == Reason::InvalidCertificateRef {
                Reason::InvalidClientCertificateRef
            } else {
                reason
            };
            (
                reason,
                msg.replace(
                    "tls.certificateRefs[0]",
                    "spec.tls.backend.clientCertificateRef",
                ),
            )
        });
    }
    let listeners = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener(res, gw, l))
        .collect();
    let insecure_fallback = gw
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.frontend.as_ref())
        .is_some_and(|f| {
            f.default_
                .iter()
                .chain(f.per_port.iter().map(|p| &p.tls))
                .filter_map(|c| c.validation.as_ref())
                .any(|v| v.mode.as_deref() == Some("AllowInsecureFallback"))
        });
    GatewayState {
        namespace: ns.to_string(),
        name: gw.metadata.name.clone(),
        generation: gw.metadata.generation(),
        bind,
        address_problem,
        spec_addresses,
        listeners,
        backend_client_cert,
        client_cert_problem,
        insecure_fallback,
    }
}

fn listener(res: &Resources, gw: &Gateway, l: &Listener) -> ListenerState {
    let gw_ns = gw.metadata.namespace_or_default();
    let supported = kinds_for(&l.protocol);
    let mut unaccepted = None;
    let mut unresolved = None;
    if supported.is_empty() {
        unaccepted = Some((
            Reason::UnsupportedProtocol,
            format!(
                "protocol {:?} is not supported; use HTTP, HTTPS, TLS, TCP or UDP",
                l.protocol
            ),
        ));
    }
    let mut tls = None;
    let spec = l.tls.clone().unwrap_or_default();
    let mode = spec.mode.as_deref().unwrap_or("Terminate");
    match l.protocol.as_str() {
        "HTTPS" if mode != "Terminate" => {
            unaccepted = Some((
                Reason::UnsupportedValue,
                format!(
                    "tls.mode {mode} is not valid on an HTTPS listener; use Terminate (or a TLS listener for Passthrough)"
                ),
            ));
        }
        "TLS" if mode == "Passthrough" && !spec.certificate_refs.is_empty() => {
            unaccepted = Some((
                Reason::UnsupportedValue,
                "tls.certificateRefs must be empty with tls.mode Passthrough: the backend presents its own certificate".into(),
            ));
        }
        "TLS" if mode == "Passthrough" => {}
        "TLS" if mode != "Terminate" => {
            unaccepted = Some((
                Reason::UnsupportedValue,
                format!("tls.mode {mode} is not valid; use Terminate or Passthrough"),
            ));
        }
        _ => {}
    }
    let terminates = match l.protocol.as_str() {
        "HTTPS" => true,
        "TLS" => mode == "Terminate",
        _ => false,
    };
    if terminates {
        let (certificates, problem) = certificates(res, gw_ns, &spec.certificate_refs);
        unresolved = problem;
        let client_validation = match frontend_validation(res, gw, l.port) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(p)) => {
                // Without its CAs the listener cannot check clients: it must not serve
                // as if no check were asked for.
                unaccepted.get_or_insert((Reason::NoValidCACertificate, p.1.clone()));
                unresolved.get_or_insert(p);
                None
            }
        };
        tls = Some(ListenerTlsIr {
            certificates,
            client_validation,
        });
    }
    let supported_kinds = match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        None => supported
            .iter()
            .map(|k| RouteGroupKind {
                group: Some(GATEWAY_GROUP.into()),
                kind: k.as_str().into(),
            })
            .collect(),
        Some(kinds) => {
            let mut ok = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                if group == GATEWAY_GROUP && supported.iter().any(|s| s.as_str() == k.kind) {
                    ok.push(RouteGroupKind {
                        group: Some(GATEWAY_GROUP.into()),
                        kind: k.kind.clone(),
                    });
                } else if unresolved.is_none() {
                    unresolved = Some((
                        Reason::InvalidRouteKinds,
                        format!(
                            "route kind {group}/{} is not supported on a {} listener",
                            k.kind, l.protocol
                        ),
                    ));
                }
            }
            ok
        }
    };
    ListenerState {
        spec: l.clone(),
        supported_kinds,
        unaccepted,
        unresolved,
        conflict: None,
        merge_into: None,
        attached_routes: 0,
        tls,
    }
}

/// The Gateway's client certificate validation for listeners on `port`: its
/// `spec.tls.frontend.perPort` entry for the port, else `default`.
fn frontend_validation(
    res: &Resources,
    gw: &Gateway,
    port: u16,
) -> Option<Result<ClientValidationIr, (Reason, String)>> {
    let frontend = gw.spec.tls.as_ref()?.frontend.as_ref()?;
    let (at, cfg) = match frontend.per_port.iter().position(|p| p.port == port) {
        Some(i) => (
            format!("spec.tls.frontend.perPort[{i}].tls"),
            &frontend.per_port[i].tls,
        ),
        None => (
            "spec.tls.frontend.default".to_string(),
            frontend.default_.as_ref()?,
        ),
    };
    let v = cfg.validation.as_ref()?;
    let gw_ns = gw.metadata.namespace_or_default();
    let mut ca_pem = Vec::new();
    let mut ca_refs = Vec::new();
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let kind = r.kind.as_deref().unwrap_or("ConfigMap");
        let group = r.group.as_deref().unwrap_or("");
        let what = format!("{at}.validation.caCertificateRefs[{i}] ({ns}/{})", r.name);
        if !ref_permitted(res, Kind::Gateway.as_str(), gw_ns, group, kind, ns, &r.name) {
            return Some(Err((
                Reason::RefNotPermitted,
                format!(
                    "{what}: no ReferenceGrant in namespace {ns} allows Gateways from {gw_ns} to refer to it"
                ),
            )));
        }
        match read_ca(res, ns, group, kind, &r.name, &what) {
            Ok(pem) => ca_pem.extend(pem),
            Err((reason, msg)) => {
                let reason = if reason == Reason::InvalidKind {
                    Reason::InvalidCACertificateKind
                } else {
                    reason
                };
                return Some(Err((reason, msg)));
            }
        }
        ca_refs.push(format!("{ns}/{}", r.name));
    }
    if ca_refs.is_empty() {
        return Some(Err((
            Reason::InvalidCACertificateRef,
            format!("{at}.validation.caCertificateRefs is empty"),
        )));
    }
    Some(Ok(ClientValidationIr {
        ca_refs,
        ca_pem,
        allow_insecure_fallback: v.mode.as_deref() == Some("AllowInsecureFallback"),
    }))
}

/// Resolves an HTTPS listener's certificateRefs: the usable certificates, and the first
/// problem (`InvalidCertificateRef` or `RefNotPermitted`) for ResolvedRefs=False.
fn certificates(
    res: &Resources,
    gw_ns: &str,
    refs: &[sluice_resources::SecretObjectReference],
) -> (Vec<CertificateIr>, Option<(Reason, String)>) {
    let mut ok = Vec::new();
    let mut problem = None;
    if refs.is_empty() {
        problem = Some((
            Reason::InvalidCertificateRef,
            "tls.certificateRefs is empty; name a kubernetes.io/tls Secret".to_string(),
        ));
    }
    for (i, r) in refs.iter().enumerate() {
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let what = format!("tls.certificateRefs[{i}] ({ns}/{})", r.name);
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let found = if !group.is_empty() || kind != "Secret" {
            Err((
                Reason::InvalidCertificateRef,
                format!("{what}: {group}/{kind} is not supported; refer to a core Secret"),
            ))
        } else if !ref_permitted(
            res,
            Kind::Gateway.as_str(),
            gw_ns,
            "",
            "Secret",
            ns,
            &r.name,
        ) {
            Err((
                Reason::RefNotPermitted,
                format!(
                    "{what}: no ReferenceGrant in namespace {ns} allows Gateways from {gw_ns} to refer to it"
                ),
            ))
        } else {
            match res.secret(ns, &r.name) {
                None => Err((
                    Reason::InvalidCertificateRef,
                    format!("{what}: Secret not found"),
                )),
                Some(secret) => secret_pair(secret)
                    .map_err(|e| (Reason::InvalidCertificateRef, format!("{what}: Secret {e}"))),
            }
        };
        match found {
            Ok((chain_pem, key_pem)) => ok.push(CertificateIr {
                secret: format!("{ns}/{}", r.name),
                chain_pem,
                key_pem,
            }),
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    (ok, problem)
}

/// Listeners that share an address and port must differ by hostname and agree on protocol.
/// Within one Gateway both sides are marked; across Gateways the later one (namespace/name
/// order) loses, so adding a Gateway never breaks one that already works.
fn detect_conflicts(gws: &mut [GatewayState]) {
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for gi in 0..gws.len() {
        for li in 0..gws[gi].listeners.len() {
            if gws[gi].listeners[li].unaccepted.is_some() {
                // An unaccepted listener binds nothing, so it conflicts with nothing.
                continue;
            }
            for &(gj, lj) in &seen {
                // 0.0.0.0 overlaps every address on the same port.
                let overlap = |a: &IpAddr| {
                    gws[gj]
                        .bind
                        .iter()
                        .any(|b| a == b || a.is_unspecified() || b.is_unspecified())
                };
                // UDP and TCP ports of the same number are different sockets.
                let udp = |g: usize, l: usize| gws[g].listeners[l].spec.protocol == "UDP";
                let shares_socket = gws[gi].listeners[li].spec.port
                    == gws[gj].listeners[lj].spec.port
                    && udp(gi, li) == udp(gj, lj)
                    && gws[gi].bind.iter().any(overlap);
                if !shares_socket {
                    continue;
                }
                let (a, b) = (&gws[gi].listeners[li].spec, &gws[gj].listeners[lj].spec);
                let reason = if a.protocol != b.protocol {
                    Some(Reason::ProtocolConflict)
                } else if a.hostname == b.hostname {
                    Some(Reason::HostnameConflict)
                } else {
                    None
                };
                let ingress = |g: usize| gws[g].namespace == crate::ingress::SERVING_NAMESPACE;
                if reason == Some(Reason::HostnameConflict) && ingress(gi) && !ingress(gj) {
                    gws[gi].listeners[li].merge_into = Some((gj, lj));
                    continue;
                }
                if let Some(r) = reason {
                    gws[gi].listeners[li].conflict = Some(r);
                    if gi == gj {
                        gws[gj].listeners[lj].conflict = Some(r);
                    }
                }
            }
            seen.push((gi, li));
        }
    }
}

impl GatewayState {
    pub fn binding(&self) -> crate::GatewayBinding {
        crate::GatewayBinding {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            addresses: self.bind.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|l| crate::ListenerBinding {
                    name: l.spec.name.clone(),
                    port: l.spec.port,
                    udp: l.spec.protocol == "UDP",
                })
                .collect(),
        }
    }

    pub fn matches_parent(&self, p: &ParentReference, route_ns: &str) -> bool {
        p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && Kind::Gateway == p.kind.as_deref().unwrap_or(Kind::Gateway.as_str())
            && p.name == self.name
            && p.namespace.as_deref().unwrap_or(route_ns) == self.namespace
    }

    pub fn status(&self) -> ObjectStatus {
        let g = self.generation;
        let valid = self.listeners.iter().filter(|l| l.programmed()).count();
        let total = self.listeners.len();
        let mut accepted = if valid == total {
            Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                "Gateway accepted",
                g,
            )
        } else {
            Condition::new(
                ConditionType::Accepted,
                valid > 0,
                Reason::ListenersNotValid,
                format!(
                    "{} of {total} listeners are not valid; see status.listeners",
                    total - valid
                ),
                g,
            )
        };
        let mut programmed = if valid > 0 {
            Condition::new(
                ConditionType::Programmed,
                true,
                Reason::Programmed,
                "Gateway is serving",
                g,
            )
        } else {
            Condition::new(
                ConditionType::Programmed,
                false,
                Reason::Invalid,
                "no valid listener to serve",
                g,
            )
        };
        match &self.address_problem {
            Some((ConditionType::Accepted, reason, msg)) => {
                accepted = Condition::new(ConditionType::Accepted, false, *reason, msg.clone(), g)
            }
            Some((_, reason, msg)) => {
                programmed =
                    Condition::new(ConditionType::Programmed, false, *reason, msg.clone(), g)
            }
            None => {}
        }
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                let mut conditions = Vec::new();
                match &l.unaccepted {
                    Some((reason, msg)) => conditions.push(Condition::new(
                        ConditionType::Accepted,
                        false,
                        *reason,
                        msg.clone(),
                        g,
                    )),
                    None => conditions.push(Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "listener accepted",
                        g,
                    )),
                }
                match l.conflict {
                    Some(reason) => conditions.push(Condition::new(
                        ConditionType::Conflicted,
                        true,
                        reason,
                        match reason {
                            Reason::ProtocolConflict => {
                                "another listener on this port uses a different protocol"
                                    .to_string()
                            }
                            _ => "another listener on this port has the same hostname".to_string(),
                        },
                        g,
                    )),
                    None => conditions.push(Condition::new(
                        ConditionType::Conflicted,
                        false,
                        Reason::NoConflicts,
                        "no conflicts",
                        g,
                    )),
                }
                match &l.unresolved {
                    Some((reason, msg)) => conditions.push(Condition::new(
                        ConditionType::ResolvedRefs,
                        false,
                        *reason,
                        msg.clone(),
                        g,
                    )),
                    None => conditions.push(Condition::new(
                        ConditionType::ResolvedRefs,
                        true,
                        Reason::ResolvedRefs,
                        "all references resolved",
                        g,
                    )),
                }
                if l.programmed() {
                    conditions.push(Condition::new(
                        ConditionType::Programmed,
                        true,
                        Reason::Programmed,
                        "listener is serving",
                        g,
                    ));
                } else {
                    conditions.push(Condition::new(
                        ConditionType::Programmed,
                        false,
                        Reason::Invalid,
                        "listener is not valid",
                        g,
                    ));
                }
                ListenerStatus {
                    name: l.spec.name.clone(),
                    supported_kinds: l.supported_kinds.clone(),
                    attached_routes: l.attached_routes,
                    conditions,
                }
            })
            .collect();
        ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: Kind::Gateway,
            metadata: StatusMeta {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                generation: g,
            },
            status: Status::Gateway(GatewayStatus {
                addresses: self.spec_addresses.clone(),
                conditions: {
                    let mut c = vec![accepted, programmed];
                    match (&self.client_cert_problem, &self.backend_client_cert) {
                        (Some((reason, msg)), _) => c.push(Condition::new(
                            ConditionType::ResolvedRefs,
                            false,
                            *reason,
                            msg.clone(),
                            g,
                        )),
                        // Said only when the Gateway references something of its own.
                        (None, Some(_)) => c.push(Condition::new(
                            ConditionType::ResolvedRefs,
                            true,
                            Reason::ResolvedRefs,
                            "spec.tls.backend.clientCertificateRef resolved",
                            g,
                        )),
                        (None, None) => {}
                    }
                    // The spec asks for this warning whenever a fallback is configured.
                    if self.insecure_fallback {
                        c.push(Condition::new(
                            ConditionType::InsecureFrontendValidationMode,
                            true,
                            Reason::ConfigurationChanged,
                            "spec.tls.frontend uses mode AllowInsecureFallback: clients without a valid certificate are served",
                            g,
                        ));
                    }
                    c
                },
                listeners,
            }),
        }
    }
}
