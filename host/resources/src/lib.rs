//! The objects Sluice reads (Gateway API, core Kubernetes and Sluice's own), as plain
//! structs, and the file provider's loader.
//!
//! Providers produce a [`Resources`]; only the translator reads it.
#![forbid(unsafe_code)]

mod limits;
mod load;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

pub use load::{
    FileCache, LoadError, LoadErrors, Loaded, is_dns_subdomain, load_objects, load_path,
    load_path_cached, load_str,
};
pub use types::*;
pub use validate::{
    DOCKER_CONFIG_JSON, MAX_RETRIES, WASM_DEFAULT_BODY, WASM_DEFAULT_CAPTURE_BODY,
    WASM_DEFAULT_MEMORY, WASM_MAX_BODY, WASM_MAX_CAPTURE_BODY, WASM_MAX_CAPTURES, WASM_MAX_MEMORY,
    check_hostname, parse_duration, parse_quantity,
};

/// The checks file mode applies to an HTTPRoute (the CRD's schema and CEL rules):
/// `(field, message)` for each problem.
pub fn validate_http_route(r: &HttpRoute) -> Vec<(String, String)> {
    validate::http_route(r)
}

/// Which object something is: enough to name it in an error, a status or a metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Everything a provider read: the input of `translate()`.
///
/// Namespaced objects always have `metadata.namespace` set (the loader fills in
/// `default`, as kubectl does). Lists are sorted by namespace and name so that the
/// translation does not depend on file or watch order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub listener_sets: Vec<ListenerSet>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tcp_routes: Vec<StreamRoute>,
    pub tls_routes: Vec<StreamRoute>,
    pub udp_routes: Vec<StreamRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    pub wasm_filters: Vec<WasmFilter>,
    pub ingresses: Vec<Ingress>,
    pub ingress_classes: Vec<IngressClass>,
    /// Where each object came from (`file.yaml#2` in file mode), for error messages.
    pub origins: BTreeMap<ObjectRef, String>,
}

impl Resources {
    /// The Secret `namespace/name`, if loaded.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.metadata.name == name && s.metadata.namespace_or_default() == namespace)
    }

    /// The ConfigMap `namespace/name`, if loaded.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name == name && c.metadata.namespace_or_default() == namespace)
    }

    /// Adds `other`'s objects (call [`Resources::sort`] after the last one).
    pub fn extend(&mut self, other: Resources) {
        let Resources {
            gateway_classes,
            gateways,
            listener_sets,
            http_routes,
            grpc_routes,
            tcp_routes,
            tls_routes,
            udp_routes,
            reference_grants,
            namespaces,
            services,
            endpoint_slices,
            secrets,
            config_maps,
            backend_tls_policies,
            wasm_filters,
            ingresses,
            ingress_classes,
            origins,
        } = other;
        self.gateway_classes.extend(gateway_classes);
        self.gateways.extend(gateways);
        self.listener_sets.extend(listener_sets);
        self.http_routes.extend(http_routes);
        self.grpc_routes.extend(grpc_routes);
        self.tcp_routes.extend(tcp_routes);
        self.tls_routes.extend(tls_routes);
        self.udp_routes.extend(udp_routes);
        self.reference_grants.extend(reference_grants);
        self.namespaces.extend(namespaces);
        self.services.extend(services);
        self.endpoint_slices.extend(endpoint_slices);
        self.secrets.extend(secrets);
        self.config_maps.extend(config_maps);
        self.backend_tls_policies.extend(backend_tls_policies);
        self.wasm_filters.extend(wasm_filters);
        self.ingresses.extend(ingresses);
        self.ingress_classes.extend(ingress_classes);
        self.origins.extend(origins);
    }

    pub fn sort(&mut self) {
        fn key(m: &ObjectMeta) -> (String, String) {
            (m.namespace.clone().unwrap_or_default(), m.name.clone())
        }
        self.gateway_classes.sort_by_key(|o| key(&o.metadata));
        self.gateways.sort_by_key(|o| key(&o.metadata));
        self.listener_sets.sort_by_key(|o| key(&o.metadata));
        self.http_routes.sort_by_key(|o| key(&o.metadata));
        self.grpc_routes.sort_by_key(|o| key(&o.metadata));
        self.tcp_routes.sort_by_key(|o| key(&o.metadata));
        self.config_maps.sort_by_key(|o| key(&o.metadata));
        self.backend_tls_policies.sort_by_key(|o| key(&o.metadata));
        self.tls_routes.sort_by_key(|o| key(&o.metadata));
        self.udp_routes.sort_by_key(|o| key(&o.metadata));
        self.reference_grants.sort_by_key(|o| key(&o.metadata));
        self.namespaces.sort_by_key(|o| key(&o.metadata));
        self.services.sort_by_key(|o| key(&o.metadata));
        self.endpoint_slices.sort_by_key(|o| key(&o.metadata));
        self.secrets.sort_by_key(|o| key(&o.metadata));
        self.wasm_filters.sort_by_key(|o| key(&o.metadata));
        self.ingresses.sort_by_key(|o| key(&o.metadata));
        self.ingress_classes.sort_by_key(|o| key(&o.metadata));
    }

    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .find(|n| n.metadata.name == namespace)
            .map(|n| {
                let mut labels = n.metadata.labels.clone();
                // The API server sets this label on every namespace.
                labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
                labels
            })
            .unwrap_or_else(|| {
                BTreeMap::from([("kubernetes.io/metadata.name".into(), namespace.into())])
            })
    }
}
