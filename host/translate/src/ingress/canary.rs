//! ingress-nginx canaries: an Ingress with `canary: "true"` does not route on its own;
//! it adds its backend to the rules of the Ingress that serves the same host and path
//! (the main one), by header (a rule with a header match, which wins by precedence) and
//! by weight (the main rule's backends share with the canary's).

use sluice_resources::{
    HttpHeaderMatch, HttpRouteRule, Ingress, ObjectRef, Resources, ValueMatchType,
};

use super::annotations::{Annotations, Canary};
use super::{Converted, Level, Note, backend_ref};

/// The Gateway API's largest backendRef weight.
const MAX_WEIGHT: u64 = 1_000_000;

pub(super) fn apply(
    res: &Resources,
    ing: &Ingress,
    oref: &ObjectRef,
    annotations: &Annotations,
    canary: &Canary,
    out: &mut Converted,
    notes: &mut Vec<Note>,
) {
    let ns = ing.metadata.namespace_or_default();
    let push = |notes: &mut Vec<Note>, field: String, message: String| {
        notes.push(Note::at(Level::Error, field, message))
    };
    if canary.header.is_none() && canary.weight.is_none() {
        push(
            notes,
            format!("metadata.annotations[{}canary]", super::NGINX),
            "a canary needs canary-by-header or canary-weight to receive any request".into(),
        );
        return;
    }
    for (i, r) in ing.spec.rules.iter().enumerate() {
        let host = r.host.clone().unwrap_or_default();
        let Some(http) = &r.http else { continue };
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let Some(backend) = backend_ref(res, ns, &p.backend, &field, notes) else {
                continue;
            };
            let Some((path, _)) = annotations.path(p.path.as_deref(), &p.path_type, &field, notes)
            else {
                continue;
            };
            let mut found = false;
            for route in out.http_routes.iter_mut().filter(|route| {
                route.metadata.namespace_or_default() == ns
                    && route
                        .spec
                        .hostnames
                        .first()
                        .map(String::as_str)
                        .unwrap_or("")
                        == host
                    && out
                        .sources
                        .get(&(ns.to_string(), route.metadata.name.clone()))
                        != Some(oref)
            }) {
                let mut k = 0;
                while k < route.spec.rules.len() {
                    let main = &route.spec.rules[k];
                    let same_path = main.matches.len() == 1
                        && main.matches[0].path.as_ref() == Some(&path)
                        && main.matches[0].headers.is_empty();
                    if !same_path || main.backend_refs.is_empty() {
                        k += 1;
                        continue;
                    }
                    found = true;
                    let mut added: Vec<HttpRouteRule> = Vec::new();
                    if let Some((name, value, regex)) = &canary.header {
                        let with_header = |value: &str, regex: bool, to_canary: bool| {
                            let mut rule = route.spec.rules[k].clone();
                            rule.matches[0].headers.push(HttpHeaderMatch {
                                type_: regex.then_some(ValueMatchType::RegularExpression),
                                name: name.clone(),
                                value: value.to_string(),
                            });
                            if to_canary {
                                rule.backend_refs = vec![backend.clone()];
                            }
                            rule.name = None;
                            rule
                        };
                        match value {
                            Some(v) => added.push(with_header(v, *regex, true)),
                            None => {
                                added.push(with_header("always", false, true));
                                added.push(with_header("never", false, false));
                            }
                        }
                    }
                    if let Some((w, total)) = canary.weight {
                        // The main backends keep their ratio among themselves and
                        // share (total - w) / total of the requests; the canary gets
                        // w / total.
                        // In u64 and capped at the Gateway API's largest weight: a
                        // hostile weight total, or canaries stacked on one rule, must
                        // not overflow.
                        let cap = |v: u64| Some(v.min(MAX_WEIGHT) as u32);
                        let main = &mut route.spec.rules[k];
                        let sum: u64 = main
                            .backend_refs
                            .iter()
                            .map(|b| u64::from(b.weight.unwrap_or(1)))
                            .sum();
                        for b in &mut main.backend_refs {
                            b.weight = cap(u64::from(b.weight.unwrap_or(1)) * u64::from(total - w));
                        }
                        let mut c = backend.clone();
                        c.weight = cap(u64::from(w) * sum);
                        main.backend_refs.push(c);
                    }
                    let n = added.len();
                    for (o, rule) in added.into_iter().enumerate() {
                        route.spec.rules.insert(k + 1 + o, rule);
                    }
                    k += 1 + n;
                }
            }
            if !found {
                push(
                    notes,
                    field,
                    format!(
                        "no Ingress of this class in namespace {ns} serves host {:?} path {:?}: a canary adds to the Ingress that does, so it is not served",
                        if host.is_empty() { "*" } else { &host },
                        p.path.as_deref().unwrap_or("/")
                    ),
                );
            }
        }
    }
}
