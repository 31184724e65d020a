//! BackendTLSPolicy end to end: an HTTPS backend (rustls) that requires a client
//! certificate, trust from a ConfigMap, SNI and name checks, and the Gateway's backend
//! client certificate.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The backend's identity as a URI subjectAltName, as SPIFFE-style meshes issue them.
const BACKEND_URI: &str = "spiffe://sluice.test/ns/default/sa/secure";

/// An HTTPS backend with a certificate for `secure.example.com` (and [`BACKEND_URI`])
/// that demands a client certificate signed by `ca`, and answers with the SNI it was
/// sent.
async fn https_backend(ca: &TestCa) -> u16 {
    let issued = ca.issue_with_uris(&["secure.example.com"], &[BACKEND_URI]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("client verifier");
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![issued.der.clone()], key)
        .expect("server config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("none").to_string();
                let svc = hyper::service::service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("sni={sni}")),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

use rustls::pki_types::pem::PemObject;

fn policy(hostname: &str, extra: &str, ca_ref: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: secure}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: {ca_ref}}}]
    hostname: {hostname}
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_policies_verify_the_backend_and_present_the_gateway_certificate() {
    let ca = TestCa::new();
    let backend = https_backend(&ca).await;
    let port = free_port();
    let dir = TempDir::new("backend-tls");
    let gw_with_cert = |with: bool| {
        let mut g = gateway_yaml(port, None);
        if with {
            g = g.replace(
                "  gatewayClassName: sluice\n",
                "  gatewayClassName: sluice\n  tls:\n    backend:\n      clientCertificateRef: {name: client}\n",
            );
        }
        g
    };
    dir.write("gw.yaml", &gw_with_cert(false));
    dir.write("svc.yaml", &service_yaml_port("secure", backend, None));
    dir.write(
        "client.yaml",
        &tls_secret_yaml("client", &ca.issue(&["gateway.example.com"])),
    );
    dir.write("ca.yaml", &ca.config_map_yaml("ca"));
    dir.write("policy.yaml", &policy("secure.example.com", "", "ca"));
    dir.write(
        "routes.yaml",
        &route("  - backendRefs: [{name: secure, port: 80}]\n"),
    );
    let gw = Sluice::start(&dir.0, &[]).await;

    // The backend wants a client certificate and the Gateway has none: refused.
    let a = get(port, "h", "/").await;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.body);

    // With spec.tls.backend.clientCertificateRef the handshake completes, with the
    // policy's hostname as SNI.
    dir.write("gw.yaml", &gw_with_cert(true));
    gw.wait_reloads("ok", 1).await;
    let a = get(port, "h", "/").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "sni=secure.example.com")
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let p = &status_of(&status, "BackendTLSPolicy", "secure")["status"]["ancestors"][0];
    assert_eq!(p["ancestorRef"]["name"], "gw");
    assert_eq!(p["conditions"][0]["reason"], "Accepted", "{p}");

    // A hostname the certificate does not have: verification fails, so does the request.
    dir.write("policy.yaml", &policy("other.example.com", "", "ca"));
    gw.wait_reloads("ok", 2).await;
    let a = get(port, "h", "/").await;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.body);

    // subjectAltNames: that SNI, verified against the name the certificate does have.
    dir.write(
        "policy.yaml",
        &policy(
            "other.example.com",
            "    subjectAltNames: [{type: Hostname, hostname: secure.example.com}]\n",
            "ca",
        ),
    );
    gw.wait_reloads("ok", 3).await;
    let a = get(port, "h", "/").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "sni=other.example.com")
    );

    // A URI subjectAltName: the chain is verified, and the certificate must carry it.
    let uri_policy = |uri: &str| {
        policy(
            "other.example.com",
            &format!("    subjectAltNames: [{{type: URI, uri: \"{uri}\"}}]\n"),
            "ca",
        )
    };
    dir.write("policy.yaml", &uri_policy(BACKEND_URI));
    gw.wait_reloads("ok", 4).await;
    let a = get(port, "h", "/").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "sni=other.example.com")
    );
    dir.write(
        "policy.yaml",
        &uri_policy("spiffe://sluice.test/ns/default/sa/other"),
    );
    gw.wait_reloads("ok", 5).await;
    let a = get(port, "h", "/").await;
    assert!(a.status.is_server_error(), "{} {}", a.status, a.body);

    // A CA ConfigMap that does not exist: the policy says so, and requests fail rather
    // than go out unverified.
    dir.write("policy.yaml", &policy("secure.example.com", "", "missing"));
    gw.wait_reloads("ok", 6).await;
    let a = get(port, "h", "/").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let p = &status_of(&status, "BackendTLSPolicy", "secure")["status"]["ancestors"][0];
    assert_eq!(
        p["conditions"][1]["reason"], "InvalidCACertificateRef",
        "{p}"
    );
    assert_eq!(p["conditions"][0]["reason"], "NoValidCACertificate", "{p}");
}
