//! The CORS filter (HTTPCORSFilter): answers preflights at the gateway and decorates
//! actual responses, for allowed origins only.

use http::{HeaderMap, HeaderValue, Method, header};
use sluice_ir::CorsIr;

use crate::BuildError;

pub(crate) struct Cors {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    credentials: bool,
    methods: Option<HeaderValue>,
    any_method: bool,
    headers: Option<HeaderValue>,
    any_header: bool,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// `https://app.example.com`, or `https://*.example.com` (any subdomain), port optional.
struct OriginPattern {
    scheme: String,
    host_suffix: Option<String>,
    exact_host: String,
}

impl OriginPattern {
    fn parse(s: &str) -> Option<Self> {
        let (scheme, host) = s.split_once("://")?;
        Some(match host.strip_prefix('*') {
            Some(suffix) => OriginPattern {
                scheme: scheme.into(),
                host_suffix: Some(suffix.into()),
                exact_host: String::new(),
            },
            None => OriginPattern {
                scheme: scheme.into(),
                host_suffix: None,
                exact_host: host.into(),
            },
        })
    }
    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host)) = origin.split_once("://") else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(&self.scheme) {
            return false;
        }
        match &self.host_suffix {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            None => host.eq_ignore_ascii_case(&self.exact_host),
        }
    }
}

fn joined(list: &[String]) -> Result<Option<HeaderValue>, BuildError> {
    let real: Vec<&str> = list
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "*")
        .collect();
    if real.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&real.join(", "))
        .map(Some)
        .map_err(|_| BuildError(format!("CORS list {list:?} is not a valid header value")))
}

impl Cors {
    pub fn new(c: &CorsIr) -> Result<Self, BuildError> {
        Ok(Cors {
            any_origin: c.allow_origins.iter().any(|o| o == "*"),
            origins: c
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| OriginPattern::parse(o))
                .collect(),
            credentials: c.allow_credentials,
            any_method: c.allow_methods.iter().any(|m| m == "*"),
            methods: joined(&c.allow_methods)?,
            any_header: c.allow_headers.iter().any(|m| m == "*"),
            headers: joined(&c.allow_headers)?,
            expose: joined(&c.expose_headers)?,
            max_age: HeaderValue::from(c.max_age),
        })
    }

    fn allowed_origin<'a>(&self, req: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = req.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|p| p.matches(s))).then_some(origin)
    }

    pub fn is_preflight(method: &Method, req: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && req.contains_key(header::ORIGIN)
            && req.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn allow_origin(&self, out: &mut HeaderMap, origin: &HeaderValue) {
        // With credentials the spec forbids `*`: echo the origin instead.
        if self.any_origin && !self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Headers of the gateway's own answer to a preflight (empty for a disallowed origin,
    /// which makes the browser refuse the request).
    pub fn preflight(&self, req: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        let Some(origin) = self.allowed_origin(req) else {
            return out;
        };
        self.allow_origin(&mut out, origin);
        let requested_method = req.get(header::ACCESS_CONTROL_REQUEST_METHOD);
        if self.any_method {
            let v = if self.credentials {
                requested_method.cloned()
            } else {
                Some(HeaderValue::from_static("*"))
            };
            if let Some(v) = v {
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
            }
        } else if let Some(m) = &self.methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        let requested_headers = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if self.any_header {
            let v = if self.credentials {
                requested_headers.cloned()
            } else {
                Some(HeaderValue::from_static("*"))
            };
            if let Some(v) = v {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        } else if let Some(h) = &self.headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
        // Not read by browsers on a preflight, but the Gateway API conformance suite (and
        // Envoy) send it there too, so clients see one consistent policy.
        if let Some(e) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        out
    }

    /// Adds the CORS headers of an actual (non-preflight) response.
    pub fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        let s = origin.to_str().unwrap_or("");
        if !(self.any_origin || self.origins.iter().any(|p| p.matches(s))) {
            return;
        }
        self.allow_origin(resp, origin);
        if let Some(e) = &self.expose {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsIr {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec![],
            max_age: 5,
        })
        .unwrap()
    }

    fn req(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        h
    }

    #[test]
    fn wildcard_subdomains_match_only_subdomains() {
        let c = cors(&["https://*.example.com"], false);
        assert!(
            c.preflight(&req("https://a.example.com"))
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        assert!(c.preflight(&req("https://example.com")).is_empty());
        assert!(c.preflight(&req("http://a.example.com")).is_empty());
    }

    #[test]
    fn credentials_echo_the_origin_instead_of_star() {
        let c = cors(&["*"], true);
        let h = c.preflight(&req("https://x.org"));
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://x.org");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
    }
}
