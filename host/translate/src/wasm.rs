//! WasmFilters: their status, from what the provider found when it loaded them, and
//! their IR, for routes that refer to them by ExtensionRef.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_ir::{FailurePolicy, FilterKey, OutboundIr, WasmIr};
use sluice_resources::{Resources, SLUICE_GROUP, WasmFilter, parse_duration, parse_quantity};

use crate::status::*;

pub use sluice_ir::{
    WASM_DEFAULT_MEMORY as DEFAULT_MEMORY, WASM_DEFAULT_TIMEOUT as DEFAULT_TIMEOUT,
};

/// A WasmFilter's settings with the defaults applied: the one place they are computed,
/// for the IR and for the loader alike.
pub struct Effective {
    /// The JSON handed to `configure` (`null` when unset).
    pub config: String,
    pub memory_bytes: u64,
    /// At least 1 ms.
    pub timeout: Duration,
    pub min_instances: u32,
    /// The largest body collected for a filter that buffers one.
    pub max_body_bytes: u64,
}

pub fn effective(f: &WasmFilter) -> Effective {
    let limits = f.spec.limits.clone().unwrap_or_default();
    Effective {
        config: f
            .spec
            .config
            .clone()
            .unwrap_or(serde_json::Value::Null)
            .to_string(),
        memory_bytes: limits
            .memory
            .as_deref()
            .and_then(|m| parse_quantity(m).ok())
            .unwrap_or(DEFAULT_MEMORY),
        timeout: limits
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(Duration::from_millis(1)),
        min_instances: limits.min_instances.unwrap_or(1),
        max_body_bytes: limits
            .max_body_bytes
            .as_deref()
            .and_then(|m| parse_quantity(m).ok())
            .unwrap_or(sluice_resources::WASM_DEFAULT_BODY),
    }
}

/// What loading a WasmFilter gave. Loading (reading, verifying, compiling, running
/// `configure`) is I/O, so the provider does it and hands the outcome to `translate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmState {
    Ready {
        digest: String,
        /// For OCI sources, the image pinned by its manifest digest.
        image: Option<String>,
        /// The key whose signature the filter trust policy verified, when it asked for one.
        signed_by: Option<String>,
    },
    Failed {
        /// Why: one of the WasmFilter reasons of [`Reason`] (`Pulling` to
        /// `Trapped`), each documented there.
        reason: Reason,
        message: String,
        digest: Option<String>,
        config_errors: Vec<(String, String)>,
    },
    /// The spec could not be loaded (`reason`, `message`), and the version that last
    /// loaded under this name, `digest`, keeps serving: a bad update never takes a
    /// running filter away.
    Stale {
        digest: String,
        image: Option<String>,
        signed_by: Option<String>,
        reason: Reason,
        message: String,
        config_errors: Vec<(String, String)>,
    },
}

/// Load outcomes by `(namespace, name)`.
pub type WasmStates = BTreeMap<FilterKey, WasmState>;

/// The key of WasmFilter `f`.
pub fn key(f: &WasmFilter) -> FilterKey {
    FilterKey::new(f.metadata.namespace_or_default(), f.metadata.name.clone())
}

/// The default time of one outbound call.
pub const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(1);

/// A WasmFilter's outbound grants, each resolved like a route's backendRef (with
/// ReferenceGrants from `sluice.dev` `WasmFilter`), and what stops it resolving.
fn outbound(res: &Resources, f: &WasmFilter) -> Vec<(OutboundIr, Option<Problem>)> {
    let ns = f.metadata.namespace_or_default();
    f.spec
        .outbound
        .iter()
        .map(|g| {
            let r = sluice_resources::BackendObjectReference {
                group: None,
                kind: None,
                name: g.backend_ref.name.clone(),
                namespace: g.backend_ref.namespace.clone(),
                port: Some(g.backend_ref.port),
            };
            let (mut backend, problem) = crate::backends::resolve_from(
                res,
                (SLUICE_GROUP, Kind::WasmFilter.as_str()),
                ns,
                &r,
                1,
            );
            if problem.is_none() && backend.invalid.is_none() && backend.endpoints.is_empty() {
                backend.invalid = Some(format!("{}: no ready endpoints", backend.name));
            }
            let timeout = g
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .unwrap_or(DEFAULT_OUTBOUND_TIMEOUT);
            (
                OutboundIr {
                    name: g.name.clone(),
                    backend,
                    timeout_ms: timeout.as_millis() as u64,
                },
                problem,
            )
        })
        .collect()
}

/// The WasmFilter's `ResolvedRefs` condition and `status.outbound`, when it has grants.
fn outbound_status(
    res: &Resources,
    f: &WasmFilter,
    g: i64,
) -> Option<(Condition, Vec<OutboundStatus>)> {
    if f.spec.outbound.is_empty() {
        return None;
    }
    let grants = outbound(res, f);
    let list: Vec<OutboundStatus> = grants
        .iter()
        .map(|(o, problem)| OutboundStatus {
            name: o.name.clone(),
            backend: o.backend.name.clone(),
            resolved: problem.is_none(),
            message: problem
                .as_ref()
                .map(|(_, m)| m.clone())
                .or_else(|| o.backend.invalid.clone()),
        })
        .collect();
    let first = grants.iter().find_map(|(_, p)| p.clone());
    let condition = match first {
        None => Condition::new(
            ConditionType::ResolvedRefs,
            true,
            Reason::ResolvedRefs,
            "every outbound grant resolves",
            g,
        ),
        Some((reason, message)) => {
            Condition::new(ConditionType::ResolvedRefs, false, reason, message, g)
        }
    };
    Some((condition, list))
}

pub(crate) fn statuses(res: &Resources, states: &WasmStates, out: &mut Vec<ObjectStatus>) {
    for f in &res.wasm_filters {
        let g = f.metadata.generation();
        let state = states.get(&key(f));
        let (ready, digest, image, signed_by, config_errors) = match state {
            Some(WasmState::Ready {
                digest,
                image,
                signed_by,
            }) => (
                Condition::new(
                    ConditionType::Ready,
                    true,
                    Reason::Loaded,
                    match (image, signed_by) {
                        (Some(i), Some(k)) => format!(
                            "component {digest} from {i}, signed by {k}, is loaded and configured"
                        ),
                        (Some(i), None) => {
                            format!("component {digest} from {i} is loaded and configured")
                        }
                        _ => format!("component {digest} is loaded and configured"),
                    },
                    g,
                ),
                Some(digest.clone()),
                image.clone(),
                signed_by.clone(),
                Vec::new(),
            ),
            Some(WasmState::Stale {
                digest,
                image,
                signed_by,
                reason,
                message,
                config_errors,
            }) => (
                Condition::new(
                    ConditionType::Ready,
                    false,
                    *reason,
                    format!("{message}; still serving {digest}, the version that last loaded"),
                    g,
                ),
                Some(digest.clone()),
                image.clone(),
                signed_by.clone(),
                config_error_statuses(config_errors),
            ),
            Some(WasmState::Failed {
                reason,
                message,
                digest,
                config_errors,
            }) => (
                Condition::new(ConditionType::Ready, false, *reason, message.clone(), g),
                digest.clone(),
                None,
                None,
                config_error_statuses(config_errors),
            ),
            None => (
                Condition::new(
                    ConditionType::Ready,
                    false,
                    Reason::Pending,
                    "not loaded yet",
                    g,
                ),
                None,
                None,
                None,
                Vec::new(),
            ),
        };
        out.push(ObjectStatus {
            api_version: format!("{SLUICE_GROUP}/v1alpha1"),
            kind: Kind::WasmFilter,
            metadata: StatusMeta {
                namespace: key(f).namespace,
                name: f.metadata.name.clone(),
                generation: g,
            },
            status: Status::WasmFilter({
                let mut conditions = vec![
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "spec is valid",
                        g,
                    ),
                    ready,
                ];
                let outbound = match outbound_status(res, f, g) {
                    Some((c, list)) => {
                        conditions.push(c);
                        list
                    }
                    None => Vec::new(),
                };
                WasmFilterStatus {
                    conditions,
                    digest,
                    image,
                    signed_by,
                    config_errors,
                    outbound,
                }
            }),
        });
    }
}

fn config_error_statuses(errors: &[(String, String)]) -> Vec<ConfigErrorStatus> {
    errors
        .iter()
        .map(|(p, m)| ConfigErrorStatus {
            path: p.clone(),
            message: m.clone(),
        })
        .collect()
}

/// The IR for an ExtensionRef to a WasmFilter named `name` in `ns`, or why it cannot be used.
pub(crate) fn resolve(
    res: &Resources,
    states: &WasmStates,
    ns: &str,
    name: &str,
) -> Result<WasmIr, (Reason, String)> {
    let Some(f) = res
        .wasm_filters
        .iter()
        .find(|f| f.metadata.name == name && f.metadata.namespace.as_deref() == Some(ns))
    else {
        return Err((
            Reason::FilterNotFound,
            format!(
                "WasmFilter {ns}/{name} not found; ExtensionRefs name a WasmFilter in the route's namespace"
            ),
        ));
    };
    match states.get(&key(f)) {
        Some(WasmState::Ready { digest, .. } | WasmState::Stale { digest, .. }) => {
            let e = effective(f);
            Ok(WasmIr {
                filter: key(f),
                digest: digest.clone(),
                config: e.config,
                failure_policy: match f.spec.failure_policy.unwrap_or_default() {
                    sluice_resources::FailurePolicy::FailClosed => FailurePolicy::FailClosed,
                    sluice_resources::FailurePolicy::FailOpen => FailurePolicy::FailOpen,
                },
                memory_bytes: e.memory_bytes,
                timeout_ms: e.timeout.as_millis() as u64,
                min_instances: e.min_instances,
                max_body_bytes: e.max_body_bytes,
                outbound: outbound(res, f).into_iter().map(|(o, _)| o).collect(),
            })
        }
        Some(WasmState::Failed { message, .. }) => Err((
            Reason::FilterNotReady,
            format!("WasmFilter {ns}/{name} is not ready: {message}"),
        )),
        None => Err((
            Reason::FilterNotReady,
            format!("WasmFilter {ns}/{name} is not loaded yet"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn validation_and_ir_agree_on_the_default_memory() {
        assert_eq!(
            sluice_resources::WASM_DEFAULT_MEMORY,
            sluice_ir::WASM_DEFAULT_MEMORY
        );
    }
}
