//! The `maxItems` of the Gateway API CRDs (v1.6, standard channel), applied in file
//! mode as the API server applies them in a cluster. The table is the CRDs' own numbers:
//! a test reads the CRDs `.ci/run` installs and checks that it matches them.

use std::fmt::Write as _;

/// (kind, field, maxItems); `[]` stands for each item of a list.
pub const MAX_ITEMS: &[(&str, &str, usize)] = &[
    ("BackendTLSPolicy", "spec.targetRefs", 16),
    ("BackendTLSPolicy", "spec.validation.caCertificateRefs", 8),
    ("BackendTLSPolicy", "spec.validation.subjectAltNames", 5),
    ("Gateway", "spec.addresses", 16),
    ("Gateway", "spec.listeners", 64),
    ("Gateway", "spec.listeners[].allowedRoutes.kinds", 8),
    ("Gateway", "spec.listeners[].tls.certificateRefs", 64),
    (
        "Gateway",
        "spec.tls.frontend.default.validation.caCertificateRefs",
        16,
    ),
    ("Gateway", "spec.tls.frontend.perPort", 64),
    (
        "Gateway",
        "spec.tls.frontend.perPort[].tls.validation.caCertificateRefs",
        16,
    ),
    ("GRPCRoute", "spec.hostnames", 16),
    ("ListenerSet", "spec.listeners", 64),
    ("ListenerSet", "spec.listeners[].allowedRoutes.kinds", 8),
    ("ListenerSet", "spec.listeners[].tls.certificateRefs", 64),
    ("GRPCRoute", "spec.parentRefs", 32),
    ("GRPCRoute", "spec.rules", 16),
    ("GRPCRoute", "spec.rules[].backendRefs", 16),
    ("GRPCRoute", "spec.rules[].backendRefs[].filters", 16),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.add",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.remove",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.set",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.add",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.remove",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.set",
        16,
    ),
    ("GRPCRoute", "spec.rules[].filters", 16),
    (
        "GRPCRoute",
        "spec.rules[].filters[].requestHeaderModifier.add",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].filters[].requestHeaderModifier.remove",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].filters[].requestHeaderModifier.set",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].filters[].responseHeaderModifier.add",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].filters[].responseHeaderModifier.remove",
        16,
    ),
    (
        "GRPCRoute",
        "spec.rules[].filters[].responseHeaderModifier.set",
        16,
    ),
    ("GRPCRoute", "spec.rules[].matches", 64),
    ("GRPCRoute", "spec.rules[].matches[].headers", 16),
    ("HTTPRoute", "spec.hostnames", 16),
    ("HTTPRoute", "spec.parentRefs", 32),
    ("HTTPRoute", "spec.rules", 16),
    ("HTTPRoute", "spec.rules[].backendRefs", 16),
    ("HTTPRoute", "spec.rules[].backendRefs[].filters", 16),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].cors.allowHeaders",
        64,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].cors.allowMethods",
        9,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].cors.allowOrigins",
        64,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].cors.exposeHeaders",
        64,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.add",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.remove",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].requestHeaderModifier.set",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.add",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.remove",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].backendRefs[].filters[].responseHeaderModifier.set",
        16,
    ),
    ("HTTPRoute", "spec.rules[].filters", 16),
    ("HTTPRoute", "spec.rules[].filters[].cors.allowHeaders", 64),
    ("HTTPRoute", "spec.rules[].filters[].cors.allowMethods", 9),
    ("HTTPRoute", "spec.rules[].filters[].cors.allowOrigins", 64),
    ("HTTPRoute", "spec.rules[].filters[].cors.exposeHeaders", 64),
    (
        "HTTPRoute",
        "spec.rules[].filters[].requestHeaderModifier.add",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].filters[].requestHeaderModifier.remove",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].filters[].requestHeaderModifier.set",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].filters[].responseHeaderModifier.add",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].filters[].responseHeaderModifier.remove",
        16,
    ),
    (
        "HTTPRoute",
        "spec.rules[].filters[].responseHeaderModifier.set",
        16,
    ),
    ("HTTPRoute", "spec.rules[].matches", 64),
    ("HTTPRoute", "spec.rules[].matches[].headers", 16),
    ("HTTPRoute", "spec.rules[].matches[].queryParams", 16),
    ("ReferenceGrant", "spec.from", 16),
    ("ReferenceGrant", "spec.to", 16),
    ("TCPRoute", "spec.parentRefs", 32),
    ("TCPRoute", "spec.rules", 1),
    ("TCPRoute", "spec.rules[].backendRefs", 16),
    ("TLSRoute", "spec.hostnames", 1024),
    ("TLSRoute", "spec.parentRefs", 32),
    ("TLSRoute", "spec.rules", 1),
    ("TLSRoute", "spec.rules[].backendRefs", 16),
    ("UDPRoute", "spec.parentRefs", 32),
    ("UDPRoute", "spec.rules", 1),
    ("UDPRoute", "spec.rules[].backendRefs", 16),
];

/// Lists longer than the CRDs allow in `doc`, an object of `kind`, as (field, message).
pub fn check(kind: &str, doc: &serde_norway::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (_, path, max) in MAX_ITEMS.iter().filter(|(k, _, _)| *k == kind) {
        let steps: Vec<&str> = path.split('.').collect();
        walk(doc, &steps, &mut String::new(), *max, &mut out);
    }
    out
}

/// `at` is the field path so far, grown and cut back in place: a path string is made
/// only for a list that is too long (at 10,000 routes, one per node made this 15% of a
/// reload).
fn walk(
    v: &serde_norway::Value,
    steps: &[&str],
    at: &mut String,
    max: usize,
    out: &mut Vec<(String, String)>,
) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    let (name, each) = match step.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (*step, false),
    };
    let Some(child) = v.get(name) else { return };
    let parent = at.len();
    if !at.is_empty() {
        at.push('.');
    }
    at.push_str(name);
    if rest.is_empty() && !each {
        if let Some(list) = child.as_sequence()
            && list.len() > max
        {
            out.push((
                at.clone(),
                format!(
                    "at most {max} items, as the Gateway API CRD allows; this has {}: split it across more objects",
                    list.len()
                ),
            ));
        }
    } else if each {
        for (i, item) in child.as_sequence().into_iter().flatten().enumerate() {
            let here = at.len();
            let _ = write!(at, "[{i}]");
            walk(item, rest, at, max, out);
            at.truncate(here);
        }
    } else {
        walk(child, rest, at, max, out);
    }
    at.truncate(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is the CRDs' numbers. The CRDs are those `.ci/run` installs into
    /// target/tools (run it once if this fails for want of them).
    #[test]
    fn the_table_is_the_installed_crds_max_items() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/tools/gateway-api-crds");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; .ci/run installs the Gateway API CRDs there",
                dir.display()
            )
        }) {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read CRD");
            for de in serde_norway::Deserializer::from_str(&text) {
                let crd =
                    <serde_norway::Value as serde::Deserialize>::deserialize(de).expect("CRD YAML");
                let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
                if kind.is_empty() {
                    continue;
                }
                let versions = crd["spec"]["versions"].as_sequence().expect("versions");
                let Some(stored) = versions
                    .iter()
                    .find(|v| v["storage"].as_bool() == Some(true))
                else {
                    continue;
                };
                let spec = &stored["schema"]["openAPIV3Schema"]["properties"]["spec"];
                collect(kind, spec, "spec".into(), &mut found);
            }
        }
        let mut want: Vec<(String, String, usize)> = MAX_ITEMS
            .iter()
            .map(|(k, p, m)| (k.to_string(), p.to_string(), *m))
            .collect();
        found.sort();
        want.sort();
        assert_eq!(
            found,
            want,
            "MAX_ITEMS differs from the CRDs in {}",
            dir.display()
        );
    }

    fn collect(
        kind: &str,
        s: &serde_norway::Value,
        path: String,
        out: &mut Vec<(String, String, usize)>,
    ) {
        if let Some(m) = s["maxItems"].as_u64() {
            out.push((kind.into(), path.clone(), m as usize));
        }
        match s["type"].as_str() {
            Some("object") => {
                if let Some(props) = s["properties"].as_mapping() {
                    for (n, c) in props {
                        let n = n.as_str().unwrap_or_default();
                        collect(kind, c, format!("{path}.{n}"), out);
                    }
                }
            }
            Some("array") => collect(kind, &s["items"], format!("{path}[]"), out),
            _ => {}
        }
    }

    #[test]
    fn long_lists_are_named_by_their_field() {
        let doc: serde_norway::Value = serde_norway::from_str(
            "spec:\n  rules:\n  - matches: [{}]\n  - backendRefs: [{}, {}]\n",
        )
        .expect("yaml");
        assert!(check("HTTPRoute", &doc).is_empty());
        let many = format!(
            "spec:\n  rules:\n  - matches: [{}]\n",
            vec!["{}"; 65].join(", ")
        );
        let doc: serde_norway::Value = serde_norway::from_str(&many).expect("yaml");
        let p = check("HTTPRoute", &doc);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "spec.rules[0].matches");
    }
}
