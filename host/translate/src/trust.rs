//! The filter trust policy: which OCI filters must carry a cosign signature, and by
//! which keys. Operators own it: a GatewayClass's `spec.parametersRef` names a
//! ConfigMap whose `trustPolicy` key holds it (file mode reads the same objects).
//!
//! ```yaml
//! unmatchedImages: Allow        # or Deny: an image no policy names may not load
//! policies:
//! - name: platform
//!   images: ["registry.example.com/filters/**"]
//!   keys:
//!   - name: release
//!     publicKey: |              # a PEM PUBLIC KEY (cosign.pub) ...
//!       -----BEGIN PUBLIC KEY-----
//!       ...
//!   - name: ci
//!     secretRef: {name: cosign-ci, key: cosign.pub}     # ... or one from a Secret
//!   - name: team
//!     configMapRef: {name: team-keys, key: cosign.pub}  # ... or a ConfigMap
//! ```
//!
//! An image that a policy's `images` names loads only with a signature that one of
//! that policy's keys verifies; when several policies name it, each must be met. With
//! several GatewayClasses of Sluice, their policies add up: every filter serves every
//! class, so it meets them all.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_resources::Resources;
use sluice_tls::signing::PublicKey;

use crate::CONTROLLER_NAME;

/// The ConfigMap key that holds the policy.
pub const TRUST_POLICY_KEY: &str = "trustPolicy";
/// At most this many policies, keys per policy, and image patterns per policy.
pub const MAX_POLICIES: usize = 64;
pub const MAX_KEYS: usize = 16;
pub const MAX_IMAGES: usize = 64;

/// The policies of every GatewayClass of Sluice, together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    pub policies: Vec<ImagePolicy>,
    /// The classes whose policy says `unmatchedImages: Deny`.
    pub deny_unmatched: Vec<String>,
    /// Per class whose `parametersRef` does not give a valid policy: why. While any
    /// is, no OCI filter loads (the ones serving keep serving).
    pub invalid: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    /// `<GatewayClass>/<policy name>`, as status says it.
    pub name: String,
    pub images: Vec<String>,
    pub keys: Vec<TrustedKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub name: String,
    pub key: PublicKey,
}

impl TrustedKey {
    /// `release (ECDSA P-256 sha256:0123456789abcdef)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} {})",
            self.name,
            self.key.kind(),
            self.key.fingerprint()
        )
    }
}

/// What loading an image takes.
#[derive(Debug, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// No policy names it, and none denies unmatched images.
    None,
    /// The policy is invalid: nothing from a registry loads until it is fixed.
    Invalid(String),
    /// No policy names it, and these classes deny unmatched images.
    Denied(String),
    /// A signature by a key of each of these policies.
    Signed(Vec<&'a ImagePolicy>),
}

impl TrustPolicy {
    /// What loading `image` (`registry/repository`, no tag or digest) takes.
    pub fn requirement(&self, image: &str) -> Requirement<'_> {
        if let Some((class, e)) = self.invalid.iter().next() {
            return Requirement::Invalid(format!(
                "the filter trust policy of GatewayClass {class} is invalid ({e}); OCI filters load once it is fixed"
            ));
        }
        let matched: Vec<&ImagePolicy> = self
            .policies
            .iter()
            .filter(|p| p.images.iter().any(|g| glob_match(g, image)))
            .collect();
        if !matched.is_empty() {
            return Requirement::Signed(matched);
        }
        if !self.deny_unmatched.is_empty() {
            return Requirement::Denied(format!(
                "no policy of the filter trust policy names {image}, and GatewayClass {} allows no other images (unmatchedImages: Deny); add it to a policy's images",
                self.deny_unmatched.join(", ")
            ));
        }
        Requirement::None
    }

    /// True when no class asks for anything.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.deny_unmatched.is_empty() && self.invalid.is_empty()
    }
}

/// `*` matches within one path segment, `**` across segments; all else is literal.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| go(rest, &s[i..])),
            [b'*', rest @ ..] => {
                let seg = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
                (0..=seg).any(|i| go(rest, &s[i..]))
            }
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    unmatched_images: Option<String>,
    #[serde(default)]
    policies: Vec<PolicyEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyEntry {
    name: String,
    images: Vec<String>,
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyEntry {
    name: String,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    secret_ref: Option<KeyRef>,
    #[serde(default)]
    config_map_ref: Option<KeyRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRef {
    name: String,
    key: String,
}

/// Reads the trust policy of every GatewayClass of Sluice that has a `parametersRef`.
pub fn trust_policy(res: &Resources) -> TrustPolicy {
    let mut out = TrustPolicy::default();
    for gc in &res.gateway_classes {
        if gc.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let Some(r) = &gc.spec.parameters_ref else {
            continue;
        };
        let class = &gc.metadata.name;
        match class_policy(res, class, r) {
            Ok((policies, deny)) => {
                out.policies.extend(policies);
                if deny {
                    out.deny_unmatched.push(class.clone());
                }
            }
            Err(e) => {
                out.invalid.insert(class.clone(), e);
            }
        }
    }
    out
}

/// The policy a GatewayClass's `parametersRef` names, or what is wrong with it.
pub(crate) fn class_policy(
    res: &Resources,
    class: &str,
    r: &serde_json::Value,
) -> Result<(Vec<ImagePolicy>, bool), String> {
    let field = |f: &str| r.get(f).and_then(|v| v.as_str()).unwrap_or_default();
    if !matches!(field("group"), "" | "core") || field("kind") != "ConfigMap" {
        return Err(format!(
            "spec.parametersRef: Sluice takes a ConfigMap (group \"\", kind ConfigMap) holding the filter trust policy under {TRUST_POLICY_KEY:?}, not {}/{}",
            field("group"),
            field("kind")
        ));
    }
    let (ns, name) = (field("namespace"), field("name"));
    if ns.is_empty() {
        return Err(
            "spec.parametersRef.namespace: a ConfigMap is namespaced; name its namespace".into(),
        );
    }
    let cm = res.config_map(ns, name).ok_or_else(|| {
            format!("spec.parametersRef: ConfigMap {ns}/{name} not found; create it with the filter trust policy under {TRUST_POLICY_KEY:?}")
        })?;
    let at = format!("ConfigMap {ns}/{name} {TRUST_POLICY_KEY}");
    let Some(text) = cm.data.get(TRUST_POLICY_KEY) else {
        // A ConfigMap with the data plane settings only: no policy.
        if cm.data.contains_key(crate::infra::DATA_PLANE_KEY) {
            return Ok((Vec::new(), false));
        }
        return Err(format!(
            "ConfigMap {ns}/{name} has no {TRUST_POLICY_KEY:?} or {:?} key; put the filter trust policy (YAML) or the data plane settings there",
            crate::infra::DATA_PLANE_KEY
        ));
    };
    let doc: PolicyDoc = serde_norway::from_str(text).map_err(|e| format!("{at}: {e}"))?;
    let deny = match doc.unmatched_images.as_deref() {
        None | Some("Allow") => false,
        Some("Deny") => true,
        Some(other) => {
            return Err(format!(
                "{at}: unmatchedImages: {other:?} must be Allow or Deny"
            ));
        }
    };
    if doc.policies.len() > MAX_POLICIES {
        return Err(format!(
            "{at}: policies: {} policies; at most {MAX_POLICIES}",
            doc.policies.len()
        ));
    }
    let mut policies = Vec::new();
    for (i, p) in doc.policies.iter().enumerate() {
        let at = format!("{at}: policies[{i}]");
        if p.name.is_empty() {
            return Err(format!("{at}.name: give the policy a name"));
        }
        if p.images.is_empty() || p.images.len() > MAX_IMAGES {
            return Err(format!(
                "{at}.images: give 1 to {MAX_IMAGES} image patterns (registry/repository, with * within a segment and ** across)"
            ));
        }
        for (j, g) in p.images.iter().enumerate() {
            let tagged = g
                .rsplit_once('/')
                .is_none_or(|(_, last)| last.contains(':'));
            if tagged || g.contains(|c: char| c == '@' || c.is_whitespace()) {
                return Err(format!(
                    "{at}.images[{j}]: {g:?} must be registry/repository, without a tag or digest"
                ));
            }
        }
        if p.keys.is_empty() || p.keys.len() > MAX_KEYS {
            return Err(format!("{at}.keys: give 1 to {MAX_KEYS} keys"));
        }
        let mut keys = Vec::new();
        for (j, k) in p.keys.iter().enumerate() {
            let at = format!("{at}.keys[{j}]");
            let pem = match (&k.public_key, &k.secret_ref, &k.config_map_ref) {
                (Some(pem), None, None) => pem.clone(),
                (None, Some(s), None) => {
                    let secret = res.secret(ns, &s.name).ok_or_else(|| {
                        format!("{at}.secretRef: Secret {ns}/{} not found (it is read from the ConfigMap's namespace)", s.name)
                    })?;
                    let v = secret.value(&s.key).ok_or_else(|| {
                        format!("{at}.secretRef: Secret {ns}/{} has no key {:?}", s.name, s.key)
                    })?;
                    String::from_utf8(v).map_err(|_| {
                        format!("{at}.secretRef: Secret {ns}/{} key {:?} is not text", s.name, s.key)
                    })?
                }
                (None, None, Some(c)) => res
                    .config_map(ns, &c.name)
                    .ok_or_else(|| {
                        format!("{at}.configMapRef: ConfigMap {ns}/{} not found (it is read from the ConfigMap's namespace)", c.name)
                    })?
                    .data
                    .get(&c.key)
                    .cloned()
                    .ok_or_else(|| {
                        format!("{at}.configMapRef: ConfigMap {ns}/{} has no key {:?}", c.name, c.key)
                    })?,
                _ => {
                    return Err(format!(
                        "{at}: set exactly one of publicKey, secretRef or configMapRef"
                    ));
                }
            };
            let key = PublicKey::from_pem(&pem).map_err(|e| format!("{at}: {e}"))?;
            keys.push(TrustedKey {
                name: k.name.clone(),
                key,
            });
        }
        policies.push(ImagePolicy {
            name: format!("{class}/{}", p.name),
            images: p.images.clone(),
            keys,
        });
    }
    Ok((policies, deny))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_patterns_match_within_and_across_segments() {
        assert!(glob_match(
            "reg.example/filters/*",
            "reg.example/filters/auth"
        ));
        assert!(!glob_match(
            "reg.example/filters/*",
            "reg.example/filters/team/auth"
        ));
        assert!(glob_match(
            "reg.example/filters/**",
            "reg.example/filters/team/auth"
        ));
        assert!(glob_match("reg.example/**", "reg.example/a"));
        assert!(!glob_match(
            "reg.example/filters/*",
            "reg.example/filtersx/auth"
        ));
        assert!(glob_match("*/filters/auth", "127.0.0.1:5000/filters/auth"));
        assert!(!glob_match(
            "reg.example/filters/auth",
            "reg.example/filters/auth2"
        ));
        assert!(glob_match(
            "reg.example/filters/auth-*",
            "reg.example/filters/auth-v2"
        ));
    }

    const KEY: &str = "-----BEGIN PUBLIC KEY-----
          MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5mToZU2P85kOLUC6tvf13+KzLCIX
          YqVX35a2U1/F7yJ13IxnfkMiKeXOf5MVhj0CEQvevdGwQdCBtwRl0yAxvA==
          -----END PUBLIC KEY-----";

    fn class(name: &str, cm: &str, policy: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {name}}}
spec:
  controllerName: sluice.dev/gateway-controller
  parametersRef: {{group: '', kind: ConfigMap, name: {cm}, namespace: gw}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {cm}, namespace: gw}}
data:
  trustPolicy: |
{}
---
",
            policy
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    }

    #[test]
    fn every_policy_that_names_an_image_applies_and_deny_covers_the_rest() {
        let key = KEY.replace("\n          ", "\n  ");
        let a = class(
            "a",
            "a",
            &format!(
                "policies:\n- name: all\n  images: ['reg.example/**']\n  keys:\n  - name: k\n    publicKey: |\n      {}\n",
                key.replace('\n', "\n    ")
            ),
        );
        let b = class(
            "b",
            "b",
            &format!(
                "unmatchedImages: Deny\npolicies:\n- name: team\n  images: ['reg.example/team/*']\n  keys:\n  - name: k2\n    publicKey: |\n      {}\n",
                key.replace('\n', "\n    ")
            ),
        );
        let res = sluice_resources::load_str("t.yaml", &format!("{a}{b}"))
            .expect("load")
            .resources;
        let t = trust_policy(&res);
        assert!(t.invalid.is_empty(), "{:?}", t.invalid);
        match t.requirement("reg.example/team/auth") {
            Requirement::Signed(p) => {
                let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
                assert_eq!(names, ["a/all", "b/team"]);
            }
            other => panic!("{other:?}"),
        }
        match t.requirement("reg.example/other") {
            Requirement::Signed(p) => assert_eq!(p.len(), 1),
            other => panic!("{other:?}"),
        }
        match t.requirement("elsewhere.example/x") {
            Requirement::Denied(m) => assert!(m.contains("GatewayClass b"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A broken policy in any class holds every OCI filter back.
        let broken = class("c", "c", "policies: [{name: x}]");
        let res = sluice_resources::load_str("t.yaml", &format!("{a}{broken}"))
            .expect("load")
            .resources;
        match trust_policy(&res).requirement("reg.example/x") {
            Requirement::Invalid(m) => {
                assert!(
                    m.contains("GatewayClass c") && m.contains("missing field"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // No class with a parametersRef: nothing is asked.
        let res = sluice_resources::load_str("t.yaml", "")
            .expect("load")
            .resources;
        assert!(trust_policy(&res).is_empty());
        assert_eq!(
            trust_policy(&res).requirement("reg.example/x"),
            Requirement::None
        );
    }
}
