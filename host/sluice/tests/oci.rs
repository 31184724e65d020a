//! Filters in OCI registries, end to end: a real registry (Debian's `docker-registry`)
//! on 127.0.0.1, with and without htpasswd auth; `oras` as the independent client;
//! the real `sluice` binary for the CLI and the gateway.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

/// A `docker-registry` on 127.0.0.1 with its storage in a temporary folder.
struct Registry {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Registry {
    async fn start(tag: &str, user: Option<(&str, &str)>) -> Registry {
        let dir = TempDir::new(tag);
        let port = free_port();
        let auth = match user {
            Some((u, p)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", u, p])
                    .output()
                    .expect("htpasswd (Debian package apache2-utils; .ci/run installs it)");
                assert!(out.status.success(), "htpasswd failed");
                std::fs::write(dir.0.join("htpasswd"), &out.stdout).expect("htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: sluice-test\n    path: {}\n",
                    dir.0.join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        dir.write(
            "config.yml",
            &format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.0.join("data").display()
            ),
        );
        let mut r = Registry {
            child: None,
            port,
            dir,
        };
        r.resume().await;
        r
    }

    /// Starts the registry process (again), on the same port and storage.
    async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.0.join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.0.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry; .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("127.0.0.1:{}", self.port);
        while admin_get(url.parse().expect("addr"), "/v2/").await.is_err() {
            assert!(Instant::now() < deadline, "registry not up in 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps the blob (or manifest) with `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .0
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn filter_file(name: &str) -> PathBuf {
    sluice_harness::repo_filters()
        .expect("building filters/ for wasm32-wasip2")
        .join(format!("{name}.wasm"))
}

/// Runs the `sluice` CLI with `env`, feeding `stdin`.
fn sluice(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SLUICE_REGISTRY_USERNAME")
        .env_remove("SLUICE_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", "/nonexistent")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("sluice output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tool that `.ci/run` builds from its Go module into target/tools (or the path in
/// the environment variable `var`), run in `cwd` with `env`: its stdout.
fn go_tool(name: &str, var: &str, args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> String {
    let bin = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/tools")
            .join(name)
    });
    let out = Command::new(&bin)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}); .ci/run builds it", bin.display()));
    ok(&out)
}

/// `oras`, built from its Go module by `.ci/run` into target/tools (or `SLUICE_ORAS`).
fn oras(args: &[&str], cwd: &Path) -> String {
    go_tool("oras", "SLUICE_ORAS", args, cwd, &[])
}

/// A valid component of over `mib` MiB: `base` with a custom section appended.
fn padded(base: &[u8], mib: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"padding";
    let payload = vec![0x5a; mib << 20];
    let mut section = Vec::new();
    leb(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = base.to_vec();
    out.push(0);
    leb(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// `filter push` looks at what it is given before it reaches a registry: a core module
/// (a wasm32-wasip1 build) is refused with the fix, not published as a filter.
#[test]
fn push_refuses_a_core_module_with_the_fix() {
    let dir = TempDir::new("oci-core-module");
    let core = dir.0.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let out = sluice(
        &[
            "filter",
            "push",
            core.to_str().expect("utf-8"),
            "127.0.0.1:9/filters/core:v1",
        ],
        &[],
        "",
    );
    let err = failed(&out);
    assert!(
        err.contains("core Wasm module") && err.contains("--target wasm32-wasip2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_interoperate_with_oras_and_other_layouts() {
    let reg = Registry::start("oci-interop", None).await;
    let dir = TempDir::new("oci-interop-files");
    let hello = std::fs::read(filter_file("hello")).expect("hello.wasm");

    // Sluice pushes (a component over 4 MiB, so progress shows); oras pulls the same bytes.
    let big = padded(&hello, 5);
    std::fs::write(dir.0.join("big.wasm"), &big).expect("write");
    let image = format!("{}/filters/big:v1", reg.addr());
    let out = sluice(
        &[
            "filter",
            "push",
            dir.0.join("big.wasm").to_str().expect("utf-8"),
            &image,
        ],
        &[],
        "",
    );
    let digest = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(100%)"), "progress is shown: {stderr}");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(
        oras(&["resolve", "--plain-http", &image], &dir.0),
        digest,
        "the printed digest is the manifest's"
    );
    oras(&["pull", "--plain-http", &image, "-o", "from-oras"], &dir.0);
    assert!(
        std::fs::read(dir.0.join("from-oras/big.wasm")).expect("oras output") == big,
        "oras pulled different bytes"
    );
    let manifest: serde_json::Value = serde_json::from_str(&oras(
        &["manifest", "fetch", "--plain-http", &image],
        &dir.0,
    ))
    .expect("manifest json");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));

    // oras pushes the CNCF layout; Sluice pulls the same bytes, by tag and by digest.
    let headers = std::fs::read(filter_file("headers")).expect("headers.wasm");
    std::fs::write(dir.0.join("headers.wasm"), &headers).expect("write");
    std::fs::write(dir.0.join("config.json"), "{}").expect("write");
    let image = format!("{}/filters/headers:v1", reg.addr());
    oras(
        &[
            "push",
            "--plain-http",
            &image,
            "--config",
            "config.json:application/vnd.wasm.config.v0+json",
            "headers.wasm:application/wasm",
        ],
        &dir.0,
    );
    let oras_digest = oras(&["resolve", "--plain-http", &image], &dir.0);
    let out_file = dir.0.join("pulled.wasm");
    let pulled = ok(&sluice(
        &[
            "filter",
            "pull",
            &image,
            "-o",
            out_file.to_str().expect("utf-8"),
        ],
        &[],
        "",
    ));
    assert_eq!(pulled, oras_digest);
    assert!(
        std::fs::read(&out_file).expect("pulled") == headers,
        "different bytes"
    );
    let by_digest = format!("{}/filters/headers@{oras_digest}", reg.addr());
    ok(&sluice(
        &[
            "filter",
            "pull",
            &by_digest,
            "-o",
            out_file.to_str().expect("utf-8"),
        ],
        &[],
        "",
    ));
    assert!(std::fs::read(&out_file).expect("pulled") == headers);

    // The layout other gateways accept: an image whose one layer is a tar.gz holding
    // plugin.wasm.
    std::fs::create_dir_all(dir.0.join("img")).expect("mkdir");
    std::fs::write(dir.0.join("img/plugin.wasm"), &hello).expect("write");
    let tar = Command::new("tar")
        .args(["-czf", "layer.tar.gz", "-C", "img", "plugin.wasm"])
        .current_dir(&dir.0)
        .status()
        .expect("tar");
    assert!(tar.success());
    let image = format!("{}/filters/plugin:v1", reg.addr());
    oras(
        &[
            "push",
            "--plain-http",
            &image,
            "--config",
            "config.json:application/vnd.oci.image.config.v1+json",
            "layer.tar.gz:application/vnd.oci.image.layer.v1.tar+gzip",
        ],
        &dir.0,
    );
    let out = sluice(
        &[
            "filter",
            "pull",
            &image,
            "-o",
            out_file.to_str().expect("utf-8"),
        ],
        &[],
        "",
    );
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("image layer with plugin.wasm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&out_file).expect("pulled") == hello);

    // A file that is not a component is refused before anything is sent.
    std::fs::write(dir.0.join("junk.wasm"), b"not wasm").expect("write");
    let e = failed(&sluice(
        &[
            "filter",
            "push",
            dir.0.join("junk.wasm").to_str().expect("utf-8"),
            &image,
        ],
        &[],
        "",
    ));
    assert!(
        e.contains("not a Wasm binary") && e.contains("--target wasm32-wasip2"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_flags_environment_or_docker_config() {
    let reg = Registry::start("oci-auth", Some(("alice", "s3cret"))).await;
    let file = filter_file("hello");
    let file = file.to_str().expect("utf-8");
    let image = format!("{}/private/hello:v1", reg.addr());

    let e = failed(&sluice(&["filter", "push", file, &image], &[], ""));
    assert!(
        e.contains("credentials"),
        "anonymous push refused with a hint: {e}"
    );
    let e = failed(&sluice(
        &[
            "filter",
            "push",
            file,
            &image,
            "--username",
            "alice",
            "--password-stdin",
        ],
        &[],
        "wrong\n",
    ));
    assert!(e.contains("credentials"), "wrong password refused: {e}");

    let digest = ok(&sluice(
        &[
            "filter",
            "push",
            file,
            &image,
            "--username",
            "alice",
            "--password-stdin",
        ],
        &[],
        "s3cret\n",
    ));
    let dir = TempDir::new("oci-auth-files");
    let out_file = dir.0.join("out.wasm");
    let out_arg = out_file.to_str().expect("utf-8");
    let pulled = ok(&sluice(
        &["filter", "pull", &image, "-o", out_arg],
        &[
            ("SLUICE_REGISTRY_USERNAME", "alice"),
            ("SLUICE_REGISTRY_PASSWORD", "s3cret"),
        ],
        "",
    ));
    assert_eq!(pulled, digest);

    // Docker's config.json, with the base64 `auth` form `docker login` writes.
    std::fs::create_dir_all(dir.0.join("docker")).expect("mkdir");
    std::fs::write(
        dir.0.join("docker/config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
            reg.addr()
        ),
    )
    .expect("write");
    let docker = dir.0.join("docker");
    let pulled = ok(&sluice(
        &["filter", "pull", &image, "-o", out_arg],
        &[("DOCKER_CONFIG", docker.to_str().expect("utf-8"))],
        "",
    ));
    assert_eq!(pulled, digest);
    assert!(std::fs::read(&out_file).expect("pulled") == std::fs::read(file).expect("hello"));
}

fn oci_filter(name: &str, source: &str, greeting: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  source:\n    oci: {source}\n  config: {{greeting: {greeting}}}\n"
    )
}

fn wasm_status(
    status: &serde_json::Value,
    name: &str,
) -> Option<(String, String, serde_json::Value)> {
    let item = status["items"]
        .as_array()?
        .iter()
        .find(|i| i["kind"] == "WasmFilter" && i["metadata"]["name"] == name)?;
    let s = &item["status"];
    let ready = &s["conditions"][1];
    Some((
        ready["reason"].as_str().unwrap_or_default().to_string(),
        ready["message"].as_str().unwrap_or_default().to_string(),
        s.clone(),
    ))
}

/// Polls `/status` until filter `name`'s Ready reason is `reason`.
async fn wait_reason(gw: &Sluice, name: &str, reason: &str) -> (String, serde_json::Value) {
    wait_reason_for(gw, name, reason, 20).await
}

/// [`wait_reason`], for up to `secs` seconds.
async fn wait_reason_for(
    gw: &Sluice,
    name: &str,
    reason: &str,
    secs: u64,
) -> (String, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&gw.admin("/status").await).expect("status json");
        let found = wasm_status(&status, name);
        if let Some((r, message, s)) = &found
            && r == reason
        {
            return (message.clone(), s.clone());
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {found:?}, not {reason}, after {secs} s\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn greeting(port: u16, path: &str) -> (StatusCode, Option<String>) {
    let a = get(port, "h", path).await;
    let seen = if a.status == StatusCode::OK {
        a.seen("x-hello")
    } else {
        None
    };
    (a.status, seen)
}

fn rules(paths: &[(&str, &str)]) -> String {
    paths
        .iter()
        .map(|(path, filter)| {
            format!(
                "  - matches: [{{path: {{value: {path}}}}}]\n    filters: [{}]\n    backendRefs: [{{name: a, port: 80}}]\n",
                ext(filter)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_filters_serve_traffic_and_every_registry_fault_gets_a_status() {
    let mut reg = Registry::start("oci-gw", None).await;
    let private = Registry::start("oci-gw-auth", Some(("bob", "right"))).await;
    let hello = filter_file("hello");
    let hello = hello.to_str().expect("utf-8");
    let image = format!("{}/filters/hello", reg.addr());
    let digest = ok(&sluice(
        &["filter", "push", hello, &format!("{image}:v1")],
        &[],
        "",
    ));
    // A second repository whose layer is then corrupted in the registry's storage.
    let broken = format!("{}/filters/broken:v1", reg.addr());
    ok(&sluice(&["filter", "push", hello, &broken], &[], ""));
    let layer = {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reg.blob_file(&digest)).expect("manifest blob"))
                .expect("manifest");
        m["layers"][0]["digest"]
            .as_str()
            .expect("layer")
            .to_string()
    };
    let private_image = format!("{}/filters/hello:v1", private.addr());
    ok(&sluice(
        &[
            "filter",
            "push",
            hello,
            &private_image,
            "--username",
            "bob",
            "--password-stdin",
        ],
        &[],
        "right",
    ));
    // Same bytes, same layer digest in both repositories of `reg`: corrupt it only
    // after the good filters have been pulled and cached.

    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("oci-gw-conf");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    let good = [
        oci_filter("bytag", &format!("{{image: '{image}:v1'}}"), "tag"),
        oci_filter(
            "bydigest",
            &format!("{{image: '{image}', digest: '{digest}'}}"),
            "digest",
        ),
    ];
    dir.write("filters.yaml", &good.join("---\n"));
    dir.write(
        "routes.yaml",
        &route(&rules(&[("/tag", "bytag"), ("/digest", "bydigest")])),
    );
    let cache = dir.0.join("cache");
    let args = ["--cache-dir", cache.to_str().expect("utf-8")];
    let gw = Sluice::start(&dir.0, &args).await;

    assert_eq!(
        greeting(port, "/tag").await,
        (StatusCode::OK, Some("tag".into()))
    );
    assert_eq!(
        greeting(port, "/digest").await,
        (StatusCode::OK, Some("digest".into()))
    );
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    for name in ["bytag", "bydigest"] {
        let (reason, _, s) = wasm_status(&status, name).expect("status");
        assert_eq!(reason, "Loaded", "{s}");
        assert_eq!(
            s["image"],
            format!("{image}@{digest}"),
            "resolved digest in status"
        );
    }

    // Faults, each in its own WasmFilter: a tag that does not exist, a digest the
    // registry does not have, wrong credentials, and a corrupted blob.
    std::fs::write(reg.blob_file(&layer), vec![0u8; 1000]).expect("corrupt the layer");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bad_auth = base64_of(&format!(
        r#"{{"auths": {{"{}": {{"username": "bob", "password": "wrong"}}}}}}"#,
        private.addr()
    ));
    let faults = [
        oci_filter("notag", &format!("{{image: '{image}:nope'}}"), "x"),
        oci_filter(
            "nodigest",
            &format!("{{image: '{image}', digest: '{wrong}'}}"),
            "x",
        ),
        oci_filter(
            "denied",
            &format!("{{image: '{private_image}', pullSecretRef: {{name: regcred}}}}"),
            "x",
        ),
        oci_filter("corrupt", &format!("{{image: '{broken}'}}"), "x"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred, namespace: default}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {bad_auth}\n"
        ),
    ];
    dir.write("faults.yaml", &faults.join("---\n"));
    dir.write(
        "routes.yaml",
        &route(&rules(&[
            ("/tag", "bytag"),
            ("/digest", "bydigest"),
            ("/notag", "notag"),
            ("/corrupt", "corrupt"),
        ])),
    );
    for (name, reason, says) in [
        ("notag", "ImageNotFound", ":nope"),
        ("nodigest", "ImageNotFound", wrong.as_str()),
        ("denied", "Unauthorized", "credentials"),
        ("corrupt", "DigestMismatch", "corrupt"),
    ] {
        let (message, _) = wait_reason(&gw, name, reason).await;
        assert!(message.contains(says), "{name}: {message}");
        assert!(message.contains("retrying in"), "{name}: {message}");
    }
    assert_eq!(
        greeting(port, "/notag").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        greeting(port, "/tag").await,
        (StatusCode::OK, Some("tag".into()))
    );

    // The registry stops. A config change reloads from the disk cache; a bad update to
    // a running filter keeps the running version; a filter never pulled says why.
    reg.stop();
    dir.write("faults.yaml", "");
    let changed = [
        oci_filter("bytag", &format!("{{image: '{image}:v1'}}"), "tag2"),
        oci_filter("bydigest", &format!("{{image: '{image}:v2'}}"), "digest2"),
        oci_filter("offline", &format!("{{image: '{image}:v3'}}"), "x"),
    ];
    dir.write("filters.yaml", &changed.join("---\n"));
    dir.write(
        "routes.yaml",
        &route(&rules(&[
            ("/tag", "bytag"),
            ("/digest", "bydigest"),
            ("/offline", "offline"),
        ])),
    );
    let (message, s) = wait_reason(&gw, "bydigest", "SourceUnavailable").await;
    assert!(message.contains("still serving"), "{message}");
    assert_eq!(s["image"], format!("{image}@{digest}"));
    wait_reason(&gw, "offline", "SourceUnavailable").await;
    assert_eq!(
        greeting(port, "/tag").await,
        (StatusCode::OK, Some("tag2".into()))
    );
    assert_eq!(
        greeting(port, "/digest").await,
        (StatusCode::OK, Some("digest".into())),
        "the running filter is kept"
    );
    assert_eq!(
        greeting(port, "/offline").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    drop(gw);

    // Restarted with the registry still down: the tag comes from the disk cache.
    dir.write("filters.yaml", &good.join("---\n"));
    dir.write(
        "routes.yaml",
        &route(&rules(&[("/tag", "bytag"), ("/digest", "bydigest")])),
    );
    let gw = Sluice::start(&dir.0, &args).await;
    assert_eq!(
        greeting(port, "/tag").await,
        (StatusCode::OK, Some("tag".into()))
    );
    assert_eq!(
        greeting(port, "/digest").await,
        (StatusCode::OK, Some("digest".into()))
    );
    drop(gw);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Forwards connections to `to`, each after a pause: a slow link to a real registry.
async fn slow_link(to: u16, pause: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_snapshot_serves_until_a_new_filter_is_pulled() {
    let reg = Registry::start("oci-slow", None).await;
    let hello = filter_file("hello");
    let image = format!("{}/filters/hello:v1", reg.addr());
    ok(&sluice(
        &["filter", "push", hello.to_str().expect("utf-8"), &image],
        &[],
        "",
    ));
    let slow = slow_link(reg.port, Duration::from_millis(1500)).await;

    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("oci-slow-conf");
    dir.write("gw.yaml", &gateway_yaml(port, None));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    dir.write(
        "routes.yaml",
        &route("  - backendRefs: [{name: a, port: 80}]\n"),
    );
    let cache = dir.0.join("cache");
    let gw = Sluice::start(&dir.0, &["--cache-dir", cache.to_str().expect("utf-8")]).await;
    assert_eq!(greeting(port, "/").await, (StatusCode::OK, None));

    // The route now needs a filter that is behind the slow link.
    dir.write(
        "filters.yaml",
        &oci_filter(
            "slow",
            &format!("{{image: '127.0.0.1:{slow}/filters/hello:v1'}}"),
            "pulled",
        ),
    );
    dir.write("routes.yaml", &route(&rules(&[("/", "slow")])));
    let (message, _) = wait_reason(&gw, "slow", "Pulling").await;
    assert!(
        message.contains("previous configuration serves"),
        "{message}"
    );
    // Until the pull lands every request is served, by the previous snapshot.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = 0;
    loop {
        let (status, seen) = greeting(port, "/").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "no request fails while the filter is pulled"
        );
        if seen.as_deref() == Some("pulled") {
            break;
        }
        assert_eq!(seen, None);
        before += 1;
        assert!(
            Instant::now() < deadline,
            "the pulled filter never served\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(before > 0, "the old snapshot served while the pull ran");
    wait_reason(&gw, "slow", "Loaded").await;
}

/// `cosign`, built from its Go module by `.ci/run` into target/tools (or `SLUICE_COSIGN`),
/// run in `dir` with an empty key password, offline (no transparency log).
fn cosign(args: &[&str], dir: &Path) -> String {
    let empty = Path::new("");
    let env = [
        ("COSIGN_PASSWORD", empty),
        ("COSIGN_EXPERIMENTAL", Path::new("1")),
        ("DOCKER_CONFIG", dir),
    ];
    go_tool("cosign", "SLUICE_COSIGN", args, dir, &env)
}

/// Signs `image@digest` with the key in `keys` (a folder holding cosign.key), with
/// `extra` flags.
fn cosign_sign(keys: &Path, image: &str, digest: &str, extra: &[&str]) {
    let target = format!("{image}@{digest}");
    let mut args = vec![
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--allow-http-registry",
        "--yes",
    ];
    args.extend_from_slice(extra);
    args.push(&target);
    cosign(&args, keys);
}

/// The trust policy objects: a GatewayClass naming a ConfigMap whose policy wants
/// `{registry}/filters/*` signed by the key in Secret `cosign-pub`.
fn trust_yaml(registry: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: filter-trust, namespace: sluice-system}}
data:
  trustPolicy: |
    policies:
    - name: platform
      images: ['{registry}/filters/*']
      keys:
      - name: release
        secretRef: {{name: cosign-pub, key: cosign.pub}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cosign-pub, namespace: sluice-system}}
stringData:
  cosign.pub: |
{indented}"
    )
}

/// The GatewayClass's Accepted condition, from `/status`.
async fn class_accepted(gw: &Sluice) -> serde_json::Value {
    let status: serde_json::Value = serde_json::from_str(&gw.admin("/status").await).expect("json");
    let class = status["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "GatewayClass")
        .expect("class");
    condition(&class["status"]["conditions"], "Accepted").clone()
}

/// Signed filters end to end: keys made and images signed by the real cosign CLI, in
/// a real registry, under a trust policy the GatewayClass names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_filters_signed_by_a_trusted_key_load() {
    let mut reg = Registry::start("oci-signed", None).await;
    let hello = filter_file("hello");
    let hello = hello.to_str().expect("utf-8");
    let keys = TempDir::new("oci-signed-keys");
    let other = TempDir::new("oci-signed-other");
    cosign(&["generate-key-pair"], &keys.0);
    cosign(&["generate-key-pair"], &other.0);
    let pem = std::fs::read_to_string(keys.0.join("cosign.pub")).expect("cosign.pub");

    let image = |repo: &str| format!("{}/filters/{repo}", reg.addr());
    let mut digests = std::collections::HashMap::new();
    for repo in ["signed", "unsigned", "wrongkey", "referred", "later"] {
        let d = ok(&sluice(
            &["filter", "push", hello, &format!("{}:v1", image(repo))],
            &[],
            "",
        ));
        digests.insert(repo, d);
    }
    cosign_sign(&keys.0, &image("signed"), &digests["signed"], &[]);
    cosign_sign(&other.0, &image("wrongkey"), &digests["wrongkey"], &[]);
    // As an OCI 1.1 referrer: this registry has no referrers API, so cosign writes the
    // `sha256-<hex>` tag index that the OCI spec gives as the fallback.
    cosign_sign(
        &keys.0,
        &image("referred"),
        &digests["referred"],
        &["--registry-referrers-mode=oci-1-1"],
    );
    // Where cosign put each: the .sig tag, or the referrers tag index (and no .sig).
    let manifest = |repo: &str, tag: String| {
        let url = format!("http://{}/v2/filters/{repo}/manifests/{tag}", reg.addr());
        async move {
            let req = hyper::Request::head(url)
                .header(
                    "accept",
                    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
                )
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request");
            client().request(req).await.expect("registry").status()
        }
    };
    let hex = |repo: &str| digests[repo].trim_start_matches("sha256:").to_string();
    assert_eq!(
        manifest("signed", format!("sha256-{}.sig", hex("signed"))).await,
        StatusCode::OK,
        "cosign's default: the .sig tag"
    );
    assert_eq!(
        manifest("referred", format!("sha256-{}.sig", hex("referred"))).await,
        StatusCode::NOT_FOUND,
        "no .sig tag for the referrer"
    );
    assert_eq!(
        manifest("referred", format!("sha256-{}", hex("referred"))).await,
        StatusCode::OK,
        "the referrers tag index"
    );

    let a = echo("a").await;
    let port = free_port();
    let dir = TempDir::new("oci-signed-conf");
    dir.write(
        "gw.yaml",
        &gateway_yaml(port, None).replace(
            "spec: {controllerName: sluice.dev/gateway-controller}",
            "spec:\n  controllerName: sluice.dev/gateway-controller\n  parametersRef: {group: '', kind: ConfigMap, name: filter-trust, namespace: sluice-system}",
        ),
    );
    dir.write("trust.yaml", &trust_yaml(&reg.addr(), &pem));
    dir.write("svc.yaml", &service_yaml("a", &a, None));
    let repos = ["signed", "unsigned", "wrongkey", "referred", "later"];
    let filters: Vec<String> = repos
        .iter()
        .map(|r| oci_filter(r, &format!("{{image: '{}:v1'}}", image(r)), r))
        .collect();
    dir.write("filters.yaml", &filters.join("---\n"));
    let paths: Vec<(String, &str)> = repos.iter().map(|r| (format!("/{r}"), *r)).collect();
    let paths: Vec<(&str, &str)> = paths.iter().map(|(p, r)| (p.as_str(), *r)).collect();
    dir.write("routes.yaml", &route(&rules(&paths)));
    let cache = dir.0.join("cache");
    let args = ["--cache-dir", cache.to_str().expect("utf-8")];
    let gw = Sluice::start(&dir.0, &args).await;

    let accepted = class_accepted(&gw).await;
    assert_eq!(accepted["status"], "True", "{accepted}");
    for repo in ["signed", "referred"] {
        let (message, s) = wait_reason(&gw, repo, "Loaded").await;
        assert_eq!(s["image"], format!("{}@{}", image(repo), digests[repo]));
        let signer = s["signedBy"].as_str().expect("signedBy");
        assert!(
            signer.starts_with("key release (ECDSA P-256 sha256:")
                && signer.ends_with("of policy sluice/platform"),
            "{signer}"
        );
        assert!(message.contains("signed by key release"), "{message}");
        assert_eq!(
            greeting(port, &format!("/{repo}")).await,
            (StatusCode::OK, Some(repo.to_string()))
        );
    }
    let (message, s) = wait_reason(&gw, "unsigned", "Unsigned").await;
    assert!(
        message.contains(&digests["unsigned"])
            && message.contains("wants one by release (ECDSA P-256"),
        "{message}"
    );
    assert!(s.get("signedBy").is_none(), "{s}");
    let (message, _) = wait_reason(&gw, "wrongkey", "SignatureInvalid").await;
    assert!(
        message.contains("1 signature(s)") && message.contains("it expects release (ECDSA P-256"),
        "{message}"
    );
    for repo in ["unsigned", "wrongkey", "later"] {
        assert_eq!(
            greeting(port, &format!("/{repo}")).await.0,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{repo} never loaded"
        );
    }

    // A signature pushed afterwards is found by the retries (which back off to 60 s).
    cosign_sign(&keys.0, &image("later"), &digests["later"], &[]);
    wait_reason_for(&gw, "later", "Loaded", 70).await;
    assert_eq!(
        greeting(port, "/later").await,
        (StatusCode::OK, Some("later".into()))
    );

    // A serving filter moved to an unsigned image keeps serving its verified digest.
    let mut moved = filters.clone();
    moved[0] = oci_filter(
        "signed",
        &format!("{{image: '{}:v1'}}", image("unsigned")),
        "moved",
    );
    dir.write("filters.yaml", &moved.join("---\n"));
    let (message, s) = wait_reason(&gw, "signed", "Unsigned").await;
    assert!(message.contains("still serving"), "{message}");
    assert_eq!(
        s["image"],
        format!("{}@{}", image("signed"), digests["signed"])
    );
    assert_eq!(
        greeting(port, "/signed").await,
        (StatusCode::OK, Some("signed".into()))
    );
    drop(gw);

    // Restarted with the registry down: the verified filters load from the cache, their
    // signatures checked again.
    reg.stop();
    dir.write("filters.yaml", &filters.join("---\n"));
    let gw = Sluice::start(&dir.0, &args).await;
    wait_reason(&gw, "signed", "Loaded").await;
    assert_eq!(
        greeting(port, "/signed").await,
        (StatusCode::OK, Some("signed".into()))
    );
    // The key leaves the policy: the cached signatures no longer verify.
    let other_pem = std::fs::read_to_string(other.0.join("cosign.pub")).expect("pub");
    dir.write("trust.yaml", &trust_yaml(&reg.addr(), &other_pem));
    let (message, _) = wait_reason(&gw, "signed", "SourceUnavailable").await;
    assert!(message.contains("still serving"), "{message}");

    // A broken policy rejects the class with the field to fix; the Gateway keeps
    // serving, and filters stop loading.
    dir.write(
        "trust.yaml",
        &trust_yaml(&reg.addr(), &pem).replace("key: cosign.pub}", "key: missing.pub}"),
    );
    let (message, _) = wait_reason(&gw, "signed", "InvalidTrustPolicy").await;
    assert!(message.contains("still serving"), "{message}");
    let accepted = class_accepted(&gw).await;
    assert_eq!(accepted["reason"], "InvalidParameters", "{accepted}");
    let says = accepted["message"].as_str().unwrap_or_default();
    assert!(
        says.contains("policies[0].keys[0].secretRef")
            && says.contains("has no key \"missing.pub\""),
        "{says}"
    );
    assert_eq!(
        greeting(port, "/signed").await,
        (StatusCode::OK, Some("signed".into()))
    );
    reg.resume().await;
}
