//! Per-Gateway data planes: for each Gateway of a `PerGateway` class (see
//! [`sluice_translate::infra`]), the lease holder keeps a ServiceAccount, a Deployment
//! running `sluice run --kubernetes --gateway NAMESPACE/NAME` and a Service in the
//! Gateway's namespace, owned by the Gateway (so Kubernetes deletes them with it). It
//! writes them by server-side apply, deletes the ones no Gateway wants any more, and
//! keeps one ClusterRoleBinding that grants their ServiceAccounts the read-only data
//! plane ClusterRole.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use sluice_translate::infra::DataPlane;
use tokio::sync::watch;

use crate::Cluster;

/// Marks what this module created, to find it again.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "sluice";
/// The label that selects a data plane's Pods: the objects' name.
pub const DATA_PLANE_LABEL: &str = "sluice.dev/data-plane";
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const FIELD_MANAGER: &str = "sluice-infrastructure";
/// Applied again this often even without a change, to repair edits and deletions.
const RESYNC: Duration = Duration::from_secs(30);

/// How data planes are made.
#[derive(Clone, Debug)]
pub struct Options {
    /// The image when neither the class nor the Gateway names one.
    pub image: Option<String>,
    /// The read-only ClusterRole the data planes' ServiceAccounts are bound to (a
    /// ClusterRoleBinding of the same name); `None`: no binding is made.
    pub cluster_role: Option<String>,
    /// The admin port of the data plane Pods (probes and metrics).
    pub admin_port: u16,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct InfraStats {
    pub applied: AtomicU64,
    pub deleted: AtomicU64,
    pub failures: AtomicU64,
}

impl sluice_metrics::Collect for InfraStats {
    fn collect(&self, out: &mut sluice_metrics::Encoder) {
        let none = sluice_metrics::Labels::new();
        let families = [
            (
                "sluice_data_plane_objects_applied_total",
                "Per-Gateway data plane objects (ServiceAccount, Service, Deployment) applied.",
                &self.applied,
            ),
            (
                "sluice_data_plane_objects_deleted_total",
                "Per-Gateway data plane objects deleted because no Gateway wants them.",
                &self.deleted,
            ),
            (
                "sluice_data_plane_failures_total",
                "Failed writes of per-Gateway data plane objects (retried).",
                &self.failures,
            ),
        ];
        for (name, help, value) in families {
            out.family(name, sluice_metrics::Type::Counter, help);
            out.sample(name, &none, value.load(Ordering::Relaxed));
        }
    }
}

/// Keeps the data planes as the published snapshot wants them, while this replica
/// holds the lease.
pub async fn run(
    cluster: Arc<Cluster>,
    mut leader: watch::Receiver<bool>,
    options: Options,
    stats: Arc<InfraStats>,
) {
    let mut planes = cluster.data_planes();
    let mut retry = false;
    loop {
        let wait = if retry {
            Duration::from_secs(2)
        } else {
            RESYNC
        };
        tokio::select! {
            r = planes.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        if !*leader.borrow_and_update() {
            retry = false;
            continue;
        }
        let want = planes.borrow_and_update().clone();
        retry = !reconcile(&cluster, &want, &options, &stats).await;
    }
}

/// One pass; false when something failed (logged and counted).
async fn reconcile(
    cluster: &Cluster,
    want: &[DataPlane],
    options: &Options,
    stats: &InfraStats,
) -> bool {
    let client = &cluster.client;
    let mut ok = true;
    let mut fail = |what: String, e: kube::Error| {
        tracing::warn!("data plane: {what}: {e}; retrying");
        stats.failures.fetch_add(1, Ordering::Relaxed);
        ok = false;
    };
    // A data plane whose settings are invalid is kept as it is: not applied, not deleted.
    for dp in want
        .iter()
        .filter(|d| !d.uid.is_empty() && d.kept.is_none())
    {
        let image = dp.image.clone().or_else(|| options.image.clone());
        for (kind, obj) in objects(dp, image.as_deref(), options.admin_port) {
            match apply(client, kind, &dp.namespace, &dp.name, &obj).await {
                Ok(()) => {
                    stats.applied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => fail(format!("{kind} {}/{}", dp.namespace, dp.name), e),
            }
        }
    }
    let wanted: BTreeSet<(&str, &str)> = want
        .iter()
        .map(|d| (d.namespace.as_str(), d.name.as_str()))
        .collect();
    for kind in ["Deployment", "Service", "ServiceAccount"] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
        let lp =
            ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER},{DATA_PLANE_LABEL}"));
        let list = match api.list_metadata(&lp).await {
            Ok(l) => l,
            Err(e) => {
                fail(format!("listing {kind}s"), e);
                continue;
            }
        };
        for o in list.items {
            let ns = o.metadata.namespace.clone().unwrap_or_default();
            let name = o.metadata.name.clone().unwrap_or_default();
            if wanted.contains(&(ns.as_str(), name.as_str())) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &ns, &resource(kind));
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!("data plane: deleted {kind} {ns}/{name}: no Gateway wants it");
                    stats.deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => fail(format!("deleting {kind} {ns}/{name}"), e),
            }
        }
    }
    if let Some(role) = &options.cluster_role {
        let subjects: Vec<Value> = want
            .iter()
            .map(|d| json!({"kind": "ServiceAccount", "name": d.name, "namespace": d.namespace}))
            .collect();
        let crb = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role, "labels": {MANAGED_BY: MANAGER}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        });
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &resource("ClusterRoleBinding"));
        if let Err(e) = api
            .patch(
                role,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crb),
            )
            .await
        {
            fail(format!("ClusterRoleBinding {role}"), e);
        }
    }
    ok
}

fn resource(kind: &str) -> ApiResource {
    let (group, version) = match kind {
        "Deployment" => ("apps", "v1"),
        "ClusterRoleBinding" => ("rbac.authorization.k8s.io", "v1"),
        _ => ("", "v1"),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

async fn apply(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
    obj: &Value,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource(kind));
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
}

/// The ServiceAccount, Service and Deployment of a data plane.
pub fn objects(dp: &DataPlane, image: Option<&str>, admin_port: u16) -> Vec<(&'static str, Value)> {
    let mut labels = serde_json::Map::new();
    for (k, v) in &dp.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert(MANAGED_BY.into(), json!(MANAGER));
    labels.insert(DATA_PLANE_LABEL.into(), json!(dp.name));
    // A label value holds at most 63 characters; longer Gateway names go without.
    if dp.gateway.len() <= 63 {
        labels.insert(GATEWAY_NAME_LABEL.into(), json!(dp.gateway));
    }
    let annotations = json!(dp.annotations);
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": dp.gateway,
        "uid": dp.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let meta = json!({
        "name": dp.name,
        "namespace": dp.namespace,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": owner,
    });
    let selector = json!({ DATA_PLANE_LABEL: dp.name });
    let port_name = |port: u16, udp: bool| format!("{}-{port}", if udp { "udp" } else { "tcp" });
    let proto = |udp: bool| if udp { "UDP" } else { "TCP" };
    let service_ports: Vec<Value> = dp
        .ports
        .iter()
        .map(|p| {
            json!({"name": port_name(p.port, p.udp), "port": p.port, "targetPort": p.port, "protocol": proto(p.udp)})
        })
        .collect();
    let mut container_ports: Vec<Value> = dp
        .ports
        .iter()
        .map(|p| {
            json!({"name": port_name(p.port, p.udp), "containerPort": p.port, "protocol": proto(p.udp)})
        })
        .collect();
    container_ports.push(json!({"name": "admin", "containerPort": admin_port, "protocol": "TCP"}));
    let mut service_spec = json!({
        "type": dp.service_type,
        "selector": selector,
        "ports": service_ports,
    });
    if !dp.addresses.is_empty() {
        // spec.addresses: where the Service answers besides its cluster IP.
        service_spec["externalIPs"] = json!(dp.addresses);
    }
    if dp.ports.is_empty() {
        // A Service needs a port: without listeners, the admin port stands in.
        service_spec["ports"] = json!([{"name": "admin", "port": admin_port, "protocol": "TCP"}]);
    }
    let mut container = json!({
        "name": "sluice",
        "image": image.unwrap_or("ghcr.io/sluice-dev/sluice:latest"),
        "args": [
            "run", "--kubernetes",
            format!("--gateway={}/{}", dp.namespace, dp.gateway),
            format!("--admin=0.0.0.0:{admin_port}"),
            "--cache-dir=/var/cache/sluice",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": container_ports,
        "startupProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2, "failureThreshold": 90},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/sluice"}],
    });
    if let Some(r) = &dp.resources {
        container["resources"] = r.clone();
    }
    let mut pod_meta = json!({"labels": labels, "annotations": annotations});
    pod_meta["annotations"]["prometheus.io/scrape"] = json!("true");
    pod_meta["annotations"]["prometheus.io/port"] = json!(admin_port.to_string());
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": dp.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "serviceAccountName": dp.name,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        // Listeners on ports below 1024 without any capability.
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                    },
                    "containers": [container],
                    "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "256Mi"}}],
                },
            },
        },
    });
    vec![
        (
            "ServiceAccount",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        ),
        (
            "Service",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": service_spec}),
        ),
        ("Deployment", deployment),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_carry_the_infrastructure_metadata_and_select_their_pods() {
        let dp = DataPlane {
            namespace: "web".into(),
            gateway: "edge".into(),
            uid: "u1".into(),
            name: "sluice-edge".into(),
            labels: [("team".to_string(), "a".to_string())].into(),
            annotations: [("lb".to_string(), "internal".to_string())].into(),
            image: None,
            replicas: 2,
            service_type: "ClusterIP".into(),
            resources: None,
            ports: [(80, false), (53, true)]
                .map(|(port, udp)| sluice_translate::infra::Port { port, udp })
                .into(),
            addresses: vec!["203.0.113.7".into()],
            kept: None,
        };
        let objs = objects(&dp, Some("img:1"), 9901);
        assert_eq!(objs.len(), 3);
        for (kind, o) in &objs {
            assert_eq!(o["metadata"]["labels"]["team"], "a", "{kind}");
            assert_eq!(o["metadata"]["annotations"]["lb"], "internal", "{kind}");
            assert_eq!(
                o["metadata"]["labels"][GATEWAY_NAME_LABEL], "edge",
                "{kind}"
            );
            assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u1", "{kind}");
        }
        let d = &objs[2].1;
        assert_eq!(d["spec"]["replicas"], 2);
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["team"], "a");
        assert_eq!(pod["metadata"]["annotations"]["lb"], "internal");
        assert_eq!(pod["spec"]["containers"][0]["image"], "img:1");
        assert_eq!(
            pod["spec"]["containers"][0]["args"][2],
            "--gateway=web/edge"
        );
        let svc = &objs[1].1;
        assert_eq!(svc["spec"]["selector"][DATA_PLANE_LABEL], "sluice-edge");
        assert_eq!(svc["spec"]["ports"].as_array().map(Vec::len), Some(2));
        assert_eq!(svc["spec"]["externalIPs"][0], "203.0.113.7");
    }
}
