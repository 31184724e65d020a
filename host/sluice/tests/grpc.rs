//! GRPCRoute end to end: real gRPC servers (Python grpcio, tests/grpc/server.py), a real
//! gRPC client (grpcurl), over h2c and over TLS, with a Wasm filter on a rule.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools")
}

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc")
}

/// A gRPC backend named `name` on a port of its own; killed on drop.
struct GrpcServer(Child, u16);

impl GrpcServer {
    fn start(name: &str) -> GrpcServer {
        let port = free_port();
        let python = std::env::var_os("SLUICE_GRPC_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| tools().join("py/bin/python"));
        let mut child = Command::new(&python)
            .arg(protos().join("server.py"))
            .args([&port.to_string(), name])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} ({e}); .ci/run installs grpcio there", python.display())
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server output");
        assert_eq!(line.trim(), "ready", "gRPC server did not start");
        GrpcServer(child, port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// grpcurl (built from its Go module by .ci/run); returns (success, stdout + stderr).
fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = std::env::var_os("SLUICE_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools().join("grpcurl"));
    let out = Command::new(&bin)
        .args(["-max-time", "10", "-import-path"])
        .arg(protos())
        .args(["-proto", "echo.proto", "-v"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}); .ci/run builds it", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_match_services_and_methods_and_pass_status_and_trailers() {
    let a = GrpcServer::start("a");
    let b = GrpcServer::start("b");
    let (port, tls) = (free_port(), free_port());
    let dir = TempDir::new("grpc");
    install_filters(&dir, &["hello"]);
    let ca = TestCa::new();
    let ca_file = ca.write_pem(&dir);
    dir.write(
        "gw.yaml",
        &gateway_yaml(
            port,
            Some(&format!(
                "  - {{name: h2c, port: PORT, protocol: HTTP}}\n  - {{name: tls, port: {tls}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
            )),
        ),
    );
    dir.write(
        "svc.yaml",
        &[
            service_yaml_port("a", a.1, None),
            service_yaml_port("b", b.1, None),
        ]
        .join("---\n"),
    );
    dir.write(
        "secret.yaml",
        &tls_secret_yaml("cert", &ca.issue(&["grpc.example.com"])),
    );
    dir.write(
        "filter.yaml",
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello, namespace: default}\nspec:\n  source: {path: filters/hello.wasm}\n  config: {greeting: grpc}\n",
    );
    dir.write(
        "route.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{{method: {{service: echo.Echo, method: Say}}}}]
    filters: [{}]
    backendRefs: [{{name: a, port: 80}}]
  - matches: [{{method: {{type: RegularExpression, service: 'echo\\..*', method: 'Sh.*'}}}}]
    backendRefs: [{{name: b, port: 80}}]
  - matches: [{{method: {{service: echo.Echo}}, headers: [{{name: x-tenant, value: split}}]}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-split, value: 'yes'}}]}}
    backendRefs: [{{name: a, port: 80, weight: 1}}, {{name: b, port: 80, weight: 1}}]
",
            ext("hello")
        ),
    );
    let cache = dir.0.join("cache");
    let _gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    let h2c = format!("127.0.0.1:{port}");
    let call = |method: &str, extra: &[&str]| {
        let mut args = vec![
            "-plaintext",
            "-authority",
            "grpc.example.com",
            "-d",
            r#"{"message":"hi"}"#,
        ];
        args.extend_from_slice(extra);
        args.push(&h2c);
        let target = format!("echo.Echo/{method}");
        let mut all: Vec<&str> = args.clone();
        all.push(&target);
        grpcurl(&all)
    };

    // Exact service and method, through the Wasm filter: reply, headers and trailers.
    let (ok, out) = call("Say", &[]);
    assert!(ok, "{out}");
    assert!(out.contains(r#""message": "hi""#), "{out}");
    assert!(out.contains("x-backend: a"), "{out}");
    assert!(
        out.contains("x-seen-hello: grpc"),
        "the Wasm filter ran: {out}"
    );
    assert!(
        out.contains("Response trailers received:\nx-served: a"),
        "{out}"
    );

    // A regular expression on service and method.
    let (ok, out) = call("Shout", &[]);
    assert!(ok && out.contains("x-backend: b"), "{out}");
    assert!(
        out.contains("x-seen-hello: none"),
        "no filter on this rule: {out}"
    );

    // A header match with two weighted backends: both serve, and the response header
    // filter applies.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (ok, out) = call("Whisper", &["-H", "x-tenant: split"]);
        assert!(ok && out.contains("x-split: yes"), "{out}");
        for name in ["a", "b"] {
            if out.contains(&format!("x-backend: {name}")) {
                seen.insert(name);
            }
        }
    }
    assert_eq!(seen.len(), 2, "both weighted backends served");
    // No rule matches: gRPC's answer for an unrouted call.
    let (ok, out) = call("Whisper", &[]);
    assert!(!ok && out.contains("Code: Unimplemented"), "{out}");

    // The backend's gRPC status and message come back unchanged.
    let (ok, out) = call("Say", &["-H", "x-fail: nothing here"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Code: NotFound") && out.contains("Message: nothing here"),
        "{out}"
    );

    // The same over TLS (ALPN h2).
    let tls_addr = format!("127.0.0.1:{tls}");
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca_file.to_str().expect("utf-8"),
        "-servername",
        "grpc.example.com",
        "-authority",
        "grpc.example.com",
        "-d",
        r#"{"message":"over tls"}"#,
        &tls_addr,
        "echo.Echo/Say",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(r#""message": "over tls""#) && out.contains("x-seen-hello: grpc"),
        "{out}"
    );
}
