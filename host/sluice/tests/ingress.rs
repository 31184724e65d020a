//! Ingress end to end: the real binary serves Ingresses of its IngressClass, `sluice
//! convert` turns the same Ingresses into Gateway API objects, and curl gets the same
//! answer from both, side by side in one process.

mod common;

use std::process::Command;

use common::*;

/// Ingresses covering hosts, path types, a port by name, defaultBackend, TLS with the
/// HTTP to HTTPS redirect, a capture rewrite, a full rewrite, a permanent redirect,
/// CORS, a canary by header, source ranges (allowed, not allowed, denied: the client
/// is 127.0.0.1), and an Ingress of another class (not served).
const INGRESSES: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: default}
spec:
  ingressClassName: sluice
  defaultBackend:
    service: {name: a, port: {number: 80}}
  tls:
  - hosts: [shop.example.com]
    secretName: shop-tls
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api/, pathType: Prefix, backend: {service: {name: b, port: {name: http}}}}
      - {path: /healthz, pathType: Exact, backend: {service: {name: b, port: {number: 80}}}}
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
  - host: '*.apps.example.com'
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: strip
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /$2
    nginx.ingress.kubernetes.io/enable-cors: 'true'
    nginx.ingress.kubernetes.io/cors-allow-origin: https://app.example.com
    nginx.ingress.kubernetes.io/configuration-snippet: 'more_set_headers X-A: b;'
spec:
  ingressClassName: sluice
  rules:
  - host: tools.example.com
    http:
      paths:
      - {path: /grafana(/|$)(.*), pathType: ImplementationSpecific, backend: {service: {name: b, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: spa
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /index.html
    sluice.dev/filters: hello
spec:
  ingressClassName: sluice
  rules:
  - host: spa.example.com
    http:
      paths:
      - {path: /app, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: moved
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/permanent-redirect: https://new.example.com/welcome
spec:
  ingressClassName: sluice
  rules:
  - host: old.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: release, namespace: default}
spec:
  ingressClassName: sluice
  rules:
  - host: release.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: release-canary
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/canary: 'true'
    nginx.ingress.kubernetes.io/canary-by-header: x-canary
    nginx.ingress.kubernetes.io/canary-weight: '0'
spec:
  ingressClassName: sluice
  rules:
  - host: release.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: inside
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/allowlist-source-range: 127.0.0.0/8, ::1
spec:
  ingressClassName: sluice
  rules:
  - host: inside.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: outside
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/whitelist-source-range: 10.0.0.0/8
spec:
  ingressClassName: sluice
  rules:
  - host: outside.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: denied
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/denylist-source-range: 127.0.0.1
spec:
  ingressClassName: sluice
  rules:
  - host: denied.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: default}
spec:
  ingressClassName: nginx
  rules:
  - host: theirs.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
";

const CLASSES: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: sluice}
spec: {controller: sluice.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
";

/// What a test compares of an answer: status, where a redirect points (ports
/// replaced, as the two sides listen on different ones), the CORS origin, and which
/// backend saw which path.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    location: Option<String>,
    cors_origin: Option<String>,
    service: Option<String>,
    path: Option<String>,
}

/// curl to 127.0.0.1:`port` as `host`, trusting the test CA for https.
fn fetch(ca: &str, scheme: &str, host: &str, port: u16, path: &str, extra: &[&str]) -> Seen {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert", ca])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {scheme}://{host}{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let field = |k: &str| json[k].as_str().map(str::to_string);
    Seen {
        status,
        location: header("location").map(|l| {
            // https://shop.example.com:PORT/x: the port differs between the two sides.
            match l.split_once("://") {
                Some((scheme, rest)) => {
                    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    let host = authority.split(':').next().unwrap_or(authority);
                    let port = if authority.contains(':') { ":PORT" } else { "" };
                    format!("{scheme}://{host}{port}{path}")
                }
                None => l,
            }
        }),
        cors_origin: header("access-control-allow-origin"),
        service: field("service"),
        path: field("path"),
    }
}

fn seen(status: u16, service: &str, path: &str) -> Seen {
    Seen {
        status,
        location: None,
        cors_origin: None,
        service: Some(service.into()),
        path: Some(path.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_is_served_and_its_conversion_answers_the_same() {
    let (a, b) = (echo("a").await, echo("b").await);
    let ca = TestCa::new();
    let src = TempDir::new("ingress-src");
    let ca_file = ca.write_pem(&src);
    let ca_file = ca_file.to_str().expect("utf-8").to_string();
    let objects = [
        services_yaml(&[("a", &a, None), ("b", &b, None)]),
        tls_secret_yaml("shop-tls", &ca.issue(&["shop.example.com"])),
        INGRESSES.to_string(),
        // The WasmFilter the `spa` Ingress names in sluice.dev/filters.
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello, namespace: default}\nspec:\n  source: {path: filters/hello.wasm}\n  config: {greeting: ingress}\n".to_string(),
    ]
    .join("---\n");
    src.write("objects.yaml", &objects);

    // The Ingresses' own ports, and the converted Gateway's.
    let (ing_http, ing_https) = (free_port(), free_port());
    let (gw_http, gw_https) = (free_port(), free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("convert")
        .arg(&src.0)
        .args(["--http", &format!("127.0.0.1:{gw_http}")])
        .args(["--https", &format!("127.0.0.1:{gw_https}")])
        .args(["--ingress-class", "sluice"])
        .args(["--source-range-filter", "filters/source_range.wasm"])
        .output()
        .expect("sluice convert");
    let converted = String::from_utf8_lossy(&out.stdout).into_owned();
    let notes = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sluice convert failed: {notes}");
    // Every choice that changes behaviour, and every annotation without effect, is said
    // both on stderr and as a comment on the object.
    for said in [&notes, &converted] {
        assert!(
            said.contains(
                "IGNORED metadata.annotations[nginx.ingress.kubernetes.io/configuration-snippet]"
            ),
            "the unmapped snippet is named:\n{said}"
        );
        assert!(
            said.contains(
                "CHANGED metadata.annotations[nginx.ingress.kubernetes.io/permanent-redirect]"
            ),
            "{said}"
        );
    }
    assert!(
        !converted.contains("theirs"),
        "--ingress-class leaves other classes out:\n{converted}"
    );

    let dir = TempDir::new("ingress");
    install_filters(&dir, &["hello", "source_range"]);
    dir.write("objects.yaml", &objects);
    dir.write("classes.yaml", CLASSES);
    dir.write("converted.yaml", &converted);
    let gw = Sluice::start(
        &dir.0,
        &[
            "--ingress-http",
            &format!("127.0.0.1:{ing_http}"),
            "--ingress-https",
            &format!("127.0.0.1:{ing_https}"),
            "--ingress-source-range-filter",
            "filters/source_range.wasm",
        ],
    )
    .await;

    let preflight = [
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://app.example.com",
        "-H",
        "access-control-request-method: GET",
    ];
    // (scheme, host, path, curl arguments, what the Ingress must answer)
    let cases: Vec<(&str, &str, &str, &[&str], Seen)> = vec![
        (
            "https",
            "shop.example.com",
            "/api/v1",
            &[],
            seen(200, "b", "/api/v1"),
        ),
        // Prefix /api/ is element-wise: /apis is not under it.
        (
            "https",
            "shop.example.com",
            "/apis",
            &[],
            seen(200, "a", "/apis"),
        ),
        (
            "https",
            "shop.example.com",
            "/healthz",
            &[],
            seen(200, "b", "/healthz"),
        ),
        (
            "https",
            "shop.example.com",
            "/healthz/x",
            &[],
            seen(200, "a", "/healthz/x"),
        ),
        (
            "http",
            "shop.example.com",
            "/api/v1?q=1",
            &[],
            Seen {
                status: 308,
                location: Some("https://shop.example.com:PORT/api/v1?q=1".into()),
                cors_origin: None,
                service: None,
                path: None,
            },
        ),
        (
            "http",
            "x.apps.example.com",
            "/any",
            &[],
            seen(200, "b", "/any"),
        ),
        // No rule for the host: the defaultBackend answers.
        (
            "http",
            "unknown.example.com",
            "/else",
            &[],
            seen(200, "a", "/else"),
        ),
        (
            "http",
            "tools.example.com",
            "/grafana/d/1",
            &[],
            seen(200, "b", "/d/1"),
        ),
        (
            "http",
            "tools.example.com",
            "/grafana",
            &[],
            seen(200, "b", "/"),
        ),
        (
            "http",
            "tools.example.com",
            "/grafana/x",
            &preflight,
            Seen {
                status: 200,
                location: None,
                cors_origin: Some("https://app.example.com".into()),
                service: None,
                path: None,
            },
        ),
        (
            "http",
            "spa.example.com",
            "/app/deep/link",
            &[],
            seen(200, "a", "/index.html"),
        ),
        (
            "http",
            "old.example.com",
            "/page",
            &[],
            Seen {
                status: 301,
                location: Some("https://new.example.com/welcome".into()),
                cors_origin: None,
                service: None,
                path: None,
            },
        ),
        // A canary by header: `always` goes to it, `never` and no header to the main
        // backend (weight 0).
        (
            "http",
            "release.example.com",
            "/v",
            &["-H", "x-canary: always"],
            seen(200, "b", "/v"),
        ),
        (
            "http",
            "release.example.com",
            "/v",
            &["-H", "x-canary: never"],
            seen(200, "a", "/v"),
        ),
        (
            "http",
            "release.example.com",
            "/v",
            &[],
            seen(200, "a", "/v"),
        ),
        // Source ranges, through the source-range WasmFilter: 127.0.0.1 is let in by
        // 127.0.0.0/8, kept out by 10.0.0.0/8 (whatever x-forwarded-for claims) and by
        // a deny list naming it.
        (
            "http",
            "inside.example.com",
            "/in",
            &[],
            seen(200, "a", "/in"),
        ),
        (
            "http",
            "outside.example.com",
            "/in",
            &["-H", "x-forwarded-for: 10.1.1.1"],
            Seen {
                status: 403,
                location: None,
                cors_origin: None,
                service: None,
                path: None,
            },
        ),
        (
            "http",
            "denied.example.com",
            "/in",
            &[],
            Seen {
                status: 403,
                location: None,
                cors_origin: None,
                service: None,
                path: None,
            },
        ),
        // Another controller's Ingress: the defaultBackend of ours answers its host.
        ("http", "theirs.example.com", "/", &[], seen(200, "a", "/")),
    ];
    for (scheme, host, path, extra, want) in &cases {
        let (p_ing, p_gw) = match *scheme {
            "https" => (ing_https, gw_https),
            _ => (ing_http, gw_http),
        };
        let from_ingress = fetch(&ca_file, scheme, host, p_ing, path, extra);
        assert_eq!(
            &from_ingress, want,
            "{scheme}://{host}{path} served from the Ingress"
        );
        let from_routes = fetch(&ca_file, scheme, host, p_gw, path, extra);
        assert_eq!(
            from_routes, from_ingress,
            "{scheme}://{host}{path}: the converted HTTPRoutes answer as the Ingress does"
        );
    }

    // The WasmFilter named in sluice.dev/filters ran on the Ingress's requests, and on
    // the converted routes' (an ExtensionRef).
    for port in [ing_http, gw_http] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("spa.example.com:{port}:127.0.0.1"))
            .arg(format!("http://spa.example.com:{port}/app/x"))
            .output()
            .expect("curl");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            body["headers"]["x-hello"][0], "ingress",
            "port {port}: {body}"
        );
    }

    // The Ingress's status: where it is served, and what is not mapped.
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let strip = status_of(&status, "Ingress", "strip");
    assert_eq!(
        strip["status"]["loadBalancer"]["ingress"][0]["ip"], "127.0.0.1",
        "{strip}"
    );
    let notes = strip["status"]["notes"].to_string();
    assert!(notes.contains("configuration-snippet"), "{notes}");
    assert!(
        status["items"]
            .as_array()
            .is_some_and(|items| !items.iter().any(|i| i["metadata"]["name"] == "theirs")),
        "an Ingress of another class gets no status from Sluice"
    );
}

#[test]
fn check_fails_on_the_parts_of_an_ingress_that_are_not_served() {
    let dir = TempDir::new("ingress-check");
    dir.write("classes.yaml", CLASSES);
    dir.write(
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: captures
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /$1}
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {path: '/v1/(.*)/x', pathType: ImplementationSpecific, backend: {service: {name: a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ranged
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/allowlist-source-range: 10.0.0.0/8}
spec:
  ingressClassName: sluice
  rules:
  - host: ranged.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&dir.0)
        .output()
        .expect("sluice check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Ingress default/captures: spec.rules[0].http.paths[0]: rewrite-target"),
        "{stderr}"
    );
    // A source range needs the source-range filter, here absent: the rules would
    // answer 500, and check names the Ingress, the filter's path and the fix.
    assert!(
        stderr.contains(
            "Ingress default/ranged: metadata.annotations: the source-range filter is not ready"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("source-range.wasm"), "{stderr}");
}

#[test]
fn convert_reads_kubectl_output_from_stdin() {
    use std::io::Write;
    // What `kubectl get ingress,service -o yaml` prints: a List, with server-set fields
    // and statuses.
    let dump = "apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop, uid: 1f0c, resourceVersion: '42', creationTimestamp: '2026-01-01T00:00:00Z'}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports: [{name: http, port: 8080, protocol: TCP, targetPort: 8080}]
    sessionAffinity: None
    type: ClusterIP
  status: {loadBalancer: {}}
- apiVersion: networking.k8s.io/v1
  kind: Ingress
  metadata: {name: web, namespace: shop, generation: 3, uid: 2a1b, resourceVersion: '43', creationTimestamp: '2026-01-01T00:00:00Z'}
  spec:
    ingressClassName: nginx
    rules:
    - host: web.example.com
      http:
        paths:
        - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
  status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}
";
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["convert", "-", "--gateway-namespace", "infra"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice convert");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dump.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The port name resolved through the Service in the dump; the route lives with its
    // Ingress and attaches to the Gateway in the namespace asked for.
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .filter_map(|d| serde_norway::from_str(d).ok())
        .collect();
    let route = docs
        .iter()
        .find(|d| d["kind"] == "HTTPRoute")
        .unwrap_or_else(|| panic!("an HTTPRoute in:\n{yaml}"));
    assert_eq!(route["metadata"]["name"], "web-web-example-com", "{yaml}");
    assert_eq!(route["metadata"]["namespace"], "shop");
    assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "infra");
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 8080);
    assert!(route["metadata"].get("generation").is_none(), "{yaml}");
}

/// The routing facts a converter's output states, one line each: for each protocol,
/// host and match, what the request gets (backends and their shares, redirect,
/// rewrite, CORS, filters, timeouts). Names and layout are left out, so two outputs
/// that route alike have the same facts.
fn routing_facts(yaml: &str) -> std::collections::BTreeSet<String> {
    use serde::Deserialize;
    use serde_json::Value;
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(Value::is_object)
        .collect();
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let host_covers = |listener: &str, host: &str| {
        listener == host
            || host == "*"
            || listener
                .strip_prefix('*')
                .is_some_and(|suffix| host.ends_with(suffix))
    };
    let mut out = std::collections::BTreeSet::new();
    for route in of_kind("HTTPRoute") {
        let hosts: Vec<String> = match route["spec"]["hostnames"].as_array() {
            Some(h) if !h.is_empty() => h.iter().map(s).collect(),
            _ => vec!["*".into()],
        };
        for host in &hosts {
            let mut protocols = std::collections::BTreeSet::new();
            for p in route["spec"]["parentRefs"].as_array().into_iter().flatten() {
                for gw in of_kind("Gateway").filter(|g| g["metadata"]["name"] == p["name"]) {
                    for l in gw["spec"]["listeners"].as_array().into_iter().flatten() {
                        let named = p["sectionName"].is_null() || p["sectionName"] == l["name"];
                        let hosted = l["hostname"]
                            .as_str()
                            .is_none_or(|lh| host_covers(lh, host));
                        if named && hosted {
                            protocols.insert(s(&l["protocol"]).to_lowercase());
                        }
                    }
                }
            }
            for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
                let mut action = Vec::new();
                let backends: Vec<&Value> = rule["backendRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["weight"].as_u64() != Some(0))
                    .collect();
                let total: u64 = backends
                    .iter()
                    .map(|b| b["weight"].as_u64().unwrap_or(1))
                    .sum();
                for b in &backends {
                    let share = if backends.len() > 1 {
                        format!(
                            " {}%",
                            b["weight"].as_u64().unwrap_or(1) * 100 / total.max(1)
                        )
                    } else {
                        String::new()
                    };
                    action.push(format!("{}:{}{share}", s(&b["name"]), b["port"]));
                }
                // Backends in name order: the order of backendRefs does not route.
                action.sort();
                for f in rule["filters"].as_array().into_iter().flatten() {
                    action.push(match f["type"].as_str().unwrap_or_default() {
                        "RequestRedirect" => {
                            let r = &f["requestRedirect"];
                            format!(
                                "redirect {} {} {} {} {}",
                                r["scheme"], r["hostname"], r["port"], r["path"], r["statusCode"]
                            )
                        }
                        "URLRewrite" => format!("rewrite {}", f["urlRewrite"]["path"]),
                        "CORS" => format!(
                            "cors origins={} credentials={}",
                            f["cors"]["allowOrigins"], f["cors"]["allowCredentials"]
                        ),
                        // A WasmFilter: what it runs is its config.
                        "ExtensionRef" => {
                            let name = &f["extensionRef"]["name"];
                            let config = of_kind("WasmFilter")
                                .find(|w| w["metadata"]["name"] == *name)
                                .map(|w| w["spec"]["config"].to_string())
                                .unwrap_or_default();
                            format!("wasm {config}")
                        }
                        other => other.to_string(),
                    });
                }
                if !rule["timeouts"].is_null() {
                    action.push(format!("timeouts {}", rule["timeouts"]));
                }
                let matches: Vec<Value> = match rule["matches"].as_array() {
                    Some(m) if !m.is_empty() => m.clone(),
                    _ => vec![Value::Null],
                };
                for m in &matches {
                    let path = if m["path"].is_null() {
                        "PathPrefix /".to_string()
                    } else {
                        format!(
                            "{} {}",
                            m["path"]["type"].as_str().unwrap_or("PathPrefix"),
                            s(&m["path"]["value"])
                        )
                    };
                    let headers = if m["headers"].is_null() {
                        String::new()
                    } else {
                        format!(" headers={}", m["headers"])
                    };
                    for proto in &protocols {
                        out.insert(format!(
                            "{proto} {host} {path}{headers} -> {}",
                            action.join(", ")
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Runs `sluice convert` and ingress2gateway (built from its Go module by `.ci/run`)
/// on each real-world example in `examples/ingress`, and compares the routing each
/// output states. The differences are pinned in `examples/ingress/comparison.txt`
/// (`SLUICE_UPDATE_GOLDEN=1` rewrites it) and each example is explained in
/// docs/ingress.md.
#[test]
fn conversions_compared_with_ingress2gateway() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let i2g = root.join("target/tools/ingress2gateway");
    assert!(
        i2g.exists(),
        "{} is missing: .ci/run builds it (go_tools in .ci/tools.sh)",
        i2g.display()
    );
    let docs = std::fs::read_to_string(root.join("docs/ingress.md")).expect("docs/ingress.md");
    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples/ingress"))
        .expect("examples/ingress")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 20, "at least 20 examples");
    let mut report = String::from(
        "# `sluice convert` against ingress2gateway v0.5.0 (--providers ingress-nginx):\n\
         # the routing facts each output states. `-` only ingress2gateway, `+` only Sluice.\n\
         # Generated by host/sluice/tests/ingress.rs; explained in docs/ingress.md.\n",
    );
    let mut undocumented = Vec::new();
    for file in &examples {
        let name = file
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        if !docs.contains(&format!("`{name}`")) {
            undocumented.push(name.clone());
        }
        let ours = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("convert")
            .arg(file)
            .args(["--gateway-class", "nginx"])
            .output()
            .expect("sluice convert");
        assert!(
            ours.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let theirs = Command::new(&i2g)
            .args([
                "print",
                "--providers",
                "ingress-nginx",
                "-A",
                "--input-file",
            ])
            .arg(file)
            .output()
            .expect("ingress2gateway");
        let ours = routing_facts(&String::from_utf8_lossy(&ours.stdout));
        let theirs = if theirs.status.success() {
            routing_facts(&String::from_utf8_lossy(&theirs.stdout))
        } else {
            // Its error, without the usage text that follows.
            let err = String::from_utf8_lossy(&theirs.stderr);
            let first = err
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && *l != "Error:")
                .unwrap_or("error")
                .to_string();
            std::collections::BTreeSet::from([format!("refused: {first}")])
        };
        report.push_str(&format!("\n## {name}\n"));
        if ours == theirs {
            report.push_str("same\n");
        }
        for f in theirs.difference(&ours) {
            report.push_str(&format!("- {f}\n"));
        }
        for f in ours.difference(&theirs) {
            report.push_str(&format!("+ {f}\n"));
        }
    }
    let pinned = root.join("examples/ingress/comparison.txt");
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&pinned, &report).expect("write comparison");
    }
    let want = std::fs::read_to_string(&pinned).unwrap_or_default();
    assert!(
        want == report,
        "the comparison changed; review it, explain it in docs/ingress.md and rewrite \
         examples/ingress/comparison.txt with SLUICE_UPDATE_GOLDEN=1:\n{report}"
    );
    assert!(
        undocumented.is_empty(),
        "docs/ingress.md explains each example; missing from its table: {undocumented:?}"
    );
}
