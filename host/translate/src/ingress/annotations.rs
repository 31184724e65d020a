//! The ingress-nginx annotations Sluice maps, and a note for every one it does not.
//!
//! Each mapped annotation means what ingress-nginx's documentation says it means, with
//! its defaults; where the Gateway API cannot say exactly that, the conversion says what
//! changes in a [`Level::Changed`] note. An annotation of ingress-nginx's or Sluice's that
//! is not mapped is never dropped silently: it gets a [`Level::Ignored`] note. Other
//! controllers' annotations (cert-manager's, say) are not meant for the ingress
//! controller and are left alone.

use std::collections::BTreeMap;

use sluice_resources::{
    HttpCorsFilter, HttpPathMatch, HttpPathModifier, HttpRequestRedirectFilter, HttpRouteFilter,
    HttpRouteRule, HttpRouteTimeouts, HttpUrlRewriteFilter, LocalObjectReference, PathMatchType,
    PathModifierType,
};

use super::{FILTERS_ANNOTATION, Level, Note};

/// The prefix of ingress-nginx's annotations.
pub const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// ingress-nginx's defaults for `enable-cors`.
const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
const CORS_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const CORS_MAX_AGE: u32 = 1_728_000;

/// An HTTP to HTTPS redirect (`ssl-redirect`, `force-ssl-redirect`).
pub(super) struct Redirect {
    pub code: u16,
}

/// What an Ingress's annotations ask for.
#[derive(Default)]
pub(super) struct Annotations {
    ssl_redirect: Option<bool>,
    force_ssl_redirect: bool,
    use_regex: bool,
    rewrite_target: Option<String>,
    /// `permanent-redirect` or `temporal-redirect`: the URL and the status code.
    redirect: Option<(UrlParts, u16)>,
    cors: Option<HttpCorsFilter>,
    backend_timeout: Option<String>,
    filters: Vec<String>,
    /// `canary: "true"`: the Ingress adds a backend to another Ingress's rules.
    pub canary: Option<Canary>,
    /// `backend-protocol`, upper-cased.
    pub backend_protocol: Option<String>,
    /// `allowlist-source-range` (or the older `whitelist-source-range`) and
    /// `denylist-source-range`: served by the source-range filter.
    pub source_range: Option<SourceRange>,
}

/// The source-range filter's config for an Ingress: the address ranges let in (when
/// given) and kept out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SourceRange {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

impl SourceRange {
    pub fn config(&self) -> serde_json::Value {
        let mut c = serde_json::Map::new();
        if let Some(a) = &self.allow {
            c.insert("allow".into(), a.clone().into());
        }
        if !self.deny.is_empty() {
            c.insert("deny".into(), self.deny.clone().into());
        }
        c.into()
    }
}

/// Whether `s` is an IP address or a CIDR range, as the source-range filter reads them.
fn is_cidr(s: &str) -> bool {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.is_none_or(|b| b.parse::<u32>().is_ok_and(|b| b <= max))
}

/// What a canary Ingress asks for: requests with a header go to it, and a share of the
/// others.
#[derive(Clone, Default)]
pub(super) struct Canary {
    /// (header, value, value is a regular expression); value `None`: ingress-nginx's
    /// `always` sends to the canary and `never` to the main backend.
    pub header: Option<(String, Option<String>, bool)>,
    /// (weight, total).
    pub weight: Option<(u32, u32)>,
}

/// A redirect target, split as RequestRedirect wants it.
#[derive(Clone)]
struct UrlParts {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

fn extension_ref(name: &str) -> HttpRouteFilter {
    HttpRouteFilter {
        type_: "ExtensionRef".into(),
        extension_ref: Some(LocalObjectReference {
            group: "sluice.dev".into(),
            kind: "WasmFilter".into(),
            name: name.to_string(),
        }),
        ..Default::default()
    }
}

/// The source ranges an Ingress's annotations give, checked entry by entry. An entry
/// that is not an address or range gets an Error note and is passed on all the same:
/// the filter then refuses its config and the Ingress's rules answer 500, so a typo
/// never opens (or, in a deny list, never leaves open) what the annotation closes.
fn source_range(map: &BTreeMap<String, String>, notes: &mut Vec<Note>) -> Option<SourceRange> {
    let list = |k: &str, notes: &mut Vec<Note>| -> Option<Vec<String>> {
        let key = format!("{NGINX}{k}");
        let v = csv(map.get(&key)?);
        for e in v.iter().filter(|e| !is_cidr(e)) {
            note(
                notes,
                Level::Error,
                &key,
                format!(
                    "{e:?} is not an IP address or CIDR range (such as 10.0.0.0/8 or 2001:db8::/32): the source-range filter refuses the list and this Ingress's rules answer 500 until it is fixed"
                ),
            );
        }
        Some(v)
    };
    let allowlist = list("allowlist-source-range", notes);
    let whitelist = list("whitelist-source-range", notes);
    if allowlist.is_some() && whitelist.is_some() {
        note(
            notes,
            Level::Ignored,
            &format!("{NGINX}whitelist-source-range"),
            "allowlist-source-range is given too, and is used instead (as ingress-nginx does)"
                .into(),
        );
    }
    let r = SourceRange {
        allow: allowlist.or(whitelist),
        deny: list("denylist-source-range", notes).unwrap_or_default(),
    };
    (r.allow.is_some() || !r.deny.is_empty()).then_some(r)
}

fn note(notes: &mut Vec<Note>, level: Level, key: &str, message: String) {
    notes.push(Note::at(
        level,
        format!("metadata.annotations[{key}]"),
        message,
    ));
}

/// Whether an Ingress is a canary (`canary: "true"`).
pub(super) fn is_canary(map: &BTreeMap<String, String>) -> bool {
    map.get(&format!("{NGINX}canary"))
        .and_then(|v| parse_bool(v))
        .unwrap_or(false)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn csv(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Annotations {
    pub fn parse(map: &BTreeMap<String, String>, notes: &mut Vec<Note>) -> Annotations {
        let mut a = Annotations::default();
        let get = |k: &str| map.get(&format!("{NGINX}{k}")).map(|s| s.as_str());
        let boolean = |notes: &mut Vec<Note>, k: &str| -> Option<bool> {
            let v = get(k)?;
            let b = parse_bool(v);
            if b.is_none() {
                note(
                    notes,
                    Level::Error,
                    &format!("{NGINX}{k}"),
                    format!(
                        "{v:?} is not a boolean; write \"true\" or \"false\" (the annotation is not applied)"
                    ),
                );
            }
            b
        };
        a.ssl_redirect = boolean(notes, "ssl-redirect");
        a.force_ssl_redirect = boolean(notes, "force-ssl-redirect").unwrap_or(false);
        a.use_regex = boolean(notes, "use-regex").unwrap_or(false);
        a.rewrite_target = get("rewrite-target").map(str::to_string);
        for (key, code_key, default_code) in [
            ("permanent-redirect", "permanent-redirect-code", 301),
            ("temporal-redirect", "temporal-redirect-code", 302),
        ] {
            let Some(url) = get(key) else { continue };
            let code = match get(code_key).map(|c| c.trim().parse::<u16>()) {
                None => default_code,
                Some(Ok(c)) if matches!(c, 301 | 302 | 303 | 307 | 308) => c,
                Some(_) => {
                    note(
                        notes,
                        Level::Error,
                        &format!("{NGINX}{code_key}"),
                        format!("must be one of 301, 302, 303, 307, 308; using {default_code}"),
                    );
                    default_code
                }
            };
            match parse_url(url) {
                Some(u) => {
                    note(
                        notes,
                        Level::Changed,
                        &format!("{NGINX}{key}"),
                        "the request's query string is kept on the redirect (ingress-nginx drops it)".into(),
                    );
                    a.redirect = Some((u, code));
                }
                None => note(
                    notes,
                    Level::Error,
                    &format!("{NGINX}{key}"),
                    format!(
                        "{url:?} is not an absolute http(s) URL such as https://example.com/new; the redirect is not applied"
                    ),
                ),
            }
        }
        if boolean(notes, "enable-cors") == Some(true) {
            let origins = get("cors-allow-origin")
                .map(csv)
                .unwrap_or_else(|| vec!["*".into()]);
            let max_age = match get("cors-max-age").map(|v| v.trim().parse::<u32>()) {
                None => CORS_MAX_AGE,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    note(
                        notes,
                        Level::Error,
                        &format!("{NGINX}cors-max-age"),
                        format!("must be a number of seconds; using {CORS_MAX_AGE}"),
                    );
                    CORS_MAX_AGE
                }
            };
            a.cors = Some(HttpCorsFilter {
                allow_origins: origins,
                allow_credentials: Some(boolean(notes, "cors-allow-credentials").unwrap_or(true)),
                allow_methods: csv(get("cors-allow-methods").unwrap_or(CORS_METHODS)),
                allow_headers: csv(get("cors-allow-headers").unwrap_or(CORS_HEADERS)),
                expose_headers: get("cors-expose-headers").map(csv).unwrap_or_default(),
                max_age: Some(max_age),
            });
        }
        if let Some(v) = get("proxy-read-timeout") {
            match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => {
                    a.backend_timeout = Some(format!("{n}s"));
                    note(
                        notes,
                        Level::Changed,
                        &format!("{NGINX}proxy-read-timeout"),
                        format!(
                            "served as timeouts.backendRequest {n}s: ingress-nginx bounds each wait between two reads, the Gateway API the whole backend response, so a response that streams for longer than {n}s is cut"
                        ),
                    );
                }
                _ => note(
                    notes,
                    Level::Error,
                    &format!("{NGINX}proxy-read-timeout"),
                    format!("{v:?} is not a number of seconds; not applied"),
                ),
            }
        }
        if boolean(notes, "canary") == Some(true) {
            let number = |notes: &mut Vec<Note>, k: &str| -> Option<u32> {
                let v = get(k)?;
                let n = v.trim().parse::<u32>().ok();
                if n.is_none() {
                    note(
                        notes,
                        Level::Error,
                        &format!("{NGINX}{k}"),
                        format!("{v:?} is not a whole number; not applied"),
                    );
                }
                n
            };
            let total = number(notes, "canary-weight-total").unwrap_or(100).max(1);
            let weight = number(notes, "canary-weight").map(|w| (w.min(total), total));
            let header = get("canary-by-header").map(|h| {
                match (
                    get("canary-by-header-value"),
                    get("canary-by-header-pattern"),
                ) {
                    (Some(v), _) => (h.to_string(), Some(v.to_string()), false),
                    (None, Some(p)) => (h.to_string(), Some(p.to_string()), true),
                    (None, None) => (h.to_string(), None, false),
                }
            });
            a.canary = Some(Canary { header, weight });
        }
        if let Some(v) = get("backend-protocol") {
            let p = v.trim().to_ascii_uppercase();
            match p.as_str() {
                "HTTP" | "AUTO_HTTP" | "GRPC" | "H2C" | "HTTPS" | "GRPCS" => {
                    a.backend_protocol = Some(p)
                }
                _ => note(
                    notes,
                    Level::Error,
                    &format!("{NGINX}backend-protocol"),
                    format!(
                        "{v:?}: Sluice speaks HTTP, HTTPS, GRPC, GRPCS and H2C to backends; requests go out as HTTP/1.1"
                    ),
                ),
            }
        }
        a.source_range = source_range(map, notes);
        if let Some(v) = map.get(FILTERS_ANNOTATION) {
            a.filters = csv(v);
        }
        for key in map.keys() {
            let known = match key.strip_prefix(NGINX) {
                Some(k) => KNOWN.contains(&k),
                None => match key.strip_prefix("sluice.dev/") {
                    Some(_) => key == FILTERS_ANNOTATION,
                    None => true,
                },
            };
            if !known {
                let why = match key.strip_prefix(NGINX).and_then(|k| {
                    LEFT_OUT
                        .iter()
                        .find(|(name, _)| *name == k)
                        .map(|(_, why)| *why)
                }) {
                    Some(why) => why.to_string(),
                    None => "not mapped by Sluice; it has no effect".to_string(),
                };
                note(notes, Level::Ignored, key, why);
            }
        }
        a
    }

    /// The path match for an Ingress path, and the rewrite filter it needs; `None` when
    /// the path cannot be served as the annotations ask (a note says why).
    pub fn path(
        &self,
        path: Option<&str>,
        path_type: &str,
        field: &str,
        notes: &mut Vec<Note>,
    ) -> Option<(HttpPathMatch, Vec<HttpRouteFilter>)> {
        let value = path.unwrap_or("/");
        let mut push = |level, message: String| notes.push(Note::at(level, field, message));
        let prefix = |v: &str| HttpPathMatch {
            type_: Some(PathMatchType::PathPrefix),
            value: Some(if v.len() > 1 {
                v.trim_end_matches('/').to_string()
            } else {
                v.to_string()
            }),
        };
        let captures = self
            .rewrite_target
            .as_deref()
            .is_some_and(|t| t.contains('$'));
        // ingress-nginx reads ImplementationSpecific paths as regular expressions when
        // asked to, and whenever rewrite-target uses capture groups.
        let regex = path_type == "ImplementationSpecific" && (self.use_regex || captures);
        let m = match path_type {
            "Exact" => HttpPathMatch {
                type_: Some(PathMatchType::Exact),
                value: Some(value.to_string()),
            },
            "Prefix" => prefix(value),
            _ if !regex => {
                push(
                    Level::Changed,
                    "pathType ImplementationSpecific is served as Prefix: element by element, so /foo matches /foo/bar but not /foobar (ingress-nginx matches /foobar too)".into(),
                );
                prefix(value)
            }
            _ => {
                if let Some(target) = self.rewrite_target.as_deref().filter(|_| captures) {
                    return match prefix_rewrite(value, target) {
                        Some((p, replace, changed)) => {
                            if let Some(c) = changed {
                                push(Level::Changed, c);
                            }
                            Some((
                                prefix(&p),
                                vec![rewrite(PathModifierType::ReplacePrefixMatch, replace)],
                            ))
                        }
                        None => {
                            push(
                                Level::Error,
                                format!(
                                    "rewrite-target {target:?} on path {value:?} is not served: the Gateway API rewrites a path prefix, not regular expression captures; Sluice maps the forms `/prefix(/|$)(.*)` with `/new/$2` and `/prefix/(.*)` with `/new/$1`"
                                ),
                            );
                            None
                        }
                    };
                }
                let re = if value.ends_with('$') {
                    format!("(?i){value}")
                } else {
                    format!("(?i){value}.*")
                };
                HttpPathMatch {
                    type_: Some(PathMatchType::RegularExpression),
                    value: Some(re),
                }
            }
        };
        let mut filters = Vec::new();
        if let Some(t) = &self.rewrite_target {
            if captures {
                push(
                    Level::Error,
                    format!(
                        "rewrite-target {t:?} uses capture groups, which need an ImplementationSpecific path (ingress-nginx's regular expression paths); not served"
                    ),
                );
                return None;
            }
            filters.push(rewrite(PathModifierType::ReplaceFullPath, t.clone()));
        }
        Some((m, filters))
    }

    /// Filters every rule of the Ingress gets: its source-range WasmFilter (named
    /// `source_range`), CORS, then its WasmFilters.
    pub fn rule_filters(&self, source_range: Option<&str>) -> Vec<HttpRouteFilter> {
        let mut out = Vec::new();
        if let Some(name) = source_range {
            out.push(extension_ref(name));
        }
        if let Some(c) = &self.cors {
            out.push(HttpRouteFilter {
                type_: "CORS".into(),
                cors: Some(c.clone()),
                ..Default::default()
            });
        }
        for name in &self.filters {
            out.push(extension_ref(name));
        }
        out
    }

    /// What applies to a whole rule: a redirect replaces its backend; a timeout.
    pub fn apply_to_rule(&self, rule: &mut HttpRouteRule) {
        if let Some((u, code)) = &self.redirect {
            rule.backend_refs.clear();
            rule.filters.retain(|f| f.type_ != "URLRewrite");
            rule.filters.push(HttpRouteFilter {
                type_: "RequestRedirect".into(),
                request_redirect: Some(HttpRequestRedirectFilter {
                    scheme: Some(u.scheme.clone()),
                    hostname: Some(u.host.clone()),
                    port: u.port,
                    path: Some(HttpPathModifier {
                        type_: PathModifierType::ReplaceFullPath,
                        replace_full_path: Some(u.path.clone()),
                        replace_prefix_match: None,
                    }),
                    status_code: Some(*code),
                }),
                ..Default::default()
            });
        } else if let Some(t) = &self.backend_timeout {
            rule.timeouts = Some(HttpRouteTimeouts {
                request: None,
                backend_request: Some(t.clone()),
            });
        }
    }

    /// Whether plain HTTP requests are redirected to HTTPS: by default when the host has
    /// TLS (`ssl-redirect`, default true), always with `force-ssl-redirect`. ingress-nginx
    /// answers 308.
    pub fn https_redirect(&self, has_tls: bool) -> Option<Redirect> {
        (self.force_ssl_redirect || (has_tls && self.ssl_redirect.unwrap_or(true)))
            .then_some(Redirect { code: 308 })
    }
}

fn rewrite(type_: PathModifierType, value: String) -> HttpRouteFilter {
    let (full, prefix) = match type_ {
        PathModifierType::ReplaceFullPath => (Some(value), None),
        PathModifierType::ReplacePrefixMatch => (None, Some(value)),
    };
    HttpRouteFilter {
        type_: "URLRewrite".into(),
        url_rewrite: Some(HttpUrlRewriteFilter {
            hostname: None,
            path: Some(HttpPathModifier {
                type_,
                replace_full_path: full,
                replace_prefix_match: prefix,
            }),
        }),
        ..Default::default()
    }
}

/// The two capture forms that are a prefix rewrite: `P(/|$)(.*)` with `T/$2`, and
/// `P/(.*)` with `T/$1`, where P is a literal path. Gives (prefix, replacement, what
/// changes).
pub(super) fn prefix_rewrite(path: &str, target: &str) -> Option<(String, String, Option<String>)> {
    let literal = |p: &str| {
        p.starts_with('/')
            && p.len() > 1
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~'))
    };
    let replacement = |t: &str| -> Option<String> {
        let t = t.strip_suffix('/')?;
        Some(if t.is_empty() { "/".into() } else { t.into() })
    };
    if let Some(p) = path.strip_suffix("(/|$)(.*)")
        && literal(p)
        && let Some(t) = target.strip_suffix("$2")
    {
        let r = replacement(t)?;
        let changed = (r != "/")
            .then(|| format!("{p} itself is rewritten to {r} (ingress-nginx gives {r}/)"));
        return Some((p.to_string(), r, changed));
    }
    if let Some(p) = path.strip_suffix("/(.*)")
        && literal(p)
        && let Some(t) = target.strip_suffix("$1")
    {
        let r = replacement(t)?;
        return Some((
            p.to_string(),
            r.clone(),
            Some(format!(
                "{p} without a trailing slash is served too, rewritten to {r} (ingress-nginx's pattern needs the slash)"
            )),
        ));
    }
    None
}

fn parse_url(url: &str) -> Option<UrlParts> {
    let (scheme, rest) = url.trim().split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (authority, None),
    };
    if host.is_empty()
        || sluice_resources::check_hostname(host).is_err()
        || path.contains(['?', '#'])
    {
        return None;
    }
    Some(UrlParts {
        scheme: scheme.into(),
        host: host.into(),
        port,
        path: path.into(),
    })
}

/// ingress-nginx annotations that are mapped (after the prefix).
const KNOWN: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "use-regex",
    "rewrite-target",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "proxy-read-timeout",
    "backend-protocol",
    "canary",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "allowlist-source-range",
    "whitelist-source-range",
    "denylist-source-range",
];

/// Annotations left out on purpose, with why: the message the note gives.
const LEFT_OUT: &[(&str, &str)] = &[
    (
        "canary-by-cookie",
        "not mapped: the Gateway API matches headers, not cookies; use canary-by-header",
    ),
    (
        "proxy-send-timeout",
        "not mapped: Sluice bounds the wait for request body bytes with its --body-timeout flag, for every route",
    ),
    (
        "proxy-connect-timeout",
        "not mapped per Ingress: the Gateway API has no connect timeout; Sluice's is one for every backend, --connect-timeout (default 5s, ingress-nginx's default too)",
    ),
    (
        "configuration-snippet",
        "not mapped: nginx configuration snippets have no meaning outside nginx; write a WasmFilter and name it in sluice.dev/filters",
    ),
    (
        "server-snippet",
        "not mapped: nginx configuration snippets have no meaning outside nginx; write a WasmFilter and name it in sluice.dev/filters",
    ),
];
