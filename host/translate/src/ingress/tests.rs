use super::*;

fn load(yaml: &str) -> Resources {
    sluice_resources::load_str("test.yaml", yaml)
        .expect("valid objects")
        .resources
}

const CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: sluice}
spec: {controller: sluice.dev/ingress-controller}
";

#[test]
fn the_class_annotation_counts_as_the_class_name() {
    let res = load(&format!(
        "{CLASS}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: old-style
  annotations: {{kubernetes.io/ingress.class: sluice}}
spec:
  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: unclassed}}
spec:
  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}
"
    ));
    let c = convert(&res, &Options::default());
    let names: Vec<&str> = c.ingresses.iter().map(|(o, _)| o.name.as_str()).collect();
    // Without a default IngressClass, an Ingress that names no class is not ours.
    assert_eq!(names, ["old-style"]);
}

#[test]
fn only_the_prefix_forms_of_capture_rewrites_are_mapped() {
    use super::annotations::prefix_rewrite;
    let r = prefix_rewrite("/app(/|$)(.*)", "/$2").expect("mapped");
    assert_eq!((r.0.as_str(), r.1.as_str()), ("/app", "/"));
    assert!(r.2.is_none(), "exact: nothing changes");
    let r = prefix_rewrite("/app(/|$)(.*)", "/v2/$2").expect("mapped");
    assert_eq!(r.1, "/v2");
    assert!(r.2.is_some(), "/app alone becomes /v2, not /v2/");
    let r = prefix_rewrite("/old/(.*)", "/new/$1").expect("mapped");
    assert_eq!((r.0.as_str(), r.1.as_str()), ("/old", "/new"));
    // A capture in the middle, a regex prefix, a target without the slash: not a prefix
    // rewrite.
    assert!(prefix_rewrite("/v1/(.*)/x", "/$1").is_none());
    assert!(prefix_rewrite("/v[0-9]+(/|$)(.*)", "/$2").is_none());
    assert!(prefix_rewrite("/app(/|$)(.*)", "/v2$2").is_none());
}

#[test]
fn output_names_are_valid_object_names_and_serving_names_are_not() {
    let serving = Options::default();
    let output = Options {
        serving: false,
        any_class: true,
        gateway_namespace: "default".into(),
        gateway_class: "sluice".into(),
        ..Options::default()
    };
    let n = route_name(&output, "shop", "*.example.com", false, 1);
    assert_eq!(n, "shop-wildcard-example-com");
    assert!(sluice_resources::is_dns_subdomain(&n));
    assert_eq!(
        route_name(&output, "shop", "a.example.com", true, 2),
        "shop-a-example-com-https-redirect-2"
    );
    let long = "a".repeat(250);
    assert!(route_name(&output, &long, "b.example.com", false, 3).len() <= 253);
    assert!(!sluice_resources::is_dns_subdomain(&route_name(
        &serving, "shop", "", false, 1
    )));
    assert_eq!(listener_name("*.example.com"), "https-wildcard-example-com");
    assert_eq!(listener_name(""), "https");
}

#[test]
fn more_rules_than_an_httproute_holds_are_split() {
    let paths: String = (0..20)
        .map(|i| {
            format!(
                "      - {{path: /p{i}, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
            )
        })
        .collect();
    let res = load(&format!(
        "{CLASS}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: many}}
spec:
  ingressClassName: sluice
  rules:
  - host: a.example.com
    http:
      paths:
{paths}"
    ));
    let c = convert(&res, &Options::default());
    let sizes: Vec<usize> = c.http_routes.iter().map(|r| r.spec.rules.len()).collect();
    assert_eq!(sizes, [16, 4]);
}

#[test]
fn grpc_backends_are_served_over_h2c() {
    let res = load(&format!(
        "{CLASS}---
apiVersion: v1
kind: Service
metadata: {{name: grpc}}
spec:
  ports: [{{name: grpc, port: 9000}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: g
  annotations: {{nginx.ingress.kubernetes.io/backend-protocol: GRPC}}
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: grpc, port: {{number: 9000}}}}}}}}
"
    ));
    let c = convert(&res, &Options::default());
    assert_eq!(c.h2c_ports, [("default".into(), "grpc".into(), 9000)]);
    let served = serving_resources(&res, &c);
    let svc = served.services.iter().find(|s| s.metadata.name == "grpc");
    assert_eq!(
        svc.map(|s| s.spec.ports[0].app_protocol.clone()),
        Some(Some("kubernetes.io/h2c".to_string()))
    );
    let t = crate::translate(&res, &crate::Inputs::default());
    assert_eq!(
        t.ir.rules[0].backends[0].protocol,
        sluice_ir::UpstreamProtocol::H2c
    );
}

#[test]
fn hostile_canary_weights_neither_overflow_nor_pass_the_api_cap() {
    let canary = |name: &str| {
        format!(
            "---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  annotations:
    nginx.ingress.kubernetes.io/canary: 'true'
    nginx.ingress.kubernetes.io/canary-weight: '1'
    nginx.ingress.kubernetes.io/canary-weight-total: '4294967295'
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}
"
        )
    };
    let res = load(&format!(
        "{CLASS}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: main}}
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: main, port: {{number: 80}}}}}}}}
{}{}",
        canary("c1"),
        canary("c2")
    ));
    let c = convert(&res, &Options::default());
    let weights: Vec<u32> = c.http_routes[0].spec.rules[0]
        .backend_refs
        .iter()
        .map(|b| b.weight.unwrap_or(1))
        .collect();
    assert_eq!(weights.len(), 3, "main and two canaries: {weights:?}");
    assert!(weights.iter().all(|w| *w <= 1_000_000), "{weights:?}");
}
