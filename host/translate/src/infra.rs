//! Where each Gateway is served: by the shared fleet (the default), or by a data plane
//! of its own, a Deployment and a Service per Gateway that the controller creates
//! (GatewayClass `dataPlane.mode: PerGateway`).
//!
//! Operators choose per class, in the ConfigMap its `spec.parametersRef` names (the one
//! that also holds the filter trust policy), under [`DATA_PLANE_KEY`]. A Gateway's
//! `spec.infrastructure` adds labels and annotations to what is created for it, and its
//! `parametersRef` may name a ConfigMap in its namespace whose [`DATA_PLANE_KEY`]
//! overrides the class's replicas, Service type and resources.
//!
//! ```yaml
//! mode: PerGateway          # or Shared (the default); class only
//! image: registry.example.com/sluice:1.4   # default: the controller's own image
//! replicas: 2               # default 1; 0 to 100
//! serviceType: LoadBalancer # default; or ClusterIP, NodePort
//! resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 256Mi}}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_resources::{Gateway, Resources};

use crate::CONTROLLER_NAME;

/// The ConfigMap key holding the data plane settings.
pub const DATA_PLANE_KEY: &str = "dataPlane";
/// At most this many replicas per Gateway.
pub const MAX_REPLICAS: u32 = 100;
/// At most this many labels, and as many annotations, in `spec.infrastructure`.
pub const MAX_METADATA: usize = 64;

/// How a class's Gateways are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// By every replica of the controller's own Deployment.
    #[default]
    Shared,
    /// By a Deployment and a Service per Gateway, created by the controller.
    PerGateway,
}

/// The settings of a `dataPlane` key, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DataPlaneDoc {
    mode: Option<Mode>,
    image: Option<String>,
    replicas: Option<u32>,
    service_type: Option<String>,
    resources: Option<serde_json::Value>,
}

/// What is created for one Gateway of a `PerGateway` class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPlane {
    pub namespace: String,
    /// The Gateway's name.
    pub gateway: String,
    /// The Gateway's uid, for the owner references (empty in file mode).
    pub uid: String,
    /// The name of the ServiceAccount, Deployment and Service: `sluice-<gateway>`,
    /// shortened with a hash when that is not a valid Service name.
    pub name: String,
    /// `spec.infrastructure.labels` and `annotations`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `None`: the controller's own image.
    pub image: Option<String>,
    pub replicas: u32,
    pub service_type: String,
    pub resources: Option<serde_json::Value>,
    /// The ports of the Gateway's listeners (and its ListenerSets').
    pub ports: BTreeSet<Port>,
    /// The IP addresses of `spec.addresses`: the Service's external IPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The Gateway's or its class's settings are invalid (the message): what exists
    /// for it is kept as it is, neither changed nor deleted, until they are fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// A listener port of a data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub port: u16,
    pub udp: bool,
}

/// A class's data plane settings, or why they are invalid with the mode they still
/// name (when that much can be read): a class that says `mode: PerGateway` keeps its
/// Gateways' data planes as they are while the rest is being fixed, and one that does
/// not is served by the shared fleet.
pub(crate) type ClassSettings = Result<Settings, (Mode, String)>;

/// Each class of ours with its data plane settings.
pub(crate) fn class_settings(res: &Resources) -> BTreeMap<String, ClassSettings> {
    res.gateway_classes
        .iter()
        .filter(|gc| gc.spec.controller_name == CONTROLLER_NAME)
        .map(|gc| {
            let s = match &gc.spec.parameters_ref {
                None => Ok(Settings::default()),
                Some(r) => {
                    let (text, at) = class_text(res, r);
                    let mode = text.as_deref().map_or(Mode::Shared, lenient_mode);
                    text.map_or(Ok(DataPlaneDoc::default()), |t| doc_of(&t, &at))
                        .and_then(|d| Settings::default().with(&d, &at, true))
                        .map_err(|e| (mode, e))
                }
            };
            (gc.metadata.name.clone(), s)
        })
        .collect()
}

/// The `mode` a `dataPlane` text names, read as loosely as possible.
fn lenient_mode(text: &str) -> Mode {
    let v: serde_json::Value = serde_norway::from_str(text).unwrap_or_default();
    match v.get("mode").and_then(|m| m.as_str()) {
        Some("PerGateway") => Mode::PerGateway,
        _ => Mode::Shared,
    }
}

/// The mode of a class's settings, valid or not.
pub(crate) fn mode_of(s: Option<&ClassSettings>) -> Mode {
    match s {
        Some(Ok(s)) => s.mode,
        Some(Err((m, _))) => *m,
        None => Mode::Shared,
    }
}

/// The Gateways (namespace, name) whose class serves them with a data plane of their
/// own: the shared fleet leaves them out.
pub fn per_gateway(res: &Resources) -> BTreeSet<(String, String)> {
    let classes = class_settings(res);
    res.gateways
        .iter()
        .filter(|g| mode_of(classes.get(&g.spec.gateway_class_name)) == Mode::PerGateway)
        .map(|g| {
            (
                g.metadata.namespace_or_default().to_string(),
                g.metadata.name.clone(),
            )
        })
        .collect()
}

/// A class's settings with a Gateway's applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub mode: Mode,
    pub image: Option<String>,
    pub replicas: u32,
    pub service_type: String,
    pub resources: Option<serde_json::Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Shared,
            image: None,
            replicas: 1,
            service_type: "LoadBalancer".into(),
            resources: None,
        }
    }
}

impl Settings {
    fn with(mut self, d: &DataPlaneDoc, at: &str, class: bool) -> Result<Settings, String> {
        if let Some(m) = d.mode {
            if !class {
                return Err(format!(
                    "{at}: mode is the GatewayClass's to choose; remove it here"
                ));
            }
            self.mode = m;
        }
        if let Some(i) = &d.image {
            if i.is_empty() || i.chars().any(char::is_whitespace) {
                return Err(format!(
                    "{at}: image {i:?} is not an image reference; give registry/repository:tag"
                ));
            }
            self.image = Some(i.clone());
        }
        if let Some(r) = d.replicas {
            if r > MAX_REPLICAS {
                return Err(format!("{at}: replicas {r}: at most {MAX_REPLICAS}"));
            }
            self.replicas = r;
        }
        if let Some(t) = &d.service_type {
            if !matches!(t.as_str(), "LoadBalancer" | "ClusterIP" | "NodePort") {
                return Err(format!(
                    "{at}: serviceType {t:?} must be LoadBalancer, ClusterIP or NodePort"
                ));
            }
            self.service_type = t.clone();
        }
        if let Some(r) = &d.resources {
            let ok = r.as_object().is_some_and(|m| {
                m.iter().all(|(k, v)| {
                    matches!(k.as_str(), "requests" | "limits")
                        && v.as_object()
                            .is_some_and(|q| q.values().all(|x| x.is_string() || x.is_number()))
                })
            });
            if !ok {
                return Err(format!(
                    "{at}: resources must be a container's resources, e.g. {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {{memory: 256Mi}}}}"
                ));
            }
            self.resources = Some(r.clone());
        }
        Ok(self)
    }
}

fn doc_of(text: &str, at: &str) -> Result<DataPlaneDoc, String> {
    serde_norway::from_str::<Option<DataPlaneDoc>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{at}: {e}"))
}

/// The class's `dataPlane` text, if any (a ConfigMap with the trust policy only has
/// none), and where it is. What is wrong with the reference itself is the trust
/// policy's to say.
fn class_text(res: &Resources, r: &serde_json::Value) -> (Option<String>, String) {
    let field = |f: &str| r.get(f).and_then(|v| v.as_str()).unwrap_or_default();
    let (ns, name) = (field("namespace"), field("name"));
    let text = res
        .config_map(ns, name)
        .and_then(|cm| cm.data.get(DATA_PLANE_KEY).cloned());
    (text, format!("ConfigMap {ns}/{name} {DATA_PLANE_KEY}"))
}

/// Checks a Gateway's `spec.infrastructure` and gives what its data plane is made of
/// (which is used only when its class is `PerGateway`). The error is the Gateway's
/// `Accepted=False` `InvalidParameters` message.
pub(crate) fn gateway_data_plane(
    res: &Resources,
    gw: &Gateway,
    class: Settings,
    ports: BTreeSet<Port>,
) -> Result<DataPlane, String> {
    let ns = gw.metadata.namespace_or_default();
    let infra = gw.spec.infrastructure.as_ref();
    let map = |field: &str| -> Result<BTreeMap<String, String>, String> {
        let Some(v) = infra.and_then(|i| i.get(field)) else {
            return Ok(BTreeMap::new());
        };
        let m: BTreeMap<String, String> = serde_json::from_value(v.clone())
            .map_err(|_| format!("spec.infrastructure.{field}: must map names to strings"))?;
        if m.len() > MAX_METADATA {
            return Err(format!(
                "spec.infrastructure.{field}: {} entries; at most {MAX_METADATA}",
                m.len()
            ));
        }
        Ok(m)
    };
    let labels = map("labels")?;
    let annotations = map("annotations")?;
    let mut settings = class;
    if let Some(r) = infra.and_then(|i| i.get("parametersRef")) {
        let field = |f: &str| r.get(f).and_then(|v| v.as_str()).unwrap_or_default();
        if !matches!(field("group"), "" | "core") || field("kind") != "ConfigMap" {
            return Err(format!(
                "spec.infrastructure.parametersRef: Sluice takes a ConfigMap (group \"\", kind ConfigMap) in the Gateway's namespace with the data plane settings under {DATA_PLANE_KEY:?}, not {}/{}",
                field("group"),
                field("kind")
            ));
        }
        let name = field("name");
        let text = res
            .config_map(ns, name)
            .and_then(|c| c.data.get(DATA_PLANE_KEY))
            .ok_or_else(|| {
                format!(
                    "spec.infrastructure.parametersRef: ConfigMap {ns}/{name} not found, or without a {DATA_PLANE_KEY:?} key; create it with the data plane settings (replicas, serviceType, resources) there"
                )
            })?;
        let at = format!("ConfigMap {ns}/{name} {DATA_PLANE_KEY}");
        settings = settings.with(&doc_of(text, &at)?, &at, false)?;
    }
    Ok(DataPlane {
        namespace: ns.to_string(),
        gateway: gw.metadata.name.clone(),
        uid: gw.metadata.uid.clone().unwrap_or_default(),
        name: object_name(&gw.metadata.name),
        labels,
        annotations,
        image: settings.image,
        replicas: settings.replicas,
        service_type: settings.service_type,
        resources: settings.resources,
        ports,
        addresses: gw
            .spec
            .addresses
            .iter()
            .filter(|a| a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress")
            .filter(|a| a.value.parse::<std::net::IpAddr>().is_ok())
            .map(|a| a.value.clone())
            .collect(),
        kept: None,
    })
}

/// The data plane of a Gateway whose settings are invalid: only what names it, so
/// that what exists is found and kept.
pub(crate) fn kept(gw: &Gateway, why: String) -> DataPlane {
    DataPlane {
        namespace: gw.metadata.namespace_or_default().to_string(),
        gateway: gw.metadata.name.clone(),
        uid: gw.metadata.uid.clone().unwrap_or_default(),
        name: object_name(&gw.metadata.name),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        image: None,
        replicas: 0,
        service_type: String::new(),
        resources: None,
        ports: BTreeSet::new(),
        addresses: Vec::new(),
        kept: Some(why),
    }
}

/// `sluice-<gateway>` when that is a valid Service name (a DNS-1035 label); otherwise
/// the name's first characters made valid, with a hash of the whole name.
pub fn object_name(gateway: &str) -> String {
    let plain = format!("sluice-{gateway}");
    let valid = plain.len() <= 63
        && plain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !plain.ends_with('-');
    if valid {
        return plain;
    }
    // FNV-1a: stable across versions and platforms, which the name must be.
    let hash = gateway.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let stem: String = plain
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(45)
        .collect();
    format!("{}-{hash:08x}", stem.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_valid_service_names() {
        assert_eq!(object_name("web"), "sluice-web");
        let dotted = object_name("web.example");
        assert!(dotted.starts_with("sluice-web-example-"), "{dotted}");
        let long = object_name(&"a".repeat(200));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(object_name("web.example"), object_name("web-example"));
    }
}
