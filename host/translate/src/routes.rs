//! Step 3: HTTPRoutes. Attach each parentRef to listeners, resolve backends and filters,
//! and place every match on the virtual hosts it serves.

use regex::Regex;
use sluice_ir::{
    CorsIr, ExternalAuthIr, FilterIr, HeaderModIr, MatchIr, MirrorIr, PathMatchIr, PathRewriteIr,
    RedirectIr, RetryIr, RewriteIr, RuleId, RuleIr, UpstreamProtocol, ValueMatchIr,
};

/// `retry.backoff` when unset (Envoy's base retry interval).
const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;
use sluice_resources::{
    GATEWAY_GROUP, GrpcMethodMatch, GrpcRoute, HttpHeaderFilter, HttpPathMatch, HttpPathModifier,
    HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, PathMatchType,
    PathModifierType, Resources, ValueMatchType, parse_duration,
};

use crate::backends;
use crate::gateways::GatewayState;
use crate::status::Problem;
use crate::status::*;
use crate::wasm::{self, WasmStates};
use crate::{
    CONTROLLER_NAME, Placed, PrecedenceKey, RankedHost, intersect_hostnames_ranked, path_rank,
};

pub(crate) struct Attached {
    pub rules: Vec<RuleIr>,
    pub placed: Vec<Placed>,
    /// (Service `namespace/name`, gateway index) for each backend Service in use, for
    /// the status of the policies that target them.
    pub services: std::collections::BTreeSet<(String, usize)>,
}

pub(crate) fn http_routes(
    res: &Resources,
    wasm: &WasmStates,
    gws: &mut [GatewayState],
    out: &mut Vec<ObjectStatus>,
) -> Attached {
    let mut attached = Attached {
        rules: Vec::new(),
        placed: Vec::new(),
        services: Default::default(),
    };
    for route in &res.http_routes {
        http_route(
            res,
            wasm,
            Kind::HTTPRoute,
            route,
            None,
            gws,
            out,
            &mut attached,
        );
    }
    for route in &res.grpc_routes {
        http_route(
            res,
            wasm,
            Kind::GRPCRoute,
            &grpc_as_http(route),
            Some(route),
            gws,
            out,
            &mut attached,
        );
    }
    attached
}

/// A GRPCRoute as the HTTPRoute it amounts to: gRPC calls are HTTP/2 POSTs to
/// `/<service>/<method>`, so a method match is a path match, and the rest (headers,
/// filters, backends) carries over.
fn grpc_as_http(g: &GrpcRoute) -> HttpRoute {
    let path = |m: &GrpcMethodMatch| {
        let (service, method) = (m.service.as_deref(), m.method.as_deref());
        match m.type_.unwrap_or_default() {
            ValueMatchType::Exact => match (service, method) {
                (Some(s), Some(m)) => (PathMatchType::Exact, format!("/{s}/{m}")),
                (Some(s), None) => (PathMatchType::PathPrefix, format!("/{s}")),
                (None, Some(m)) => (
                    PathMatchType::RegularExpression,
                    format!("/[^/]+/{}", regex::escape(m)),
                ),
                (None, None) => (PathMatchType::PathPrefix, "/".into()),
            },
            ValueMatchType::RegularExpression => (
                PathMatchType::RegularExpression,
                format!(
                    "/{}/{}",
                    service.unwrap_or("[^/]+"),
                    method.unwrap_or("[^/]+")
                ),
            ),
        }
    };
    HttpRoute {
        metadata: g.metadata.clone(),
        spec: HttpRouteSpec {
            parent_refs: g.spec.parent_refs.clone(),
            hostnames: g.spec.hostnames.clone(),
            rules: g
                .spec
                .rules
                .iter()
                .map(|r| HttpRouteRule {
                    name: r.name.clone(),
                    matches: r
                        .matches
                        .iter()
                        .map(|m| HttpRouteMatch {
                            path: m.method.as_ref().map(|mm| {
                                let (kind, value) = path(mm);
                                HttpPathMatch {
                                    type_: Some(kind),
                                    value: Some(value),
                                }
                            }),
                            headers: m.headers.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    filters: r.filters.clone(),
                    backend_refs: r.backend_refs.clone(),
                    timeouts: None,
                    retry: None,
                })
                .collect(),
        },
    }
}

/// What a route compiles to before it is attached anywhere.
struct Compiled {
    rules: Vec<(RuleIr, Vec<MatchIr>)>,
    /// First ResolvedRefs problem, if any.
    unresolved: Option<Problem>,
    /// Accepted=False UnsupportedValue message, if any.
    unsupported: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn http_route(
    res: &Resources,
    wasm: &WasmStates,
    kind: Kind,
    route: &HttpRoute,
    grpc: Option<&GrpcRoute>,
    gws: &mut [GatewayState],
    out: &mut Vec<ObjectStatus>,
    acc: &mut Attached,
) {
    let ns = route.metadata.namespace_or_default();
    let generation = route.metadata.generation();
    let mut compiled = compile(res, wasm, route);
    if kind == Kind::GRPCRoute {
        // gRPC is HTTP/2 end to end: a GRPCRoute's backends speak h2c.
        let h2c = |filters: &mut Vec<FilterIr>| {
            for f in filters {
                if let FilterIr::Mirror(m) = f {
                    m.backend.protocol = UpstreamProtocol::H2c;
                }
            }
        };
        for (rule, _) in &mut compiled.rules {
            h2c(&mut rule.filters);
            for b in &mut rule.backends {
                b.protocol = UpstreamProtocol::H2c;
                h2c(&mut b.filters);
            }
        }
    }

    let targets = attach(
        res,
        gws,
        out,
        RouteRef {
            kind,
            api_version: "v1",
            namespace: ns,
            name: &route.metadata.name,
            generation,
            parent_refs: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        },
        compiled.unresolved.as_ref(),
        compiled.unsupported.as_deref(),
    );
    if targets.is_empty() {
        return;
    }
    // Backend TLS: note which Services are used under which Gateways (for policy
    // status), and give TLS backends the Gateway's client certificate (the first target Gateway's, when a
    // route spans Gateways that differ).
    let client_cert = targets
        .iter()
        .find_map(|(gi, _, _)| gws[*gi].backend_client_cert.clone());
    for (rule, _) in &mut compiled.rules {
        let mirrors = rule.filters.iter_mut().filter_map(|f| match f {
            FilterIr::Mirror(m) => Some(&mut m.backend),
            _ => None,
        });
        for b in rule.backends.iter_mut().chain(mirrors) {
            let service = b.name.rsplit_once(':').map_or(b.name.as_str(), |(s, _)| s);
            for (gi, _, _) in &targets {
                acc.services.insert((service.to_string(), *gi));
            }
            if let Some(tls) = &mut b.tls {
                tls.client_certificate = client_cert.clone();
            }
        }
    }
    let base = acc.rules.len();
    for (ri, (rule, matches)) in compiled.rules.into_iter().enumerate() {
        acc.rules.push(rule);
        for (mi, m) in matches.into_iter().enumerate() {
            let (path_rank, path_len) = match grpc {
                None => path_rank(&m.path),
                // GRPCRoute precedence: more characters in the matching service, then
                // in the matching method (not path kinds).
                Some(g) => {
                    let mm = g
                        .spec
                        .rules
                        .get(ri)
                        .and_then(|r| r.matches.get(mi))
                        .and_then(|m| m.method.as_ref());
                    let len = |v: Option<&String>| v.map_or(0, |s| s.len().min(0xffff));
                    let (svc, method) = mm.map_or((0, 0), |m| {
                        (len(m.service.as_ref()), len(m.method.as_ref()))
                    });
                    (0, (svc << 16) | method)
                }
            };
            let key = PrecedenceKey {
                host_exact: 0,
                host_len: 0,
                path_rank,
                path_len,
                method: m.method.is_some(),
                headers: m.headers.len(),
                query: m.query_params.len(),
                created: route.metadata.creation_timestamp.clone(),
                namespace: ns.into(),
                name: route.metadata.name.clone(),
                rule: ri,
                index: mi,
            };
            for (gi, li, hosts) in &targets {
                for (h, (host_exact, host_len)) in hosts {
                    let mut m = m.clone();
                    m.rule = base + ri;
                    let key = PrecedenceKey {
                        host_exact: *host_exact,
                        host_len: *host_len,
                        ..key.clone()
                    };
                    acc.placed.push(Placed {
                        listener: (*gi, *li),
                        hostname: h.clone(),
                        key,
                        m,
                    });
                }
            }
        }
    }
}

/// The route being attached, as far as attaching needs it.
pub(crate) struct RouteRef<'a> {
    pub kind: Kind,
    pub api_version: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub parent_refs: &'a [sluice_resources::ParentReference],
    pub hostnames: &'a [String],
}

/// Attaches a route to the listeners its parentRefs select, counts it on them, and
/// writes its per-parent status. Returns `(gateway, listener, hostnames)` for each
/// listener it serves.
pub(crate) fn attach(
    res: &Resources,
    gws: &mut [GatewayState],
    out: &mut Vec<ObjectStatus>,
    r: RouteRef<'_>,
    unresolved: Option<&Problem>,
    unsupported: Option<&str>,
) -> Vec<(usize, usize, Vec<RankedHost>)> {
    let mut parents = Vec::new();
    // Listeners this route serves: (gateway, listener, hostnames).
    let mut targets: Vec<(usize, usize, Vec<RankedHost>)> = Vec::new();
    let mut seen = Vec::new();
    for pref in r.parent_refs {
        if seen.contains(&pref) {
            continue;
        }
        seen.push(pref);
        // Parents that are not Gateways of a class of ours belong to someone else, who
        // writes their status; say nothing.
        // A ListenerSet's parent Gateway is ours, so the set is ours to answer for.
        let Some((gi, set)) = gws
            .iter()
            .enumerate()
            .find_map(|(gi, g)| g.parent_of(pref, r.namespace).map(|s| (gi, s)))
        else {
            continue;
        };
        let gw = &gws[gi];
        let candidates: Vec<usize> = gw
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.set == set)
            .filter(|(_, l)| pref.section_name.as_ref().is_none_or(|s| *s == l.spec.name))
            .filter(|(_, l)| pref.port.is_none_or(|p| p == l.spec.port))
            .map(|(i, _)| i)
            .collect();
        let refused = set.and_then(|si| gw.sets[si].refused.as_ref());
        let accepted = if let Some((_, why)) = refused {
            Err((
                Reason::NoMatchingParent,
                format!("the ListenerSet is not attached to its Gateway: {why}"),
            ))
        } else if candidates.is_empty() {
            Err((
                Reason::NoMatchingParent,
                "no listener matches the parentRef's sectionName and port".to_string(),
            ))
        } else {
            let allowed: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&li| {
                    // Attachment depends on allowedRoutes and the parentRef only, not on
                    // the listener's own status: a listener that is not programmed (a
                    // missing certificate, a conflict) still counts its routes.
                    let l = &gw.listeners[li];
                    l.allows_kind(r.kind) && l.allows_namespace(res, r.namespace)
                })
                .collect();
            if allowed.is_empty() {
                Err((
                    Reason::NotAllowedByListeners,
                    "no listener allows this route: check allowedRoutes namespaces and kinds"
                        .to_string(),
                ))
            } else {
                let hits: Vec<(usize, Vec<RankedHost>)> = allowed
                    .iter()
                    .map(|&li| {
                        (
                            li,
                            intersect_hostnames_ranked(
                                gw.listeners[li].spec.hostname.as_deref(),
                                r.hostnames,
                            ),
                        )
                    })
                    .filter(|(_, h)| !h.is_empty())
                    .collect();
                if hits.is_empty() {
                    Err((
                        Reason::NoMatchingListenerHostname,
                        "none of the route's hostnames matches a listener hostname".to_string(),
                    ))
                } else if let Some(msg) = unsupported {
                    Err((Reason::UnsupportedValue, msg.to_string()))
                } else {
                    Ok(hits)
                }
            }
        };
        let mut conditions = Vec::new();
        match accepted {
            Ok(hits) => {
                conditions.push(Condition::new(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "route attached",
                    r.generation,
                ));
                for (li, hosts) in hits {
                    gws[gi].listeners[li].attached_routes += 1;
                    // Traffic only flows through listeners that are programmed.
                    if gws[gi].listeners[li].programmed() {
                        targets.push((gi, li, hosts));
                    }
                }
            }
            Err((reason, msg)) => conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                reason,
                msg,
                r.generation,
            )),
        }
        conditions.push(match unresolved {
            None => Condition::new(
                ConditionType::ResolvedRefs,
                true,
                Reason::ResolvedRefs,
                "all references resolved",
                r.generation,
            ),
            Some((reason, msg)) => Condition::new(
                ConditionType::ResolvedRefs,
                false,
                *reason,
                msg.clone(),
                r.generation,
            ),
        });
        parents.push(RouteParentStatus {
            parent_ref: pref.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }

    if !parents.is_empty() {
        out.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/{}", r.api_version),
            kind: r.kind,
            metadata: StatusMeta {
                namespace: r.namespace.into(),
                name: r.name.to_string(),
                generation: r.generation,
            },
            status: Status::Route(RouteStatus { parents }),
        });
    }
    targets
}

fn compile(res: &Resources, wasm: &WasmStates, route: &HttpRoute) -> Compiled {
    let ns = route.metadata.namespace_or_default();
    let mut c = Compiled {
        rules: Vec::new(),
        unresolved: None,
        unsupported: None,
    };
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{ri}]");
        let matches = compile_matches(rule, &field, &mut c.unsupported);
        let (filters, mut invalid) = compile_filters(
            res,
            wasm,
            ns,
            rule,
            &rule.filters,
            &format!("{field}.filters"),
            &mut c,
        );
        // Sized exactly: a first push would make room for four.
        let mut backends = Vec::with_capacity(rule.backend_refs.len());
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let (mut ir, problem) = backends::resolve(res, ns, &b.backend, b.weight.unwrap_or(1));
            if let Some(p) = problem {
                c.unresolved.get_or_insert(p);
            }
            let (filters, bad) = compile_filters(
                res,
                wasm,
                ns,
                rule,
                &b.filters,
                &format!("{field}.backendRefs[{bi}].filters"),
                &mut c,
            );
            ir.filters = filters;
            if let Some(bad) = bad {
                ir.invalid.get_or_insert(bad);
            }
            backends.push(ir);
        }
        let responds = filters.iter().any(|f| matches!(f, FilterIr::Redirect(_)));
        if invalid.is_none() && !responds {
            if backends.is_empty() {
                invalid = Some("the rule has no backendRefs and no filter that answers".into());
            } else if backends.iter().all(|b| b.invalid.is_some()) {
                invalid = Some("every backendRef of the rule is invalid; see the route's ResolvedRefs condition and any BackendTLSPolicy status".into());
            }
        }
        let timeout = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| parse_duration(s).ok())
                .filter(|d| !d.is_zero())
                .map(|d| d.as_millis() as u64)
        };
        let t = rule.timeouts.clone().unwrap_or_default();
        let rule_ir = RuleIr {
            id: RuleId {
                namespace: ns.into(),
                route: route.metadata.name.clone(),
                index: ri,
                name: rule.name.clone(),
            },
            filters,
            backends,
            request_timeout_ms: timeout(&t.request),
            backend_request_timeout_ms: timeout(&t.backend_request),
            retry: rule.retry.as_ref().map(|r| RetryIr {
                codes: r
                    .codes
                    .iter()
                    .copied()
                    .filter(|c| (400..=599).contains(c))
                    .collect(),
                attempts: r.attempts.unwrap_or(1).min(sluice_resources::MAX_RETRIES),
                backoff_ms: r
                    .backoff
                    .as_deref()
                    .and_then(|b| parse_duration(b).ok())
                    .map_or(DEFAULT_RETRY_BACKOFF_MS, |d| d.as_millis() as u64),
            }),
            invalid,
        };
        c.rules.push((rule_ir, matches));
    }
    c
}

fn compile_matches(
    rule: &HttpRouteRule,
    field: &str,
    unsupported: &mut Option<String>,
) -> Vec<MatchIr> {
    let default = [sluice_resources::HttpRouteMatch::default()];
    let matches = if rule.matches.is_empty() {
        &default[..]
    } else {
        &rule.matches[..]
    };
    let mut out = Vec::new();
    for (mi, m) in matches.iter().enumerate() {
        let mf = format!("{field}.matches[{mi}]");
        let (kind, value) = m
            .path
            .as_ref()
            .map(|p| {
                (
                    p.type_.unwrap_or_default(),
                    p.value.clone().unwrap_or_else(|| "/".into()),
                )
            })
            .unwrap_or((PathMatchType::PathPrefix, "/".into()));
        let path = match kind {
            PathMatchType::Exact => PathMatchIr::Exact(value),
            PathMatchType::PathPrefix => PathMatchIr::Prefix(normalize_prefix(&value)),
            PathMatchType::RegularExpression => {
                check_regex(&value, &format!("{mf}.path.value"), unsupported);
                PathMatchIr::Regex(value)
            }
        };
        let values = |list: &[sluice_resources::HttpHeaderMatch],
                      what: &str,
                      lower: bool,
                      unsupported: &mut Option<String>| {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let regex = h.type_ == Some(ValueMatchType::RegularExpression);
                    if regex {
                        check_regex(&h.value, &format!("{mf}.{what}[{i}].value"), unsupported);
                    }
                    ValueMatchIr {
                        name: if lower {
                            h.name.to_ascii_lowercase()
                        } else {
                            h.name.clone()
                        },
                        regex,
                        value: h.value.clone(),
                    }
                })
                .collect::<Vec<_>>()
        };
        out.push(MatchIr {
            rule: 0,
            path,
            method: m.method.clone(),
            headers: values(&m.headers, "headers", true, unsupported),
            query_params: values(&m.query_params, "queryParams", false, unsupported),
        });
    }
    out
}

fn check_regex(re: &str, field: &str, unsupported: &mut Option<String>) {
    if let Err(e) = Regex::new(re) {
        let first_line = e.to_string().lines().last().unwrap_or_default().to_string();
        unsupported.get_or_insert(format!(
            "{field}: {re:?} is not a valid regular expression ({first_line})"
        ));
    }
}

/// `/foo/` and `/foo` are the same prefix: a trailing slash is ignored.
fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

/// Converts a filter list. Returns the filters and, when one cannot be honoured, why the
/// rule (or backend) must answer 500 instead.
fn compile_filters(
    res: &Resources,
    wasm: &WasmStates,
    ns: &str,
    rule: &HttpRouteRule,
    filters: &[HttpRouteFilter],
    field: &str,
    c: &mut Compiled,
) -> (Vec<FilterIr>, Option<String>) {
    let mut out = Vec::new();
    let mut invalid = None;
    let matched_prefix = || {
        rule.matches
            .first()
            .and_then(|m| m.path.as_ref())
            .and_then(|p| p.value.as_deref())
            .map(normalize_prefix)
            .unwrap_or_else(|| "/".into())
    };
    let path_rewrite = |m: &HttpPathModifier| match m.type_ {
        PathModifierType::ReplaceFullPath => {
            PathRewriteIr::Full(m.replace_full_path.clone().unwrap_or_default())
        }
        PathModifierType::ReplacePrefixMatch => PathRewriteIr::Prefix {
            prefix: matched_prefix(),
            with: m.replace_prefix_match.clone().unwrap_or_default(),
        },
    };
    for (fi, f) in filters.iter().enumerate() {
        match f.type_.as_str() {
            "RequestHeaderModifier" => out.push(FilterIr::RequestHeaders(header_mod(
                f.request_header_modifier.as_ref(),
            ))),
            "ResponseHeaderModifier" => out.push(FilterIr::ResponseHeaders(header_mod(
                f.response_header_modifier.as_ref(),
            ))),
            "RequestRedirect" => {
                let r = f.request_redirect.clone().unwrap_or_default();
                out.push(FilterIr::Redirect(RedirectIr {
                    scheme: r.scheme,
                    hostname: r.hostname,
                    path: r.path.as_ref().map(path_rewrite),
                    port: r.port,
                    status: r.status_code.unwrap_or(302),
                }));
            }
            "URLRewrite" => {
                let u = f.url_rewrite.clone().unwrap_or_default();
                out.push(FilterIr::Rewrite(RewriteIr {
                    hostname: u.hostname,
                    path: u.path.as_ref().map(path_rewrite),
                }));
            }
            "RequestMirror" => {
                let Some(m) = &f.request_mirror else { continue };
                let (backend, problem) = backends::resolve(res, ns, &m.backend_ref, 1);
                let (numerator, denominator) = match (m.percent, m.fraction) {
                    (Some(p), _) => (p, 100),
                    (None, Some(fr)) => (fr.numerator, fr.denominator.unwrap_or(100)),
                    (None, None) => (100, 100),
                };
                match problem {
                    // A mirror that cannot resolve is dropped; the primary traffic is unaffected.
                    Some(p) => {
                        c.unresolved.get_or_insert(p);
                    }
                    None => out.push(FilterIr::Mirror(Box::new(MirrorIr {
                        backend,
                        numerator,
                        denominator,
                    }))),
                }
            }
            "ExternalAuth" => {
                let Some(a) = &f.external_auth else { continue };
                let at = format!("{field}[{fi}].externalAuth");
                let grpc = match a.protocol.as_str() {
                    "HTTP" => false,
                    "GRPC" => true,
                    other => {
                        c.unsupported.get_or_insert(format!(
                            "{at}.protocol: {other:?} is not supported; use HTTP or GRPC"
                        ));
                        continue;
                    }
                };
                let forward_body = a
                    .forward_body
                    .as_ref()
                    .and_then(|b| b.max_size)
                    .unwrap_or(0);
                if forward_body > sluice_ir::EXTERNAL_AUTH_MAX_FORWARD_BODY {
                    c.unsupported.get_or_insert(format!(
                        "{at}.forwardBody.maxSize: {forward_body} is above the most Sluice buffers for an authorization service ({} bytes); lower it",
                        sluice_ir::EXTERNAL_AUTH_MAX_FORWARD_BODY
                    ));
                    continue;
                }
                let (mut backend, problem) = backends::resolve(res, ns, &a.backend_ref, 1);
                if let Some((reason, msg)) = problem {
                    // Fail closed: the rule answers 500 until the service resolves.
                    let msg = format!("{at}.backendRef: {msg}");
                    c.unresolved.get_or_insert((reason, msg.clone()));
                    invalid.get_or_insert(msg);
                    continue;
                }
                let lower = |v: &[String]| v.iter().map(|n| n.to_ascii_lowercase()).collect();
                out.push(FilterIr::ExternalAuth(Box::new(if grpc {
                    // The Envoy ext_authz protocol is gRPC: HTTP/2 to the service.
                    backend.protocol = UpstreamProtocol::H2c;
                    let g = a.grpc.clone().unwrap_or_default();
                    ExternalAuthIr {
                        backend,
                        grpc: true,
                        path_prefix: String::new(),
                        allowed_headers: lower(&g.allowed_headers),
                        allowed_response_headers: Vec::new(),
                        forward_body,
                    }
                } else {
                    let h = a.http.clone().unwrap_or_default();
                    ExternalAuthIr {
                        backend,
                        grpc: false,
                        path_prefix: h.path.unwrap_or_default().trim_end_matches('/').to_string(),
                        allowed_headers: lower(&h.allowed_headers),
                        allowed_response_headers: lower(&h.allowed_response_headers),
                        forward_body,
                    }
                })));
            }
            "CORS" => {
                let cors = f.cors.clone().unwrap_or_default();
                out.push(FilterIr::Cors(CorsIr {
                    allow_origins: cors.allow_origins,
                    allow_credentials: cors.allow_credentials.unwrap_or(false),
                    allow_methods: cors.allow_methods,
                    allow_headers: cors.allow_headers,
                    expose_headers: cors.expose_headers,
                    max_age: cors.max_age.unwrap_or(5),
                }));
            }
            "ExtensionRef" => {
                let Some(e) = &f.extension_ref else { continue };
                if e.group == sluice_resources::SLUICE_GROUP && e.kind == Kind::WasmFilter.as_str()
                {
                    match wasm::resolve(res, wasm, ns, &e.name) {
                        Ok(ir) => out.push(FilterIr::Wasm(ir)),
                        Err((reason, msg)) => {
                            let msg = format!("{field}[{fi}].extensionRef: {msg}");
                            c.unresolved.get_or_insert((reason, msg.clone()));
                            invalid.get_or_insert(msg);
                        }
                    }
                    continue;
                }
                let msg = format!(
                    "{field}[{fi}].extensionRef: {}/{} {:?} is not a kind Sluice knows; use group sluice.dev, kind WasmFilter",
                    if e.group.is_empty() { "core" } else { &e.group },
                    e.kind,
                    e.name
                );
                c.unresolved
                    .get_or_insert((Reason::InvalidKind, msg.clone()));
                invalid.get_or_insert(msg);
            }
            other => {
                c.unsupported.get_or_insert(format!(
                    "{field}[{fi}].type: filter type {other:?} is not supported; supported types are RequestHeaderModifier, \
                     ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror, CORS, ExternalAuth and ExtensionRef"
                ));
            }
        }
    }
    (out, invalid)
}

fn header_mod(h: Option<&HttpHeaderFilter>) -> HeaderModIr {
    let Some(h) = h else {
        return HeaderModIr::default();
    };
    let pairs = |v: &[sluice_resources::HttpHeader]| {
        v.iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect()
    };
    HeaderModIr {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.iter().map(|s| s.to_ascii_lowercase()).collect(),
    }
}
