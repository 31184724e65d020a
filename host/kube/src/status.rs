//! Writes the translator's statuses to the objects' status subresources.
//!
//! Only the replica holding the lease writes, and only what changed: the desired status
//! is compared with the one the API server holds (conditions keep their
//! `lastTransitionTime` while their status does not change), so a restart, a new
//! leader or a reconnect writes nothing when nothing changed. Route parents and policy
//! ancestors written by other controllers are kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_metrics::{Collect, Encoder, Labels, Type};
use sluice_translate::{
    CONTROLLER_NAME, Kind, ObjectStatus, ObservedCondition, Status, merge_transition_times,
};
use tokio::sync::watch;

use crate::{Cluster, KINDS};

/// What the admin API shows of the status writer.
#[derive(Default)]
pub struct StatusStats {
    pub leader: AtomicBool,
    pub writes: AtomicU64,
    pub failures: AtomicU64,
}

impl Collect for StatusStats {
    fn collect(&self, out: &mut Encoder) {
        let none = Labels::new();
        let families = [
            (
                "sluice_leader",
                Type::Gauge,
                "1 when this replica holds the status lease and writes statuses.",
                u64::from(self.leader.load(Ordering::Relaxed)),
            ),
            (
                "sluice_status_writes_total",
                Type::Counter,
                "Status subresource updates sent and accepted.",
                self.writes.load(Ordering::Relaxed),
            ),
            (
                "sluice_status_write_failures_total",
                Type::Counter,
                "Status updates the API server refused or did not answer.",
                self.failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in families {
            out.family(name, kind, help);
            out.sample(name, &none, value);
        }
    }
}

/// Where Gateways without `spec.addresses` say they are reachable: the data plane
/// Service's load-balancer addresses, else its cluster IPs.
#[derive(Clone, Debug)]
pub struct AddressSource {
    pub namespace: String,
    pub name: String,
}

pub async fn run(
    cluster: Arc<Cluster>,
    mut leader: watch::Receiver<bool>,
    addresses: Option<AddressSource>,
    stats: Arc<StatusStats>,
) {
    let mut statuses = cluster.subscribe();
    let mut changed = cluster.changed.subscribe();
    // Per object: the resourceVersion a write produced and what it wrote, so that an
    // object is not written again before the API server's echo reaches the cache.
    let mut written: HashMap<(String, String, String), (String, Value)> = HashMap::new();
    let mut retry = false;
    loop {
        tokio::select! {
            r = statuses.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)), if retry => {}
        }
        // Let a burst of events settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let is_leader = *leader.borrow_and_update();
        stats.leader.store(is_leader, Ordering::Relaxed);
        if !is_leader {
            written.clear();
            retry = false;
            continue;
        }
        changed.borrow_and_update();
        let current = statuses.borrow_and_update().clone();
        tracing::debug!(objects = current.len(), "writing statuses");
        let now = Timestamp::now()
            .round(Unit::Second)
            .unwrap_or_else(|_| Timestamp::now());
        retry = false;
        let mut writes: Vec<ObjectStatus> = current.to_vec();
        writes.extend(stale_entries(&cluster, &current));
        // Ingresses this replica gave an address that are no longer Sluice's (their
        // class changed): cleared once. Once only, and only those it wrote, because an
        // Ingress's status does not say which controller wrote it, and the new one's
        // addresses must not be fought over.
        for s in released_ingresses(&cluster, &current, &written) {
            let key = (
                s.kind.to_string(),
                s.metadata.namespace.clone(),
                s.metadata.name.clone(),
            );
            let result = write(&cluster, &s, None, &mut written, now).await;
            count(&stats, &s, result);
            written.remove(&key);
        }
        // Forget objects that are gone, so the map does not grow with churn.
        let keys: std::collections::HashSet<(&str, &str, &str)> = writes
            .iter()
            .map(|s| {
                (
                    s.kind.as_str(),
                    s.metadata.namespace.as_str(),
                    s.metadata.name.as_str(),
                )
            })
            .collect();
        written.retain(|(k, ns, n), _| keys.contains(&(k.as_str(), ns.as_str(), n.as_str())));
        let planes = cluster.data_planes().borrow().clone();
        for s in writes.iter() {
            // A Gateway with a data plane of its own reports its own Service's addresses.
            let own = planes
                .iter()
                .find(|d| {
                    s.kind == Kind::Gateway
                        && d.namespace == s.metadata.namespace
                        && d.gateway == s.metadata.name
                })
                .map(|d| AddressSource {
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                });
            let src = own.as_ref().or(addresses.as_ref());
            let result = write(&cluster, s, src, &mut written, now).await;
            retry |= !count(&stats, s, result);
        }
    }
}

/// Routes and policies that still list Sluice among their parents (ancestors) though
/// the translation no longer gives them a status (moved to another controller's
/// Gateway, say): a status of no entries of ours, which [`keep_others`] fills with
/// the other controllers' entries.
fn stale_entries(cluster: &Cluster, current: &[ObjectStatus]) -> Vec<ObjectStatus> {
    use sluice_translate::{PolicyStatus, RouteStatus, StatusMeta};
    let produced: std::collections::HashSet<(&str, &str, &str)> = current
        .iter()
        .map(|s| {
            let m = &s.metadata;
            (s.kind.as_str(), m.namespace.as_str(), m.name.as_str())
        })
        .collect();
    let mut out = Vec::new();
    let with_entries = Kind::ALL
        .iter()
        .copied()
        .filter(|k| k.is_route() || *k == Kind::BackendTLSPolicy);
    for kind in with_entries {
        let list = if kind.is_route() {
            "parents"
        } else {
            "ancestors"
        };
        for ((ns, name), status) in cluster.statuses(kind.as_str()) {
            if produced.contains(&(kind.as_str(), ns.as_str(), name.as_str())) {
                continue;
            }
            let ours = status.get(list).and_then(Value::as_array).is_some_and(|l| {
                l.iter().any(|e| {
                    e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                })
            });
            if !ours {
                continue;
            }
            // Rare (a route that left Sluice): only then is the whole object read.
            let Some(obj) = cluster.get(kind.as_str(), &ns, &name) else {
                continue;
            };
            let status = if list == "parents" {
                Status::Route(RouteStatus {
                    parents: Vec::new(),
                })
            } else {
                Status::Policy(PolicyStatus {
                    ancestors: Vec::new(),
                })
            };
            out.push(ObjectStatus {
                api_version: obj["apiVersion"].as_str().unwrap_or_default().to_string(),
                kind,
                metadata: StatusMeta {
                    namespace: ns,
                    name,
                    generation: obj
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                },
                status,
            });
        }
    }
    out
}

/// Counts a write's outcome in the writer's metrics and logs a failure; false when it
/// failed.
fn count(stats: &StatusStats, s: &ObjectStatus, result: Result<bool, kube::Error>) -> bool {
    match result {
        Ok(wrote) => {
            if wrote {
                stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "cannot write the status of {} {}/{}: {e}",
                s.kind,
                s.metadata.namespace,
                s.metadata.name
            );
            false
        }
    }
}

/// The Ingresses whose status this replica wrote that the translation no longer gives
/// one (and that still exist): each with an empty `loadBalancer`.
fn released_ingresses(
    cluster: &Cluster,
    current: &[ObjectStatus],
    written: &HashMap<(String, String, String), (String, Value)>,
) -> Vec<ObjectStatus> {
    use sluice_translate::{IngressStatus, LoadBalancerStatus, StatusMeta};
    written
        .keys()
        .filter(|(kind, ns, name)| {
            kind == Kind::Ingress.as_str()
                && !current.iter().any(|s| {
                    s.kind == Kind::Ingress
                        && s.metadata.namespace == *ns
                        && s.metadata.name == *name
                })
                && cluster.get(kind, ns, name).is_some()
        })
        .map(|(_, ns, name)| ObjectStatus {
            api_version: "networking.k8s.io/v1".into(),
            kind: Kind::Ingress,
            metadata: StatusMeta {
                namespace: ns.clone(),
                name: name.clone(),
                generation: 0,
            },
            status: Status::Ingress(IngressStatus {
                load_balancer: LoadBalancerStatus::default(),
                notes: Vec::new(),
            }),
        })
        .collect()
}

/// Writes one object's status if it differs from the API server's; `Ok(true)` when
/// it wrote.
async fn write(
    cluster: &Cluster,
    s: &ObjectStatus,
    addresses: Option<&AddressSource>,
    written: &mut HashMap<(String, String, String), (String, Value)>,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let Some(i) = KINDS.iter().position(|k| s.kind == k.kind) else {
        return Ok(false);
    };
    let Some(ar) = &cluster.resources[i] else {
        return Ok(false);
    };
    let (ns, name) = (&s.metadata.namespace, &s.metadata.name);
    // Not in the cache: deleted, or not seen yet; the next change brings it.
    let Some((current, rv)) = cluster.status(s.kind.as_str(), ns, name) else {
        tracing::debug!(kind = %s.kind, %ns, %name, "not in the cache; status not written");
        return Ok(false);
    };
    let current = if current.is_null() {
        json!({})
    } else {
        current
    };
    let mut typed = s.status.clone();
    stamp(&mut typed, &current, now);
    let Ok(mut desired) = serde_json::to_value(&typed) else {
        return Ok(false);
    };
    match s.kind {
        Kind::Gateway => {
            let empty = desired
                .get("addresses")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if empty && let Some(src) = addresses {
                let found = service_addresses(cluster, src);
                if let Some(m) = desired.as_object_mut() {
                    m.insert("addresses".into(), Value::Array(found));
                }
            }
        }
        Kind::Ingress => {
            // The API server keeps only `loadBalancer`; the notes are /status's. Without
            // an address of its own, an Ingress shows the Service's, as Gateways do.
            let mut lb = desired
                .pointer("/loadBalancer/ingress")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if lb.is_empty()
                && let Some(src) = addresses
            {
                lb = service_addresses(cluster, src)
                    .iter()
                    .filter_map(|a| {
                        let v = a.get("value")?.clone();
                        Some(match a.get("type").and_then(Value::as_str) {
                            Some("Hostname") => json!({ "hostname": v }),
                            _ => json!({ "ip": v }),
                        })
                    })
                    .collect();
            }
            desired = json!({ "loadBalancer": { "ingress": lb } });
        }
        Kind::BackendTLSPolicy => keep_others(&mut desired, &current, "ancestors", "ancestorRef"),
        k if k.is_route() => keep_others(&mut desired, &current, "parents", "parentRef"),
        _ => {}
    }
    if covers(&current, &desired) {
        tracing::debug!(kind = %s.kind, %ns, %name, "status unchanged");
        return Ok(false);
    }
    let key = (s.kind.to_string(), ns.clone(), name.clone());
    if written
        .get(&key)
        .is_some_and(|(v, d)| *v == rv && *d == desired)
    {
        return Ok(false);
    }
    let api: Api<DynamicObject> = if ns.is_empty() {
        Api::all_with(cluster.client.clone(), ar)
    } else {
        Api::namespaced_with(cluster.client.clone(), ns, ar)
    };
    let patch = json!({ "status": desired });
    match api
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some("sluice".into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(o) => {
            let new_rv = o.metadata.resource_version.unwrap_or_default();
            written.insert(key, (new_rv, desired));
            Ok(true)
        }
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The data plane Service's addresses, in Gateway status form.
fn service_addresses(cluster: &Cluster, src: &AddressSource) -> Vec<Value> {
    let Some(svc) = cluster.get("Service", &src.namespace, &src.name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let ingress = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for i in &ingress {
        if let Some(ip) = i.get("ip").and_then(Value::as_str) {
            out.push(json!({ "type": "IPAddress", "value": ip }));
        } else if let Some(h) = i.get("hostname").and_then(Value::as_str) {
            out.push(json!({ "type": "Hostname", "value": h }));
        }
    }
    if out.is_empty() {
        let ips = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for ip in ips.iter().filter_map(Value::as_str) {
            if ip != "None" {
                out.push(json!({ "type": "IPAddress", "value": ip }));
            }
        }
    }
    out
}

/// Adds the entries of `list` that other controllers wrote to ours.
fn keep_others(desired: &mut Value, current: &Value, list: &str, reference: &str) {
    let ours = |e: &Value| e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let others: Vec<Value> = current
        .get(list)
        .and_then(Value::as_array)
        .map(|l| l.iter().filter(|e| !ours(e)).cloned().collect())
        .unwrap_or_default();
    if let Some(l) = desired.get_mut(list).and_then(Value::as_array_mut) {
        for e in l.iter_mut() {
            if let Some(r) = e.get_mut(reference) {
                default_ref(r);
            }
        }
        l.extend(others);
    }
}

/// The defaults the Gateway API CRDs apply to a parent reference, so that what is
/// written compares equal to what is read back.
fn default_ref(r: &mut Value) {
    if let Some(m) = r.as_object_mut() {
        m.entry("group")
            .or_insert_with(|| Value::String("gateway.networking.k8s.io".into()));
        m.entry("kind")
            .or_insert_with(|| Value::String(Kind::Gateway.as_str().into()));
    }
}

/// Gives every condition a `lastTransitionTime` ([`merge_transition_times`]: the one
/// the API server holds for the same condition when its status did not change, else
/// `now`). Conditions sit at the top and in each listener, route parent and policy
/// ancestor; an entry's earlier conditions are those of the entry for the same listener
/// name, or the same reference written by Sluice.
fn stamp(status: &mut Status, current: &Value, now: Timestamp) {
    let now = now.to_string();
    let observed = |v: Option<&Value>| -> Vec<ObservedCondition> {
        v.and_then(|v| v.get("conditions"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    };
    let entry = |list: &str, id: &str, want: &Value| -> Option<&Value> {
        current.get(list)?.as_array()?.iter().find(|c| {
            c.get(id) == Some(want)
                && c.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
        })
    };
    let reference = |r: &sluice_resources::ParentReference| {
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        default_ref(&mut v);
        v
    };
    match status {
        // An Ingress's status has no conditions.
        Status::Ingress(_) => {}
        Status::Conditions(c) => {
            merge_transition_times(&mut c.conditions, &observed(Some(current)), &now)
        }
        Status::WasmFilter(w) => {
            merge_transition_times(&mut w.conditions, &observed(Some(current)), &now)
        }
        Status::Gateway(g) => {
            merge_transition_times(&mut g.conditions, &observed(Some(current)), &now);
            for l in &mut g.listeners {
                let before = current
                    .get("listeners")
                    .and_then(Value::as_array)
                    .and_then(|ls| ls.iter().find(|c| c.get("name") == Some(&json!(l.name))));
                merge_transition_times(&mut l.conditions, &observed(before), &now);
            }
        }
        Status::Route(r) => {
            for p in &mut r.parents {
                let before = entry("parents", "parentRef", &reference(&p.parent_ref));
                merge_transition_times(&mut p.conditions, &observed(before), &now);
            }
        }
        Status::Policy(pol) => {
            for a in &mut pol.ancestors {
                let before = entry("ancestors", "ancestorRef", &reference(&a.ancestor_ref));
                merge_transition_times(&mut a.conditions, &observed(before), &now);
            }
        }
    }
}

/// Whether `current` already holds every field of `desired`.
fn covers(current: &Value, desired: &Value) -> bool {
    match desired.as_object() {
        Some(d) => d.iter().all(|(k, v)| current.get(k) == Some(v)),
        None => current == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sluice_translate::{Condition, ConditionType, ConditionsStatus, Reason};

    #[test]
    fn unchanged_conditions_keep_their_time_and_need_no_write() {
        let now: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let current = json!({"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
             "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
        let conditions = |c| {
            Status::Conditions(ConditionsStatus {
                conditions: vec![c],
            })
        };
        let mut typed = conditions(Condition::new(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "",
            1,
        ));
        stamp(&mut typed, &current, now);
        let desired = serde_json::to_value(&typed).expect("json");
        assert_eq!(
            desired["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert!(covers(&current, &desired));

        let mut typed = conditions(Condition::new(
            ConditionType::Accepted,
            false,
            Reason::Invalid,
            "",
            2,
        ));
        stamp(&mut typed, &current, now);
        let flipped = serde_json::to_value(&typed).expect("json");
        assert_eq!(
            flipped["conditions"][0]["lastTransitionTime"],
            "2026-01-02T03:04:05Z"
        );
        assert!(!covers(&current, &flipped));
    }

    #[test]
    fn other_controllers_parents_are_kept() {
        let current = json!({"parents": [
            {"parentRef": {"name": "a"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "b"}, "controllerName": CONTROLLER_NAME, "conditions": []}]});
        let mut desired = json!({"parents": [
            {"parentRef": {"name": "c"}, "controllerName": CONTROLLER_NAME, "conditions": []}]});
        keep_others(&mut desired, &current, "parents", "parentRef");
        let names: Vec<&str> = desired["parents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["parentRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "a"]);
        assert_eq!(desired["parents"][0]["parentRef"]["kind"], "Gateway");
    }
}
