//! Ingress (`networking.k8s.io/v1`) as Gateway API objects.
//!
//! Sluice serves an Ingress by converting it into a Gateway, HTTPRoutes and
//! ReferenceGrants and translating those with everything else, so an Ingress gets
//! exactly the data plane, filters and precedence rules of an HTTPRoute. `sluice
//! convert` writes the same conversion out as YAML for a person to review and apply:
//! what Sluice serves for an Ingress is what the converted objects serve.
//!
//! The layout, for each address the Ingress ports bind (`--ingress-http`,
//! `--ingress-https`): one Gateway with an `http` listener and one HTTPS listener per
//! TLS host (its certificate from the Ingress's `tls[].secretName`, by SNI), routes
//! allowed from every namespace. Each Ingress becomes one HTTPRoute per host (at most
//! 16 rules each, the CRD's cap), in the Ingress's namespace, with one rule per path.
//! `defaultBackend` becomes a rule `PathPrefix /` without hostnames, which is what
//! answers requests that match no rule.

mod annotations;
mod canary;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use sluice_resources::{
    AllowedRoutes, BackendObjectReference, FromNamespaces, GATEWAY_GROUP, Gateway, GatewayAddress,
    GatewaySpec, HttpBackendRef, HttpPathMatch, HttpRoute, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, INGRESS_CONTROLLER, Ingress, IngressBackend, Listener,
    ListenerTls, ObjectMeta, ObjectRef, OciSource, ParentReference, PathMatchType, ReferenceGrant,
    ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo, Resources, RouteNamespaces,
    SecretObjectReference, WasmFilter, WasmFilterSpec, WasmSource,
};

pub use annotations::NGINX;

use crate::status::{
    Condition, ConditionType, IngressStatus, Kind, LoadBalancerIngress, LoadBalancerStatus,
    ObjectStatus, Status, StatusMeta,
};
use annotations::{Annotations, Redirect};

/// The deprecated annotation that named an Ingress's class before `ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks the IngressClass that Ingresses without a class belong to.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// WasmFilters (same namespace, comma-separated names) run on every rule of an Ingress.
pub const FILTERS_ANNOTATION: &str = "sluice.dev/filters";
/// The Gateway API's cap on rules per HTTPRoute.
const MAX_RULES: usize = 16;

/// Where Ingress traffic is served and how the objects are named.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Plain HTTP (`--ingress-http`, default `0.0.0.0:80`).
    pub http: SocketAddr,
    /// HTTPS, for Ingresses with `tls` (`--ingress-https`, default `0.0.0.0:443`).
    pub https: SocketAddr,
    /// The Gateways' namespace.
    pub gateway_namespace: String,
    /// The Gateways' `gatewayClassName`.
    pub gateway_class: String,
    /// Names for serving (which no Kubernetes object can have, so that they never
    /// collide with the objects a migration creates) or for output.
    pub serving: bool,
    /// Convert every Ingress given, whatever its class (`sluice convert`).
    pub any_class: bool,
    /// The source-range filter's component, for the WasmFilters that serve
    /// `allowlist-source-range` and `denylist-source-range`
    /// (`--ingress-source-range-filter`; default: `source-range.wasm` in the config
    /// folder).
    pub source_range_filter: WasmSource,
}

/// Where the source-range filter is read from by default: a file next to the config.
pub const SOURCE_RANGE_FILTER_PATH: &str = "source-range.wasm";

/// The source-range filter's source from a flag: `oci://REGISTRY/REPOSITORY:TAG` (or
/// `@sha256:...`) for an OCI artifact, anything else a file path (file mode).
pub fn source_range_filter(flag: &str) -> Result<WasmSource, String> {
    let flag = flag.trim();
    if flag.is_empty() {
        return Err("give an oci:// image reference or a .wasm file path".into());
    }
    Ok(match flag.strip_prefix("oci://") {
        Some(image) => WasmSource {
            oci: Some(OciSource {
                image: image.to_string(),
                digest: None,
                pull_secret_ref: None,
                pull_policy: None,
            }),
            ..WasmSource::default()
        },
        None => WasmSource {
            path: Some(flag.to_string()),
            ..WasmSource::default()
        },
    })
}

/// The namespace of the Gateways Sluice serves Ingresses through: not a valid
/// Kubernetes namespace, so no object of the cluster's can be mistaken for them.
pub const SERVING_NAMESPACE: &str = "ingress.sluice";
/// Their GatewayClass.
pub const SERVING_CLASS: &str = "ingress.sluice";

impl Default for Options {
    fn default() -> Self {
        Options::serving(
            SocketAddr::from(([0, 0, 0, 0], 80)),
            SocketAddr::from(([0, 0, 0, 0], 443)),
        )
    }
}

impl Options {
    pub fn serving(http: SocketAddr, https: SocketAddr) -> Self {
        Options {
            http,
            https,
            gateway_namespace: SERVING_NAMESPACE.into(),
            gateway_class: SERVING_CLASS.into(),
            serving: true,
            any_class: false,
            source_range_filter: WasmSource {
                path: Some(SOURCE_RANGE_FILTER_PATH.into()),
                ..WasmSource::default()
            },
        }
    }
}

/// How much a note matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Level {
    /// The conversion serves this differently from ingress-nginx (said as a comment on
    /// the converted object).
    Changed,
    /// Not mapped: an annotation or field that has no effect.
    Ignored,
    /// Served by an HTTPRoute instead (the same host on the same port).
    Shadowed,
    /// Part of the Ingress is not served.
    Error,
}

/// Something a reviewer of the conversion should know, about one Ingress.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    #[serde(skip)]
    pub ingress: ObjectRef,
    /// The converted HTTPRoute it concerns, if one.
    #[serde(skip)]
    pub route: Option<String>,
    pub level: Level,
    /// `metadata.annotations[...]`, `spec.rules[0].http.paths[1].pathType`, ...
    pub field: String,
    pub message: String,
}

/// The Gateway API objects that serve some Ingresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    /// The source-range filters of Ingresses with `allowlist-source-range` or
    /// `denylist-source-range`, one per Ingress, in its namespace.
    pub wasm_filters: Vec<WasmFilter>,
    /// The Ingresses converted, oldest first, with their generations.
    pub ingresses: Vec<(ObjectRef, i64)>,
    /// Service ports (namespace, name, port) an Ingress says speak HTTP/2 without TLS
    /// (`backend-protocol: GRPC` or `H2C`): served as if their `appProtocol` were
    /// `kubernetes.io/h2c`.
    pub h2c_ports: Vec<(String, String, u16)>,
    /// Which Ingress and field each TLS listener came from, by listener name.
    pub listeners: BTreeMap<String, (ObjectRef, String)>,
    /// Which Ingress each HTTPRoute and WasmFilter (namespace, name) came from.
    pub sources: BTreeMap<(String, String), ObjectRef>,
    pub notes: Vec<Note>,
}

impl Note {
    /// A note about the Ingress being converted; `routes` fills in which one.
    pub(crate) fn at(level: Level, field: impl Into<String>, message: String) -> Note {
        Note {
            ingress: ObjectRef::new("Ingress", "", ""),
            route: None,
            level,
            field: field.into(),
            message,
        }
    }
}

impl Converted {
    pub fn is_empty(&self) -> bool {
        self.ingresses.is_empty()
    }
}

/// The class an Ingress names, by field or by the older annotation.
pub fn class_of(ing: &Ingress) -> Option<&str> {
    ing.spec.ingress_class_name.as_deref().or_else(|| {
        ing.metadata
            .annotations
            .get(CLASS_ANNOTATION)
            .map(|s| s.as_str())
    })
}

/// Whether Sluice serves `ing`: its IngressClass is Sluice's, or it names no class and
/// Sluice's IngressClass is the default one.
pub fn is_ours(res: &Resources, ing: &Ingress) -> bool {
    let ours = |c: &&sluice_resources::IngressClass| c.spec.controller == INGRESS_CONTROLLER;
    match class_of(ing) {
        Some(name) => res
            .ingress_classes
            .iter()
            .filter(ours)
            .any(|c| c.metadata.name == name),
        None => res.ingress_classes.iter().filter(ours).any(|c| {
            c.metadata
                .annotations
                .get(DEFAULT_CLASS_ANNOTATION)
                .is_some_and(|v| v == "true")
        }),
    }
}

/// A TLS host's listener and where its certificate comes from.
struct TlsHost {
    /// `""` for a `tls` entry without hosts (the listener serves any SNI name).
    host: String,
    listener: String,
    secret: (String, String),
    /// The Ingress and `spec.tls[i]` it came from.
    from: ObjectRef,
    field: String,
}

/// Converts the Ingresses of `res` that Sluice serves (every one with
/// [`Options::any_class`]).
pub fn convert(res: &Resources, opts: &Options) -> Converted {
    let mut ours: Vec<&Ingress> = res
        .ingresses
        .iter()
        .filter(|i| opts.any_class || is_ours(res, i))
        .collect();
    // Oldest first: the oldest Ingress wins a TLS host two of them configure, as in
    // route precedence. Objects without a timestamp (file mode) count as the newest.
    ours.sort_by(|a, b| {
        let key = |i: &Ingress| {
            (
                i.metadata.creation_timestamp.is_none(),
                i.metadata.creation_timestamp.clone(),
                i.metadata.namespace_or_default().to_string(),
                i.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut out = Converted::default();
    if ours.is_empty() {
        return out;
    }
    let tls = tls_hosts(&ours, &mut out.notes);
    for t in &tls {
        out.listeners
            .insert(t.listener.clone(), (t.from.clone(), t.field.clone()));
    }
    out.gateways = gateways(opts, &tls);
    out.reference_grants = reference_grants(opts, &tls);
    // Canaries last: they add to the rules of the Ingresses they shadow.
    ours.sort_by_key(|i| annotations::is_canary(&i.metadata.annotations));
    for ing in &ours {
        let oref = ObjectRef::new(
            "Ingress",
            ing.metadata.namespace_or_default(),
            &ing.metadata.name,
        );
        out.ingresses
            .push((oref.clone(), ing.metadata.generation()));
        let (before, filters_before) = (out.http_routes.len(), out.wasm_filters.len());
        routes(res, opts, ing, &oref, &tls, &mut out);
        let made = out.http_routes[before..].iter().map(|r| &r.metadata).chain(
            out.wasm_filters[filters_before..]
                .iter()
                .map(|f| &f.metadata),
        );
        for m in made {
            out.sources.insert(
                (m.namespace_or_default().to_string(), m.name.clone()),
                oref.clone(),
            );
        }
    }
    out
}

fn tls_hosts(ours: &[&Ingress], notes: &mut Vec<Note>) -> Vec<TlsHost> {
    let mut hosts: Vec<TlsHost> = Vec::new();
    for ing in ours {
        let ns = ing.metadata.namespace_or_default();
        let oref = ObjectRef::new("Ingress", ns, &ing.metadata.name);
        for (i, t) in ing.spec.tls.iter().enumerate() {
            let Some(secret) = &t.secret_name else {
                notes.push(Note {
                    ingress: oref.clone(),
                    route: None,
                    level: Level::Error,
                    field: format!("spec.tls[{i}].secretName"),
                    message: "not set: Sluice has no default certificate, so these hosts are not served over HTTPS; name the Secret with the certificate".into(),
                });
                continue;
            };
            let entry_hosts: Vec<String> = if t.hosts.is_empty() {
                vec![String::new()]
            } else {
                t.hosts.clone()
            };
            for h in entry_hosts {
                let secret = (ns.to_string(), secret.clone());
                match hosts.iter().find(|o| o.host == h) {
                    Some(o) if o.secret != secret => notes.push(Note {
                        ingress: oref.clone(),
                        route: None,
                        level: Level::Error,
                        field: format!("spec.tls[{i}]"),
                        message: format!(
                            "host {:?} already takes its certificate from Secret {}/{} (an older Ingress); this Secret is not used for it",
                            display_host(&h),
                            o.secret.0,
                            o.secret.1
                        ),
                    }),
                    Some(_) => {}
                    None => hosts.push(TlsHost {
                        listener: listener_name(&h),
                        host: h,
                        secret,
                        from: oref.clone(),
                        field: format!("spec.tls[{i}]"),
                    }),
                }
            }
        }
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    hosts
}

fn display_host(h: &str) -> &str {
    if h.is_empty() { "*" } else { h }
}

/// `https-foo-example-com`, `https-wildcard-example-com`, `https` for any host.
fn listener_name(host: &str) -> String {
    if host.is_empty() {
        return "https".into();
    }
    let h = match host.strip_prefix("*.") {
        Some(rest) => format!("wildcard-{rest}"),
        None => host.to_string(),
    };
    format!("https-{}", h.replace('.', "-"))
}

/// The Gateway for an address: one Gateway when HTTP and HTTPS share an IP.
fn gateway_name(opts: &Options, ip: IpAddr) -> String {
    let base = if opts.serving {
        "ingress"
    } else {
        "sluice-ingress"
    };
    if opts.http.ip() == opts.https.ip() {
        base.into()
    } else if ip == opts.http.ip() {
        format!("{base}-http")
    } else {
        format!("{base}-https")
    }
}

fn gateways(opts: &Options, tls: &[TlsHost]) -> Vec<Gateway> {
    let all = || {
        Some(AllowedRoutes {
            namespaces: Some(RouteNamespaces {
                from: Some(FromNamespaces::All),
                selector: None,
            }),
            kinds: None,
        })
    };
    let mut by_name: BTreeMap<String, (IpAddr, Vec<Listener>)> = BTreeMap::new();
    by_name
        .entry(gateway_name(opts, opts.http.ip()))
        .or_insert_with(|| (opts.http.ip(), Vec::new()))
        .1
        .push(Listener {
            name: "http".into(),
            hostname: None,
            port: opts.http.port(),
            protocol: "HTTP".into(),
            tls: None,
            allowed_routes: all(),
        });
    for t in tls {
        by_name
            .entry(gateway_name(opts, opts.https.ip()))
            .or_insert_with(|| (opts.https.ip(), Vec::new()))
            .1
            .push(Listener {
                name: t.listener.clone(),
                hostname: (!t.host.is_empty()).then(|| t.host.clone()),
                port: opts.https.port(),
                protocol: "HTTPS".into(),
                tls: Some(ListenerTls {
                    mode: None,
                    certificate_refs: vec![SecretObjectReference {
                        group: None,
                        kind: None,
                        name: t.secret.1.clone(),
                        namespace: (t.secret.0 != opts.gateway_namespace)
                            .then(|| t.secret.0.clone()),
                    }],
                    options: BTreeMap::new(),
                }),
                allowed_routes: all(),
            });
    }
    by_name
        .into_iter()
        .map(|(name, (ip, listeners))| Gateway {
            metadata: ObjectMeta {
                name,
                namespace: Some(opts.gateway_namespace.clone()),
                ..Default::default()
            },
            spec: GatewaySpec {
                gateway_class_name: opts.gateway_class.clone(),
                listeners,
                addresses: if ip.is_unspecified() {
                    Vec::new()
                } else {
                    vec![GatewayAddress {
                        type_: Some("IPAddress".into()),
                        value: ip.to_string(),
                    }]
                },
                infrastructure: None,
                tls: None,
                allowed_listeners: None,
            },
        })
        .collect()
}

/// One ReferenceGrant per namespace whose Secrets the Gateways present.
fn reference_grants(opts: &Options, tls: &[TlsHost]) -> Vec<ReferenceGrant> {
    let mut namespaces: Vec<&str> = tls
        .iter()
        .map(|t| t.secret.0.as_str())
        .filter(|ns| *ns != opts.gateway_namespace)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
        .into_iter()
        .map(|ns| ReferenceGrant {
            metadata: ObjectMeta {
                name: if opts.serving {
                    "ingress.sluice.tls".into()
                } else {
                    "sluice-ingress-tls".into()
                },
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: GATEWAY_GROUP.into(),
                    kind: "Gateway".into(),
                    namespace: opts.gateway_namespace.clone(),
                }],
                to: vec![ReferenceGrantTo {
                    group: String::new(),
                    kind: "Secret".into(),
                    name: None,
                }],
            },
        })
        .collect()
}

/// The TLS listener that serves `host`: its own, else a wildcard's, else the one for any
/// host.
fn tls_listener<'a>(tls: &'a [TlsHost], host: &str) -> Option<&'a TlsHost> {
    if host.is_empty() {
        return tls.iter().find(|t| t.host.is_empty());
    }
    tls.iter()
        .find(|t| t.host == host)
        .or_else(|| {
            tls.iter()
                .filter(|t| t.host.starts_with("*.") && crate::hostname_matches(&t.host, host))
                .max_by_key(|t| t.host.len())
        })
        .or_else(|| tls.iter().find(|t| t.host.is_empty()))
}

/// A converted path: its match, its backend, and where it came from.
struct PathRule {
    field: String,
    rule: HttpRouteRule,
}

fn routes(
    res: &Resources,
    opts: &Options,
    ing: &Ingress,
    oref: &ObjectRef,
    tls: &[TlsHost],
    out: &mut Converted,
) {
    let ns = ing.metadata.namespace_or_default();
    let mut notes = Vec::new();
    let annotations = Annotations::parse(&ing.metadata.annotations, &mut notes);
    if let Some(canary) = &annotations.canary {
        canary::apply(res, ing, oref, &annotations, canary, out, &mut notes);
        for mut n in notes {
            n.ingress = oref.clone();
            out.notes.push(n);
        }
        return;
    }
    // Rules by host, in the order the hosts first appear ("" for rules without one).
    let mut hosts: Vec<(String, Vec<PathRule>)> = Vec::new();
    for (i, r) in ing.spec.rules.iter().enumerate() {
        let host = r.host.clone().unwrap_or_default();
        let Some(http) = &r.http else { continue };
        let mut rules = Vec::new();
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let Some(backend) = backend_ref(res, ns, &p.backend, &field, &mut notes) else {
                continue;
            };
            let Some((path, filters)) =
                annotations.path(p.path.as_deref(), &p.path_type, &field, &mut notes)
            else {
                continue;
            };
            rules.push(PathRule {
                field,
                rule: HttpRouteRule {
                    matches: vec![HttpRouteMatch {
                        path: Some(path),
                        ..Default::default()
                    }],
                    filters,
                    backend_refs: vec![backend],
                    ..Default::default()
                },
            });
        }
        match hosts.iter_mut().find(|(h, _)| *h == host) {
            Some((_, v)) => v.extend(rules),
            None => hosts.push((host, rules)),
        }
    }
    backend_protocol(res, ns, &annotations, &hosts, out, &mut notes);
    if let Some(b) = &ing.spec.default_backend
        && let Some(backend) = backend_ref(res, ns, b, "spec.defaultBackend", &mut notes)
    {
        let rule = PathRule {
            field: "spec.defaultBackend".into(),
            rule: HttpRouteRule {
                matches: vec![HttpRouteMatch {
                    path: Some(HttpPathMatch {
                        type_: Some(PathMatchType::PathPrefix),
                        value: Some("/".into()),
                    }),
                    ..Default::default()
                }],
                backend_refs: vec![backend],
                ..Default::default()
            },
        };
        match hosts.iter_mut().find(|(h, _)| h.is_empty()) {
            Some((_, v)) => v.push(rule),
            None => hosts.push((String::new(), vec![rule])),
        }
    }
    let http_gw = gateway_name(opts, opts.http.ip());
    let https_gw = gateway_name(opts, opts.https.ip());
    let parent = |gw: &str, section: &str| ParentReference {
        group: None,
        kind: None,
        namespace: Some(opts.gateway_namespace.clone()),
        name: gw.to_string(),
        section_name: Some(section.to_string()),
        port: None,
    };
    let source_range = annotations.source_range.as_ref().map(|sr| {
        let f = source_range_filter_object(opts, ns, &ing.metadata.name, sr);
        let name = f.metadata.name.clone();
        out.wasm_filters.push(f);
        name
    });
    let mut seq = 0;
    for (host, mut rules) in hosts {
        if rules.is_empty() {
            continue;
        }
        for r in &mut rules {
            r.rule
                .filters
                .extend(annotations.rule_filters(source_range.as_deref()));
            annotations.apply_to_rule(&mut r.rule);
        }
        let tls_l = tls_listener(tls, &host);
        let redirect = annotations.https_redirect(tls_l.is_some());
        // (parents, redirect rules instead of the rules themselves)
        let mut attachments: Vec<(Vec<ParentReference>, bool)> = Vec::new();
        match (tls_l, &redirect) {
            (Some(t), Some(_)) => {
                attachments.push((vec![parent(&https_gw, &t.listener)], false));
                attachments.push((vec![parent(&http_gw, "http")], true));
            }
            (Some(t), None) => attachments.push((
                vec![parent(&http_gw, "http"), parent(&https_gw, &t.listener)],
                false,
            )),
            (None, Some(_)) => {
                notes.push(Note {
                    ingress: oref.clone(),
                    route: None,
                    level: Level::Changed,
                    field: format!("metadata.annotations[{NGINX}force-ssl-redirect]"),
                    message: format!(
                        "host {:?} has no TLS here: its HTTP requests are redirected to HTTPS, which something in front of Sluice must serve",
                        display_host(&host)
                    ),
                });
                attachments.push((vec![parent(&http_gw, "http")], true));
            }
            (None, None) => attachments.push((vec![parent(&http_gw, "http")], false)),
        }
        for (parents, redirects) in attachments {
            let rules: Vec<&PathRule> = rules.iter().collect();
            for chunk in rules.chunks(MAX_RULES) {
                seq += 1;
                let name = route_name(opts, &ing.metadata.name, &host, redirects, seq);
                let mut route_rules = Vec::new();
                for r in chunk {
                    let mut rule = r.rule.clone();
                    if redirects && let Some(rd) = &redirect {
                        rule.filters = vec![rd.filter(opts.https.port())];
                        rule.backend_refs.clear();
                        rule.timeouts = None;
                    }
                    route_rules.push(rule);
                }
                for n in notes.iter_mut().filter(|n| n.route.is_none()) {
                    if chunk.iter().any(|r| n.field.starts_with(&r.field)) {
                        n.route = Some(name.clone());
                    }
                }
                let route = HttpRoute {
                    metadata: ObjectMeta {
                        name,
                        namespace: Some(ns.to_string()),
                        labels: ing.metadata.labels.clone(),
                        generation: ing.metadata.generation,
                        creation_timestamp: ing.metadata.creation_timestamp.clone(),
                        ..Default::default()
                    },
                    spec: HttpRouteSpec {
                        parent_refs: parents.clone(),
                        hostnames: if host.is_empty() {
                            Vec::new()
                        } else {
                            vec![host.clone()]
                        },
                        rules: route_rules,
                    },
                };
                // What the annotations produced must be a valid HTTPRoute, as the API
                // server would check the converted one.
                let problems = sluice_resources::validate_http_route(&route);
                if problems.is_empty() {
                    out.http_routes.push(route);
                } else {
                    for (field, message) in problems {
                        notes.push(Note {
                            ingress: oref.clone(),
                            route: Some(route.metadata.name.clone()),
                            level: Level::Error,
                            field: format!("metadata.annotations (HTTPRoute {field})"),
                            message: format!("{message}; these paths are not served"),
                        });
                    }
                }
            }
        }
    }
    for mut n in notes {
        n.ingress = oref.clone();
        out.notes.push(n);
    }
}

/// `backend-protocol`: the Gateway API takes a backend's protocol from its Service
/// (`appProtocol`) and its TLS from a BackendTLSPolicy, so the annotation is checked
/// against those, and GRPC/H2C is served as h2c.
fn backend_protocol(
    res: &Resources,
    ns: &str,
    annotations: &Annotations,
    hosts: &[(String, Vec<PathRule>)],
    out: &mut Converted,
    notes: &mut Vec<Note>,
) {
    let Some(p) = annotations.backend_protocol.as_deref() else {
        return;
    };
    let field = format!("metadata.annotations[{NGINX}backend-protocol]");
    let mut seen = std::collections::BTreeSet::new();
    for r in hosts.iter().flat_map(|(_, rules)| rules) {
        for b in &r.rule.backend_refs {
            let (name, port) = (b.backend.name.clone(), b.backend.port.unwrap_or(0));
            if !seen.insert((name.clone(), port)) {
                continue;
            }
            let sp = res
                .services
                .iter()
                .find(|s| s.metadata.name == name && s.metadata.namespace_or_default() == ns)
                .and_then(|s| s.spec.ports.iter().find(|sp| sp.port == port));
            let mut note =
                |level, message: String| notes.push(Note::at(level, field.clone(), message));
            let h2c = sp.and_then(|sp| sp.app_protocol.as_deref()) == Some("kubernetes.io/h2c");
            match p {
                "GRPC" | "H2C" if !h2c => {
                    out.h2c_ports.push((ns.to_string(), name.clone(), port));
                    note(
                        Level::Changed,
                        format!(
                            "Sluice serves Service {ns}/{name} port {port} over h2c for this Ingress; the Gateway API reads the protocol from the Service, so set `appProtocol: kubernetes.io/h2c` on that port before you apply the converted routes"
                        ),
                    );
                }
                "HTTPS" | "GRPCS"
                    if crate::policies::policy_for(
                        res,
                        ns,
                        &name,
                        sp.and_then(|sp| sp.name.as_deref()),
                    )
                    .is_none() =>
                {
                    note(
                        Level::Error,
                        format!(
                            "Service {ns}/{name} has no BackendTLSPolicy, so requests go to it without TLS; the Gateway API verifies backend certificates: add a BackendTLSPolicy with the CA that signed the backend's certificate and its hostname"
                        ),
                    );
                }
                _ => {}
            }
        }
    }
}

/// The WasmFilter that serves an Ingress's source ranges: the source-range filter
/// with the annotations' ranges as its config.
fn source_range_filter_object(
    opts: &Options,
    ns: &str,
    ingress: &str,
    sr: &annotations::SourceRange,
) -> WasmFilter {
    let name = if opts.serving {
        format!("ingress:{ingress}:source-range")
    } else {
        let mut n = format!("{ingress}-source-range");
        if n.len() > 253 {
            n = format!("{}-source-range", &ingress[..ingress.len().min(239)]);
        }
        n
    };
    WasmFilter {
        metadata: ObjectMeta {
            name,
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        spec: WasmFilterSpec {
            source: opts.source_range_filter.clone(),
            config: Some(sr.config()),
            failure_policy: None,
            limits: None,
            outbound: Vec::new(),
            kv: None,
            debug: None,
        },
    }
}

/// The name of a converted HTTPRoute. Serving names contain `:`, which no Kubernetes
/// object's name can, so they never collide with the converted objects a migration
/// applies while the Ingress is still served.
fn route_name(opts: &Options, ingress: &str, host: &str, redirects: bool, seq: usize) -> String {
    if opts.serving {
        return format!("ingress:{ingress}:{seq}");
    }
    let mut name = ingress.to_string();
    if !host.is_empty() {
        name.push('-');
        name.push_str(&host.replace("*.", "wildcard.").replace('.', "-"));
    }
    if redirects {
        name.push_str("-https-redirect");
    }
    if seq > 1 {
        name.push_str(&format!("-{seq}"));
    }
    if name.len() > 253 {
        // Keep names valid; the sequence number keeps them apart.
        name.truncate(240);
        name = format!("{}-{seq}", name.trim_end_matches(['-', '.']));
    }
    name
}

/// The backendRef for an Ingress backend: a Service by port number (a port name is
/// looked up on the Service).
pub(super) fn backend_ref(
    res: &Resources,
    ns: &str,
    b: &IngressBackend,
    field: &str,
    notes: &mut Vec<Note>,
) -> Option<HttpBackendRef> {
    let mut note = |level, message: String| notes.push(Note::at(level, field, message));
    let Some(svc) = &b.service else {
        note(
            Level::Error,
            "resource backends are not supported; use a Service backend".into(),
        );
        return None;
    };
    let port = svc.port.as_ref();
    let number = match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.as_ref()),
    ) {
        (Some(n), _) => n,
        (None, Some(name)) => {
            let found = res
                .services
                .iter()
                .find(|s| s.metadata.name == svc.name && s.metadata.namespace_or_default() == ns)
                .and_then(|s| {
                    s.spec
                        .ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(name))
                });
            match found {
                Some(p) => p.port,
                None => {
                    note(
                        Level::Error,
                        format!(
                            "Service {ns}/{} has no port named {name:?} (or is not found); name a port it has, or give the number",
                            svc.name
                        ),
                    );
                    return None;
                }
            }
        }
        (None, None) => return None,
    };
    Some(HttpBackendRef {
        backend: BackendObjectReference {
            name: svc.name.clone(),
            port: Some(number),
            ..Default::default()
        },
        weight: None,
        filters: Vec::new(),
    })
}

/// `res` with the objects that serve its Ingresses added.
pub fn serving_resources(res: &Resources, c: &Converted) -> Resources {
    let mut r = res.clone();
    r.gateway_classes.push(sluice_resources::GatewayClass {
        metadata: ObjectMeta {
            name: SERVING_CLASS.into(),
            ..Default::default()
        },
        spec: sluice_resources::GatewayClassSpec {
            controller_name: crate::CONTROLLER_NAME.into(),
            description: None,
            parameters_ref: None,
        },
    });
    r.gateways.extend(c.gateways.iter().cloned());
    r.http_routes.extend(c.http_routes.iter().cloned());
    r.reference_grants
        .extend(c.reference_grants.iter().cloned());
    r.wasm_filters.extend(c.wasm_filters.iter().cloned());
    for (ns, name, port) in &c.h2c_ports {
        let ports = r
            .services
            .iter_mut()
            .filter(|s| s.metadata.name == *name && s.metadata.namespace_or_default() == ns)
            .flat_map(|s| s.spec.ports.iter_mut());
        for p in ports.filter(|p| p.port == *port) {
            p.app_protocol = Some("kubernetes.io/h2c".into());
        }
    }
    r.sort();
    r
}

/// Replaces the statuses of the serving objects (which exist only inside Sluice) with
/// one status per Ingress: where it is served, and what of it is not.
pub(crate) fn statuses(
    c: &Converted,
    shadowed: &[crate::Shadowed],
    statuses: &mut Vec<ObjectStatus>,
    ip: Option<IpAddr>,
) {
    let mut notes: BTreeMap<ObjectRef, Vec<Note>> = BTreeMap::new();
    for n in &c.notes {
        notes.entry(n.ingress.clone()).or_default().push(n.clone());
    }
    // Each note once per Ingress, however many routes or listeners say it.
    let mut add = |ingress: &ObjectRef, level: Level, field: String, message: String| {
        let list = notes.entry(ingress.clone()).or_default();
        if !list
            .iter()
            .any(|n| n.field == field && n.message == message)
        {
            list.push(Note {
                ingress: ingress.clone(),
                route: None,
                level,
                field,
                message,
            });
        }
    };
    for s in shadowed {
        let key = (s.rule.namespace.clone(), s.rule.route.clone());
        let Some(ingress) = c.sources.get(&key) else {
            continue;
        };
        add(
            ingress,
            Level::Shadowed,
            "spec.rules".into(),
            format!(
                "host {:?} is served by the HTTPRoutes of Gateway {} (listener {}) on the same port, so this Ingress's rules for it are not; remove them from the Ingress once the migration is done",
                s.hostname, s.gateway, s.listener
            ),
        );
    }
    statuses.retain(|s| {
        let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
        match (&s.kind, &s.status) {
            (Kind::GatewayClass, _) => s.metadata.name != SERVING_CLASS,
            (Kind::Gateway, Status::Gateway(g)) if s.metadata.namespace == SERVING_NAMESPACE => {
                for l in &g.listeners {
                    let Some((ingress, field)) = c.listeners.get(&l.name) else {
                        continue;
                    };
                    if let Some(cond) = first_failure(&l.conditions) {
                        add(
                            ingress,
                            Level::Error,
                            field.clone(),
                            format!("{} {}: {}", cond.type_, cond.reason, cond.message),
                        );
                    }
                }
                false
            }
            (Kind::WasmFilter, Status::WasmFilter(w)) => {
                let Some(ingress) = c.sources.get(&key) else {
                    return true;
                };
                if let Some(cond) = first_failure(&w.conditions) {
                    add(
                        ingress,
                        Level::Error,
                        "metadata.annotations".into(),
                        format!(
                            "the source-range filter is not ready, so this Ingress's rules answer 500: {} {}: {}",
                            cond.type_, cond.reason, cond.message
                        ),
                    );
                }
                false
            }
            (Kind::HTTPRoute, Status::Route(r)) => {
                let Some(ingress) = c.sources.get(&key) else {
                    return true;
                };
                for p in &r.parents {
                    if let Some(cond) = first_failure(&p.conditions) {
                        add(
                            ingress,
                            Level::Error,
                            "spec".into(),
                            format!("{} {}: {}", cond.type_, cond.reason, cond.message),
                        );
                    }
                }
                false
            }
            _ => true,
        }
    });
    for (oref, generation) in &c.ingresses {
        statuses.push(ObjectStatus {
            api_version: "networking.k8s.io/v1".into(),
            kind: Kind::Ingress,
            metadata: StatusMeta {
                namespace: oref.namespace.clone(),
                name: oref.name.clone(),
                generation: *generation,
            },
            status: Status::Ingress(IngressStatus {
                load_balancer: LoadBalancerStatus {
                    ingress: ip
                        .filter(|ip| !ip.is_unspecified())
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            hostname: None,
                        })
                        .into_iter()
                        .collect(),
                },
                notes: notes.remove(oref).unwrap_or_default(),
            }),
        });
    }
}

/// The first of the conditions that says something is wrong (Accepted, ResolvedRefs,
/// Programmed or Ready not True): the cause, where the others follow from it.
fn first_failure(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| {
        matches!(
            c.type_,
            ConditionType::Accepted
                | ConditionType::ResolvedRefs
                | ConditionType::Programmed
                | ConditionType::Ready
        ) && !c.is_true()
    })
}

impl Redirect {
    fn filter(&self, https_port: u16) -> HttpRouteFilter {
        HttpRouteFilter {
            type_: "RequestRedirect".into(),
            request_redirect: Some(sluice_resources::HttpRequestRedirectFilter {
                scheme: Some("https".into()),
                port: (https_port != 443).then_some(https_port),
                status_code: Some(self.code),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
