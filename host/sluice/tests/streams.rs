//! TCP, TLS and UDP listeners end to end: a TCP echo, a TLS echo with its own
//! certificate (passthrough), a UDP echo, and the real binary between them and the
//! clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP echo that answers only after the client's half-close: it reads to EOF, then
/// writes everything back prefixed with `tag`, then closes.
async fn tcp_echo(tag: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    let _ = s.write_all(tag.as_bytes()).await;
                    let _ = s.write_all(&got).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    port
}

/// A TLS echo (line by line) presenting its own certificate for `names`.
async fn tls_echo(ca: &TestCa, names: &[&str]) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(names)));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    port
}

/// A UDP echo that answers each datagram with `<sender address> <payload>`, so a test
/// can see which upstream socket (session) a datagram came through.
async fn udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = s.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let reply = format!("{from} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = s.send_to(reply.as_bytes(), from).await;
        }
    });
    port
}

async fn echo_line(s: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), line: &str) -> String {
    s.write_all(line.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    let mut buf = vec![0u8; line.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

async fn udp_ask(c: &UdpSocket, gw: u16, msg: &str) -> String {
    c.send_to(msg.as_bytes(), ("127.0.0.1", gw))
        .await
        .expect("send");
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
        .await
        .expect("udp reply in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tls_and_udp_routes_forward_to_their_backends() {
    let ca = TestCa::new();
    let tcp_backend = tcp_echo("tcp:").await;
    let plain_backend = tcp_echo("terminated:").await;
    let tls_backend = tls_echo(&ca, &["app.example.com"]).await;
    let udp_backend = udp_echo().await;
    let (tcp, tls, term, udp) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("streams");
    let listeners = format!(
        "  - {{name: tcp, port: {tcp}, protocol: TCP}}
  - {{name: pass, port: {tls}, protocol: TLS, hostname: '*.example.com', tls: {{mode: Passthrough}}}}
  - {{name: term, port: {term}, protocol: TLS, hostname: db.example.com, tls: {{mode: Terminate, certificateRefs: [{{name: db}}]}}}}
  - {{name: udp, port: {udp}, protocol: UDP}}
"
    );
    dir.write("gw.yaml", &gateway_yaml(0, Some(&listeners)));
    dir.write(
        "svc.yaml",
        &[
            service_yaml_port("tcp-echo", tcp_backend, None),
            service_yaml_port("plain-echo", plain_backend, None),
            service_yaml_port("tls-echo", tls_backend, None),
            service_yaml_port("udp-echo", udp_backend, None),
        ]
        .join("---\n"),
    );
    dir.write(
        "secret.yaml",
        &tls_secret_yaml("db", &ca.issue(&["db.example.com"])),
    );
    let route = |kind: &str, v: &str, name: &str, section: &str, extra: &str, svc: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/{v}\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: {section}}}]\n{extra}  rules:\n  - backendRefs: [{{name: {svc}, port: 80}}]\n"
        )
    };
    dir.write(
        "routes.yaml",
        &[
            route("TCPRoute", "v1", "tcp", "tcp", "", "tcp-echo"),
            route(
                "TLSRoute",
                "v1",
                "app",
                "pass",
                "  hostnames: [app.example.com]\n",
                "tls-echo",
            ),
            route("TLSRoute", "v1", "db", "term", "", "plain-echo"),
            route("UDPRoute", "v1alpha2", "udp", "udp", "", "udp-echo"),
        ]
        .join("---\n"),
    );
    let gw = Sluice::start(&dir.0, &["--udp-idle-timeout", "1"]).await;

    // TCP: the client half-closes, the answer still comes back, then EOF.
    let mut c = TcpStream::connect(("127.0.0.1", tcp))
        .await
        .expect("connect");
    c.write_all(b"hello over tcp").await.expect("write");
    c.shutdown().await.expect("half-close");
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut got))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(got, "tcp:hello over tcp");

    // TLS passthrough: the handshake is the backend's own (its certificate, which the
    // gateway never had), routed by SNI.
    let mut c = ca.connect(tls, "app.example.com", &[]).await;
    assert_eq!(echo_line(&mut c, "through\n").await, "through\n");
    // A server name with no TLSRoute gets no backend: the connection closes.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp_stream = TcpStream::connect(("127.0.0.1", tls))
        .await
        .expect("connect");
    let refused = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            ServerName::try_from("nobody.example.com").expect("name"),
            tcp_stream,
        )
        .await;
    assert!(refused.is_err(), "no route for that server name");

    // TLS terminate: the gateway's certificate, plaintext to the backend.
    let mut c = ca.connect(term, "db.example.com", &[]).await;
    c.write_all(b"hello over tls").await.expect("write");
    c.shutdown().await.expect("close_notify and half-close");
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut got))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(got, "terminated:hello over tls");

    // UDP: each client gets its own session (its own upstream address), kept while it
    // talks, and a new one after the idle timeout.
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let a1 = udp_ask(&a, udp, "one").await;
    let a2 = udp_ask(&a, udp, "two").await;
    let b1 = udp_ask(&b, udp, "three").await;
    let session = |r: &str| r.split(' ').next().unwrap_or_default().to_string();
    assert!(a1.ends_with(" one") && a2.ends_with(" two") && b1.ends_with(" three"));
    assert_eq!(session(&a1), session(&a2), "one session per client");
    assert_ne!(session(&a1), session(&b1), "clients do not share a session");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a3 = udp_ask(&a, udp, "four").await;
    assert_ne!(
        session(&a1),
        session(&a3),
        "a new session after the idle timeout"
    );

    // Metrics per route: connections (UDP sessions) and bytes each way.
    let metrics = gw.admin("/metrics").await;
    for line in [
        r#"sluice_stream_connections_total{kind="TCPRoute",route="default/tcp"} 1"#,
        r#"sluice_stream_bytes_total{kind="TCPRoute",route="default/tcp",direction="rx"} 14"#,
        r#"sluice_stream_bytes_total{kind="TCPRoute",route="default/tcp",direction="tx"} 18"#,
        r#"sluice_stream_connections_total{kind="TLSRoute",route="default/db"} 1"#,
        r#"sluice_stream_connections_total{kind="UDPRoute",route="default/udp"} 3"#,
        r#"sluice_stream_active{kind="TCPRoute",route="default/tcp"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }

    // Status: each route attached to its listener.
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    for (kind, name) in [
        ("TCPRoute", "tcp"),
        ("TLSRoute", "app"),
        ("TLSRoute", "db"),
        ("UDPRoute", "udp"),
    ] {
        let accepted = &status_of(&status, kind, name)["status"]["parents"][0]["conditions"][0];
        assert_eq!(accepted["status"], "True", "{kind} {name}: {accepted}");
    }
}
