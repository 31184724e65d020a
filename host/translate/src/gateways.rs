//! Steps 1 and 2: GatewayClasses, Gateways and their listeners.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use sluice_ir::{CertificateIr, ClientValidationIr, ListenerTlsIr};
use sluice_resources::{
    FromListenerNamespaces, FromNamespaces, GATEWAY_GROUP, Gateway, GatewayAddress, Listener,
    ListenerSet, ParentReference, Resources, RouteGroupKind,
};

use crate::certs::{read_ca, secret_pair};
use crate::grants::ref_permitted;

use crate::CONTROLLER_NAME;
use crate::status::*;

pub(crate) fn gateway_classes(res: &Resources, out: &mut Vec<ObjectStatus>) -> BTreeSet<String> {
    let mut ours = BTreeSet::new();
    let mut settings = crate::infra::class_settings(res);
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
        // The parametersRef holds the filter trust policy (see `trust`). One that does
        // not resolve rejects the class, as the spec asks, but its Gateways keep
        // serving: a typo in a policy must not take traffic away. OCI filters stop
        // loading until it is fixed (the ones serving keep serving).
        if let Some(r) = &gc.spec.parameters_ref {
            match crate::trust::class_policy(res, &gc.metadata.name, r) {
                Ok((policies, _)) => {
                    conditions[0].message = format!(
                        "Handled by Sluice; filter trust policy with {} polic{}",
                        policies.len(),
                        if policies.len() == 1 { "y" } else { "ies" }
                    );
                }
                Err(e) => {
                    conditions[0] = Condition::new(
                        ConditionType::Accepted,
                        false,
                        Reason::InvalidParameters,
                        format!(
                            "{e}; the class's Gateways keep serving, and no OCI filter loads until the policy is fixed"
                        ),
                        generation,
                    );
                }
            }
        }
        if conditions[0].reason == Reason::Accepted
            && let Some(Err((mode, e))) = settings.remove(&gc.metadata.name)
        {
            let meanwhile = match mode {
                crate::infra::Mode::PerGateway => {
                    "the data planes of its Gateways are kept as they are until it is fixed"
                }
                crate::infra::Mode::Shared => {
                    "its Gateways are served by the shared fleet until it is fixed"
                }
            };
            conditions[0] = Condition::new(
                ConditionType::Accepted,
                false,
                Reason::InvalidParameters,
                format!("{e}; {meanwhile}"),
                generation,
            );
        }
        ours.insert(gc.metadata.name.clone());
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
    /// The Gateway's own listeners, then those of the ListenerSets it takes, in the
    /// order that settles conflicts: the Gateway's, then each set's, oldest set first
    /// (then by namespace/name).
    pub listeners: Vec<ListenerState>,
    /// The ListenerSets whose parentRef names this Gateway, in that order.
    pub sets: Vec<SetState>,
    /// `spec.allowedListeners` is set: the status reports `attachedListenerSets`.
    pub takes_sets: bool,
    /// spec.tls.backend.clientCertificateRef, resolved.
    pub backend_client_cert: Option<CertificateIr>,
    /// Some spec.tls.frontend validation lets clients without a valid certificate in.
    pub insecure_fallback: bool,
    /// Why spec.tls.backend.clientCertificateRef does not resolve.
    pub client_cert_problem: Option<(Reason, String)>,
    /// What the controller creates for the Gateway when its class gives each Gateway a
    /// data plane of its own (`None`: the shared fleet serves it).
    pub data_plane: Option<crate::infra::DataPlane>,
}

/// A ListenerSet that names a Gateway of ours as its parent.
pub(crate) struct SetState {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    /// `(reason, message)` when the Gateway does not take its listeners
    /// (`NotAllowed`, `ParentNotAccepted`).
    pub refused: Option<(Reason, String)>,
}

pub(crate) struct ListenerState {
    pub spec: Listener,
    /// Index into the Gateway's `sets` for a ListenerSet's listener; `None` for the
    /// Gateway's own.
    pub set: Option<usize>,
    /// The namespace of the object that declares the listener: `allowedRoutes`'s
    /// `Same` and the ReferenceGrants of its certificates are about it.
    pub namespace: String,
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

    pub fn allows_namespace(&self, res: &Resources, route_ns: &str) -> bool {
        let ns = self
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match ns.and_then(|n| n.from).unwrap_or(FromNamespaces::Same) {
            FromNamespaces::All => true,
            FromNamespaces::Same => self.namespace == route_ns,
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
    let settings = crate::infra::class_settings(res);
    let mut out: Vec<GatewayState> = res
        .gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .map(|g| {
            let key = (
                g.metadata.namespace_or_default().to_string(),
                g.metadata.name.clone(),
            );
            let mut state = gateway(res, g, &addresses(g, assigned.get(&key).copied()));
            let class = settings.get(&g.spec.gateway_class_name);
            let own = crate::infra::mode_of(class) == crate::infra::Mode::PerGateway;
            let ports = state
                .listeners
                .iter()
                .map(|l| crate::infra::Port {
                    port: l.spec.port,
                    udp: l.spec.protocol == "UDP",
                })
                .collect();
            // `Err((true, _))`: the Gateway's own parameters are invalid; `Err((false,
            // _))`: its class's are (the class's status says so).
            let made = match class {
                Some(Ok(s)) => crate::infra::gateway_data_plane(res, g, s.clone(), ports)
                    .map_err(|e| (true, e)),
                Some(Err((_, e))) => {
                    match crate::infra::gateway_data_plane(res, g, Default::default(), ports) {
                        Ok(_) => Err((
                            false,
                            format!("GatewayClass {}: {e}", g.spec.gateway_class_name),
                        )),
                        Err(e) => Err((true, e)),
                    }
                }
                None => crate::infra::gateway_data_plane(res, g, Default::default(), ports)
                    .map_err(|e| (true, e)),
            };
            match made {
                Ok(dp) => state.data_plane = own.then_some(dp),
                Err((mine, e)) => {
                    if own {
                        state.data_plane = Some(crate::infra::kept(g, e.clone()));
                    }
                    if mine && state.address_problem.is_none() {
                        state.address_problem =
                            Some((ConditionType::Accepted, Reason::InvalidParameters, e));
                    }
                }
            }
            state
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
        let (mut certs, problem) = certificates(res, Kind::Gateway, ns, std::slice::from_ref(r));
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
    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener(res, gw, l, Kind::Gateway, ns))
        .collect();
    let parent_refused = address_problem
        .as_ref()
        .filter(|(c, _, _)| *c == ConditionType::Accepted)
        .map(|(_, _, msg)| msg.clone());
    let mut sets = Vec::new();
    for ls in listener_sets_of(res, gw) {
        let set_ns = ls.metadata.namespace_or_default();
        let refused = if !allows_set(res, gw, set_ns) {
            Some((
                Reason::NotAllowed,
                format!(
                    "Gateway {ns}/{} does not allow ListenerSets from namespace {set_ns}: see its spec.allowedListeners",
                    gw.metadata.name
                ),
            ))
        } else {
            parent_refused.as_ref().map(|msg| {
                (
                    Reason::ParentNotAccepted,
                    format!("Gateway {ns}/{} is not accepted: {msg}", gw.metadata.name),
                )
            })
        };
        if refused.is_none() {
            let si = sets.len();
            listeners.extend(ls.spec.listeners.iter().map(|l| ListenerState {
                set: Some(si),
                ..listener(res, gw, l, Kind::ListenerSet, set_ns)
            }));
        }
        sets.push(SetState {
            namespace: set_ns.to_string(),
            name: ls.metadata.name.clone(),
            generation: ls.metadata.generation(),
            refused,
        });
    }
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
        sets,
        takes_sets: gw.spec.allowed_listeners.is_some(),
        backend_client_cert,
        client_cert_problem,
        insecure_fallback,
        data_plane: None,
    }
}

/// The ListenerSets whose parentRef names `gw`, oldest first, then by namespace/name
/// (the order that settles conflicts between their listeners).
fn listener_sets_of<'a>(res: &'a Resources, gw: &Gateway) -> Vec<&'a ListenerSet> {
    let gw_ns = gw.metadata.namespace_or_default();
    let mut out: Vec<&ListenerSet> = res
        .listener_sets
        .iter()
        .filter(|ls| {
            let r = &ls.spec.parent_ref;
            r.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && r.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && r.name == gw.metadata.name
                && r.namespace
                    .as_deref()
                    .unwrap_or(ls.metadata.namespace_or_default())
                    == gw_ns
        })
        .collect();
    out.sort_by(|a, b| {
        let key = |ls: &&ListenerSet| {
            (
                ls.metadata.creation_timestamp.is_none(),
                ls.metadata.creation_timestamp.clone(),
                ls.metadata.namespace_or_default().to_string(),
                ls.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// Whether `gw`'s `spec.allowedListeners` lets ListenerSets from `set_ns` attach; none
/// may when it is unset.
fn allows_set(res: &Resources, gw: &Gateway, set_ns: &str) -> bool {
    let Some(ns) = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    else {
        return false;
    };
    match ns.from.unwrap_or(FromListenerNamespaces::None) {
        FromListenerNamespaces::None => false,
        FromListenerNamespaces::All => true,
        FromListenerNamespaces::Same => set_ns == gw.metadata.namespace_or_default(),
        FromListenerNamespaces::Selector => ns
            .selector
            .as_ref()
            .is_some_and(|s| s.matches(&res.namespace_labels(set_ns))),
    }
}

/// A listener declared by `owner` (a Gateway or a ListenerSet) in `owner_ns`.
fn listener(
    res: &Resources,
    gw: &Gateway,
    l: &Listener,
    owner: Kind,
    owner_ns: &str,
) -> ListenerState {
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
        let (certificates, problem) = certificates(res, owner, owner_ns, &spec.certificate_refs);
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
        set: None,
        namespace: owner_ns.to_string(),
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
    owner: Kind,
    owner_ns: &str,
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
        let ns = r.namespace.as_deref().unwrap_or(owner_ns);
        let what = format!("tls.certificateRefs[{i}] ({ns}/{})", r.name);
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let found = if !group.is_empty() || kind != "Secret" {
            Err((
                Reason::InvalidCertificateRef,
                format!("{what}: {group}/{kind} is not supported; refer to a core Secret"),
            ))
        } else if !ref_permitted(res, owner.as_str(), owner_ns, "", "Secret", ns, &r.name) {
            Err((
                Reason::RefNotPermitted,
                format!(
                    "{what}: no ReferenceGrant in namespace {ns} allows {owner}s from {owner_ns} to refer to it"
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
/// Among a Gateway's own listeners both sides are marked; a ListenerSet's listener loses
/// to the listeners before it (the Gateway's, older sets'), and across Gateways the later
/// one (namespace/name order) loses, so adding a Gateway or a ListenerSet never breaks
/// a listener that already works.
fn detect_conflicts(gws: &mut [GatewayState]) {
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for gi in 0..gws.len() {
        for li in 0..gws[gi].listeners.len() {
            if gws[gi].listeners[li].unaccepted.is_some() {
                // An unaccepted listener binds nothing, so it conflicts with nothing.
                continue;
            }
            for &(gj, lj) in &seen {
                // A Gateway with a data plane of its own shares no socket with others.
                if gi != gj && (gws[gi].data_plane.is_some() || gws[gj].data_plane.is_some()) {
                    continue;
                }
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
                    // A ListenerSet's listener gives way to those before it: the
                    // Gateway's own and older sets' stay as they are.
                    if gi == gj && gws[gi].listeners[li].set.is_none() {
                        gws[gj].listeners[lj].conflict = Some(r);
                    }
                }
            }
            // A set's listener that lost a conflict is not served, so it conflicts with
            // none of the listeners after it.
            let l = &gws[gi].listeners[li];
            if l.set.is_none() || l.conflict.is_none() {
                seen.push((gi, li));
            }
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
                .filter(|l| l.set.is_none())
                .map(|l| crate::ListenerBinding {
                    name: l.spec.name.clone(),
                    port: l.spec.port,
                    udp: l.spec.protocol == "UDP",
                })
                .collect(),
        }
    }

    /// Which of this Gateway's listeners a route's parentRef names: `Some(None)` for the
    /// Gateway (its own listeners only), `Some(Some(set))` for one of its ListenerSets.
    pub fn parent_of(&self, p: &ParentReference, route_ns: &str) -> Option<Option<usize>> {
        if p.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP {
            return None;
        }
        let ns = p.namespace.as_deref().unwrap_or(route_ns);
        match p.kind.as_deref().unwrap_or(Kind::Gateway.as_str()) {
            "Gateway" => (p.name == self.name && ns == self.namespace).then_some(None),
            "ListenerSet" => self
                .sets
                .iter()
                .position(|s| s.name == p.name && s.namespace == ns)
                .map(Some),
            _ => None,
        }
    }

    pub fn status(&self) -> ObjectStatus {
        let g = self.generation;
        let own = || self.listeners.iter().filter(|l| l.set.is_none());
        let valid = own().filter(|l| l.programmed()).count();
        let total = own().count();
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
            .filter(|l| l.set.is_none())
            .map(|l| listener_status(l, g))
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
                attached_listener_sets: self.takes_sets.then(|| {
                    (0..self.sets.len())
                        .filter(|&si| self.set_accepted(si).is_ok())
                        .count() as u32
                }),
            }),
        }
    }

    /// Whether the ListenerSet `si` is accepted: it is allowed, and at least one of its
    /// listeners is valid. `Ok(reason)` says whether all of them are.
    fn set_accepted(&self, si: usize) -> Result<Reason, (Reason, String)> {
        if let Some(refused) = &self.sets[si].refused {
            return Err(refused.clone());
        }
        let mine = || self.listeners.iter().filter(|l| l.set == Some(si));
        let (valid, total) = (mine().filter(|l| l.programmed()).count(), mine().count());
        if valid == 0 {
            Err((
                Reason::ListenersNotValid,
                "none of its listeners is valid; see status.listeners".into(),
            ))
        } else if valid < total {
            Ok(Reason::ListenersNotValid)
        } else {
            Ok(Reason::Accepted)
        }
    }

    /// The status of the ListenerSet `si`.
    pub fn set_status(&self, si: usize) -> ObjectStatus {
        let set = &self.sets[si];
        let g = set.generation;
        let gateway = format!("{}/{}", self.namespace, self.name);
        let (accepted, programmed) = match self.set_accepted(si) {
            Ok(reason) => (
                Condition::new(
                    ConditionType::Accepted,
                    true,
                    reason,
                    if reason == Reason::Accepted {
                        format!("listeners added to Gateway {gateway}")
                    } else {
                        format!(
                            "the valid listeners are added to Gateway {gateway}; see status.listeners for the others"
                        )
                    },
                    g,
                ),
                Condition::new(
                    ConditionType::Programmed,
                    true,
                    Reason::Programmed,
                    "serving its valid listeners",
                    g,
                ),
            ),
            Err((reason, msg)) => (
                Condition::new(ConditionType::Accepted, false, reason, msg.clone(), g),
                Condition::new(ConditionType::Programmed, false, reason, msg, g),
            ),
        };
        ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: Kind::ListenerSet,
            metadata: StatusMeta {
                namespace: set.namespace.clone(),
                name: set.name.clone(),
                generation: g,
            },
            status: Status::Gateway(GatewayStatus {
                addresses: Vec::new(),
                conditions: vec![accepted, programmed],
                listeners: self
                    .listeners
                    .iter()
                    .filter(|l| l.set == Some(si))
                    .map(|l| listener_status(l, g))
                    .collect(),
                attached_listener_sets: None,
            }),
        }
    }
}

fn listener_status(l: &ListenerState, g: i64) -> ListenerStatus {
    let conflict = l.conflict.map(|reason| {
        let msg = match reason {
            Reason::ProtocolConflict => "another listener on this port uses a different protocol",
            _ => "another listener on this port has the same hostname",
        };
        (reason, msg)
    });
    let mut conditions = Vec::new();
    // A conflicted listener is not accepted, with the conflict as the reason, as the
    // Gateway API asks.
    conditions.push(match (&l.unaccepted, conflict) {
        (Some((reason, msg)), _) => {
            Condition::new(ConditionType::Accepted, false, *reason, msg.clone(), g)
        }
        (None, Some((reason, msg))) => {
            Condition::new(ConditionType::Accepted, false, reason, msg, g)
        }
        (None, None) => Condition::new(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "listener accepted",
            g,
        ),
    });
    conditions.push(match conflict {
        Some((reason, msg)) => Condition::new(ConditionType::Conflicted, true, reason, msg, g),
        None => Condition::new(
            ConditionType::Conflicted,
            false,
            Reason::NoConflicts,
            "no conflicts",
            g,
        ),
    });
    conditions.push(match &l.unresolved {
        Some((reason, msg)) => {
            Condition::new(ConditionType::ResolvedRefs, false, *reason, msg.clone(), g)
        }
        None => Condition::new(
            ConditionType::ResolvedRefs,
            true,
            Reason::ResolvedRefs,
            "all references resolved",
            g,
        ),
    });
    conditions.push(match (l.programmed(), conflict) {
        (true, _) => Condition::new(
            ConditionType::Programmed,
            true,
            Reason::Programmed,
            "listener is serving",
            g,
        ),
        (false, Some((reason, msg))) => {
            Condition::new(ConditionType::Programmed, false, reason, msg, g)
        }
        (false, None) => Condition::new(
            ConditionType::Programmed,
            false,
            Reason::Invalid,
            "listener is not valid",
            g,
        ),
    });
    ListenerStatus {
        name: l.spec.name.clone(),
        supported_kinds: l.supported_kinds.clone(),
        attached_routes: l.attached_routes,
        conditions,
    }
}
