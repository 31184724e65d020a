//! HTTPS listeners end to end: certificates made here by rcgen, the real binary, and
//! real clients (curl, openssl s_client, hyper over tokio-rustls).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

const LISTENERS: &str = "  - {name: a, port: PORT, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: a}]}}
  - {name: b, port: PORT, protocol: HTTPS, hostname: '*.b.example.com', tls: {certificateRefs: [{name: b}]}}
  - {name: c, port: PORT, protocol: HTTPS, hostname: '*.c.example.com', tls: {certificateRefs: [{name: c1}, {name: c2}]}}
";

struct Setup {
    port: u16,
    dir: TempDir,
    ca: TestCa,
    gw: Sluice,
    ca_file: String,
    _echo: Echo,
}

async fn setup(tag: &str) -> Setup {
    setup_with(tag, &[]).await
}

async fn setup_with(tag: &str, args: &[&str]) -> Setup {
    let echo = echo("a").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    let ca = TestCa::new();
    let ca_file = ca.write_pem(&dir);
    dir.write("gw.yaml", &gateway_yaml(port, Some(LISTENERS)));
    dir.write("svc.yaml", &service_yaml("a", &echo, None));
    dir.write(
        "secrets.yaml",
        &[
            tls_secret_yaml("a", &ca.issue(&["a.example.com"])),
            tls_secret_yaml("b", &ca.issue(&["*.b.example.com"])),
            tls_secret_yaml("c1", &ca.issue(&["one.c.example.com"])),
            tls_secret_yaml("c2", &ca.issue(&["two.c.example.com"])),
        ]
        .join("---\n"),
    );
    dir.write(
        "routes.yaml",
        &route("  - matches: [{path: {value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]\n  - backendRefs: [{name: a, port: 80}]\n"),
    );
    let gw = Sluice::start(&dir.0, args).await;
    Setup {
        port,
        dir,
        ca,
        gw,
        ca_file: ca_file.to_str().expect("utf-8").to_string(),
        _echo: echo,
    }
}

/// curl over TLS, resolving `host` to 127.0.0.1; returns (stdout, stderr).
fn curl(s: &Setup, host: &str, path: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &s.ca_file])
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", s.port)])
        .args(extra)
        .arg(format!("https://{host}:{}{path}", s.port))
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl s_client` with `sni` and `alpn`; returns its output.
fn s_client(port: u16, sni: &str, alpn: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", sni, "-alpn", alpn])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn peer_cert(
    s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_choose_certificates_by_sni_and_speak_h2_and_http1() {
    let s = setup("tls-sni").await;

    // curl, both protocols; the backend sees X-Forwarded-Proto https.
    let (out, err) = curl(
        &s,
        "a.example.com",
        "/x",
        &["--http2", "-w", "\n%{http_version} %{http_code}"],
    );
    assert!(out.ends_with("\n2 200"), "{out}{err}");
    assert!(out.contains(r#""x-forwarded-proto":["https"]"#), "{out}");
    let (out, err) = curl(
        &s,
        "x.b.example.com",
        "/x",
        &["--http1.1", "-w", "\n%{http_version} %{http_code}"],
    );
    assert!(out.ends_with("\n1.1 200"), "{out}{err}");

    // An 8 MiB upload over h2, far past the initial 64 KiB flow-control window: every
    // byte arrives as the windows open.
    let big = s.dir.0.with_extension("upload.bin");
    std::fs::write(&big, vec![b'x'; 8 << 20]).expect("write");
    let (out, err) = curl(
        &s,
        "a.example.com",
        "/upload",
        &["--http2", "--data-binary", &format!("@{}", big.display())],
    );
    assert!(out.contains(r#""bodyLength":8388608"#), "{out}{err}");

    // openssl: the certificate follows the SNI, and ALPN picks what the client offers.
    let a = s_client(s.port, "a.example.com", "h2");
    assert!(a.contains("CN = a.example.com"), "{a}");
    assert!(a.contains("ALPN protocol: h2"), "{a}");
    let b = s_client(s.port, "deep.b.example.com", "http/1.1");
    assert!(b.contains("CN = *.b.example.com"), "{b}");
    assert!(b.contains("ALPN protocol: http/1.1"), "{b}");
    assert!(b.contains("TLSv1.3"), "{b}");

    // A Host that belongs to another listener than the SNI: 421.
    let (out, _) = curl(
        &s,
        "a.example.com",
        "/x",
        &[
            "-H",
            "Host: x.b.example.com",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
        ],
    );
    assert_eq!(out, "421");

    // Redirects keep the request's scheme.
    let (out, _) = curl(
        &s,
        "a.example.com",
        "/old",
        &["-w", "%{redirect_url}", "-o", "/dev/null"],
    );
    assert_eq!(out, format!("https://a.example.com:{}/new", s.port));

    // A client that only does TLS 1.2 is served too.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.ca.der.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    let tls12 = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("a.example.com").expect("name"), tcp)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_several_certificates_serves_the_one_named_by_sni() {
    let s = setup("tls-several").await;
    // curl checks the certificate against the name it asked for: each name gets its own
    // of the listener's two certificates, not the first one listed.
    for host in ["one.c.example.com", "two.c.example.com"] {
        let (out, err) = curl(&s, host, "/x", &["-w", "%{http_code}", "-o", "/dev/null"]);
        assert_eq!(out, "200", "{host}: {err}");
        let seen = s_client(s.port, host, "http/1.1");
        assert!(seen.contains(&format!("CN = {host}")), "{host}: {seen}");
    }
    // A name the listener takes but neither certificate covers gets the first listed,
    // which the client then refuses.
    let seen = s_client(s.port, "three.c.example.com", "http/1.1");
    assert!(seen.contains("CN = one.c.example.com"), "{seen}");
    let (out, err) = curl(&s, "three.c.example.com", "/x", &["-w", "%{http_code}"]);
    assert_eq!(out, "000", "{err}");
    assert!(err.contains("three.c.example.com"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_rotates_the_certificate_without_dropping_connections() {
    let s = setup("tls-rotate").await;
    let first = s.ca.connect(s.port, "a.example.com", &[b"http/1.1"]).await;
    let old_cert = peer_cert(&first);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(first))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("/x")
            .header("host", "a.example.com")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let resp = sender.send_request(get()).await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    // Read the body, so the HTTP/1.1 connection is ready for the next request.
    resp.into_body().collect().await.expect("body");

    let rotated = s.ca.issue(&["a.example.com"]);
    s.dir.write(
        "secrets.yaml",
        &[
            tls_secret_yaml("a", &rotated),
            tls_secret_yaml("b", &s.ca.issue(&["*.b.example.com"])),
        ]
        .join("---\n"),
    );
    s.gw.wait_reloads("ok", 1).await;

    let fresh = s.ca.connect(s.port, "a.example.com", &[b"http/1.1"]).await;
    assert_eq!(
        peer_cert(&fresh),
        rotated.der,
        "new connections get the new certificate"
    );
    assert_ne!(old_cert, rotated.der);
    // The connection opened before the rotation keeps working.
    for _ in 0..3 {
        sender.ready().await.expect("old connection still open");
        let resp = sender
            .send_request(get())
            .await
            .expect("old connection still serves");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body");
    }

    // A Secret that breaks (a key that does not match) is reported on the listener.
    let broken = s.ca.issue(&["a.example.com"]);
    let other = s.ca.issue(&["a.example.com"]);
    s.dir.write(
        "secrets.yaml",
        &[
            tls_secret_yaml(
                "a",
                &Issued {
                    cert_pem: broken.cert_pem,
                    key_pem: other.key_pem,
                    der: broken.der,
                },
            ),
            tls_secret_yaml("b", &s.ca.issue(&["*.b.example.com"])),
        ]
        .join("---\n"),
    );
    s.gw.wait_reloads("ok", 2).await;
    let status: serde_json::Value =
        serde_json::from_str(&s.gw.admin("/status").await).expect("json");
    let listener = &status_of(&status, "Gateway", "gw")["status"]["listeners"][0];
    let resolved = &listener["conditions"][2];
    assert_eq!(resolved["reason"], "InvalidCertificateRef", "{listener}");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match"),
        "{resolved}"
    );
    // The other listener on the port still serves.
    let (out, err) = curl(
        &s,
        "x.b.example.com",
        "/x",
        &["-w", "%{http_code}", "-o", "/dev/null"],
    );
    assert_eq!(out, "200", "{err}");
}

/// An HTTP/2 cleartext backend that answers with the request's trailer echoed in a
/// response trailer, as gRPC servers send their status.
async fn h2c_trailer_backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let te = req.headers().get("te").cloned();
                        let got = req.into_body().collect().await?;
                        let seen = got
                            .trailers()
                            .and_then(|t| t.get("x-client-trailer"))
                            .cloned()
                            .unwrap_or(http::HeaderValue::from_static("none"));
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        trailers.insert("x-seen-trailer", seen);
                        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                            Ok(Frame::data(got.to_bytes())),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let mut resp = hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        ));
                        if let Some(te) = te {
                            resp.headers_mut().insert("x-seen-te", te);
                        }
                        Ok::<_, hyper::Error>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_h2c_forward_trailers_both_ways() {
    let backend = h2c_trailer_backend().await;
    let port = free_port();
    let plain = free_port();
    let dir = TempDir::new("tls-trailers");
    let ca = TestCa::new();
    let listeners = format!(
        "  - {{name: tls, port: PORT, protocol: HTTPS, tls: {{certificateRefs: [{{name: a}}]}}}}\n  - {{name: h2c, port: {plain}, protocol: HTTP}}\n"
    );
    dir.write("gw.yaml", &gateway_yaml(port, Some(&listeners)));
    dir.write(
        "svc.yaml",
        &service_yaml_port("grpc", backend, Some("kubernetes.io/h2c")),
    );
    dir.write(
        "secrets.yaml",
        &tls_secret_yaml("a", &ca.issue(&["api.example.com"])),
    );
    dir.write(
        "routes.yaml",
        &route("  - backendRefs: [{name: grpc, port: 80}]\n"),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;

    let tls = ca.connect(port, "api.example.com", &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", plain))
        .await
        .expect("connect");
    let (h2c_sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);

    for (mut sender, scheme, authority) in [
        (sender, "https", "api.example.com"),
        (h2c_sender, "http", "api.example.com"),
    ] {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-client-trailer", http::HeaderValue::from_static("t1"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        let req = Request::post(format!("{scheme}://{authority}/svc/Method"))
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
        assert_eq!(
            resp.headers()["x-seen-te"],
            "trailers",
            "{scheme}: TE: trailers forwarded"
        );
        let body = resp.into_body().collect().await.expect("body");
        let t = body.trailers().cloned().expect("response trailers");
        assert_eq!(t["grpc-status"], "0", "{scheme}");
        assert_eq!(
            t["x-seen-trailer"], "t1",
            "{scheme}: request trailers forwarded"
        );
        assert_eq!(body.to_bytes(), Bytes::from_static(b"payload"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_fail_do_not_disturb_the_gateway() {
    let s = setup_with("tls-bad-clients", &["--tls-handshake-timeout", "2"]).await;
    // A client speaking plain HTTP to the HTTPS port, and one that stalls mid-handshake.
    let (out, _) = {
        let o = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://127.0.0.1:{}/", s.port))
            .output()
            .expect("curl");
        (String::from_utf8_lossy(&o.stdout).into_owned(), ())
    };
    assert_eq!(out, "000", "plain HTTP on an HTTPS port gets no answer");
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    let stalled_at = Instant::now();
    // Meanwhile a good client is served at once.
    let start = Instant::now();
    let (out, err) = curl(
        &s,
        "a.example.com",
        "/x",
        &["-w", "%{http_code}", "-o", "/dev/null"],
    );
    assert_eq!(out, "200", "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The stalled handshake is closed after --tls-handshake-timeout.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled handshake was not closed: {read:?}"
    );
    let waited = stalled_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );
    // Clients that send an IP address as SNI (h2load does) are not logged one line per
    // handshake.
    for _ in 0..5 {
        s_client(s.port, "127.0.0.1", "http/1.1");
    }
    assert_eq!(
        curl(
            &s,
            "a.example.com",
            "/x",
            &["-w", "%{http_code}", "-o", "/dev/null"]
        )
        .0,
        "200"
    );
    let logs = s.gw.logs();
    assert!(!logs.contains("SNI"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_filters_run_on_https_over_http2_and_http1() {
    let echo = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("tls-wasm");
    install_filters(&dir, &["hello"]);
    let ca = TestCa::new();
    let ca_file = ca.write_pem(&dir);
    dir.write(
        "gw.yaml",
        &gateway_yaml(
            port,
            Some("  - {name: tls, port: PORT, protocol: HTTPS, tls: {certificateRefs: [{name: a}]}}\n"),
        ),
    );
    dir.write("svc.yaml", &service_yaml("a", &echo, None));
    dir.write(
        "secret.yaml",
        &tls_secret_yaml("a", &ca.issue(&["api.example.com"])),
    );
    dir.write(
        "filter.yaml",
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {name: hello, namespace: default}\nspec:\n  source: {path: filters/hello.wasm}\n  config: {greeting: over tls}\n",
    );
    dir.write(
        "routes.yaml",
        &route(&format!(
            "  - filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
            ext("hello")
        )),
    );
    let cache = dir.0.join("cache");
    let _gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    for proto in ["--http2", "--http1.1"] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", proto, "--cacert"])
            .arg(&ca_file)
            .args(["--resolve", &format!("api.example.com:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://api.example.com:{port}/anything"))
            .output()
            .expect("curl");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.contains(r#""x-hello":["over tls"]"#), "{proto}: {out}");
        let version = if proto == "--http2" { "\n2" } else { "\n1.1" };
        assert!(out.ends_with(version), "{proto}: {out}");
    }
}

/// A client certificate from `ca`, written as PEM files for curl.
fn client_cert_files(dir: &TempDir, ca: &TestCa, name: &str) -> (String, String) {
    let c = ca.issue(&[name]);
    let (crt, key) = (
        dir.0.join(format!("{name}.crt")),
        dir.0.join(format!("{name}.key")),
    );
    std::fs::write(&crt, &c.cert_pem).expect("write");
    std::fs::write(&key, &c.key_pem).expect("write");
    (
        crt.to_str().expect("utf-8").to_string(),
        key.to_str().expect("utf-8").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_validation_requires_client_certificates_from_the_named_ca() {
    let echo = echo("a").await;
    let (strict, lenient) = (free_port(), free_port());
    let dir = TempDir::new("tls-mtls");
    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let other_ca = TestCa::new();
    let ca_file = server_ca.write_pem(&dir);
    let gw = gateway_yaml(
        strict,
        Some(&format!(
            "  - {{name: strict, port: PORT, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n  - {{name: lenient, port: {lenient}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
        )),
    )
    .replace(
        "  gatewayClassName: sluice\n",
        &format!(
            "  gatewayClassName: sluice\n  tls:\n    frontend:\n      default:\n        validation:\n          caCertificateRefs: [{{group: '', kind: ConfigMap, name: clients}}]\n      perPort:\n      - port: {lenient}\n        tls:\n          validation:\n            caCertificateRefs: [{{group: '', kind: ConfigMap, name: clients}}]\n            mode: AllowInsecureFallback\n"
        ),
    );
    dir.write("gw.yaml", &gw);
    dir.write("svc.yaml", &service_yaml("a", &echo, None));
    dir.write(
        "secret.yaml",
        &tls_secret_yaml("cert", &server_ca.issue(&["api.example.com"])),
    );
    dir.write("ca.yaml", &client_ca.config_map_yaml("clients"));
    dir.write(
        "routes.yaml",
        &route("  - backendRefs: [{name: a, port: 80}]\n"),
    );
    let _gw = Sluice::start(&dir.0, &[]).await;

    let (good_crt, good_key) = client_cert_files(&dir, &client_ca, "client.example.com");
    let (bad_crt, bad_key) = client_cert_files(&dir, &other_ca, "intruder.example.com");
    let curl = |port: u16, cert: Option<(&str, &str)>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&ca_file)
        .args(["--resolve", &format!("api.example.com:{port}:127.0.0.1")]);
        if let Some((crt, key)) = cert {
            c.args(["--cert", crt, "--key", key]);
        }
        let out = c
            .arg(format!("https://api.example.com:{port}/"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // AllowValidOnly (the default): a certificate from the named CA, or no handshake.
    assert_eq!(curl(strict, Some((&good_crt, &good_key))), "200");
    assert_eq!(
        curl(strict, None),
        "000",
        "no client certificate, no connection"
    );
    assert_eq!(
        curl(strict, Some((&bad_crt, &bad_key))),
        "000",
        "a certificate from another CA is refused"
    );
    // AllowInsecureFallback on the other port: clients without one, or with one that
    // does not verify, are served too.
    assert_eq!(curl(lenient, None), "200");
    assert_eq!(curl(lenient, Some((&good_crt, &good_key))), "200");
    assert_eq!(
        curl(lenient, Some((&bad_crt, &bad_key))),
        "200",
        "a certificate from another CA falls back to an unauthenticated client"
    );
}
