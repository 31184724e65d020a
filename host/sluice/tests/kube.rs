//! Kubernetes mode against a real control plane: Debian's etcd and a kube-apiserver
//! built from the k8s.io/kubernetes Go module (`.ci/run` builds it into
//! target/tools), with the Gateway API v1.6 standard CRDs and the WasmFilter CRD from
//! `sluice crd`, applied by server-side apply.
//!
//! The API server refuses EndpointSlice addresses in 127.0.0.0/8, so each test runs in
//! a network namespace of its own (`unshare --net`) whose loopback also carries
//! 198.18.0.0/16: backends listen on 198.18.0.x, and everything stays on that
//! namespace's loopback. The test re-runs itself inside the namespace.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Sluice, TempDir, condition, free_port, install_filters, metric, status_of};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use serde_json::Value;

const INSIDE: &str = "SLUICE_TEST_NETNS";

/// Runs the test named `name` in a fresh network namespace (the test binary re-runs
/// itself there), or, inside it, runs `body`.
fn in_netns<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    in_netns_with(name, "ip addr add 198.18.0.0/16 dev lo", body)
}

/// [`in_netns`], with `setup` (shell) run in the namespace first.
fn in_netns_with<F: Future<Output = ()>>(name: &str, setup: &str, body: impl FnOnce() -> F) {
    if std::env::var_os(INSIDE).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body());
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    let out = cmd
        .args(["--net", "--", "sh", "-ec"])
        .arg(format!("ip link set lo up; {setup}; exec \"$0\" \"$@\""))
        .arg(&exe)
        .args([
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(INSIDE, "1")
        .output()
        .expect("unshare (util-linux) and ip (iproute2) are needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} inside its network namespace failed:\n{text}"
    );
    println!("{text}");
}

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools")
}

/// etcd and kube-apiserver on this namespace's 127.0.0.1, and a client for them.
struct Rig {
    dir: TempDir,
    etcd: Child,
    apiserver: Option<Child>,
    port: u16,
    etcd_port: u16,
    kubeconfig: PathBuf,
    client: kube::Client,
}

const TOKEN: &str = "sluice-test-admin-token";

impl Rig {
    async fn start(tag: &str) -> Rig {
        let dir = TempDir::new(tag);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        // 198.18.128.1: the fake kubelet's bridge, where Pods reach the API server.
        for ip in ["127.0.0.1", "198.18.128.1"] {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().expect("ip")));
        }
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.0.join("serving.crt"), cert.pem()).expect("write");
        std::fs::write(dir.0.join("serving.key"), key.serialize_pem()).expect("write");
        let sa = rcgen::KeyPair::generate().expect("sa key");
        std::fs::write(dir.0.join("sa.key"), sa.serialize_pem()).expect("write");
        std::fs::write(dir.0.join("sa.pub"), sa.public_key_pem()).expect("write");
        std::fs::write(
            dir.0.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .expect("write");
        let etcd_port = free_port();
        let peer = free_port();
        let log = std::fs::File::create(dir.0.join("etcd.log")).expect("log");
        let etcd = Command::new("etcd")
            .args(["--data-dir", &dir.0.join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed");
        let port = free_port();
        let kubeconfig = dir.0.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{}\"}}\nusers:\n- name: admin\n  user: {{token: {TOKEN}}}\ncontexts:\n- name: rig\n  context: {{cluster: rig, user: admin}}\ncurrent-context: rig\n",
                dir.0.join("serving.crt").display()
            ),
        )
        .expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let mut rig = Rig {
            dir,
            etcd,
            apiserver: None,
            port,
            etcd_port,
            kubeconfig,
            client,
        };
        rig.start_apiserver().await;
        rig.install_crds().await;
        rig
    }

    async fn start_apiserver(&mut self) {
        let bin = tools().join("kube-apiserver");
        assert!(
            bin.exists(),
            "{} is missing: .ci/run builds it from the k8s.io/kubernetes Go module",
            bin.display()
        );
        let d = |f: &str| self.dir.0.join(f).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("apiserver.log"))
            .expect("log");
        let child = Command::new(bin)
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            // Every address of the test's own network namespace: Pods on the fake
            // kubelet's bridge reach it there.
            .arg("--bind-address=0.0.0.0")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--tls-cert-file={}", d("serving.crt")))
            .arg(format!("--tls-private-key-file={}", d("serving.key")))
            .arg(format!("--token-auth-file={}", d("tokens.csv")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-key-file={}", d("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d("sa.key")
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            // On loopback the endpoint reconciler would publish 127.0.0.1, which
            // EndpointSlices refuse.
            .arg("--endpoint-reconciler-type=none")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--enable-priority-and-fairness=false")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if let Ok(body) = self.client.request_text(req).await
                && body.trim() == "ok"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// kube-controller-manager with the EndpointSlice controller, on this API server.
    fn controller_manager(&self) -> ChildGuard {
        self.controller_manager_with("endpointslice,serviceaccount")
    }

    /// kube-controller-manager running `controllers` (comma-separated).
    fn controller_manager_with(&self, controllers: &str) -> ChildGuard {
        let bin = tools().join("kube-controller-manager");
        assert!(
            bin.exists(),
            "{} is missing: .ci/run builds it from the k8s.io/kubernetes Go module",
            bin.display()
        );
        let log = std::fs::File::create(self.dir.0.join("controller-manager.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--controllers={controllers}"))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--use-service-account-credentials=false")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-controller-manager");
        ChildGuard(child)
    }

    /// The fake kubelet (`.ci/kube/kubelet`) on this API server: it runs `echo-basic` and
    /// `sluice` images (with `coredns`, also `coredns` images) as processes on its bridge
    /// 198.18.128.1/17, writes Pod volumes under `dir`, and logs to `log`.
    fn kubelet(&self, dir: &Path, log: &Path, coredns: bool) -> ChildGuard {
        let mut cmd = Command::new(tools().join("kubelet"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--echo-basic={}",
                tools().join("echo-basic").display()
            ))
            .arg(format!("--sluice={}", env!("CARGO_BIN_EXE_sluice")))
            .arg("--pod-cidr=198.18.128.1/17")
            .arg(format!("--dir={}", dir.display()));
        if coredns {
            cmd.arg(format!("--coredns={}", tools().join("coredns").display()));
        }
        ChildGuard(
            cmd.stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("log"))
                .spawn()
                .expect("start the fake kubelet"),
        )
    }

    /// What a kubelet reports for a Pod: its IP, Running, and Ready or not.
    async fn pod_ready(&self, name: &str, ip: &str, ready: bool) {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), "default");
        let ready = if ready { "True" } else { "False" };
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": ready},
            ],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("pod status");
    }

    fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(self.dir.0.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let mut out = format!(
            "--- etcd\n{}\n--- apiserver\n{}",
            tail("etcd.log"),
            tail("apiserver.log")
        );
        for e in std::fs::read_dir(&self.dir.0)
            .into_iter()
            .flatten()
            .flatten()
        {
            let f = e.file_name().to_string_lossy().to_string();
            if f.starts_with("replica") || f.starts_with("controller-manager") {
                out += &format!("\n--- {f}\n{}", tail(&f));
            }
        }
        out
    }

    /// The Gateway API CRDs of the channel (copied by .ci/run from the gateway-api Go
    /// module) and `sluice crd`'s WasmFilter CRD.
    async fn install_crds(&self) {
        let crds = tools().join(match experimental() {
            false => "gateway-api-crds",
            true => "gateway-api-crds-experimental",
        });
        let mut docs = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
            .unwrap_or_else(|e| panic!("{}: {e}; .ci/run copies the CRDs there", crds.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            docs.push(std::fs::read_to_string(f).expect("read CRD"));
        }
        let ours = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("crd")
            .output()
            .expect("sluice crd");
        assert!(ours.status.success());
        docs.push(String::from_utf8(ours.stdout).expect("utf8"));
        for text in docs {
            for obj in yaml_docs(&text) {
                if obj["kind"] == "CustomResourceDefinition" {
                    self.apply_value(&obj).await;
                }
            }
        }
        // Served once established.
        for (g, v, k) in [
            ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            ("gateway.networking.k8s.io", "v1", "Gateway"),
            ("sluice.dev", "v1alpha1", "WasmFilter"),
        ] {
            let gvk = GroupVersionKind::gvk(g, v, k);
            let deadline = Instant::now() + Duration::from_secs(30);
            while kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .is_err()
            {
                assert!(Instant::now() < deadline, "{k} CRD not served in 30 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn api(&self, obj: &Value) -> (Api<DynamicObject>, String) {
        let api_version = obj["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = obj["kind"].as_str().expect("kind");
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{api_version} {kind}: {e}"));
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        let api = if caps.scope == Scope::Namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        (api, name)
    }

    async fn apply_value(&self, obj: &Value) {
        let (api, name) = self.api(obj).await;
        api.patch(
            &name,
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    /// Server-side applies every object in `yaml`.
    async fn apply(&self, yaml: &str) {
        for obj in yaml_docs(yaml) {
            self.apply_value(&obj).await;
        }
    }

    async fn delete(&self, yaml: &str) {
        for obj in yaml_docs(yaml) {
            let (api, name) = self.api(&obj).await;
            api.delete(&name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        }
    }

    /// The object's status as the API server holds it.
    async fn status(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
        let obj = serde_json::json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": ns}
        });
        let (api, name) = self.api(&obj).await;
        let o = api.get(&name).await.expect("get");
        let v = serde_json::to_value(&o).expect("json");
        if std::env::var_os("SLUICE_TEST_DEBUG").is_some() {
            println!("OBJECT {v:#}");
        }
        v["status"].clone()
    }

    /// Polls the status until `ok` accepts it.
    async fn wait_status(
        &self,
        what: (&str, &str, &str, &str),
        ok: impl Fn(&Value) -> bool,
        why: &str,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(what.0, what.1, what.2, what.3).await;
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} {}: {why} within 30 s; status: {s:#}\n{}",
                what.1,
                what.3,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `sluice run --kubernetes` against this API server.
    async fn sluice(&self, name: &str, extra: &[&str]) -> Sluice {
        let mut args: Vec<String> = vec!["--kubernetes".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--identity".into(), name.into()]);
        args.extend([
            "--cache-dir".into(),
            self.dir.0.join("cache").display().to_string(),
        ]);
        Sluice::launch(
            &args,
            &self.dir.0.join(format!("{name}.log")),
            &[
                ("KUBECONFIG", self.kubeconfig.as_path()),
                ("SLUICE_LOG", Path::new("info,sluice::cluster=debug")),
            ],
        )
        .await
    }
}

/// A process killed when the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// An echo backend on `ip` (in 198.18.0.0/16, which EndpointSlices accept).
async fn echo_on(ip: &str, service: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), 0))
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    let id = Arc::new(sluice_echo::Identity::new(
        "default",
        service,
        &format!("{service}-0"),
    ));
    tokio::spawn(sluice_echo::serve(listener, id));
    addr
}

fn backend_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: [\"{ip}\"]
  conditions: {{ready: true}}
",
        port = addr.port(),
        ip = addr.ip()
    )
}

fn gateway_yaml(port: u16) -> String {
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
  listeners:
  - {{name: http, port: {port}, protocol: HTTP}}
"
    )
}

fn route_yaml(path: &str, filter: bool) -> String {
    let filters = if filter {
        "    filters:\n    - {type: ExtensionRef, extensionRef: {group: sluice.dev, kind: WasmFilter, name: hello}}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
{filters}    backendRefs: [{{name: echo, port: 80}}]
"
    )
}

/// GET http://ip:port/path with curl; (status, body).
fn curl(ip: &str, port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{ip}:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

async fn wait_curl(ip: &str, port: u16, path: &str, want: u16, why: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = curl(ip, port, path);
        if code == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {why}: still {code} after 20 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_true(conds: &Value, t: &str) -> bool {
    condition(conds, t)["status"] == "True"
}

/// A route status's condition `t` for its first parent.
fn route_condition<'a>(s: &'a Value, t: &str) -> &'a Value {
    condition(&s["parents"][0]["conditions"], t)
}

const GW: &str = "gateway.networking.k8s.io/v1";

#[test]
fn objects_route_traffic_and_get_statuses() {
    in_netns("objects_route_traffic_and_get_statuses", || async {
        let rig = Rig::start("kube-basic").await;
        let filters = TempDir::new("kube-basic-filters");
        install_filters(&filters, &["hello"]);
        // Path sources are read only under the folder the operator names.
        let filter_dir = filters.0.display().to_string();
        let echo = echo_on("198.18.0.10", "echo").await;
        let port = free_port();
        rig.apply(&gateway_yaml(port)).await;
        rig.apply(&backend_yaml("echo", echo)).await;
        // The data plane Service, whose cluster IP Gateways report as their address.
        rig.apply("apiVersion: v1\nkind: Service\nmetadata: {name: sluice, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n").await;
        rig.apply(
            "apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: hello, namespace: default}
spec:
  source: {path: filters/hello.wasm}
  config: {greeting: kube}
",
        )
        .await;
        rig.apply(&route_yaml("/", true)).await;
        let gw = rig
            .sluice(
                "replica-a",
                &[
                    "--gateway-service",
                    "default/sluice",
                    "--filter-dir",
                    &filter_dir,
                ],
            )
            .await;

        let s = rig
            .wait_status(
                (GW, "HTTPRoute", "default", "web"),
                |s| route_condition(s, "ResolvedRefs")["status"] == "True",
                "ResolvedRefs",
            )
            .await;
        assert!(route_condition(&s, "Accepted")["status"] == "True", "{s:#}");

        // Traffic, through the Wasm filter.
        let body = wait_curl("127.0.0.1", port, "/anything", 200, "route served").await;
        assert!(body.contains("x-hello"), "filter ran: {body}");
        assert_eq!(curl("127.0.0.1", port, "/hello").1, "hello, kube\n");

        // Statuses in the status subresources.
        let class = rig
            .wait_status(
                (GW, "GatewayClass", "", "sluice"),
                |s| is_true(&s["conditions"], "Accepted"),
                "Accepted",
            )
            .await;
        assert!(condition(&class["conditions"], "Accepted")["lastTransitionTime"].is_string());
        let gws = rig
            .wait_status(
                (GW, "Gateway", "default", "gw"),
                |s| is_true(&s["conditions"], "Programmed") && s["addresses"].is_array(),
                "Programmed with addresses",
            )
            .await;
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(rig.client.clone(), "default");
        let svc = services.get("sluice").await.expect("service");
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
        assert_eq!(gws["addresses"][0]["value"], cluster_ip, "{gws:#}");
        assert_eq!(gws["listeners"][0]["attachedRoutes"], 1);
        let route = rig
            .wait_status(
                (GW, "HTTPRoute", "default", "web"),
                |s| route_condition(s, "Accepted")["status"] == "True",
                "Accepted",
            )
            .await;
        assert_eq!(
            route["parents"][0]["controllerName"],
            "sluice.dev/gateway-controller"
        );
        assert_eq!(
            condition(&route["parents"][0]["conditions"], "Accepted")["observedGeneration"],
            1
        );
        let wf = rig
            .wait_status(
                ("sluice.dev/v1alpha1", "WasmFilter", "default", "hello"),
                |s| is_true(&s["conditions"], "Ready"),
                "Ready",
            )
            .await;
        assert!(
            wf["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{wf:#}"
        );

        // Statuses are written only when they change: an unrelated change triggers a
        // new translation but no write.
        let writes = gw.metric("sluice_status_writes_total").await;
        assert!(writes >= 4, "statuses written: {writes}");
        assert_eq!(gw.metric("sluice_leader").await, 1);
        // The dashboard's status-writer panels query metrics this mode exports.
        let exported = common::exported_metrics(&gw.admin("/metrics").await);
        let dashboard = common::dashboard_metrics();
        for m in common::KUBE_ONLY_METRICS {
            assert!(
                dashboard.contains(*m),
                "{m} is no longer on the dashboard: drop it from KUBE_ONLY_METRICS"
            );
            assert!(
                exported.contains(*m),
                "the dashboard queries {m}, which /metrics does not export"
            );
        }
        let reloads = gw
            .metric("sluice_config_reloads_total{result=\"ok\"}")
            .await;
        rig.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: unrelated}\n")
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw
            .metric("sluice_config_reloads_total{result=\"ok\"}")
            .await
            == reloads
        {
            assert!(
                Instant::now() < deadline,
                "no reload after a namespace appeared"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            gw.metric("sluice_status_writes_total").await,
            writes,
            "nothing changed, nothing written"
        );

        // Update: the route moves to /v2 and drops the filter.
        rig.apply(&route_yaml("/v2", false)).await;
        wait_curl("127.0.0.1", port, "/anything", 404, "old path gone").await;
        let body = wait_curl("127.0.0.1", port, "/v2/x", 200, "new path").await;
        assert!(!body.contains("x-hello"), "filter removed: {body}");
        rig.wait_status(
            (GW, "HTTPRoute", "default", "web"),
            |s| route_condition(s, "Accepted")["observedGeneration"] == 2,
            "observedGeneration 2",
        )
        .await;

        // A route to a missing backend: ResolvedRefs=False, written back.
        rig.apply(&route_yaml("/v2", false).replace("name: echo", "name: missing"))
            .await;
        let s = rig
            .wait_status(
                (GW, "HTTPRoute", "default", "web"),
                |s| route_condition(s, "ResolvedRefs")["reason"] == "BackendNotFound",
                "BackendNotFound",
            )
            .await;
        assert_eq!(route_condition(&s, "ResolvedRefs")["status"], "False");
        wait_curl(
            "127.0.0.1",
            port,
            "/v2/x",
            500,
            "missing backend answers 500",
        )
        .await;

        // Moved to another controller's Gateway: Sluice takes its entry out of the
        // route's parents, and leaves the other controller's entry alone.
        rig.apply(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: default}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
",
        )
        .await;
        rig.apply(&route_yaml("/v2", false).replace("{name: gw}", "{name: foreign}"))
            .await;
        rig.wait_status(
            (GW, "HTTPRoute", "default", "web"),
            |s| s["parents"].as_array().is_some_and(|p| p.is_empty()),
            "Sluice's parent entry removed",
        )
        .await;
        wait_curl("127.0.0.1", port, "/v2/x", 404, "route left this Gateway").await;
        rig.apply(&route_yaml("/v2", false)).await;
        wait_curl("127.0.0.1", port, "/v2/x", 200, "route back").await;

        // Delete: the route is gone, and so is its attachment.
        rig.delete(&route_yaml("/v2", false)).await;
        wait_curl("127.0.0.1", port, "/v2/x", 404, "route deleted").await;
        rig.wait_status(
            (GW, "Gateway", "default", "gw"),
            |s| s["listeners"][0]["attachedRoutes"] == 0,
            "attachedRoutes 0",
        )
        .await;
        drop(gw);
    });
}

#[test]
fn ingresses_of_our_class_are_served_and_get_the_service_address() {
    in_netns(
        "ingresses_of_our_class_are_served_and_get_the_service_address",
        || async {
            let rig = Rig::start("kube-ingress").await;
            // The source-range filter, for the `admin` Ingress's allowlist.
            let filters = TempDir::new("kube-ingress-filters");
            install_filters(&filters, &["source_range"]);
            let filter_dir = filters.0.display().to_string();
            let echo = echo_on("198.18.0.12", "echo").await;
            let port = free_port();
            rig.apply(&backend_yaml("echo", echo)).await;
            rig.apply("apiVersion: v1\nkind: Service\nmetadata: {name: sluice, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n").await;
            rig.apply(
                "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: sluice}
spec: {controller: sluice.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/server-snippet: 'return 200;'}
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {path: /shop, pathType: Prefix, backend: {service: {name: echo, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: admin
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/allowlist-source-range: 10.0.0.0/8}
spec:
  ingressClassName: sluice
  rules:
  - http:
      paths:
      - {path: /admin, pathType: Prefix, backend: {service: {name: echo, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: default}
spec:
  ingressClassName: nginx
  rules:
  - http:
      paths:
      - {path: /theirs, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
",
            )
            .await;
            let ingress_http = format!("0.0.0.0:{port}");
            let https = format!("0.0.0.0:{}", free_port());
            let gw = rig
                .sluice(
                    "replica-a",
                    &[
                        "--gateway-service",
                        "default/sluice",
                        "--ingress-http",
                        &ingress_http,
                        "--ingress-https",
                        &https,
                        "--filter-dir",
                        &filter_dir,
                        "--ingress-source-range-filter",
                        "filters/source_range.wasm",
                    ],
                )
                .await;
            let body = wait_curl("127.0.0.1", port, "/shop/cart", 200, "Ingress served").await;
            assert!(body.contains("\"path\":\"/shop/cart\""), "{body}");
            // 127.0.0.1 is not in the allowlist: the source-range filter keeps it out.
            assert_eq!(curl("127.0.0.1", port, "/admin").0, 403, "allowlist");
            assert_eq!(
                curl("127.0.0.1", port, "/theirs").0,
                404,
                "another class's Ingress"
            );

            // status.loadBalancer: the data plane Service's address, as Gateways report it.
            let services: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(rig.client.clone(), "default");
            let svc = services.get("sluice").await.expect("service");
            let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
            let ing = rig
                .wait_status(
                    ("networking.k8s.io/v1", "Ingress", "default", "web"),
                    |s| s["loadBalancer"]["ingress"][0]["ip"] == cluster_ip.as_str(),
                    "loadBalancer.ingress",
                )
                .await;
            // The notes stay in /status: the API server keeps only loadBalancer.
            assert!(ing.get("notes").is_none(), "{ing:#}");
            let status: Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
            let notes = status_of(&status, "Ingress", "web")["status"]["notes"].to_string();
            assert!(notes.contains("server-snippet"), "{notes}");
            let theirs = rig
                .status("networking.k8s.io/v1", "Ingress", "default", "theirs")
                .await;
            assert!(theirs["loadBalancer"]["ingress"].is_null(), "{theirs:#}");

            // A change to the Ingress is served without a restart.
            rig.apply(&exact_shop_ingress("sluice")).await;
            wait_curl(
                "127.0.0.1",
                port,
                "/shop/cart",
                404,
                "Exact after the change",
            )
            .await;
            assert_eq!(curl("127.0.0.1", port, "/shop").0, 200);

            // Handed to another controller: no longer served, and the address Sluice
            // wrote is cleared (once; the other controller writes its own).
            rig.apply(&exact_shop_ingress("nginx")).await;
            // Its rules are gone (the `admin` Ingress keeps the port open).
            wait_curl("127.0.0.1", port, "/shop", 404, "another class").await;
            rig.wait_status(
                ("networking.k8s.io/v1", "Ingress", "default", "web"),
                |s| {
                    s["loadBalancer"]["ingress"]
                        .as_array()
                        .is_none_or(Vec::is_empty)
                },
                "loadBalancer cleared",
            )
            .await;
            // No Ingress of Sluice's left: the Ingress port closes (curl's 0).
            rig.delete("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: admin, namespace: default}\n")
                .await;
            wait_curl("127.0.0.1", port, "/admin", 0, "no Ingress left").await;
        },
    );
}

/// The Ingress `web` with one Exact path `/shop` to `echo`, of `class`.
fn exact_shop_ingress(class: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: default}}
spec:
  ingressClassName: {class}
  rules:
  - http:
      paths:
      - {{path: /shop, pathType: Exact, backend: {{service: {{name: echo, port: {{name: http}}}}}}}}
"
    )
}

#[test]
fn traffic_survives_losing_the_api_server() {
    in_netns("traffic_survives_losing_the_api_server", || async {
        let mut rig = Rig::start("kube-loss").await;
        let echo = echo_on("198.18.0.11", "echo").await;
        let port = free_port();
        rig.apply(&gateway_yaml(port)).await;
        rig.apply(&backend_yaml("echo", echo)).await;
        rig.apply(&route_yaml("/", false)).await;
        let gw = rig.sluice("replica-a", &[]).await;
        wait_curl("127.0.0.1", port, "/a", 200, "served").await;

        rig.stop_apiserver();
        // The watchers fail and retry; the last snapshot keeps serving.
        for _ in 0..30 {
            assert_eq!(curl("127.0.0.1", port, "/a").0, 200, "{}", gw.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(gw.admin("/readyz").await.trim(), "ready");

        // Back: changes made while it was away are picked up.
        rig.start_apiserver().await;
        rig.apply(&route_yaml("/b", false)).await;
        wait_curl("127.0.0.1", port, "/a", 404, "change after reconnect").await;
        wait_curl("127.0.0.1", port, "/b", 200, "change after reconnect").await;
        assert!(gw.logs().contains("watch failed"), "{}", gw.logs());
    });
}

#[test]
fn with_two_replicas_exactly_one_writes_statuses() {
    in_netns("with_two_replicas_exactly_one_writes_statuses", || async {
        let rig = Rig::start("kube-replicas").await;
        let echo = echo_on("198.18.0.12", "echo").await;
        let port = free_port();
        rig.apply(&gateway_yaml(port)).await;
        rig.apply(&backend_yaml("echo", echo)).await;
        rig.apply(&route_yaml("/", false)).await;
        // Two replicas, each on an address of its own, as two Pods would be.
        let lease = ["--lease", "default/sluice", "--lease-duration", "4"];
        let a = rig
            .sluice(
                "replica-a",
                &[&lease[..], &["--bind-address", "198.18.1.1"]].concat(),
            )
            .await;
        let b = rig
            .sluice(
                "replica-b",
                &[&lease[..], &["--bind-address", "198.18.1.2"]].concat(),
            )
            .await;
        // Both serve.
        wait_curl("198.18.1.1", port, "/x", 200, "replica a serves").await;
        wait_curl("198.18.1.2", port, "/x", 200, "replica b serves").await;
        rig.wait_status(
            (GW, "HTTPRoute", "default", "web"),
            |s| route_condition(s, "Accepted")["status"] == "True",
            "Accepted",
        )
        .await;
        // A status change for the leader to write.
        rig.apply(&route_yaml("/", false).replace("name: echo", "name: missing"))
            .await;
        rig.wait_status(
            (GW, "HTTPRoute", "default", "web"),
            |s| route_condition(s, "ResolvedRefs")["reason"] == "BackendNotFound",
            "BackendNotFound",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ma, mb) = (a.admin("/metrics").await, b.admin("/metrics").await);
        let leaders = metric(&ma, "sluice_leader") + metric(&mb, "sluice_leader");
        assert_eq!(leaders, 1, "exactly one leader:\n{ma}\n{mb}");
        let (mut leader, follower) = if metric(&ma, "sluice_leader") == 1 {
            (a, b)
        } else {
            (b, a)
        };
        let fm = follower.admin("/metrics").await;
        assert_eq!(
            metric(&fm, "sluice_status_writes_total"),
            0,
            "the follower wrote"
        );
        assert!(leader.metric("sluice_status_writes_total").await > 0);

        // The leader goes away (SIGTERM releases the lease); the other takes over and
        // writes the next change.
        leader.sigterm();
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "leader did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(leader.logs().contains("draining"), "{}", leader.logs());
        rig.apply(&route_yaml("/", false)).await;
        rig.wait_status(
            (GW, "HTTPRoute", "default", "web"),
            |s| route_condition(s, "ResolvedRefs")["status"] == "True",
            "ResolvedRefs again, written by the new leader",
        )
        .await;
        // The replica counts a write when the API server's answer reaches it, which can
        // be just after the status is visible to a reader.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let fm = follower.admin("/metrics").await;
            assert_eq!(metric(&fm, "sluice_leader"), 1);
            if metric(&fm, "sluice_status_writes_total") > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new leader wrote nothing:\n{fm}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// The chart, rendered by `helm template` (helm built by .ci/run from its Go module),
/// is accepted by the API server, and its RBAC is enough: a gateway holding only the
/// chart's ServiceAccount token serves traffic, takes the Lease and writes statuses.
#[test]
fn the_charts_objects_apply_and_its_rbac_is_enough() {
    in_netns(
        "the_charts_objects_apply_and_its_rbac_is_enough",
        || async {
            let rig = Rig::start("kube-chart").await;
            let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/sluice");
            let out = Command::new(tools().join("helm"))
                .args(["template", "sluice"])
                .arg(&chart)
                .args(["--namespace", "sluice-system", "--kube-version", "1.37.0"])
                .output()
                .expect("helm (built by .ci/run into target/tools)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = String::from_utf8(out.stdout).expect("utf8");
            rig.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: sluice-system}\n")
                .await;
            // CRDs first, as Helm does, then the rest.
            let docs = yaml_docs(&rendered);
            let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
            for k in [
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Service",
                "Deployment",
                "GatewayClass",
                "PodDisruptionBudget",
            ] {
                assert!(kinds.contains(&k), "the chart renders a {k}: {kinds:?}");
            }
            for d in docs
                .iter()
                .filter(|d| d["kind"] == "CustomResourceDefinition")
            {
                rig.apply_value(d).await;
            }
            for d in docs
                .iter()
                .filter(|d| d["kind"] != "CustomResourceDefinition")
            {
                rig.apply_value(d).await;
            }

            // A token for the chart's ServiceAccount, and a kubeconfig that uses it.
            let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(rig.client.clone(), "sluice-system");
            let token = sa
                .create_token_request(
                    "sluice",
                    &Default::default(),
                    &k8s_openapi::api::authentication::v1::TokenRequest {
                        spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                            audiences: vec!["https://kubernetes.default.svc".into()],
                            expiration_seconds: Some(3600),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )
                .await
                .expect("token request")
                .status
                .expect("token")
                .token;
            let admin_config = std::fs::read_to_string(&rig.kubeconfig).expect("kubeconfig");
            let sa_config = rig.dir.0.join("sa-kubeconfig");
            std::fs::write(&sa_config, admin_config.replace(TOKEN, &token)).expect("write");

            let echo = echo_on("198.18.0.13", "echo").await;
            let port = free_port();
            // The chart's GatewayClass (not the test's).
            let gateway = gateway_yaml(port);
            let gateway = gateway.split("---\n").nth(1).expect("gateway doc");
            rig.apply(gateway).await;
            rig.apply(&backend_yaml("echo", echo)).await;
            rig.apply(&route_yaml("/", false)).await;
            let mut args: Vec<String> = [
                "--kubernetes",
                "--identity",
                "replica-chart",
                "--lease",
                "sluice-system/sluice",
                "--gateway-service",
                "sluice-system/sluice",
                "--data-plane-cluster-role",
                "sluice-data-plane",
                "--cache-dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push(rig.dir.0.join("cache").display().to_string());
            let gw = Sluice::launch(
                &args,
                &rig.dir.0.join("replica-chart.log"),
                &[("KUBECONFIG", sa_config.as_path())],
            )
            .await;
            wait_curl("127.0.0.1", port, "/x", 200, "served with the chart's RBAC").await;
            rig.wait_status(
                (GW, "GatewayClass", "", "sluice"),
                |s| is_true(&s["conditions"], "Accepted"),
                "the chart's GatewayClass Accepted",
            )
            .await;
            rig.wait_status(
                (GW, "HTTPRoute", "default", "web"),
                |s| route_condition(s, "Accepted")["status"] == "True",
                "route status written with the chart's RBAC",
            )
            .await;
            // A PerGateway class: the chart's role lets the controller make the data
            // plane and bind its ServiceAccount to the chart's data plane role.
            rig.apply(
                "apiVersion: v1
kind: ConfigMap
metadata: {name: own, namespace: sluice-system}
data: {dataPlane: 'mode: PerGateway'}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: own}
spec:
  controllerName: sluice.dev/gateway-controller
  parametersRef: {group: '', kind: ConfigMap, name: own, namespace: sluice-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: own
  listeners: [{name: http, port: 80, protocol: HTTP}]
",
            )
            .await;
            let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(rig.client.clone(), "default");
            let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
                Api::all(rig.client.clone());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let made = deployments
                    .get_opt("sluice-edge")
                    .await
                    .expect("get")
                    .is_some();
                let bound = bindings
                    .get_opt("sluice-data-plane")
                    .await
                    .expect("get")
                    .and_then(|b| b.subjects)
                    .is_some_and(|s| s.iter().any(|s| s.name == "sluice-edge"));
                if made && bound {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the data plane of default/edge within 30 s (Deployment {made}, binding {bound})\n{}",
                    gw.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let m = gw.admin("/metrics").await;
            assert_eq!(metric(&m, "sluice_leader"), 1, "{}", gw.logs());
            assert_eq!(
                metric(&m, "sluice_status_write_failures_total"),
                0,
                "{}",
                gw.logs()
            );
            assert_eq!(
                metric(&m, "sluice_data_plane_failures_total"),
                0,
                "{}",
                gw.logs()
            );
            assert!(!gw.logs().contains("forbidden"), "{}", gw.logs());
        },
    );
}

/// kube-controller-manager's EndpointSlice controller makes the slices from a Service's
/// selector and its Pods (this test acts as the kubelet: it registers a Node and sets
/// the Pod's IP and readiness); Sluice routes to the Pod, then stops when the Pod turns
/// unready, and routes again when it is ready.
#[test]
fn endpoint_slices_made_by_the_controller_manager_route_to_pods() {
    in_netns(
        "endpoint_slices_made_by_the_controller_manager_route_to_pods",
        || async {
            let rig = Rig::start("kube-kcm").await;
            let _kcm = rig.controller_manager();
            let echo = echo_on("198.18.0.30", "echo").await;
            let port = free_port();
            rig.apply(&gateway_yaml(port)).await;
            rig.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n")
                .await;
            // Pods need their namespace's default ServiceAccount, which the controller
            // manager's serviceaccount controller creates.
            let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(rig.client.clone(), "default");
            let deadline = Instant::now() + Duration::from_secs(30);
            while sas.get_opt("default").await.ok().flatten().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no default ServiceAccount:\n{}",
                    rig.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rig.apply(&format!(
                "apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: {}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-0, namespace: default, labels: {{app: echo}}}}
spec:
  nodeName: node-1
  containers: [{{name: echo, image: echo}}]
",
                echo.port()
            ))
            .await;
            rig.pod_ready("echo-0", "198.18.0.30", true).await;
            rig.apply(&route_yaml("/", false)).await;
            let _gw = rig.sluice("replica-a", &[]).await;
            let body = wait_curl("127.0.0.1", port, "/p", 200, "routed to the Pod").await;
            assert!(body.contains("echo-0"), "{body}");

            rig.pod_ready("echo-0", "198.18.0.30", false).await;
            wait_curl("127.0.0.1", port, "/p", 503, "unready Pod left out").await;
            rig.pod_ready("echo-0", "198.18.0.30", true).await;
            wait_curl("127.0.0.1", port, "/p", 200, "ready again").await;

            // A CA ConfigMap for a BackendTLSPolicy, then the same ConfigMap without its
            // ca.crt: the cached copy goes (ConfigMaps without ca.crt are not cached),
            // and the policy's status says so.
            let key = rcgen::KeyPair::generate().expect("key");
            let ca = rcgen::CertificateParams::new(vec!["ca.internal".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("ca");
            let ca_pem = ca.pem().replace('\n', "\n    ");
            rig.apply(&format!(
                "apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: default}}
data:
  ca.crt: |
    {ca_pem}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: echo-tls, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: echo}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: ca}}]
    hostname: echo.internal
"
            ))
            .await;
            let policy = (GW, "BackendTLSPolicy", "default", "echo-tls");
            rig.wait_status(
                policy,
                |s| is_true(&s["ancestors"][0]["conditions"], "ResolvedRefs"),
                "CA resolved",
            )
            .await;
            rig.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca, namespace: default}\ndata: {other: x}\n")
                .await;
            let s = rig
                .wait_status(
                    policy,
                    |s| {
                        condition(&s["ancestors"][0]["conditions"], "ResolvedRefs")["reason"]
                            == "InvalidCACertificateRef"
                    },
                    "CA gone",
                )
                .await;
            assert!(
                condition(&s["ancestors"][0]["conditions"], "ResolvedRefs")["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not found")),
                "{s:#}"
            );
        },
    );
}

/// Whether the tests run on the Gateway API experimental channel's CRDs
/// (`SLUICE_GATEWAY_API_CHANNEL=experimental`).
/// A GatewayClass with `dataPlane.mode: PerGateway`: the controller makes a
/// ServiceAccount, Service and Deployment per Gateway, carrying
/// `spec.infrastructure`'s labels and annotations and its parametersRef's replicas;
/// kube-controller-manager makes the Pods, and the fake kubelet runs them as real
/// `sluice run --gateway` processes on its bridge, which serve that Gateway while the
/// controller does not. A bad parametersRef is `InvalidParameters`; deleting the
/// Gateway deletes its data plane.
#[test]
fn gateways_of_a_per_gateway_class_get_data_planes_of_their_own() {
    in_netns_with(
        "gateways_of_a_per_gateway_class_get_data_planes_of_their_own",
        "ip addr add 198.18.0.0/17 dev lo",
        || async {
            for bin in ["kubelet", "echo-basic"] {
                assert!(
                    tools().join(bin).exists(),
                    "target/tools/{bin} is missing: .ci/run builds it"
                );
            }
            let rig = Rig::start("kube-per-gateway").await;
            let _kcm = rig.controller_manager_with(
                "deployment-controller,replicaset-controller,garbage-collector-controller",
            );
            let _kubelet = rig.kubelet(&rig.dir.0, &rig.dir.0.join("kubelet.log"), false);
            let echo = echo_on("198.18.0.13", "echo").await;
            rig.apply(&backend_yaml("echo", echo)).await;
            rig.apply(
                "apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: own-data-planes, namespace: default}
data:
  dataPlane: |
    mode: PerGateway
    image: example.com/sluice:test
    serviceType: ClusterIP
---
apiVersion: v1
kind: ConfigMap
metadata: {name: two-replicas, namespace: edge}
data:
  dataPlane: |
    replicas: 2
    resources: {requests: {cpu: 50m, memory: 32Mi}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice-own}
spec:
  controllerName: sluice.dev/gateway-controller
  parametersRef: {group: '', kind: ConfigMap, name: own-data-planes, namespace: default}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  gatewayClassName: sluice-own
  infrastructure:
    labels: {team: edge}
    annotations: {lb.example.com/internal: 'true'}
    parametersRef: {group: '', kind: ConfigMap, name: two-replicas}
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad, namespace: edge}
spec:
  gatewayClassName: sluice-own
  infrastructure:
    parametersRef: {group: invalid.io, kind: InvalidParameters, name: invalid}
  listeners:
  - {name: http, port: 8081, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: web, namespace: edge}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
",
            )
            .await;
            let controller = rig.sluice("controller", &[]).await;
            rig.wait_status(
                (GW, "Gateway", "edge", "bad"),
                |s| {
                    let c = condition(&s["conditions"], "Accepted");
                    c["status"] == "False" && c["reason"] == "InvalidParameters"
                },
                "a parametersRef to an unknown kind is InvalidParameters",
            )
            .await;

            // What the controller made, with the Gateway's labels and annotations.
            let get = |api_version: &'static str, kind: &'static str, name: &'static str| {
                let rig = &rig;
                async move {
                    let obj = serde_json::json!({"apiVersion": api_version, "kind": kind,
                        "metadata": {"name": name, "namespace": "edge"}});
                    let (api, name) = rig.api(&obj).await;
                    api.get_opt(&name)
                        .await
                        .expect("get")
                        .map(|o| serde_json::to_value(o).expect("json"))
                }
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let deployment = loop {
                if let Some(d) = get("apps/v1", "Deployment", "sluice-web").await {
                    break d;
                }
                assert!(
                    Instant::now() < deadline,
                    "no Deployment edge/sluice-web within 30 s\n{}",
                    controller.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(deployment["spec"]["replicas"], 2, "{deployment:#}");
            let pod = &deployment["spec"]["template"];
            assert_eq!(
                pod["spec"]["containers"][0]["image"],
                "example.com/sluice:test"
            );
            assert_eq!(
                pod["spec"]["containers"][0]["resources"]["requests"]["memory"],
                "32Mi"
            );
            for (api_version, kind) in [
                ("v1", "ServiceAccount"),
                ("v1", "Service"),
                ("apps/v1", "Deployment"),
            ] {
                let o = get(api_version, kind, "sluice-web")
                    .await
                    .unwrap_or_else(|| panic!("{kind} edge/sluice-web"));
                let m = &o["metadata"];
                assert_eq!(m["labels"]["team"], "edge", "{kind}: {m:#}");
                assert_eq!(m["labels"]["gateway.networking.k8s.io/gateway-name"], "web");
                assert_eq!(
                    m["annotations"]["lb.example.com/internal"], "true",
                    "{kind}"
                );
                assert_eq!(m["ownerReferences"][0]["kind"], "Gateway", "{kind}");
            }
            let service = get("v1", "Service", "sluice-web").await.expect("Service");
            let cluster_ip = service["spec"]["clusterIP"]
                .as_str()
                .expect("clusterIP")
                .to_string();

            // Its Pods run `sluice run --gateway edge/web` and serve the route.
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(rig.client.clone(), "edge");
            let lp = kube::api::ListParams::default()
                .labels("gateway.networking.k8s.io/gateway-name=web");
            let deadline = Instant::now() + Duration::from_secs(60);
            let ips = loop {
                let list = pods.list(&lp).await.expect("pods");
                let ips: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                    .collect();
                for p in &list.items {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    let annotations = p.metadata.annotations.clone().unwrap_or_default();
                    assert_eq!(labels.get("team").map(String::as_str), Some("edge"));
                    assert_eq!(
                        annotations
                            .get("lb.example.com/internal")
                            .map(String::as_str),
                        Some("true")
                    );
                }
                if ips.len() == 2 {
                    break ips;
                }
                assert!(
                    Instant::now() < deadline,
                    "two running Pods of edge/sluice-web within 60 s: {ips:?}\n{}",
                    rig.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            for ip in &ips {
                let body = wait_curl(ip, 8080, "/hi", 200, "the Gateway's own Pod serves it").await;
                assert!(body.contains("echo"), "{body}");
            }
            // The controller leaves that Gateway to its Pods.
            assert_eq!(
                curl("127.0.0.1", 8080, "/hi").0,
                0,
                "the controller serves 8080"
            );
            rig.wait_status(
                (GW, "Gateway", "edge", "web"),
                |s| {
                    is_true(&s["conditions"], "Accepted")
                        && s["addresses"][0]["value"] == cluster_ip.as_str()
                },
                "the Gateway reports its own Service's address",
            )
            .await;

            // Deleting the Gateway deletes its data plane.
            rig.delete(
                "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
",
            )
            .await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while get("apps/v1", "Deployment", "sluice-web").await.is_some() {
                assert!(
                    Instant::now() < deadline,
                    "Deployment edge/sluice-web still there 30 s after its Gateway\n{}",
                    controller.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let m = controller.admin("/metrics").await;
            assert!(
                metric(&m, "sluice_data_plane_objects_applied_total") >= 3,
                "{m}"
            );
        },
    );
}

fn experimental() -> bool {
    std::env::var("SLUICE_GATEWAY_API_CHANNEL").is_ok_and(|c| c == "experimental")
}

/// The official Gateway API conformance suite (GATEWAY-HTTP profile) against Sluice.
/// Slow (minutes) and it needs the Go-built suite, fake kubelet and echo-basic, so it
/// is left out of the default run: `.ci/conformance` builds them and runs it. Pods are
/// real echo-basic processes, each in a network namespace of its own on the bridge
/// 198.18.128.1/17 that the fake kubelet makes; Gateways get addresses from
/// 198.18.2.0/24 (`--gateway-address-pool`) on this namespace's loopback (198.18.0.0/17).
/// Logs and the suite's report go to target/conformance/.
#[test]
#[ignore = "the Gateway API conformance suite; run it with .ci/conformance"]
fn gateway_api_conformance() {
    // The standard channel by default; SLUICE_GATEWAY_API_CHANNEL=experimental runs the
    // experimental CRDs with options-experimental.yaml (.ci/conformance --experimental).
    let (options_file, out_dir) = match experimental() {
        false => ("options.yaml", "conformance"),
        true => ("options-experimental.yaml", "conformance-experimental"),
    };
    in_netns_with(
        "gateway_api_conformance",
        "ip addr add 198.18.0.0/17 dev lo",
        || async {
            let out = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target")
                .join(out_dir);
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(out.join("pods")).expect("target/conformance");
            for bin in ["kubelet", "echo-basic", "coredns", "conformance.test"] {
                assert!(
                    tools().join(bin).exists(),
                    "target/tools/{bin} is missing: .ci/conformance builds it"
                );
            }
            let rig = Rig::start("conformance").await;
            let _kcm = rig.controller_manager_with(
                "deployment-controller,replicaset-controller,endpointslice-controller,serviceaccount-controller,namespace-controller,garbage-collector-controller",
            );
            let _kubelet = rig.kubelet(&out.join("pods"), &out.join("kubelet.log"), true);
            rig.apply(
                "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
",
            )
            .await;
            let sluice = rig
                .sluice("sluice", &["--gateway-address-pool", "198.18.2.0/24"])
                .await;
            let options = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ci/kube/conformance")
                .join(options_file);
            let log = out.join("suite.log");
            let status = Command::new(tools().join("conformance.test"))
                .args(["-test.v", "-test.timeout=60m", "-test.run=TestConformance"])
                .arg(format!("-conformance-options-file={}", options.display()))
                .arg(format!(
                    "-report-output={}",
                    out.join("report.yaml").display()
                ))
                .env("KUBECONFIG", &rig.kubeconfig)
                .stdout(std::fs::File::create(&log).expect("log"))
                .stderr(Stdio::inherit())
                .status()
                .expect("run conformance.test");
            let _ = std::fs::copy(&sluice.log, out.join("sluice.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The suite's own tests, one level below TestConformance (not their subtests).
            let tests = |what: &str| -> Vec<&str> {
                let prefix = format!("    --- {what}: TestConformance/");
                text.lines()
                    .filter_map(|l| l.strip_prefix(prefix.as_str()))
                    .filter_map(|rest| rest.split(' ').next())
                    .filter(|name| !name.contains('/'))
                    .collect()
            };
            let (passed, failed, skipped) = (tests("PASS"), tests("FAIL"), tests("SKIP"));
            println!(
                "conformance: {} passed, {} failed, {} skipped\nfailed: {}\nreport: {}\nlog: {}",
                passed.len(),
                failed.len(),
                skipped.len(),
                failed.join(" "),
                out.join("report.yaml").display(),
                log.display()
            );
            assert!(
                status.success(),
                "the conformance suite failed; see {}",
                log.display()
            );
            if !experimental() {
                per_gateway_conformance(&rig, &out).await;
            }
        },
    );
}

/// The suite's per-Gateway infrastructure tests (`GatewayInfrastructureMetadata`,
/// `GatewayInvalidParametersRef`), run again on the same rig with a GatewayClass whose
/// Gateways get data planes of their own (`dataPlane.mode: PerGateway`): the fake
/// kubelet runs their Pods as `sluice run --gateway` processes. Only these two tests
/// run: the suite's traffic tests need the Gateways' Service addresses routed, which
/// takes a kube-proxy the rig does not have. Report: target/conformance/report-per-gateway.yaml.
async fn per_gateway_conformance(rig: &Rig, out: &Path) {
    // The first run deletes its namespaces at its end; the suite cannot apply its base
    // manifests again until they are gone.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(rig.client.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left: Vec<String> = namespaces
            .list(&Default::default())
            .await
            .expect("namespaces")
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with("gateway-conformance"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the suite's namespaces are still there 180 s after it ended: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rig.apply(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: sluice-per-gateway, namespace: default}
data:
  dataPlane: |
    mode: PerGateway
    image: sluice.dev/sluice:conformance
    serviceType: ClusterIP
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice-per-gateway}
spec:
  controllerName: sluice.dev/gateway-controller
  parametersRef: {group: '', kind: ConfigMap, name: sluice-per-gateway, namespace: default}
",
    )
    .await;
    let options = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ci/kube/conformance/options-per-gateway.yaml");
    let log = out.join("suite-per-gateway.log");
    let status = Command::new(tools().join("conformance.test"))
        .args([
            "-test.v",
            "-test.timeout=20m",
            "-test.run=TestConformance/^(GatewayInfrastructureMetadata|GatewayInvalidParametersRef)$",
        ])
        .arg(format!("-conformance-options-file={}", options.display()))
        .arg(format!(
            "-report-output={}",
            out.join("report-per-gateway.yaml").display()
        ))
        .env("KUBECONFIG", &rig.kubeconfig)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::inherit())
        .status()
        .expect("run conformance.test");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let passed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("    --- PASS: TestConformance/"))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    println!(
        "conformance: per-Gateway data planes: {} passed: {}\nlog: {}",
        passed.len(),
        passed.join(" "),
        log.display()
    );
    assert!(
        status.success() && passed.len() == 2,
        "the per-Gateway infrastructure tests failed; see {}",
        log.display()
    );
}
