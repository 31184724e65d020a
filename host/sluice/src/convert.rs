//! `sluice convert`: Ingresses as Gateway API YAML for a person to review and apply.
//!
//! The objects are the ones Sluice serves an Ingress with (`sluice_translate::ingress`),
//! under names a cluster accepts; each carries, as comments, where it came from and
//! every choice that changes behaviour.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use serde::Serialize;
use sluice_translate::ingress::{self, Converted, Level, Note, Options};

/// Converts the Ingresses under `path` (`-`: stdin); gives the YAML and the notes, one
/// line each, for stderr.
pub fn run(
    path: &Path,
    opts: &Options,
    class: Option<&str>,
) -> Result<(String, Vec<String>), String> {
    let mut res = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading stdin: {e}"))?;
        from_cluster_dump(&text)?
    } else {
        sluice_resources::load_path(path)
            .map_err(|e| e.to_string())?
            .resources
    };
    if let Some(c) = class {
        res.ingresses.retain(|i| ingress::class_of(i) == Some(c));
    }
    if res.ingresses.is_empty() {
        return Err(format!(
            "{}: no Ingress{} to convert",
            path.display(),
            class
                .map(|c| format!(" of class {c:?}"))
                .unwrap_or_default()
        ));
    }
    let c = ingress::convert(&res, opts);
    let yaml = render(&c)?;
    let notes = c
        .notes
        .iter()
        .map(|n| {
            format!(
                "{}: {} {}: {}",
                n.ingress,
                level(n.level),
                n.field,
                n.message
            )
        })
        .collect();
    Ok((yaml, notes))
}

/// Objects as `kubectl get -o yaml` prints them (a `List`, or documents), read as the
/// API server gave them: fields Sluice does not read on core objects are allowed, and
/// an object that does not load is named on stderr and left out.
fn from_cluster_dump(text: &str) -> Result<sluice_resources::Resources, String> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = serde_json::Value::deserialize(doc).map_err(|e| format!("stdin: {e}"))?;
        match v.get("items").and_then(|i| i.as_array()) {
            Some(items) if v.get("kind").and_then(|k| k.as_str()) == Some("List") => {
                for (j, item) in items.iter().enumerate() {
                    objects.push((format!("stdin#{i}.items[{j}]"), item.clone()));
                }
            }
            _ if v.is_null() => {}
            _ => objects.push((format!("stdin#{i}"), v)),
        }
    }
    let (loaded, errors) = sluice_resources::load_objects(objects);
    for e in errors {
        eprintln!("skipped: {e}");
    }
    Ok(loaded.resources)
}

fn level(l: Level) -> &'static str {
    match l {
        Level::Changed => "CHANGED",
        Level::Ignored => "IGNORED",
        Level::Shadowed => "SHADOWED",
        Level::Error => "NOT SERVED",
    }
}

/// An object as a YAML document, with `apiVersion` and `kind` first.
fn document<T: Serialize>(api_version: &str, kind: &str, o: &T) -> Result<String, String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc<'a, T> {
        api_version: &'a str,
        kind: &'a str,
        #[serde(flatten)]
        object: &'a T,
    }
    serde_norway::to_string(&Doc {
        api_version,
        kind,
        object: o,
    })
    .map_err(|e| format!("cannot write {kind} as YAML: {e}"))
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

fn render(c: &Converted) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Gateway API objects for {} Ingress(es), written by `sluice convert`.\n\
         # Comments mark each choice that changes behaviour (CHANGED), each annotation that\n\
         # has no effect (IGNORED) and each part that is not served (NOT SERVED). Apply them\n\
         # beside the Ingresses, check the routes' status, then delete the Ingresses.",
        c.ingresses.len()
    );
    for g in &c.gateways {
        out.push_str("---\n");
        comment(
            &mut out,
            "Serves the Ingresses' hosts: listener `http`, and one HTTPS listener per TLS host\n\
             with the certificate its Ingress named. Routes from every namespace may attach.",
        );
        out.push_str(&document("gateway.networking.k8s.io/v1", "Gateway", g)?);
    }
    for g in &c.reference_grants {
        out.push_str("---\n");
        comment(
            &mut out,
            &format!(
                "Lets the Gateway present the TLS Secrets of namespace {} (Ingress tls[].secretName).",
                g.metadata.namespace_or_default()
            ),
        );
        out.push_str(&document(
            "gateway.networking.k8s.io/v1beta1",
            "ReferenceGrant",
            g,
        )?);
    }
    for f in &c.wasm_filters {
        let key = (
            f.metadata.namespace_or_default().to_string(),
            f.metadata.name.clone(),
        );
        out.push_str("---\n");
        if let Some(source) = c.sources.get(&key) {
            comment(
                &mut out,
                &format!(
                    "From {source}'s source ranges: the source-range filter (filters/source-range)\n\
                     lets in or keeps out requests by the address they come from (403 otherwise).\n\
                     Behind a load balancer that appends to x-forwarded-for, add\n\
                     spec.config.trustedHops (see the filter's docs)."
                ),
            );
        }
        out.push_str(&document("sluice.dev/v1alpha1", "WasmFilter", f)?);
    }
    let mut introduced = std::collections::BTreeSet::new();
    for r in &c.http_routes {
        let key = (
            r.metadata.namespace_or_default().to_string(),
            r.metadata.name.clone(),
        );
        let Some(source) = c.sources.get(&key) else {
            continue;
        };
        out.push_str("---\n");
        comment(&mut out, &format!("From {source}."));
        // Notes about the whole Ingress go on its first route; the others on theirs.
        let first = introduced.insert(source.clone());
        let mine = |n: &&Note| {
            &n.ingress == source
                && match &n.route {
                    Some(name) => *name == r.metadata.name,
                    None => first,
                }
        };
        for n in c.notes.iter().filter(mine) {
            comment(
                &mut out,
                &format!("{} {}: {}", level(n.level), n.field, n.message),
            );
        }
        let mut r = r.clone();
        // Serving keeps the Ingress's age for precedence; a new object gets its own.
        r.metadata.generation = None;
        r.metadata.creation_timestamp = None;
        out.push_str(&document("gateway.networking.k8s.io/v1", "HTTPRoute", &r)?);
    }
    // Ingresses none of whose rules became a route (every path refused) still say why.
    for (oref, _) in &c.ingresses {
        if introduced.contains(oref) {
            continue;
        }
        let _ = writeln!(out, "---\n# {oref}: nothing to serve.");
        for n in c.notes.iter().filter(|n| &n.ingress == oref) {
            comment(
                &mut out,
                &format!("{} {}: {}", level(n.level), n.field, n.message),
            );
        }
    }
    Ok(out)
}
