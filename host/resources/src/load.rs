//! The file provider's loader: a YAML file, or a folder of them, into [`Resources`].
//!
//! It checks what the API server would check before admitting an object (the schema,
//! unknown fields, and the CRDs' validation rules), so a file that would be rejected
//! by `kubectl apply` is rejected here too, with the file, the object and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use crate::{ObjectRef, Resources, validate};

/// One thing wrong with the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// `path/to/file.yaml`, with `#N` for the N-th document (1-based) where there are several.
    pub location: String,
    /// `HTTPRoute default/web`, when the document got far enough to be named.
    pub object: Option<String>,
    /// `spec.rules[0].matches[0].path.value`, when one field is at fault.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one load; a load is all or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A successful load: the objects, and notes about documents that were skipped.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub resources: Resources,
    /// Documents of kinds Sluice does not read (a Deployment, say), skipped.
    pub warnings: Vec<String>,
}

/// Reads a YAML file, or every `*.yaml` / `*.yml` below a folder (recursively, in path order).
pub fn load_path(path: &Path) -> Result<Loaded, LoadErrors> {
    let files = read_files(path)?;
    load_many(files.iter().map(|(_, n, t)| (n.as_str(), t.as_str())))
}

/// The YAML files [`load_path`] reads, in path order: each file's path, its name in
/// errors and its text.
fn read_files(path: &Path) -> Result<Vec<(PathBuf, String, String)>, LoadErrors> {
    let files = yaml_files(path).map_err(|message| {
        LoadErrors(vec![LoadError {
            location: path.display().to_string(),
            object: None,
            field: None,
            message,
        }])
    })?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => docs.push((file.clone(), file.display().to_string(), text)),
            Err(e) => errors.push(LoadError {
                location: file.display().to_string(),
                object: None,
                field: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(docs)
}

/// What [`load_path_cached`] keeps between loads: each file that loaded, by path, with
/// the SHA-256 of its text and what it loaded. A reload parses only the files whose
/// text changed (or that are new): parsing and checking is most of a reload's time
/// (200-300 ms for 10,000 routes in one 1.1 MB file, on the development machine), and a
/// change usually touches one file of many. A file that failed to load is not kept, so
/// it is read and reported again on every load until it is fixed.
#[derive(Default)]
pub struct FileCache {
    files: std::sync::Mutex<std::collections::HashMap<PathBuf, ([u8; 32], Loaded)>>,
}

/// [`load_path`], parsing only the files whose text is not what `cache` holds. The
/// result is the same as [`load_path`]'s for the same files, errors included: each file
/// is loaded on its own, and objects defined in two files are found when the files are
/// put together, in path order, as [`load_path`] finds them.
pub fn load_path_cached(path: &Path, cache: &FileCache) -> Result<Loaded, LoadErrors> {
    use sha2::Digest as _;
    let files = read_files(path)?;
    let mut cached = cache.files.lock().unwrap_or_else(|p| p.into_inner());
    let mut kept = std::collections::HashMap::with_capacity(files.len());
    let mut merged = Loaded::default();
    let mut errors = Vec::new();
    for (file, name, text) in files {
        let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        let loaded = match cached.remove(&file) {
            Some((d, l)) if d == digest => l,
            _ => match load_many([(name.as_str(), text.as_str())]) {
                Ok(l) => l,
                Err(LoadErrors(e)) => {
                    errors.extend(e);
                    continue;
                }
            },
        };
        for (oref, location) in &loaded.resources.origins {
            if let Some(previous) = merged.resources.origins.get(oref) {
                errors.push(defined_twice(oref, location, previous));
            }
        }
        merged.resources.extend(loaded.resources.clone());
        merged.warnings.extend(loaded.warnings.iter().cloned());
        kept.insert(file, (digest, loaded));
    }
    // Files that are gone are forgotten with the rest of the old map.
    *cached = kept;
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    merged.resources.sort();
    Ok(merged)
}

/// Reads YAML text; `name` is what errors call it.
pub fn load_str(name: &str, text: &str) -> Result<Loaded, LoadErrors> {
    load_many([(name, text)])
}

/// The fields of Kubernetes' ObjectMeta that Sluice does not read but a manifest may
/// carry (`kubectl get -o yaml` output, say).
const OBJECT_META: &[&str] = &[
    "generateName",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

const UNKNOWN_FIELD: &str =
    "unknown field; check its spelling and the Gateway API version (v1.6 standard channel)";

/// Cluster mode: objects read from the API server, each loaded on its own, with the
/// same checks as files. An object that does not load is left out and its errors are
/// returned; the others still serve (one bad object must not stop a cluster's traffic).
/// `location` names where an object came from in errors.
pub fn load_objects(
    objects: impl IntoIterator<Item = (String, serde_json::Value)>,
) -> (Loaded, Vec<LoadError>) {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    for (location, json) in objects {
        let doc = match serde_norway::to_value(&json) {
            Ok(d) => d,
            Err(e) => {
                errors.push(LoadError {
                    location,
                    object: None,
                    field: None,
                    message: format!("cannot read the object: {e}"),
                });
                continue;
            }
        };
        let mut one = Loaded::default();
        let mut mine = Vec::new();
        load_document(Source::Cluster, &location, doc, &mut one, &mut mine);
        if mine.is_empty() {
            loaded.resources.extend(one.resources);
            loaded.warnings.extend(one.warnings);
        } else {
            errors.extend(mine);
        }
    }
    loaded.resources.sort();
    (loaded, errors)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let p = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Editors' swap and backup files start with a dot; skip hidden entries.
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn load_many<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Loaded, LoadErrors> {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    for (name, text) in files {
        let docs: Vec<Value> = match split_documents(text) {
            Ok(d) => d,
            Err(message) => {
                errors.push(LoadError {
                    location: name.to_string(),
                    object: None,
                    field: None,
                    message,
                });
                continue;
            }
        };
        let several = docs.len() > 1;
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let location = if several {
                format!("{name}#{}", i + 1)
            } else {
                name.to_string()
            };
            load_document(Source::Files, &location, doc, &mut loaded, &mut errors);
        }
    }
    loaded.resources.sort();
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(LoadErrors(errors))
    }
}

/// The largest YAML file read (the API server refuses objects over 3 MiB; a file may
/// hold many).
pub const MAX_FILE_BYTES: usize = 32 << 20;
/// The deepest nesting of `[` and `{` in a file. Kubernetes objects nest a few levels;
/// the YAML parser's time grows with the square of the depth, so this is checked
/// before parsing.
pub const MAX_FLOW_DEPTH: usize = 64;

fn split_documents(text: &str) -> Result<Vec<Value>, String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "the file is {} bytes, more than the {MAX_FILE_BYTES} Sluice reads; split it",
            text.len()
        ));
    }
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(format!(
            "[ and {{ nest more than {MAX_FLOW_DEPTH} deep; no Kubernetes object needs that"
        ));
    }
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let v = <Value as serde::Deserialize>::deserialize(de)
            .map_err(|e| format!("invalid YAML: {e}"))?;
        docs.push(v);
    }
    Ok(docs)
}

/// RFC 1123 label, as Kubernetes checks namespace names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes checks most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The deepest nesting of YAML flow collections (`[`, `{`) in `text`, outside quoted
/// scalars and comments. A bracket in a plain scalar counts too, which can only
/// overstate the depth of an ordinary file by a level or two.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut single, mut double, mut escaped, mut comment) = (false, false, false, false);
    let mut prev = '\n';
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if double {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                double = false;
            }
        } else if single {
            single = c != '\'';
        } else {
            // A quote opens a quoted scalar only where a scalar starts (`it's` is plain).
            let starts = prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':');
            match c {
                '"' if starts => double = true,
                '\'' if starts => single = true,
                '#' if prev.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    max
}

/// Reads one document into its typed struct, recording where it came from.
/// Where a document comes from: files are held to "every field is understood"; in a
/// cluster, core objects carry many fields the API server fills in that Sluice does not
/// read (ipFamilies, sessionAffinity, ...), so only Gateway API and Sluice objects are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Files,
    Cluster,
}

/// What [`push`] needs to know about the document.
#[derive(Clone, Copy)]
struct Doc<'a> {
    location: &'a str,
    unknown_fields_ok: bool,
}

fn load_document(
    source: Source,
    location: &str,
    doc: Value,
    loaded: &mut Loaded,
    errors: &mut Vec<LoadError>,
) {
    let err = |object: Option<String>, field: Option<&str>, message: String| LoadError {
        location: location.to_string(),
        object,
        field: field.map(str::to_string),
        message,
    };
    let Value::Mapping(map) = &doc else {
        errors.push(err(
            None,
            None,
            "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
        ));
        return;
    };
    let get = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind)) = (get("apiVersion"), get("kind")) else {
        errors.push(err(
            None,
            None,
            "missing apiVersion or kind; every document must be a Kubernetes object".into(),
        ));
        return;
    };
    // Kubernetes List objects (`kubectl get -o yaml`) hold their objects in `items`.
    if kind == "List" {
        if let Some(Value::Sequence(items)) = map.get("items") {
            for item in items.clone() {
                load_document(source, location, item, loaded, errors);
            }
        }
        return;
    }
    let meta = map.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let cluster_scoped = matches!(kind.as_str(), "GatewayClass" | "Namespace" | "IngressClass");
    let namespace = if cluster_scoped {
        String::new()
    } else {
        meta.and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    let oref = ObjectRef::new(&kind, &namespace, &name);
    let object = Some(oref.to_string());
    if name.is_empty() {
        errors.push(err(
            object,
            Some("metadata.name"),
            "required; give the object a name".into(),
        ));
        return;
    }
    if !is_dns_subdomain(&name) {
        errors.push(err(
            object,
            Some("metadata.name"),
            "must be a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into(),
        ));
        return;
    }
    if !namespace.is_empty() && !is_dns_label(&namespace) {
        errors.push(err(
            object,
            Some("metadata.namespace"),
            "must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit".into(),
        ));
        return;
    }

    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let version = api_version.rsplit('/').next().unwrap_or("");
    let r = &mut loaded.resources;
    let before = errors.len();
    let ok = |allowed: &[&str]| allowed.contains(&version);
    let e = Doc {
        location,
        unknown_fields_ok: source == Source::Cluster
            && group != "gateway.networking.k8s.io"
            && group != "sluice.dev",
    };
    match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") if ok(&["v1", "v1beta1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.gateway_classes,
            validate::gateway_class,
        ),
        ("gateway.networking.k8s.io", "Gateway") if ok(&["v1", "v1beta1"]) => {
            push(e, &oref, doc, errors, &mut r.gateways, validate::gateway)
        }
        ("gateway.networking.k8s.io", "ListenerSet") if ok(&["v1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.listener_sets,
            validate::listener_set,
        ),
        ("gateway.networking.k8s.io", "HTTPRoute") if ok(&["v1", "v1beta1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.http_routes,
            validate::http_route,
        ),
        ("gateway.networking.k8s.io", "GRPCRoute") if ok(&["v1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.grpc_routes,
            validate::grpc_route,
        ),
        ("gateway.networking.k8s.io", "BackendTLSPolicy") if ok(&["v1", "v1alpha3"]) => {
            push(e, &oref, doc, errors, &mut r.backend_tls_policies, |_| {
                Vec::new()
            })
        }
        ("", "ConfigMap") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.config_maps, |_| Vec::new())
        }
        ("gateway.networking.k8s.io", "TCPRoute") if ok(&["v1", "v1alpha2"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.tcp_routes,
            validate::no_hostnames,
        ),
        ("gateway.networking.k8s.io", "UDPRoute") if ok(&["v1", "v1alpha2"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.udp_routes,
            validate::no_hostnames,
        ),
        ("gateway.networking.k8s.io", "TLSRoute") if ok(&["v1", "v1alpha3", "v1alpha2"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.tls_routes,
            validate::tls_route,
        ),
        ("gateway.networking.k8s.io", "ReferenceGrant") if ok(&["v1", "v1beta1"]) => {
            push(e, &oref, doc, errors, &mut r.reference_grants, |_| {
                Vec::new()
            })
        }
        ("sluice.dev", "WasmFilter") if ok(&["v1alpha1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.wasm_filters,
            validate::wasm_filter,
        ),
        ("", "Namespace") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.namespaces, |_| Vec::new())
        }
        ("", "Service") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.services, |_| Vec::new())
        }
        ("", "Secret") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.secrets, validate::secret)
        }
        ("discovery.k8s.io", "EndpointSlice") if ok(&["v1"]) => push(
            e,
            &oref,
            doc,
            errors,
            &mut r.endpoint_slices,
            validate::endpoint_slice,
        ),
        ("networking.k8s.io", "Ingress") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.ingresses, validate::ingress)
        }
        ("networking.k8s.io", "IngressClass") if ok(&["v1"]) => {
            push(e, &oref, doc, errors, &mut r.ingress_classes, |_| {
                Vec::new()
            })
        }
        ("gateway.networking.k8s.io", _)
        | ("sluice.dev", _)
        | ("networking.k8s.io", "Ingress" | "IngressClass")
        | ("", "Service" | "Namespace" | "Secret" | "ConfigMap")
        | ("discovery.k8s.io", _) => {
            errors.push(err(
                object,
                Some("apiVersion"),
                format!("{api_version} {kind} is not supported by this version of Sluice"),
            ));
            return;
        }
        _ => {
            loaded.warnings.push(format!(
                "{location}: {oref} ({api_version}) skipped: Sluice does not read this kind"
            ));
            return;
        }
    }
    if errors.len() > before {
        return;
    }
    if let Some(previous) = r.origins.insert(oref.clone(), location.to_string()) {
        errors.push(defined_twice(&oref, location, &previous));
    }
}

/// The error for `oref` at `location` when `previous` defined it already (in one file
/// or across files, [`load_path_cached`]).
fn defined_twice(oref: &ObjectRef, location: &str, previous: &str) -> LoadError {
    LoadError {
        location: location.to_string(),
        object: Some(oref.to_string()),
        field: Some("metadata.name".into()),
        message: format!(
            "{oref} is also defined in {previous}; give one of them another name or namespace"
        ),
    }
}

/// Deserializes a typed object, rejecting unknown fields (as `kubectl apply` with strict
/// field validation does), normalising the namespace and running the CRD validation rules.
fn push<T: DeserializeOwned + HasMeta>(
    d: Doc,
    oref: &ObjectRef,
    doc: Value,
    errors: &mut Vec<LoadError>,
    into: &mut Vec<T>,
    validate: impl Fn(&T) -> Vec<(String, String)>,
) {
    let location = d.location;
    let object = Some(oref.to_string());
    // Lists past the CRDs' limits are refused before the object is read further.
    let too_long = crate::limits::check(&oref.kind, &doc);
    if !too_long.is_empty() {
        for (field, message) in too_long {
            errors.push(LoadError {
                location: location.to_string(),
                object: object.clone(),
                field: Some(field),
                message,
            });
        }
        return;
    }
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = serde_path_to_error::deserialize(doc.clone());
    let mut obj = match parsed {
        Ok(o) => o,
        Err(e) => {
            let path = e.path().to_string();
            errors.push(LoadError {
                location: location.to_string(),
                object,
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            });
            return;
        }
    };
    // Second pass only to list fields serde skipped. Status may carry anything a cluster
    // wrote; metadata the fields of Kubernetes' ObjectMeta that Sluice does not read.
    if !d.unknown_fields_ok {
        let _: Result<T, _> = serde_ignored::deserialize(doc, |path| {
            let p = field_path(&path);
            let mut parts = p.split(['.', '[']);
            let top = parts.next().unwrap_or("");
            let known = match top {
                "status" | "apiVersion" | "kind" => true,
                "metadata" => parts.next().is_some_and(|f| OBJECT_META.contains(&f)),
                _ => false,
            };
            if !known {
                unknown.push(p);
            }
        });
    }
    for p in unknown {
        errors.push(LoadError {
            location: location.to_string(),
            object: object.clone(),
            field: Some(p),
            message: UNKNOWN_FIELD.into(),
        });
    }
    if !oref.namespace.is_empty() {
        obj.meta_mut().namespace = Some(oref.namespace.clone());
    }
    for (field, message) in validate(&obj) {
        errors.push(LoadError {
            location: location.to_string(),
            object: object.clone(),
            field: Some(field),
            message,
        });
    }
    into.push(obj);
}

/// `spec.rules[0].backendRef`, the way Kubernetes names fields.
fn field_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let head = field_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

pub(crate) trait HasMeta {
    fn meta_mut(&mut self) -> &mut crate::ObjectMeta;
}

macro_rules! has_meta {
    ($($t:ty),*) => {$(
        impl HasMeta for $t {
            fn meta_mut(&mut self) -> &mut crate::ObjectMeta { &mut self.metadata }
        }
    )*};
}
has_meta!(
    crate::StreamRoute,
    crate::BackendTlsPolicy,
    crate::ConfigMap,
    crate::GrpcRoute,
    crate::GatewayClass,
    crate::Gateway,
    crate::ListenerSet,
    crate::HttpRoute,
    crate::ReferenceGrant,
    crate::Namespace,
    crate::Service,
    crate::EndpointSlice,
    crate::Secret,
    crate::WasmFilter,
    crate::Ingress,
    crate::IngressClass
);

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn route(name: &str, path: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{matches: [{{path: {{value: {path}}}}}], backendRefs: [{{name: b, port: 80}}]}}]\n"
        )
    }

    fn folder(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cache-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
        dir
    }

    fn names(l: &Loaded) -> Vec<String> {
        l.resources
            .http_routes
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect()
    }

    #[test]
    fn a_cached_load_is_the_same_as_a_full_one_and_follows_changes() {
        let dir = folder("follow");
        std::fs::write(
            dir.join("a.yaml"),
            route("a", "/a") + "---\n" + &route("b", "/b"),
        )
        .expect("write");
        std::fs::write(dir.join("sub/c.yaml"), route("c", "/c")).expect("write");
        let cache = FileCache::default();
        let full = load_path(&dir).expect("loads");
        let cached = load_path_cached(&dir, &cache).expect("loads");
        assert_eq!(cached.resources, full.resources);
        // A changed file, a new one and a removed one.
        std::fs::write(dir.join("sub/c.yaml"), route("c", "/c2")).expect("write");
        std::fs::write(dir.join("d.yaml"), route("d", "/d")).expect("write");
        std::fs::remove_file(dir.join("a.yaml")).expect("remove");
        let full = load_path(&dir).expect("loads");
        let cached = load_path_cached(&dir, &cache).expect("loads");
        assert_eq!(cached.resources, full.resources);
        assert_eq!(names(&cached), ["c", "d"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again() {
        let dir = folder("unchanged");
        std::fs::write(dir.join("a.yaml"), route("a", "/a")).expect("write");
        std::fs::write(dir.join("b.yaml"), route("b", "/b")).expect("write");
        let cache = FileCache::default();
        load_path_cached(&dir, &cache).expect("loads");
        // Mark what the cache holds for a.yaml: a parse would not produce the mark.
        for (file, (_, loaded)) in cache.files.lock().expect("lock").iter_mut() {
            if file.ends_with("a.yaml") {
                loaded.warnings.push("from the cache".into());
            }
        }
        std::fs::write(dir.join("b.yaml"), route("b", "/b2")).expect("write");
        let again = load_path_cached(&dir, &cache).expect("loads");
        assert_eq!(again.warnings, ["from the cache"]);
        // Its text changed: parsed again, and the mark is gone.
        std::fs::write(dir.join("a.yaml"), route("a", "/a2")).expect("write");
        let changed = load_path_cached(&dir, &cache).expect("loads");
        assert!(changed.warnings.is_empty(), "{:?}", changed.warnings);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_object_in_two_files_is_refused_as_a_full_load_refuses_it() {
        let dir = folder("twice");
        std::fs::write(dir.join("a.yaml"), route("same", "/a")).expect("write");
        let cache = FileCache::default();
        load_path_cached(&dir, &cache).expect("loads");
        std::fs::write(dir.join("b.yaml"), route("same", "/b")).expect("write");
        let full = load_path(&dir).expect_err("a duplicate");
        let cached = load_path_cached(&dir, &cache).expect_err("a duplicate");
        assert_eq!(cached, full);
        assert!(
            cached.to_string().contains("is also defined in"),
            "{cached}"
        );
        // A file with an error is read again next time, and reported again.
        let again = load_path_cached(&dir, &cache).expect_err("still a duplicate");
        assert_eq!(again, full);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
