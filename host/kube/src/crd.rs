//! `sluice crd`: the WasmFilter CustomResourceDefinition, generated from the same Rust
//! types the loader reads (`sluice_resources::WasmFilterSpec`), so the CRD and the
//! gateway cannot disagree. The Helm chart's copy is this command's output, and a test
//! checks that it is up to date.

use kube_core::schema::{OptionalEnum, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::transform::AddNullable;
use serde_json::{Value, json};
use sluice_resources::WasmFilterSpec;
use sluice_translate::{ConditionStatus, ConditionType, Kind};

/// The CRD as a JSON value.
pub fn wasm_filter_crd() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .into_generator();
    let mut spec = serde_json::to_value(generator.into_root_schema_for::<WasmFilterSpec>())
        .unwrap_or_else(|_| json!({ "type": "object" }));
    if let Some(m) = spec.as_object_mut() {
        m.remove("title");
        m.insert(
            "description".into(),
            "What the filter runs and how: its component's source, its configuration, \
             its failure policy, its resource limits and the backends it may call."
                .into(),
        );
    }
    let condition = json!({
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": { "type": "string" },
            "status": { "type": "string", "enum": ConditionStatus::ALL },
            "reason": { "type": "string" },
            "message": { "type": "string" },
            "observedGeneration": { "type": "integer", "format": "int64" },
            "lastTransitionTime": { "type": "string", "format": "date-time" }
        }
    });
    let status = json!({
        "type": "object",
        "description": "Written by Sluice: whether the filter loaded, and what serves.",
        "properties": {
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"]
            },
            "digest": {
                "type": "string",
                "description": "sha256 of the component serving."
            },
            "image": {
                "type": "string",
                "description": "For OCI sources: the image serving, pinned by manifest digest."
            },
            "signedBy": {
                "type": "string",
                "description": "The key of the filter trust policy whose cosign signature verified the image, when the policy asks for one."
            },
            "configErrors": {
                "type": "array",
                "description": "What the filter's configure refused, by path.",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": { "type": "string" },
                        "message": { "type": "string" }
                    }
                }
            },
            "outbound": {
                "type": "array",
                "description": "Each outbound grant (spec.outbound) and whether it resolves.",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "backend": { "type": "string", "description": "namespace/service:port" },
                        "resolved": { "type": "boolean" },
                        "message": { "type": "string", "description": "Why it cannot be called, if it cannot." }
                    }
                }
            }
        }
    });
    let ready = ConditionType::Ready;
    let column =
        |name: &str, path: &str| json!({ "name": name, "type": "string", "jsonPath": path });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "wasmfilters.sluice.dev" },
        "spec": {
            "group": "sluice.dev",
            "names": {
                "kind": Kind::WasmFilter.as_str(),
                "listKind": "WasmFilterList",
                "plural": "wasmfilters",
                "singular": "wasmfilter",
                "shortNames": ["wf"],
                "categories": ["gateway-api"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "additionalPrinterColumns": [
                    column(ready.as_str(), &format!(".status.conditions[?(@.type==\"{ready}\")].status")),
                    column("Reason", &format!(".status.conditions[?(@.type==\"{ready}\")].reason")),
                    column("Digest", ".status.digest"),
                    { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" }
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "A WebAssembly filter that HTTPRoute and GRPCRoute rules attach with an ExtensionRef (group sluice.dev, kind WasmFilter).",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": { "type": "string" },
                            "kind": { "type": "string" },
                            "metadata": { "type": "object" },
                            "spec": spec,
                            "status": status
                        }
                    }
                }
            }]
        }
    })
}

/// The CRD as YAML, as `sluice crd` prints it.
pub fn wasm_filter_crd_yaml() -> String {
    let body = serde_norway::to_string(&wasm_filter_crd()).unwrap_or_default();
    format!("# Generated by `sluice crd` from the Rust types; do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_charts_crd_is_the_generated_one() {
        let chart = include_str!("../../../charts/sluice/files/wasmfilters.sluice.dev.yaml");
        assert!(
            chart == super::wasm_filter_crd_yaml(),
            "charts/sluice/files/wasmfilters.sluice.dev.yaml is stale; regenerate it with \
             `cargo run -p sluice -- crd > charts/sluice/files/wasmfilters.sluice.dev.yaml`"
        );
    }
}
