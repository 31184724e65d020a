//! Test rig: the real `sluice` binary on 127.0.0.1, echo backends on real sockets, and
//! real clients (hyper's, curl, a WebSocket client).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_echo::Identity;

/// A port that was free a moment ago. The gateway binds it from its config, so the test
/// cannot hand it a listener; the window for a clash is tiny on a test machine, and a
/// port is never handed out twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Echo {
    pub addr: SocketAddr,
    pub id: Arc<Identity>,
}

/// An echo backend on its own port, served by this test's runtime.
pub async fn echo(service: &str) -> Echo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    let id = Arc::new(Identity::new("default", service, &format!("{service}-0")));
    tokio::spawn(sluice_echo::serve(listener, id.clone()));
    Echo { addr, id }
}

/// An HTTP/1.1 server on 127.0.0.1, served by this test's runtime, answering each
/// request with what `answer` makes of it: the backends and services of one test.
pub async fn http_server<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test server");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let reply = answer(req);
                    async move { Ok::<_, std::convert::Infallible>(reply.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A Service with one EndpointSlice pointing at `echo`, as YAML.
pub fn service_yaml(name: &str, echo: &Echo, app_protocol: Option<&str>) -> String {
    service_yaml_port(name, echo.addr.port(), app_protocol)
}

/// A Service with one EndpointSlice pointing at 127.0.0.1:`port`, as YAML.
pub fn service_yaml_port(name: &str, port: u16, app_protocol: Option<&str>) -> String {
    let ap = app_protocol
        .map(|p| format!(", appProtocol: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80{ap}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [127.0.0.1]
"
    )
}

/// Several Services, one per echo backend.
pub fn services_yaml(list: &[(&str, &Echo, Option<&str>)]) -> String {
    list.iter()
        .map(|(name, e, p)| service_yaml(name, e, *p))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// GatewayClass plus a Gateway `gw` on 127.0.0.1:`port` with the given listeners YAML
/// (defaults to one HTTP listener without hostname).
pub fn gateway_yaml(port: u16, listeners: Option<&str>) -> String {
    let listeners = listeners
        .map(|l| l.replace("PORT", &port.to_string()))
        .unwrap_or_else(|| format!("  - {{name: http, port: {port}, protocol: HTTP}}\n"));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: sluice
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
{listeners}"
    )
}

/// A folder of its own under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "sluice-test-{tag}-{}-{}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and config-management tools do, so the watcher
        // never sees a half-written file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.0.join(name)).expect("rename config");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // What a test kept beside the folder, named after it (the gateway's log, its
        // access log, a CA it wrote): removed too, unless the test failed, when those
        // files are what explains it.
        if std::thread::panicking() {
            return;
        }
        let (Some(parent), Some(name)) = (self.0.parent(), self.0.file_name()) else {
            return;
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

pub struct Sluice {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Sluice {
    /// Starts `sluice run DIR` and waits until `/readyz` answers 200.
    pub async fn start(dir: &Path, extra: &[&str]) -> Sluice {
        Self::start_with_env(dir, extra, &[]).await
    }

    /// As [`Sluice::start`], with extra environment variables.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Sluice {
        let mut args = vec![dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(&args, &dir.with_extension("log"), env).await
    }

    /// Starts `sluice run ARGS --admin <free port>`, logging to `log`, and waits until
    /// `/readyz` answers 200.
    pub async fn launch(args: &[String], log: &Path, env: &[(&str, &Path)]) -> Sluice {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = log.to_path_buf();
        let out = std::fs::File::create(&log).expect("log file");
        // stdout carries the access log.
        let access = std::fs::File::create(log.with_extension("access")).expect("access log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .args(["--admin", &admin.to_string()])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(access)
            .stderr(out)
            .spawn()
            .expect("start sluice");
        let mut s = Sluice { child, admin, log };
        // Generous: a large component (a Python filter is about 18 MB) compiles before
        // the first config is ready, on a machine busy with other tests.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("sluice exited early ({status}):\n{}", s.logs());
            }
            if let Ok((StatusCode::OK, _)) = admin_get(admin, "/readyz").await {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready in 90 s:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What Sluice wrote to stdout: its access log.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("access")).unwrap_or_default()
    }

    pub async fn admin(&self, path: &str) -> String {
        admin_get(self.admin, path).await.expect("admin request").1
    }

    /// Polls `/metrics` until a reload (ok or rejected) has been counted `n` times.
    pub async fn wait_reloads(&self, result: &str, n: u64) {
        let needle = format!("sluice_config_reloads_total{{result=\"{result}\"}} {n}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.admin("/metrics").await.contains(&needle) {
            assert!(
                Instant::now() < deadline,
                "no {result} reload #{n} within 10 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// One unlabelled (or exactly labelled) counter or gauge from `/metrics`; 0 when absent.
    pub async fn metric(&self, name: &str) -> u64 {
        metric(&self.admin("/metrics").await, name)
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name` (with its labels, if any) in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let c = client();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// A header the echo backend saw, first value.
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }
}

/// Sends one request with the given Host and extra headers.
pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    send_with_body(c, method, port, host, path, headers, b"").await
}

/// [`send`] with a body.
pub async fn send_with_body(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = c
        .request(
            b.body(Full::new(Bytes::copy_from_slice(body)))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(port: u16, host: &str, path: &str) -> Answer {
    send(&client(), "GET", port, host, path, &[]).await
}

pub fn ext(name: &str) -> String {
    format!(
        "{{type: ExtensionRef, extensionRef: {{group: sluice.dev, kind: WasmFilter, name: {name}}}}}"
    )
}

pub fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

/// Condition `t` of a status's `conditions` array (null when absent).
pub fn condition<'a>(conds: &'a serde_json::Value, t: &str) -> &'a serde_json::Value {
    conds
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .unwrap_or(&serde_json::Value::Null)
}

pub fn status_of<'a>(
    status: &'a serde_json::Value,
    kind: &str,
    name: &str,
) -> &'a serde_json::Value {
    status["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
        })
        .unwrap_or_else(|| panic!("no status for {kind} {name}"))
}

/// A certificate authority made for one test, issuing certificates with rcgen.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// Copies built filters of `filters/` into `dir/filters/`, so WasmFilter sources are
/// plain relative paths (`filters/<name>.wasm`).
pub fn install_filters(dir: &TempDir, names: &[&str]) {
    let built = sluice_harness::repo_filters().expect("building filters/ for wasm32-wasip2");
    std::fs::create_dir_all(dir.0.join("filters")).expect("mkdir");
    for name in names {
        std::fs::copy(
            built.join(format!("{name}.wasm")),
            dir.0.join(format!("filters/{name}.wasm")),
        )
        .expect("copy filter");
    }
}

/// A certificate and its key, PEM, plus the certificate's DER to compare with.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sluice test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate next to `dir` (for curl's and grpcurl's --cacert).
    pub fn write_pem(&self, dir: &TempDir) -> PathBuf {
        let file = dir.0.with_extension("ca.pem");
        std::fs::write(&file, &self.pem).expect("write ca");
        file
    }

    /// A ConfigMap `name` holding this CA as `ca.crt`, as YAML.
    pub fn config_map_yaml(&self, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n  ca.crt: |\n{}",
            self.pem
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    }

    /// A TLS connection to 127.0.0.1:`port` with `sni`, trusting this CA, offering
    /// `alpn` (none when empty).
    pub async fn connect(
        &self,
        port: u16,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name"),
                tcp,
            )
            .await
            .expect("handshake")
    }

    /// A certificate for `names` (the first is also the common name).
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with_uris(names, &[])
    }

    /// As [`TestCa::issue`], with URI subjectAltNames too (e.g. SPIFFE IDs).
    pub fn issue_with_uris(&self, names: &[&str], uris: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().expect("IA5 URI")));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls server config presenting a certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params")
                .signed_by(&key, &self.issuer)
                .expect("cert");
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config")
    }
}

/// A `kubernetes.io/tls` Secret holding `c`, as YAML.
pub fn tls_secret_yaml(name: &str, c: &Issued) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b(&c.cert_pem),
        b(&c.key_pem)
    )
}

/// The metric names the chart's Grafana dashboard queries (histogram series reduced to
/// their family: `_bucket`, `_sum` and `_count` dropped).
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/sluice/files/dashboard.json");
    let text = std::fs::read_to_string(&file).expect("charts/sluice/files/dashboard.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&json, &mut queries);
    assert!(queries.len() > 10, "the dashboard has queries");
    let mut names = std::collections::BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("sluice_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// The metric families a `/metrics` text declares (`# TYPE` lines).
pub fn exported_metrics(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Dashboard metrics only the Kubernetes mode exports (the status writer's).
pub const KUBE_ONLY_METRICS: &[&str] = &[
    "sluice_leader",
    "sluice_status_write_failures_total",
    "sluice_status_writes_total",
];
