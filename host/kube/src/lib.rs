//! Kubernetes mode: the objects come from the API server instead of a folder.
//!
//! One watcher per kind keeps a cache of the objects (managedFields and the
//! last-applied annotation stripped, each held as compact JSON text: see [`Cached`])
//! and wakes the provider on every change; the
//! provider turns the cache into the same [`Resources`](sluice_resources::Resources)
//! through the same loader and translator as file mode. While the API server is away
//! the cache stays as it was, so traffic keeps flowing on the last good snapshot; a
//! watcher that reconnects replaces its kind's objects in one step once its re-list is
//! complete.
//!
//! Statuses are written back by [`status`] on the replica that holds the [`lease`].

#![forbid(unsafe_code)]

pub mod client;
pub mod crd;
pub mod infra;
pub mod lease;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use sluice_translate::Kind as Status;
use tokio::sync::{mpsc, watch};

/// A kind Sluice reads from the cluster, with the versions it understands, newest first.
pub struct Kind {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub kind: &'static str,
}

const GW: &str = "gateway.networking.k8s.io";

pub const KINDS: &[Kind] = &[
    Kind {
        group: GW,
        versions: &["v1"],
        kind: Status::GatewayClass.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1"],
        kind: Status::Gateway.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1"],
        kind: Status::ListenerSet.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1"],
        kind: Status::HTTPRoute.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1"],
        kind: Status::GRPCRoute.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1", "v1alpha3", "v1alpha2"],
        kind: Status::TLSRoute.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1", "v1alpha2"],
        kind: Status::TCPRoute.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1", "v1alpha2"],
        kind: Status::UDPRoute.as_str(),
    },
    Kind {
        group: GW,
        versions: &["v1", "v1beta1"],
        kind: "ReferenceGrant",
    },
    Kind {
        group: GW,
        versions: &["v1", "v1alpha3"],
        kind: Status::BackendTLSPolicy.as_str(),
    },
    Kind {
        group: "sluice.dev",
        versions: &["v1alpha1"],
        kind: Status::WasmFilter.as_str(),
    },
    Kind {
        group: "networking.k8s.io",
        versions: &["v1"],
        kind: Status::Ingress.as_str(),
    },
    Kind {
        group: "networking.k8s.io",
        versions: &["v1"],
        kind: "IngressClass",
    },
    Kind {
        group: "",
        versions: &["v1"],
        kind: "Namespace",
    },
    Kind {
        group: "",
        versions: &["v1"],
        kind: "Service",
    },
    Kind {
        group: "discovery.k8s.io",
        versions: &["v1"],
        kind: "EndpointSlice",
    },
    Kind {
        group: "",
        versions: &["v1"],
        kind: "Secret",
    },
    Kind {
        group: "",
        versions: &["v1"],
        kind: "ConfigMap",
    },
];

type Key = (String, String);

/// What the watchers saw: per kind, the objects by (namespace, name).
#[derive(Default)]
struct Cache {
    objects: Vec<BTreeMap<Key, Arc<Cached>>>,
    synced: Vec<bool>,
}

/// One cached object, as compact JSON text rather than a [`Value`] tree.
///
/// A `Value` spends a B-tree node of 11 slots (about 600 bytes) on every JSON object,
/// however few fields it has, and a route is mostly small objects (a match, a path, a
/// backendRef): 1,000 HTTPRoutes of 16 rules took 47 MB as `Value`s, measured with
/// heaptrack under `examples/bench/kube_memory.sh 16000`, against 23 MB for the whole
/// of file mode serving the same routes. As text they take a few KB each. The text is
/// parsed back when a configuration is loaded, on the provider's blocking thread, one
/// object at a time.
///
/// The status and the resourceVersion are kept apart from the rest, so that a change
/// is a comparison of two strings, and the status writer reads an object's status
/// without parsing its spec.
#[derive(Debug, PartialEq)]
struct Cached {
    /// The object without `status` and `metadata.resourceVersion`.
    spec: Box<str>,
    /// `status`, if the object has one.
    status: Option<Box<str>>,
    resource_version: Option<Box<str>>,
}

impl Cached {
    fn new(mut v: Value) -> Option<Cached> {
        let map = v.as_object_mut()?;
        let status = map.remove("status");
        let resource_version = map
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .and_then(|m| m.remove("resourceVersion"))
            .and_then(|rv| rv.as_str().map(Box::from));
        Some(Cached {
            spec: serde_json::to_string(&v).ok()?.into(),
            status: match status {
                Some(s) => Some(serde_json::to_string(&s).ok()?.into()),
                None => None,
            },
            resource_version,
        })
    }

    /// Whether the two differ in more than their status and resourceVersion (a status
    /// write, often Sluice's own, needs no new translation).
    fn same_but_status(&self, other: &Cached) -> bool {
        self.spec == other.spec
    }

    /// The status, `None` when the object has none.
    fn status(&self) -> Option<Value> {
        // The text was written by serde_json from a Value: it parses.
        serde_json::from_str(self.status.as_deref()?).ok()
    }

    /// The whole object, as the API server last showed it.
    fn value(&self) -> Value {
        // The text was written by serde_json from an object: it parses back to one.
        let mut v: Value = serde_json::from_str(&self.spec).unwrap_or(Value::Null);
        if let Some(map) = v.as_object_mut() {
            if let Some(s) = self.status() {
                map.insert("status".into(), s);
            }
            if let (Some(rv), Some(meta)) = (
                &self.resource_version,
                map.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            }
        }
        v
    }
}

/// The cluster source: the served version of each kind, the cache, and where
/// statuses go.
pub struct Cluster {
    pub client: kube::Client,
    /// Per entry of [`KINDS`]: the served resource, or `None` when its CRD is not
    /// installed (such objects cannot exist, so none are read).
    pub resources: Vec<Option<ApiResource>>,
    cache: Mutex<Cache>,
    /// Load errors already logged, so that each is logged once, not on every change.
    logged: Mutex<BTreeSet<String>>,
    statuses: watch::Sender<Arc<Vec<sluice_translate::ObjectStatus>>>,
    /// The data planes the Gateways of `PerGateway` classes should have.
    data_planes: watch::Sender<Arc<Vec<sluice_translate::infra::DataPlane>>>,
    /// Wakes the status writer when an object changes, even if no status did.
    pub changed: watch::Sender<()>,
}

impl Cluster {
    /// Finds which version of each kind the API server serves.
    pub async fn discover(client: kube::Client) -> anyhow::Result<Arc<Cluster>> {
        let mut resources = Vec::new();
        for k in KINDS {
            let mut found = None;
            for v in k.versions {
                let gvk = GroupVersionKind::gvk(k.group, v, k.kind);
                match kube::discovery::pinned_kind(&client, &gvk).await {
                    Ok((ar, _)) => {
                        found = Some(ar);
                        break;
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "cannot ask the API server which {} versions it serves: {e}",
                            k.kind
                        ));
                    }
                }
            }
            if found.is_none() {
                tracing::warn!(
                    kind = k.kind,
                    "the API server does not serve {} {}; install its CRD and restart Sluice to use it",
                    k.group,
                    k.kind
                );
            }
            resources.push(found);
        }
        let n = KINDS.len();
        Ok(Arc::new(Cluster {
            client,
            resources,
            cache: Mutex::new(Cache {
                objects: vec![BTreeMap::new(); n],
                synced: vec![false; n],
            }),
            logged: Mutex::new(BTreeSet::new()),
            statuses: watch::Sender::new(Arc::new(Vec::new())),
            data_planes: watch::Sender::new(Arc::new(Vec::new())),
            changed: watch::Sender::new(()),
        }))
    }

    /// Starts one watcher per served kind; each change is signalled on `tx`.
    pub fn watch(self: &Arc<Self>, tx: mpsc::UnboundedSender<()>) {
        for (i, ar) in self.resources.iter().enumerate() {
            let Some(ar) = ar.clone() else { continue };
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move { this.watch_kind(i, ar, tx).await });
        }
    }

    async fn watch_kind(&self, i: usize, ar: ApiResource, tx: mpsc::UnboundedSender<()>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let kind = KINDS[i].kind;
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures_util::pin_mut!(stream);
        let mut buffer: Option<BTreeMap<Key, Arc<Cached>>> = None;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => {
                    if failing {
                        tracing::info!(kind, "watching again");
                        failing = false;
                    }
                    e
                }
                Err(e) => {
                    // The watcher retries with backoff; the cache keeps serving.
                    if !failing {
                        tracing::warn!(
                            kind,
                            "watch failed, retrying; serving the last objects seen: {e}"
                        );
                        failing = true;
                    }
                    continue;
                }
            };
            let changed = {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Event::Init => {
                        buffer = Some(BTreeMap::new());
                        false
                    }
                    Event::InitApply(o) => {
                        if let (Some(b), Some((k, v))) = (buffer.as_mut(), clean(i, &ar, o)) {
                            b.insert(k, v);
                        }
                        false
                    }
                    Event::InitDone => {
                        let new = buffer.take().unwrap_or_default();
                        let changed = !cache.synced[i] || differs(&cache.objects[i], &new);
                        cache.objects[i] = new;
                        cache.synced[i] = true;
                        changed
                    }
                    Event::Apply(o) => {
                        let k = key(&o);
                        match clean(i, &ar, o) {
                            Some((k, v)) => {
                                let old = cache.objects[i].insert(k, v.clone());
                                old.is_none_or(|old| !old.same_but_status(&v))
                            }
                            // A Secret or ConfigMap that is no longer of interest (its
                            // ca.crt was removed, say): drop the cached copy.
                            None => cache.objects[i].remove(&k).is_some(),
                        }
                    }
                    Event::Delete(o) => {
                        let k = key(&o);
                        cache.objects[i].remove(&k).is_some()
                    }
                }
            };
            self.changed.send_replace(());
            if changed && self.synced() {
                let _ = tx.send(());
            }
        }
    }

    /// Whether every watcher has listed its kind once.
    pub fn synced(&self) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.resources
            .iter()
            .zip(&cache.synced)
            .all(|(ar, s)| ar.is_none() || *s)
    }

    /// The cached objects, loaded as file mode loads YAML. Objects that do not load
    /// are left out and logged (once per distinct error).
    pub fn load(&self) -> sluice_resources::Loaded {
        // Shared handles, taken under the lock; each object is parsed only as the
        // loader reaches it, so that one parsed object at a time is alive.
        let objects: Vec<Arc<Cached>> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .objects
                .iter()
                .flat_map(|m| m.values().cloned())
                .collect()
        };
        let (loaded, errors) = sluice_resources::load_objects(
            objects.iter().map(|c| ("cluster".to_string(), c.value())),
        );
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeSet<String> = errors.iter().map(|e| e.to_string()).collect();
        for e in now.difference(&logged) {
            tracing::warn!("object ignored: {e}");
        }
        *logged = now;
        loaded
    }

    fn cached(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<Cached>> {
        let i = KINDS.iter().position(|k| k.kind == kind)?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.objects[i]
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// One cached object, as the API server last showed it.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        Some(self.cached(kind, namespace, name)?.value())
    }

    /// One cached object's status (`Null` when it has none) and resourceVersion,
    /// without parsing the rest of it.
    pub fn status(&self, kind: &str, namespace: &str, name: &str) -> Option<(Value, String)> {
        let c = self.cached(kind, namespace, name)?;
        let rv = c
            .resource_version
            .as_deref()
            .unwrap_or_default()
            .to_string();
        Some((c.status().unwrap_or(Value::Null), rv))
    }

    fn all(&self, kind: &str) -> Vec<(Key, Arc<Cached>)> {
        let Some(i) = KINDS.iter().position(|k| k.kind == kind) else {
            return Vec::new();
        };
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.objects[i]
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }

    /// Every cached object of `kind`.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.all(kind).into_iter().map(|(_, c)| c.value()).collect()
    }

    /// The (namespace, name) and status (`Null` when none) of every cached object of
    /// `kind`, without parsing the rest of them.
    pub fn statuses(&self, kind: &str) -> Vec<(Key, Value)> {
        self.all(kind)
            .into_iter()
            .map(|(k, c)| (k, c.status().unwrap_or(Value::Null)))
            .collect()
    }

    /// Hands the statuses of a published snapshot to the status writer.
    pub fn publish(&self, statuses: Vec<sluice_translate::ObjectStatus>) {
        self.statuses.send_replace(Arc::new(statuses));
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<sluice_translate::ObjectStatus>>> {
        self.statuses.subscribe()
    }

    /// Hands the data planes of a published snapshot to [`infra::run`].
    pub fn publish_data_planes(&self, planes: Vec<sluice_translate::infra::DataPlane>) {
        self.data_planes.send_if_modified(|old| {
            let changed = **old != planes;
            if changed {
                *old = Arc::new(planes);
            }
            changed
        });
    }

    pub fn data_planes(&self) -> watch::Receiver<Arc<Vec<sluice_translate::infra::DataPlane>>> {
        self.data_planes.subscribe()
    }
}

fn key(o: &DynamicObject) -> Key {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// The object as JSON with its apiVersion and kind (list items may lack them), without
/// the fields Sluice never reads and that are large; `None` for Secrets and ConfigMaps
/// that cannot be referenced as certificates, CAs or pull secrets, so that the cache
/// holds no other Secret.
fn clean(i: usize, ar: &ApiResource, o: DynamicObject) -> Option<(Key, Arc<Cached>)> {
    let (k, v) = clean_value(i, ar, o)?;
    Some((k, Arc::new(Cached::new(v)?)))
}

fn clean_value(i: usize, ar: &ApiResource, mut o: DynamicObject) -> Option<(Key, Value)> {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    let k = key(&o);
    let mut v = serde_json::to_value(&o).ok()?;
    let map = v.as_object_mut()?;
    map.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
    map.insert("kind".into(), Value::String(ar.kind.clone()));
    let has_ca = |m: &serde_json::Map<String, Value>| {
        m.get("data")
            .and_then(Value::as_object)
            .is_some_and(|d| d.contains_key("ca.crt"))
    };
    // The filter trust policy and data plane settings (a GatewayClass's or Gateway's
    // parametersRef) and the public keys it names: a ConfigMap with a `trustPolicy` or
    // `dataPlane`, or a ConfigMap or Secret holding a PEM
    // public key. Public keys are not secret, so caching them is harmless.
    let values = |m: &serde_json::Map<String, Value>| -> Vec<String> {
        m.get("data")
            .and_then(Value::as_object)
            .map(|d| {
                d.values()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----";
    match KINDS[i].kind {
        "Secret" => {
            use base64::Engine;
            let t = map.get("type").and_then(Value::as_str).unwrap_or("");
            let public_key = || {
                values(map).iter().any(|v| {
                    base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .is_ok_and(|b| String::from_utf8_lossy(&b).contains(PUBLIC_KEY))
                })
            };
            let wanted = matches!(
                t,
                "kubernetes.io/tls" | sluice_resources::DOCKER_CONFIG_JSON
            ) || has_ca(map)
                || public_key();
            if !wanted {
                return None;
            }
        }
        "ConfigMap" => {
            let trust = map.get("data").and_then(Value::as_object).is_some_and(|d| {
                d.contains_key(sluice_translate::trust::TRUST_POLICY_KEY)
                    || d.contains_key(sluice_translate::infra::DATA_PLANE_KEY)
            });
            let public_key = || values(map).iter().any(|v| v.contains(PUBLIC_KEY));
            if !has_ca(map) && !trust && !public_key() {
                return None;
            }
        }
        _ => {}
    }
    Some((k, v))
}

fn differs(old: &BTreeMap<Key, Arc<Cached>>, new: &BTreeMap<Key, Arc<Cached>>) -> bool {
    old.len() != new.len()
        || old
            .iter()
            .zip(new)
            .any(|((ka, a), (kb, b))| ka != kb || !a.same_but_status(b))
}

/// The addresses each Gateway (namespace, name) reports in its status.
pub type Reported = BTreeMap<(String, String), Vec<std::net::IpAddr>>;

/// Reads [`Reported`] from Gateway objects as the API server holds them (for
/// `--gateway-address-pool`, which keeps the address a Gateway already reports).
pub fn reported(gateways: &[serde_json::Value]) -> Reported {
    gateways
        .iter()
        .filter_map(|g| {
            let ns = g.pointer("/metadata/namespace")?.as_str()?.to_string();
            let name = g.pointer("/metadata/name")?.as_str()?.to_string();
            let ips = g
                .pointer("/status/addresses")?
                .as_array()?
                .iter()
                .filter_map(|a| a.get("value")?.as_str()?.parse().ok())
                .collect();
            Some(((ns, name), ips))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached object reads back as it came, and a change is seen in anything but its
    /// status and resourceVersion.
    #[test]
    fn the_cache_gives_objects_back_whole_and_compares_them_without_status() {
        let route = |path: &str, rv: &str, status: Value| {
            let mut v = serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": "ns", "resourceVersion": rv,
                             "generation": 1},
                "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                    "backendRefs": [{"name": "b", "port": 80}]}]},
            });
            if !status.is_null() {
                v["status"] = status;
            }
            v
        };
        let status = serde_json::json!({"parents": [{"controllerName": "sluice.dev/gateway"}]});
        let a = route("/a", "1", Value::Null);
        let cached = Cached::new(a.clone()).expect("an object");
        assert_eq!(cached.value(), a);
        assert_eq!(cached.status(), None);
        let with_status = route("/a", "2", status.clone());
        let b = Cached::new(with_status.clone()).expect("an object");
        assert_eq!(b.value(), with_status);
        assert_eq!(b.status(), Some(status.clone()));
        assert_eq!(b.resource_version.as_deref(), Some("2"));
        // A status write (a new status and resourceVersion) is no change to translate;
        // a new path is.
        assert!(cached.same_but_status(&b));
        let c = Cached::new(route("/c", "3", status)).expect("an object");
        assert!(!b.same_but_status(&c));
        // Not an object: nothing to cache.
        assert_eq!(Cached::new(serde_json::json!([1])), None);
    }

    /// What the cache keeps of Secrets and ConfigMaps: only what Sluice can reference.
    #[test]
    fn the_cache_keeps_trust_policies_and_public_keys_and_no_other_secret() {
        let kept = |kind: &str, data: Value| {
            let i = KINDS.iter().position(|k| k.kind == kind).expect("kind");
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", kind));
            let o: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": kind,
                "metadata": {"name": "x", "namespace": "ns"},
                "type": "Opaque",
                "data": data,
            }))
            .expect("object");
            clean(i, &ar, o).is_some()
        };
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(kept(
            "ConfigMap",
            serde_json::json!({"trustPolicy": "policies: []"})
        ));
        assert!(kept("ConfigMap", serde_json::json!({"cosign.pub": pem})));
        assert!(kept("ConfigMap", serde_json::json!({"ca.crt": "x"})));
        assert!(!kept("ConfigMap", serde_json::json!({"app.conf": "x"})));
        assert!(kept("Secret", serde_json::json!({"cosign.pub": b64(pem)})));
        assert!(!kept(
            "Secret",
            serde_json::json!({"password": b64("hunter2")})
        ));
    }
}
