//! JWT authentication, as Envoy's `jwt_authn` or Istio's `RequestAuthentication`: the
//! bearer token of each request is verified against the issuer's JWKS, fetched through
//! an outbound grant (filter API 0.2) and cached in the filter's key-value store.
//!
//! ```yaml
//! spec:
//!   outbound:
//!   - name: jwks
//!     backendRef: {name: idp, namespace: auth, port: 8080}
//!   config:
//!     issuer: https://idp.example.com     # `iss` must be this
//!     audiences: [api]                    # `aud` must hold one of these (optional)
//!     jwks: {grant: jwks, path: /.well-known/jwks.json, cacheSeconds: 300}
//!     clockSkewSeconds: 60                # leeway for `exp` and `nbf` (default 60)
//!     claimsToHeaders:                    # claims copied onto the request
//!     - {claim: sub, header: x-jwt-sub}
//!     forward: false                      # keep the authorization header for the backend
//!     allowMissing: false                 # let requests without a token through
//! ```
//!
//! Algorithms: RS256 (JWK `kty: RSA`), ES256 (`kty: EC`, `crv: P-256`) and HS256
//! (`kty: oct`); a key is used only for its own kind, and `none` or any other `alg` is
//! refused. A token with a `kid` is checked with that key only. Checked: the
//! signature, `iss`, `aud` (when `audiences` is set), `exp` and `nbf` with the skew.
//! The JWKS is fetched on first use and kept `cacheSeconds` in the store that all
//! instances of the WasmFilter share; a token whose `kid` is not in the cached set
//! refetches it (at most once per 10 s), so key rotation needs no restart.
//!
//! A request without a token, or with one that fails, is answered 401 with
//! `www-authenticate: Bearer` (and `error="invalid_token"` with the reason, RFC 6750).
//! When the JWKS cannot be fetched the answer is 401 too, and the error is logged.
//! Counters: `sluice_filter_jwt_allowed_total`, `_denied_total`,
//! `_jwks_fetches_total`, `_jwks_errors_total`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::outbound::{self, Request as Call};
use sluice_sdk::{Action, ConfigErrors, Filter, Request, clock, config_error, kv, log, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    jwks: JwksConfig,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default)]
    claims_to_headers: Vec<ClaimHeader>,
    #[serde(default)]
    forward: bool,
    #[serde(default)]
    allow_missing: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JwksConfig {
    #[serde(default = "default_grant")]
    grant: String,
    path: String,
    #[serde(default = "default_cache")]
    cache_seconds: u64,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct ClaimHeader {
    claim: String,
    header: String,
}

fn default_skew() -> u64 {
    60
}
fn default_grant() -> String {
    "jwks".into()
}
fn default_cache() -> u64 {
    300
}

struct Jwt {
    issuer: String,
    audiences: Vec<String>,
    jwks: JwksConfig,
    skew: u64,
    claims_to_headers: Vec<ClaimHeader>,
    forward: bool,
    allow_missing: bool,
}

/// Why a request is refused.
struct Denied(String);

/// A verification key from the JWKS.
enum Key {
    Rsa(rsa::pkcs1v15::VerifyingKey<sha2::Sha256>),
    Ec(p256::ecdsa::VerifyingKey),
    Hmac(Vec<u8>),
}

const KV_JWKS: &str = "jwks";
const KV_REFETCHED: &str = "jwks-refetch";

fn b64(s: &str) -> Result<Vec<u8>, Denied> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| Denied("not base64url".into()))
}

fn parse_key(jwk: &Value) -> Option<Key> {
    let field = |n: &str| jwk.get(n).and_then(Value::as_str);
    match field("kty")? {
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(field("n")?).ok()?);
            let e = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(field("e")?).ok()?);
            let public = rsa::RsaPublicKey::new(n, e).ok()?;
            Some(Key::Rsa(rsa::pkcs1v15::VerifyingKey::new(public)))
        }
        "EC" if field("crv")? == "P-256" => {
            let x = URL_SAFE_NO_PAD.decode(field("x")?).ok()?;
            let y = URL_SAFE_NO_PAD.decode(field("y")?).ok()?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            // SEC1 uncompressed: 0x04, x, y.
            let sec1: Vec<u8> = [&[4u8][..], &x, &y].concat();
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .ok()
                .map(Key::Ec)
        }
        "oct" => Some(Key::Hmac(URL_SAFE_NO_PAD.decode(field("k")?).ok()?)),
        _ => None,
    }
}

fn verify(key: &Key, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    use hmac::Mac;
    use rsa::signature::Verifier;
    match (key, alg) {
        (Key::Rsa(k), "RS256") => rsa::pkcs1v15::Signature::try_from(signature)
            .is_ok_and(|s| k.verify(message, &s).is_ok()),
        (Key::Ec(k), "ES256") => p256::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|s| k.verify(message, &s).is_ok()),
        (Key::Hmac(secret), "HS256") => hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
            .is_ok_and(|mut m| {
                m.update(message);
                m.verify_slice(signature).is_ok()
            }),
        _ => false,
    }
}

impl Jwt {
    /// The JWKS, from the shared store or fetched.
    fn jwks(&self, refetch: bool) -> Result<Value, String> {
        if !refetch
            && let Some(cached) = kv::get(KV_JWKS)
            && let Ok(v) = serde_json::from_slice(&cached)
        {
            return Ok(v);
        }
        metrics::counter_add("jwt_jwks_fetches", 1);
        let fetched = outbound::send(&self.jwks.grant, Call::get(&self.jwks.path))
            .map_err(|e| format!("fetching the JWKS failed: {e:?}"))
            .and_then(|r| {
                if r.status == 200 {
                    Ok(r.body)
                } else {
                    Err(format!("fetching the JWKS got status {}", r.status))
                }
            })
            .and_then(|body| {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("the JWKS is not JSON: {e}"))?;
                if !v.get("keys").is_some_and(Value::is_array) {
                    return Err("the JWKS has no `keys` array".into());
                }
                if !kv::set(
                    KV_JWKS,
                    &body,
                    Some(Duration::from_secs(self.jwks.cache_seconds)),
                ) {
                    log::warn("the JWKS is too large to cache (64 KiB); it is fetched per request");
                }
                Ok(v)
            });
        if fetched.is_err() {
            metrics::counter_add("jwt_jwks_errors", 1);
        }
        fetched
    }

    /// Keys of the JWKS that may have signed a token with this `kid` and `alg`.
    fn keys(jwks: &Value, kid: Option<&str>, alg: &str) -> Vec<Key> {
        jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| kid.is_none_or(|kid| k.get("kid").and_then(Value::as_str) == Some(kid)))
            .filter(|k| {
                k.get("alg")
                    .and_then(Value::as_str)
                    .is_none_or(|a| a == alg)
            })
            .filter_map(parse_key)
            .collect()
    }

    fn check(&self, token: &str) -> Result<Value, Denied> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Denied("not a JWT (three parts)".into()));
        };
        let header: Value = serde_json::from_slice(&b64(h)?)
            .map_err(|_| Denied("the header is not JSON".into()))?;
        let alg = header["alg"].as_str().unwrap_or("");
        if !matches!(alg, "RS256" | "ES256" | "HS256") {
            return Err(Denied(format!("alg {alg:?} is not accepted")));
        }
        let kid = header["kid"].as_str();
        let signature = b64(s)?;
        let message = &token.as_bytes()[..h.len() + 1 + p.len()];
        let jwks = self.jwks(false).map_err(|e| {
            log::warn(&e);
            Denied("the issuer's keys cannot be fetched".into())
        })?;
        let mut keys = Self::keys(&jwks, kid, alg);
        if keys.is_empty() && kid.is_some() && self.may_refetch() {
            // A new kid: the issuer may have rotated its keys.
            if let Ok(fresh) = self.jwks(true) {
                keys = Self::keys(&fresh, kid, alg);
            }
        }
        if !keys.iter().any(|k| verify(k, alg, message, &signature)) {
            return Err(Denied("the signature does not verify".into()));
        }
        let claims: Value = serde_json::from_slice(&b64(p)?)
            .map_err(|_| Denied("the payload is not JSON".into()))?;
        if claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(Denied("the issuer is not accepted".into()));
        }
        if !self.audiences.is_empty() {
            let ok = match &claims["aud"] {
                Value::String(a) => self.audiences.contains(a),
                Value::Array(list) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Err(Denied("the audience is not accepted".into()));
            }
        }
        let now = clock::unix_millis() / 1000;
        if let Some(exp) = claims["exp"].as_u64()
            && now > exp.saturating_add(self.skew)
        {
            return Err(Denied("the token has expired".into()));
        }
        if let Some(nbf) = claims["nbf"].as_u64()
            && now.saturating_add(self.skew) < nbf
        {
            return Err(Denied("the token is not valid yet".into()));
        }
        Ok(claims)
    }

    /// One refetch for an unknown kid per 10 s across the filter's instances.
    fn may_refetch(&self) -> bool {
        kv::increment(KV_REFETCHED, 1, Some(Duration::from_secs(10))) == 1
    }

    fn unauthorized(&self, error: Option<&str>) -> Action {
        metrics::counter_add("jwt_denied", 1);
        let challenge = match error {
            Some(e) => format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                self.issuer.replace('"', ""),
                e.replace('"', "")
            ),
            None => format!("Bearer realm=\"{}\"", self.issuer.replace('"', "")),
        };
        Action::Respond {
            status: 401,
            headers: vec![("www-authenticate".into(), challenge)],
            body: b"unauthorized\n".to_vec(),
        }
    }
}

impl Filter for Jwt {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        if c.issuer.is_empty() {
            errors.push(config_error(".issuer", "name the issuer tokens must carry"));
        }
        if !c.jwks.path.starts_with('/') {
            errors.push(config_error(".jwks.path", "must start with /"));
        }
        if c.jwks.cache_seconds == 0 {
            errors.push(config_error(".jwks.cacheSeconds", "must be at least 1"));
        }
        for (i, m) in c.claims_to_headers.iter().enumerate() {
            let valid = !m.header.is_empty()
                && m.header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                errors.push(config_error(
                    format!(".claimsToHeaders[{i}].header"),
                    "not a header name",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Jwt {
            issuer: c.issuer,
            audiences: c.audiences,
            jwks: c.jwks,
            skew: c.clock_skew_seconds,
            claims_to_headers: c.claims_to_headers,
            forward: c.forward,
            allow_missing: c.allow_missing,
        })
    }

    fn on_request(&self, req: &Request) -> Action {
        let token = req.get_header("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
        let Some(token) = token else {
            if self.allow_missing {
                return Action::Continue;
            }
            return self.unauthorized(None);
        };
        match self.check(&token) {
            Ok(claims) => {
                metrics::counter_add("jwt_allowed", 1);
                for m in &self.claims_to_headers {
                    let value = match &claims[m.claim.as_str()] {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    };
                    // A client must not be able to pass a claim header of its own.
                    req.remove_header(&m.header);
                    if let Some(v) = value {
                        let _ = req.set_header(&m.header, &v);
                    }
                }
                if !self.forward {
                    req.remove_header("authorization");
                }
                Action::Continue
            }
            Err(Denied(why)) => self.unauthorized(Some(&why)),
        }
    }
}

sluice_sdk::export!(Jwt);
