//! The validation the API server applies from the CRDs' OpenAPI schemas and CEL rules,
//! so that file mode refuses what a cluster would refuse. Each check returns
//! `(field path, message that says how to fix it)`.

use std::time::Duration;

use crate::*;

type Problems = Vec<(String, String)>;

pub fn gateway_class(gc: &GatewayClass) -> Problems {
    let mut p = Vec::new();
    if !gc.spec.controller_name.contains('/') {
        p.push((
            "spec.controllerName".into(),
            "must be a domain-prefixed path such as sluice.dev/gateway-controller".into(),
        ));
    }
    p
}

pub fn gateway(gw: &Gateway) -> Problems {
    let mut p = listeners(&gw.spec.listeners);
    if let Some(ns) = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        && ns.from == Some(FromListenerNamespaces::Selector)
        && ns.selector.is_none()
    {
        p.push((
            "spec.allowedListeners.namespaces.selector".into(),
            "required when from is Selector".into(),
        ));
    }
    p
}

/// A ListenerSet: its listeners as a Gateway's, and a parent that is a Gateway.
pub fn listener_set(ls: &ListenerSet) -> Problems {
    let mut p = listeners(&ls.spec.listeners);
    let r = &ls.spec.parent_ref;
    if r.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
        || r.kind.as_deref().unwrap_or("Gateway") != "Gateway"
    {
        p.push((
            "spec.parentRef".into(),
            format!(
                "must name a {GATEWAY_GROUP} Gateway, not a {}; a ListenerSet adds listeners to a Gateway only",
                match (r.group.as_deref().unwrap_or(GATEWAY_GROUP), r.kind.as_deref().unwrap_or("Gateway")) {
                    ("", kind) => format!("core {kind}"),
                    (group, kind) => format!("{group} {kind}"),
                }
            ),
        ));
    }
    p
}

/// The checks a Gateway's and a ListenerSet's `spec.listeners` share.
fn listeners(ls: &[Listener]) -> Problems {
    let mut p = Vec::new();
    if ls.is_empty() {
        p.push((
            "spec.listeners".into(),
            "at least one listener is required".into(),
        ));
    }
    for (i, l) in ls.iter().enumerate() {
        let f = |s: &str| format!("spec.listeners[{i}].{s}");
        if l.port == 0 {
            p.push((f("port"), "must be between 1 and 65535".into()));
        }
        if let Some(h) = &l.hostname
            && let Err(m) = check_hostname(h)
        {
            p.push((f("hostname"), m));
        }
        if ls[..i].iter().any(|o| o.name == l.name) {
            p.push((
                f("name"),
                format!(
                    "listener name {:?} is used twice; names must be unique",
                    l.name
                ),
            ));
        }
        if let Some(ns) = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            && ns.from == Some(FromNamespaces::Selector)
            && ns.selector.is_none()
        {
            p.push((
                f("allowedRoutes.namespaces.selector"),
                "required when from is Selector".into(),
            ));
        }
    }
    p
}

pub fn secret(s: &Secret) -> Problems {
    use base64::Engine;
    let mut p = Vec::new();
    for (k, v) in &s.data {
        if base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .is_err()
        {
            p.push((
                format!("data.{k}"),
                "is not valid base64; use stringData for plain text".into(),
            ));
        }
    }
    if s.type_.as_deref() == Some(DOCKER_CONFIG_JSON)
        && !s.data.contains_key(".dockerconfigjson")
        && !s.string_data.contains_key(".dockerconfigjson")
    {
        p.push((
            "data[.dockerconfigjson]".into(),
            format!("required for type {DOCKER_CONFIG_JSON}: Docker's config.json, base64"),
        ));
    }
    p
}

/// The Secret type that holds registry credentials.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";

pub fn endpoint_slice(es: &EndpointSlice) -> Problems {
    let mut p = Vec::new();
    if !es.metadata.labels.contains_key(SERVICE_NAME_LABEL) {
        p.push((
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "required: it names the Service this slice belongs to".into(),
        ));
    }
    if !matches!(es.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        p.push(("addressType".into(), "must be IPv4, IPv6 or FQDN".into()));
    }
    for (i, e) in es.endpoints.iter().enumerate() {
        for (j, a) in e.addresses.iter().enumerate() {
            if es.address_type != "FQDN" && a.parse::<std::net::IpAddr>().is_err() {
                p.push((
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                ));
            }
        }
    }
    p
}

pub fn http_route(r: &HttpRoute) -> Problems {
    let mut p = Vec::new();
    hostnames(&r.spec.hostnames, &mut p);
    for (ri, rule) in r.spec.rules.iter().enumerate() {
        let rf = |s: &str| format!("spec.rules[{ri}].{s}");
        if let Some(name) = &rule.name
            && r.spec.rules[..ri]
                .iter()
                .any(|o| o.name.as_ref() == Some(name))
        {
            p.push((
                rf("name"),
                format!("rule name {name:?} is used twice; names must be unique"),
            ));
        }
        for (mi, m) in rule.matches.iter().enumerate() {
            let mf = |s: &str| rf(&format!("matches[{mi}].{s}"));
            if let Some(path) = &m.path {
                let value = path.value.as_deref().unwrap_or("/");
                let kind = path.type_.unwrap_or_default();
                if kind != PathMatchType::RegularExpression {
                    if !value.starts_with('/') {
                        p.push((
                            mf("path.value"),
                            "must be an absolute path starting with '/'".into(),
                        ));
                    }
                    if value.contains("//")
                        || value.contains("/./")
                        || value.contains("/../")
                        || value.contains('?')
                        || value.contains('#')
                    {
                        p.push((
                            mf("path.value"),
                            "must not contain '//', '/./', '/../', '?' or '#'".into(),
                        ));
                    }
                }
            }
            for (hi, h) in m.headers.iter().enumerate() {
                if !is_token(&h.name) {
                    p.push((
                        mf(&format!("headers[{hi}].name")),
                        "must be a valid HTTP header name".into(),
                    ));
                }
                if m.headers[..hi]
                    .iter()
                    .any(|o| o.name.eq_ignore_ascii_case(&h.name))
                {
                    p.push((
                        mf(&format!("headers[{hi}].name")),
                        "header names must be unique within a match".into(),
                    ));
                }
            }
            for (qi, q) in m.query_params.iter().enumerate() {
                if m.query_params[..qi].iter().any(|o| o.name == q.name) {
                    p.push((
                        mf(&format!("queryParams[{qi}].name")),
                        "query param names must be unique within a match".into(),
                    ));
                }
            }
            if let Some(method) = &m.method
                && !matches!(
                    method.as_str(),
                    "GET"
                        | "HEAD"
                        | "POST"
                        | "PUT"
                        | "DELETE"
                        | "CONNECT"
                        | "OPTIONS"
                        | "TRACE"
                        | "PATCH"
                )
            {
                p.push((mf("method"), format!("{method:?} is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH")));
            }
        }
        check_filters(&rule.filters, &rf("filters"), rule, &mut p);
        let redirect = rule.filters.iter().any(|f| f.type_ == "RequestRedirect");
        if redirect && !rule.backend_refs.is_empty() {
            p.push((
                rf("backendRefs"),
                "a rule with a RequestRedirect filter cannot have backendRefs; remove one of them"
                    .into(),
            ));
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let bf = |s: &str| rf(&format!("backendRefs[{bi}].{s}"));
            check_backend(&b.backend, &bf(""), &mut p);
            if b.weight.is_some_and(|w| w > 1_000_000) {
                p.push((bf("weight"), "must be between 0 and 1000000".into()));
            }
            check_filters(&b.filters, &bf("filters"), rule, &mut p);
        }
        if let Some(r) = &rule.retry {
            for (i, c) in r.codes.iter().enumerate() {
                if !(400..=599).contains(c) {
                    p.push((
                        rf(&format!("retry.codes[{i}]")),
                        format!("{c}: must be a status from 400 to 599"),
                    ));
                }
            }
            if r.attempts.is_some_and(|a| a > MAX_RETRIES) {
                p.push((
                    rf("retry.attempts"),
                    format!("must be at most {MAX_RETRIES}"),
                ));
            }
            if let Some(b) = &r.backoff
                && let Err(m) = parse_duration(b)
            {
                p.push((rf("retry.backoff"), m));
            }
        }
        if let Some(t) = &rule.timeouts {
            for (name, v) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ] {
                if let Some(v) = v
                    && let Err(m) = parse_duration(v)
                {
                    p.push((rf(&format!("timeouts.{name}")), m));
                }
            }
            if let (Some(Ok(req)), Some(Ok(be))) = (
                t.request.as_deref().map(parse_duration),
                t.backend_request.as_deref().map(parse_duration),
            ) && !req.is_zero()
                && be > req
            {
                p.push((
                    rf("timeouts.backendRequest"),
                    "must not be longer than timeouts.request".into(),
                ));
            }
        }
    }
    p
}

pub fn wasm_filter(w: &WasmFilter) -> Problems {
    let mut p = Vec::new();
    let s = &w.spec.source;
    let set = [s.path.is_some(), s.url.is_some(), s.oci.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        p.push((
            "spec.source".into(),
            "set exactly one of path, url or oci".into(),
        ));
    }
    if let Some(u) = &s.url {
        if !u.starts_with("https://") {
            p.push(("spec.source.url".into(), "must be an https:// URL".into()));
        }
        if s.sha256.is_none() {
            p.push((
                "spec.source.sha256".into(),
                "required with url: the hex SHA-256 of the component".into(),
            ));
        }
    }
    if let Some(h) = &s.sha256
        && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        p.push(("spec.source.sha256".into(), "must be 64 hex digits".into()));
    }
    if let Some(path) = &s.path
        && path.is_empty()
    {
        p.push(("spec.source.path".into(), "must not be empty".into()));
    }
    if let Some(o) = &s.oci {
        if o.image.is_empty() {
            p.push(("spec.source.oci.image".into(), "required".into()));
        }
        if let Some(d) = &o.digest {
            let hex = d.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                p.push((
                    "spec.source.oci.digest".into(),
                    "must be sha256: followed by 64 lowercase hex digits (the manifest digest `sluice filter push` prints)".into(),
                ));
            }
        }
        if let Some(pp) = &o.pull_policy
            && !matches!(pp.as_str(), "IfNotPresent" | "Always")
        {
            p.push((
                "spec.source.oci.pullPolicy".into(),
                format!("{pp:?}: must be IfNotPresent or Always"),
            ));
        }
    }
    if let Some(r) = w.spec.kv.as_ref().and_then(|k| k.redis.as_ref()) {
        let at = |f: &str| format!("spec.kv.redis.{f}");
        match r.url.split_once("://") {
            Some(("redis", rest)) if !rest.is_empty() && !rest.contains('@') => {}
            Some(("redis", rest)) if rest.contains('@') => p.push((
                at("url"),
                "must not hold credentials, which anyone who can read the WasmFilter would see: put the password in a Secret and name it in passwordSecretRef".into(),
            )),
            Some(("rediss", _)) => p.push((
                at("url"),
                "rediss:// (TLS) is not supported yet: use redis:// to a server on a network you trust".into(),
            )),
            _ => p.push((
                at("url"),
                format!("{:?}: must be redis://HOST:PORT, optionally with /DB", r.url),
            )),
        }
        if let Some(t) = &r.timeout {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(10) => {}
                Ok(_) => p.push((at("timeout"), "must be above 0 and at most 10s".into())),
                Err(e) => p.push((at("timeout"), e)),
            }
        }
        if let Some(s) = &r.password_secret_ref
            && (s.name.is_empty() || s.key.is_empty())
        {
            p.push((at("passwordSecretRef"), "name and key are required".into()));
        }
        if r.username.is_some() && r.password_secret_ref.is_none() {
            p.push((
                at("username"),
                "needs passwordSecretRef: an ACL user logs in with a password".into(),
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    if w.spec.outbound.len() > 16 {
        p.push(("spec.outbound".into(), "at most 16 grants".into()));
    }
    for (i, g) in w.spec.outbound.iter().enumerate() {
        let at = |f: &str| format!("spec.outbound[{i}].{f}");
        let label = !g.name.is_empty()
            && g.name.len() <= 63
            && g.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label {
            p.push((
                at("name"),
                format!(
                    "{:?}: use lowercase letters, digits and -, at most 63 (such as authz)",
                    g.name
                ),
            ));
        } else if !names.insert(g.name.as_str()) {
            p.push((
                at("name"),
                format!("{:?} is granted twice; names must be unique", g.name),
            ));
        }
        if g.backend_ref.port == 0 {
            p.push((
                at("backendRef.port"),
                "must be a port number, 1 to 65535".into(),
            ));
        }
        if let Some(t) = &g.timeout {
            match parse_duration(t) {
                Ok(d) if d.is_zero() || d > Duration::from_secs(60) => {
                    p.push((at("timeout"), "must be above 0 and at most 60s".into()))
                }
                Ok(_) => {}
                Err(e) => p.push((at("timeout"), e)),
            }
        }
    }
    if let Some(d) = &w.spec.debug {
        if d.capture_failures.is_some_and(|n| n > WASM_MAX_CAPTURES) {
            p.push((
                "spec.debug.captureFailures".into(),
                format!("must be at most {WASM_MAX_CAPTURES}"),
            ));
        }
        if d.redact_headers.len() > 32 {
            p.push((
                "spec.debug.redactHeaders".into(),
                "must list at most 32 headers".into(),
            ));
        }
        for (i, h) in d.redact_headers.iter().enumerate() {
            let token = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                p.push((
                    format!("spec.debug.redactHeaders[{i}]"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        if let Some(m) = &d.max_body_bytes {
            match parse_quantity(m) {
                Ok(b) if b > WASM_MAX_CAPTURE_BODY => p.push((
                    "spec.debug.maxBodyBytes".into(),
                    "must be at most 1Mi".into(),
                )),
                Ok(_) => {}
                Err(e) => p.push(("spec.debug.maxBodyBytes".into(), e)),
            }
        }
    }
    if let Some(l) = &w.spec.limits {
        if let Some(m) = &l.memory {
            match parse_quantity(m) {
                Ok(b) if !(64 << 10..=WASM_MAX_MEMORY).contains(&b) => p.push((
                    "spec.limits.memory".into(),
                    "must be between 64Ki and 1Gi (the most the runtime gives one instance)".into(),
                )),
                Ok(_) => {}
                Err(e) => p.push(("spec.limits.memory".into(), e)),
            }
        }
        if let Some(t) = &l.timeout {
            match parse_duration(t) {
                Ok(d) if d.is_zero() || d > Duration::from_secs(10) => p.push((
                    "spec.limits.timeout".into(),
                    "must be above 0 and at most 10s".into(),
                )),
                Ok(_) => {}
                Err(e) => p.push(("spec.limits.timeout".into(), e)),
            }
        }
        if let Some(m) = &l.max_body_bytes {
            match parse_quantity(m) {
                Ok(b) if b > WASM_MAX_BODY => p.push((
                    "spec.limits.maxBodyBytes".into(),
                    "must be at most 64Mi".into(),
                )),
                Ok(b) if b >= l.memory.as_deref().and_then(|m| parse_quantity(m).ok()).unwrap_or(WASM_DEFAULT_MEMORY) => p.push((
                    "spec.limits.maxBodyBytes".into(),
                    "must be below spec.limits.memory (default 16Mi): the body is copied into the filter's memory; raise the memory or lower this".into(),
                )),
                Ok(_) => {}
                Err(e) => p.push(("spec.limits.maxBodyBytes".into(), e)),
            }
        }
        if l.min_instances.is_some_and(|n| n > 64) {
            p.push((
                "spec.limits.minInstances".into(),
                "must be at most 64".into(),
            ));
        }
    }
    p
}

/// The largest `spec.limits.memory`: the filter runtime reserves this much address space
/// per instance slot, so it can give no instance more (`sluice_wasm::MAX_MEMORY`, which a
/// loader test keeps equal).
pub const WASM_MAX_MEMORY: u64 = 1 << 30;

/// `spec.limits.memory` when unset (`sluice_ir::WASM_DEFAULT_MEMORY`, which a translate
/// test keeps equal).
pub const WASM_DEFAULT_MEMORY: u64 = 16 << 20;

/// `spec.limits.maxBodyBytes` when unset.
pub const WASM_DEFAULT_BODY: u64 = 1 << 20;

/// The largest `spec.limits.maxBodyBytes`.
pub const WASM_MAX_BODY: u64 = 64 << 20;

/// The most retries an HTTPRoute rule's `retry.attempts` may ask for.
pub const MAX_RETRIES: u32 = 10;

/// The most `spec.debug.captureFailures`.
pub const WASM_MAX_CAPTURES: u32 = 100;

/// `spec.debug.maxBodyBytes` when unset, and its largest value.
pub const WASM_DEFAULT_CAPTURE_BODY: u64 = 64 << 10;
pub const WASM_MAX_CAPTURE_BODY: u64 = 1 << 20;

/// A Kubernetes quantity for bytes: `16Mi`, `1Gi`, `512Ki`, `1M`, `1000`.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a quantity such as 16Mi, 512Ki or 1Gi");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn check_backend(b: &BackendObjectReference, field: &str, p: &mut Problems) {
    if b.port == Some(0) {
        p.push((format!("{field}port"), "must be between 1 and 65535".into()));
    }
    let core = b.group.as_deref().unwrap_or("").is_empty();
    if core && b.kind.as_deref().unwrap_or("Service") == "Service" && b.port.is_none() {
        p.push((
            format!("{field}port"),
            "required when the backend is a Service; give the Service port".into(),
        ));
    }
}

/// An `ExternalAuth` filter's fields, as its CRD checks them.
fn check_external_auth(a: &HttpExternalAuthFilter, field: &str, p: &mut Problems) {
    let at = |s: &str| format!("{field}.{s}");
    match a.protocol.as_str() {
        "HTTP" if a.http.is_none() => p.push((at("http"), "required when protocol is HTTP".into())),
        "GRPC" if a.grpc.is_none() => p.push((at("grpc"), "required when protocol is GRPC".into())),
        "HTTP" | "GRPC" => {}
        other => p.push((at("protocol"), format!("{other:?}: must be HTTP or GRPC"))),
    }
    if a.http.is_some() && a.protocol != "HTTP" {
        p.push((at("http"), "must not be set unless protocol is HTTP".into()));
    }
    if a.grpc.is_some() && a.protocol != "GRPC" {
        p.push((at("grpc"), "must not be set unless protocol is GRPC".into()));
    }
    check_backend(&a.backend_ref, &at("backendRef."), p);
    if let Some(g) = &a.grpc
        && g.allowed_headers.len() > 64
    {
        p.push((
            at("grpc.allowedHeaders"),
            "must list at most 64 headers".into(),
        ));
    }
    let Some(h) = &a.http else { return };
    if let Some(path) = &h.path {
        let ok = !path.is_empty()
            && path.len() <= 1024
            && path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@%".contains(&b));
        if !ok {
            p.push((
                at("http.path"),
                format!("{path:?}: must be a path prefix such as /auth (at most 1024 characters, no query)"),
            ));
        }
    }
    for (list, name) in [
        (&h.allowed_headers, "http.allowedHeaders"),
        (&h.allowed_response_headers, "http.allowedResponseHeaders"),
    ] {
        if list.len() > 64 {
            p.push((at(name), "must list at most 64 headers".into()));
        }
    }
}

fn check_filters(filters: &[HttpRouteFilter], field: &str, rule: &HttpRouteRule, p: &mut Problems) {
    for (fi, f) in filters.iter().enumerate() {
        let ff = |s: &str| format!("{field}[{fi}]{s}");
        let present = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestMirror", f.request_mirror.is_some()),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
            ("ExternalAuth", f.external_auth.is_some()),
        ];
        if let Some(a) = &f.external_auth {
            check_external_auth(a, &ff(".externalAuth"), p);
        }
        for (t, set) in present {
            let camel = lower_first(t);
            if t == f.type_ && !set {
                p.push((
                    ff(&format!(".{camel}")),
                    format!("required when type is {t}"),
                ));
            } else if t != f.type_ && set {
                p.push((
                    ff(&format!(".{camel}")),
                    format!("must not be set when type is {}", f.type_),
                ));
            }
        }
        // An unknown type is not refused here: a cluster with experimental CRDs admits
        // it, so the translator reports it as UnsupportedValue instead.
        if filters[..fi].iter().any(|o| {
            o.type_ == f.type_
                && matches!(
                    f.type_.as_str(),
                    "RequestHeaderModifier"
                        | "ResponseHeaderModifier"
                        | "RequestRedirect"
                        | "URLRewrite"
                        | "CORS"
                )
        }) {
            p.push((
                ff(".type"),
                format!("{} may appear only once per filter list", f.type_),
            ));
        }
        for (name, hf) in [
            ("requestHeaderModifier", &f.request_header_modifier),
            ("responseHeaderModifier", &f.response_header_modifier),
        ] {
            if let Some(hf) = hf {
                for (i, h) in hf.set.iter().chain(&hf.add).enumerate() {
                    if !is_token(&h.name) {
                        p.push((
                            ff(&format!(".{name}")),
                            format!("header {i}: {:?} is not a valid HTTP header name", h.name),
                        ));
                    }
                }
            }
        }
        if let Some(r) = &f.request_redirect {
            if let Some(code) = r.status_code
                && !matches!(code, 301 | 302 | 303 | 307 | 308)
            {
                p.push((
                    ff(".requestRedirect.statusCode"),
                    "must be one of 301, 302, 303, 307, 308".into(),
                ));
            }
            if let Some(s) = &r.scheme
                && !matches!(s.as_str(), "http" | "https")
            {
                p.push((
                    ff(".requestRedirect.scheme"),
                    "must be http or https".into(),
                ));
            }
            if let Some(path) = &r.path {
                check_path_modifier(path, &ff(".requestRedirect.path"), rule, p);
            }
        }
        if let Some(u) = &f.url_rewrite
            && let Some(path) = &u.path
        {
            check_path_modifier(path, &ff(".urlRewrite.path"), rule, p);
        }
        if let Some(m) = &f.request_mirror {
            check_backend(&m.backend_ref, &ff(".requestMirror.backendRef."), p);
            if m.percent.is_some() && m.fraction.is_some() {
                p.push((
                    ff(".requestMirror"),
                    "set percent or fraction, not both".into(),
                ));
            }
            if m.percent.is_some_and(|v| v > 100) {
                p.push((
                    ff(".requestMirror.percent"),
                    "must be between 0 and 100".into(),
                ));
            }
            if let Some(fr) = m.fraction {
                let d = fr.denominator.unwrap_or(100);
                if d == 0 || fr.numerator > d {
                    p.push((
                        ff(".requestMirror.fraction"),
                        "numerator must be at most denominator, and denominator above 0".into(),
                    ));
                }
            }
        }
        if let Some(c) = &f.cors {
            for (i, o) in c.allow_origins.iter().enumerate() {
                if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                    p.push((
                        ff(&format!(".cors.allowOrigins[{i}]")),
                        "must be \"*\" or scheme://host[:port], host may start with \"*.\"".into(),
                    ));
                }
            }
            // A wildcard origin with allowCredentials is valid: the filter answers with
            // the request's origin, as the Fetch standard requires.
        }
    }
}

fn check_path_modifier(m: &HttpPathModifier, field: &str, rule: &HttpRouteRule, p: &mut Problems) {
    match m.type_ {
        PathModifierType::ReplaceFullPath => {
            if m.replace_full_path.is_none() {
                p.push((
                    format!("{field}.replaceFullPath"),
                    "required when type is ReplaceFullPath".into(),
                ));
            }
            if m.replace_prefix_match.is_some() {
                p.push((
                    format!("{field}.replacePrefixMatch"),
                    "must not be set when type is ReplaceFullPath".into(),
                ));
            }
        }
        PathModifierType::ReplacePrefixMatch => {
            if m.replace_prefix_match.is_none() {
                p.push((
                    format!("{field}.replacePrefixMatch"),
                    "required when type is ReplacePrefixMatch".into(),
                ));
            }
            if m.replace_full_path.is_some() {
                p.push((
                    format!("{field}.replaceFullPath"),
                    "must not be set when type is ReplacePrefixMatch".into(),
                ));
            }
            let prefix_only = rule.matches.len() == 1
                && rule.matches[0]
                    .path
                    .as_ref()
                    .is_some_and(|pm| pm.type_.unwrap_or_default() == PathMatchType::PathPrefix);
            if !prefix_only {
                p.push((
                    format!("{field}.type"),
                    "ReplacePrefixMatch needs the rule to have exactly one match, with a PathPrefix path".into(),
                ));
            }
        }
    }
}

fn lower_first(s: &str) -> String {
    match s {
        "URLRewrite" => "urlRewrite".into(),
        "CORS" => "cors".into(),
        _ => {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 1123 hostname, optionally with a leading `*.` label; no IPs, no port.
/// What the API server's Ingress validation refuses (networking/validation), so that
/// file mode refuses it too.
pub fn ingress(ing: &Ingress) -> Problems {
    let mut p = Vec::new();
    let backend = |p: &mut Problems, at: String, b: &IngressBackend| match (&b.service, &b.resource)
    {
        (Some(_), Some(_)) => p.push((at, "set either service or resource, not both".into())),
        (None, None) => p.push((at, "set service (a Service name and port)".into())),
        (Some(s), None) => match &s.port {
            Some(ServiceBackendPort {
                name: Some(_),
                number: Some(_),
            }) => p.push((
                format!("{at}.service.port"),
                "set either name or number, not both".into(),
            )),
            Some(ServiceBackendPort {
                name: None,
                number: None | Some(0),
            })
            | None => p.push((
                format!("{at}.service.port"),
                "required: the Service port, by number (number: 80) or by name (name: http)".into(),
            )),
            _ => {}
        },
        (None, Some(_)) => {}
    };
    if let Some(b) = &ing.spec.default_backend {
        backend(&mut p, "spec.defaultBackend".into(), b);
    }
    if ing.spec.rules.is_empty() && ing.spec.default_backend.is_none() {
        p.push((
            "spec".into(),
            "set rules or defaultBackend; an Ingress without either routes nothing".into(),
        ));
    }
    for (i, t) in ing.spec.tls.iter().enumerate() {
        for (j, h) in t.hosts.iter().enumerate() {
            if let Err(m) = check_hostname(h) {
                p.push((format!("spec.tls[{i}].hosts[{j}]"), m));
            }
        }
    }
    for (i, r) in ing.spec.rules.iter().enumerate() {
        if let Some(h) = &r.host
            && let Err(m) = check_hostname(h)
        {
            p.push((format!("spec.rules[{i}].host"), m));
        }
        let Some(http) = &r.http else { continue };
        if http.paths.is_empty() {
            p.push((
                format!("spec.rules[{i}].http.paths"),
                "at least one path is required".into(),
            ));
        }
        for (j, path) in http.paths.iter().enumerate() {
            let f = |s: &str| format!("spec.rules[{i}].http.paths[{j}].{s}");
            match path.path_type.as_str() {
                "Exact" | "Prefix" => {
                    let v = path.path.as_deref().unwrap_or("");
                    if !v.starts_with('/') {
                        p.push((
                            f("path"),
                            format!("{v:?} must be an absolute path starting with '/'"),
                        ));
                    } else if v.split('/').any(|s| s == "." || s == "..")
                        || v.contains("//")
                        || v.contains(['?', '#'])
                    {
                        p.push((
                            f("path"),
                            format!("{v:?} must be a plain path: no '//', '.' or '..' segments, '?' or '#'"),
                        ));
                    }
                }
                "ImplementationSpecific" => {
                    if let Some(v) = &path.path
                        && !v.starts_with('/')
                    {
                        p.push((f("path"), format!("{v:?} must start with '/'")));
                    }
                }
                "" => p.push((
                    f("pathType"),
                    "required: Exact, Prefix or ImplementationSpecific".into(),
                )),
                other => p.push((
                    f("pathType"),
                    format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                )),
            }
            backend(&mut p, f("backend"), &path.backend);
        }
    }
    p
}

pub fn check_hostname(h: &str) -> Result<(), String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let ok = !rest.is_empty()
        && h.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        return Err(format!(
            "{h:?} is not a valid hostname: use lowercase RFC 1123 labels, optionally starting with \"*.\""
        ));
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{h:?} is an IP address; hostnames must be names"));
    }
    Ok(())
}

/// A Gateway API duration (GEP-2257): one to four `<number><unit>` parts, unit h, m, s or ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a Gateway API duration such as 10s, 1m30s or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * n as u32;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

/// TCPRoutes and UDPRoutes have no hostnames: a byte stream or datagram names no host.
pub fn no_hostnames(r: &StreamRoute) -> Problems {
    let mut p = one_rule(r);
    if !r.spec.hostnames.is_empty() {
        p.push((
            "spec.hostnames".into(),
            "only TLSRoutes have hostnames (matched against the TLS server name)".into(),
        ));
    }
    p
}

pub fn tls_route(r: &StreamRoute) -> Problems {
    let mut p = one_rule(r);
    hostnames(&r.spec.hostnames, &mut p);
    p
}

fn one_rule(r: &StreamRoute) -> Problems {
    if r.spec.rules.len() == 1 {
        Vec::new()
    } else {
        vec![("spec.rules".into(), "must have exactly one rule".into())]
    }
}

/// A route's `spec.hostnames`, each checked.
fn hostnames(hs: &[String], p: &mut Problems) {
    for (i, h) in hs.iter().enumerate() {
        if let Err(m) = check_hostname(h) {
            p.push((format!("spec.hostnames[{i}]"), m));
        }
    }
}

/// GRPCRoute: hostnames, method matches that name something, and the filters the
/// kind allows.
pub fn grpc_route(r: &GrpcRoute) -> Problems {
    let mut p = Vec::new();
    hostnames(&r.spec.hostnames, &mut p);
    for (i, rule) in r.spec.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(mm) = &m.method {
                if mm.service.is_none() && mm.method.is_none() {
                    p.push((
                        format!("spec.rules[{i}].matches[{j}].method"),
                        "set service, method, or both".into(),
                    ));
                }
                if mm.type_ == Some(ValueMatchType::RegularExpression) {
                    for (field, v) in [("service", &mm.service), ("method", &mm.method)] {
                        if let Some(v) = v
                            && regex::Regex::new(v).is_err()
                        {
                            p.push((
                                format!("spec.rules[{i}].matches[{j}].method.{field}"),
                                format!("{v:?} is not a valid regular expression"),
                            ));
                        }
                    }
                }
            }
        }
        let filter_lists = std::iter::once((format!("spec.rules[{i}]"), &rule.filters)).chain(
            rule.backend_refs
                .iter()
                .enumerate()
                .map(|(k, b)| (format!("spec.rules[{i}].backendRefs[{k}]"), &b.filters)),
        );
        for (at, filters) in filter_lists {
            for (j, f) in filters.iter().enumerate() {
                if !matches!(
                    f.type_.as_str(),
                    "RequestHeaderModifier"
                        | "ResponseHeaderModifier"
                        | "RequestMirror"
                        | "ExtensionRef"
                ) {
                    p.push((
                        format!("{at}.filters[{j}].type"),
                        format!(
                            "{} is not a GRPCRoute filter; use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror or ExtensionRef",
                            f.type_
                        ),
                    ));
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("123456s").is_err());
    }

    #[test]
    fn hostnames_are_rfc1123_with_optional_wildcard() {
        assert!(check_hostname("foo.example.com").is_ok());
        assert!(check_hostname("*.example.com").is_ok());
        assert!(check_hostname("Foo.com").is_err());
        assert!(check_hostname("foo.*.com").is_err());
        assert!(check_hostname("1.2.3.4").is_err());
    }
}
