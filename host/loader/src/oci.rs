//! `spec.source.oci`: filters pulled from OCI registries in the background.
//!
//! The loader never waits on a registry. It asks [`OciSources::get`], which answers
//! from the disk cache when it can, and otherwise starts (or reports on) a background
//! pull. A finished pull, or a failed attempt, wakes the provider, which loads again.
//! While a filter's first pull is in flight the loader reports it
//! [`Outcome::Pending`], and the provider keeps serving the previous snapshot.
//!
//! On disk, under the cache dir:
//! - `sources/<sha256>.wasm`: components, shared with `spec.source.url`, verified on read;
//! - `oci/manifests/<hex>.json`: manifest digest -> component digest and layout;
//! - `oci/tags/<hex of the reference>.json`: what a tag last resolved to, so a restart
//!   with the registry down still has the filter (`IfNotPresent`).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_oci::{Reference, RegistryAuth};
use sluice_resources::{DOCKER_CONFIG_JSON, OciSource, Resources, WasmFilter};
use sluice_translate::Reason;
use tokio::sync::mpsc;

use crate::fetch::{Downloads, store};

/// No single attempt takes longer than this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the loader gets for an OCI source.
pub enum Outcome {
    Ready {
        component: Vec<u8>,
        /// `registry/repository@<manifest digest>`.
        pinned: String,
    },
    /// The first pull is in flight: the provider holds the previous snapshot.
    Pending { message: String },
    /// Pulling failed; retries continue in the background (except for bad input).
    Failed { reason: Reason, message: String },
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The reference, with the pin when there is one.
    image: String,
    /// A hash of the credentials, so a changed Secret pulls again.
    auth: u64,
}

enum JobState {
    Pulling {
        attempt: u32,
        last: Option<sluice_oci::Error>,
        retry_at: Option<Instant>,
    },
    Done {
        manifest_digest: String,
        component: Arc<Vec<u8>>,
    },
}

struct Job {
    state: Arc<Mutex<JobState>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct OciSources {
    /// `<cache>/oci`, when there is a cache.
    dir: Option<PathBuf>,
    downloads: Arc<Downloads>,
    handle: tokio::runtime::Handle,
    wake: mpsc::UnboundedSender<()>,
    /// Registries spoken to over plain HTTP though not on loopback.
    insecure: Vec<String>,
    jobs: Mutex<HashMap<Key, Job>>,
    /// For `pullPolicy: Always`: the source each filter last refreshed for.
    refreshed: Mutex<HashMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    component: String,
    layout: String,
}

#[derive(Serialize, Deserialize)]
struct TagEntry {
    image: String,
    digest: String,
}

/// The WasmFilter `Ready=False` reason for a registry failure.
fn reason(kind: sluice_oci::ErrorKind) -> Reason {
    use sluice_oci::ErrorKind as K;
    match kind {
        K::InvalidReference => Reason::InvalidReference,
        K::NotFound => Reason::ImageNotFound,
        K::Unauthorized => Reason::Unauthorized,
        K::Unavailable => Reason::SourceUnavailable,
        K::DigestMismatch => Reason::DigestMismatch,
        K::InvalidLayout => Reason::InvalidImage,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OciSources {
    pub fn new(
        cache_dir: Option<PathBuf>,
        downloads: Arc<Downloads>,
        handle: tokio::runtime::Handle,
        wake: mpsc::UnboundedSender<()>,
        insecure: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(OciSources {
            dir: cache_dir.map(|d| d.join("oci")),
            downloads,
            handle,
            wake,
            insecure,
            jobs: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(HashMap::new()),
        })
    }

    /// The component for WasmFilter `f` (named `name`), or why not yet. Marks the
    /// pull it uses in `used`; see [`OciSources::retain`].
    pub fn get(
        &self,
        res: &Resources,
        f: &WasmFilter,
        src: &OciSource,
        name: &str,
        used: &mut HashSet<Key>,
    ) -> Outcome {
        let image = match sluice_oci::parse_reference(&src.image, src.digest.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    reason: reason(e.kind),
                    message: format!("spec.source.oci: {e}"),
                };
            }
        };
        let auth = match pull_auth(res, f, src, &image) {
            Ok(a) => a,
            Err(message) => {
                return Outcome::Failed {
                    reason: Reason::InvalidPullSecret,
                    message,
                };
            }
        };
        let key = Key {
            image: image.whole(),
            auth: auth_hash(&auth),
        };
        used.insert(key.clone());
        let always = src.pull_policy.as_deref() == Some("Always") && image.digest().is_none();
        let cached = self.cached(&image);
        let refresh = always && {
            let source = serde_json::to_string(&f.spec).unwrap_or_default();
            lock(&self.refreshed).insert(name.to_string(), source.clone()) != Some(source)
        };

        let mut jobs = lock(&self.jobs);
        if refresh || (cached.is_none() && !jobs.contains_key(&key)) {
            if let Some(old) = jobs.remove(&key) {
                old.task.abort();
            }
            jobs.insert(key.clone(), self.spawn(image.clone(), auth));
        }
        let job_state = jobs.get(&key).map(|j| j.state.clone());
        drop(jobs);

        if let Some(state) = job_state {
            match &*lock(&state) {
                JobState::Done {
                    manifest_digest,
                    component,
                } => {
                    return Outcome::Ready {
                        component: component.to_vec(),
                        pinned: pinned(&image, manifest_digest),
                    };
                }
                JobState::Pulling {
                    attempt,
                    last,
                    retry_at,
                } => {
                    if let Some((component, manifest_digest)) = cached {
                        if let Some(e) = last {
                            tracing::warn!(filter = %name, "refreshing {image} failed, serving the cached {manifest_digest}: {e}");
                        }
                        return Outcome::Ready {
                            component,
                            pinned: pinned(&image, &manifest_digest),
                        };
                    }
                    return match last {
                        None => Outcome::Pending {
                            message: format!(
                                "pulling {image} (attempt {attempt}); the previous configuration serves until it is ready"
                            ),
                        },
                        Some(e) => {
                            let wait = retry_at
                                .map(|t| {
                                    t.saturating_duration_since(Instant::now())
                                        .as_secs_f64()
                                        .ceil()
                                })
                                .unwrap_or(0.0);
                            Outcome::Failed {
                                reason: reason(e.kind),
                                message: format!(
                                    "spec.source.oci: {e} (attempt {}, retrying in {wait}s)",
                                    attempt - 1
                                ),
                            }
                        }
                    };
                }
            }
        }
        match cached {
            Some((component, manifest_digest)) => Outcome::Ready {
                component,
                pinned: pinned(&image, &manifest_digest),
            },
            // Unreachable in practice: a job was started above when nothing was cached.
            None => Outcome::Pending {
                message: format!("pulling {image}"),
            },
        }
    }

    /// Stops and forgets the pulls no filter uses any more.
    pub fn retain(&self, used: &HashSet<Key>) {
        lock(&self.jobs).retain(|k, j| {
            let keep = used.contains(k);
            if !keep {
                j.task.abort();
            }
            keep
        });
    }

    /// The cached component for `image`: by its pinned digest, or by what its tag last
    /// resolved to.
    fn cached(&self, image: &Reference) -> Option<(Vec<u8>, String)> {
        let dir = self.dir.as_ref()?;
        let digest = match image.digest() {
            Some(d) => d.to_string(),
            None => {
                let raw = std::fs::read(dir.join("tags").join(tag_file(image))).ok()?;
                let t: TagEntry = serde_json::from_slice(&raw).ok()?;
                (t.image == image.whole()).then_some(t.digest)?
            }
        };
        let raw = std::fs::read(dir.join("manifests").join(manifest_file(&digest)?)).ok()?;
        let m: ManifestEntry = serde_json::from_slice(&raw).ok()?;
        let sha = m.component.strip_prefix("sha256:")?;
        Some((self.downloads.cached_component(sha)?, digest))
    }

    fn spawn(&self, image: Reference, auth: RegistryAuth) -> Job {
        let state = Arc::new(Mutex::new(JobState::Pulling {
            attempt: 1,
            last: None,
            retry_at: None,
        }));
        let insecure = self
            .insecure
            .contains(&image.resolve_registry().to_string());
        let ctx = PullCtx {
            image,
            auth,
            insecure,
            state: state.clone(),
            dir: self.dir.clone(),
            downloads: self.downloads.clone(),
            wake: self.wake.clone(),
        };
        let task = self.handle.spawn(ctx.run());
        Job { state, task }
    }
}

struct PullCtx {
    image: Reference,
    auth: RegistryAuth,
    insecure: bool,
    state: Arc<Mutex<JobState>>,
    dir: Option<PathBuf>,
    downloads: Arc<Downloads>,
    wake: mpsc::UnboundedSender<()>,
}

impl PullCtx {
    async fn run(self) {
        let client = sluice_oci::client(&self.image, self.insecure);
        let mut attempt = 1u32;
        let mut delay = FIRST_RETRY;
        loop {
            let pulled = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                sluice_oci::pull(&client, &self.image, &self.auth, &mut |_, _| {}),
            )
            .await
            .unwrap_or_else(|_| {
                Err(sluice_oci::Error {
                    kind: sluice_oci::ErrorKind::Unavailable,
                    message: format!(
                        "{}: no answer within {}s",
                        self.image,
                        ATTEMPT_TIMEOUT.as_secs()
                    ),
                })
            });
            match pulled {
                Ok(p) => {
                    tracing::info!(image = %self.image, digest = %p.manifest_digest, layout = %p.layout, "pulled filter");
                    self.remember(&p);
                    *lock(&self.state) = JobState::Done {
                        manifest_digest: p.manifest_digest,
                        component: Arc::new(p.component),
                    };
                    let _ = self.wake.send(());
                    return;
                }
                Err(e) => {
                    tracing::warn!(image = %self.image, attempt, retry_in = ?delay, "pull failed: {e}");
                    attempt += 1;
                    *lock(&self.state) = JobState::Pulling {
                        attempt,
                        last: Some(e),
                        retry_at: Some(Instant::now() + delay),
                    };
                    let _ = self.wake.send(());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Writes the component, its manifest entry and (for a tag) what the tag
    /// resolved to.
    fn remember(&self, p: &sluice_oci::Pulled) {
        let Some(dir) = &self.dir else { return };
        let component = sluice_oci::sha256_digest(&p.component);
        let Some(sha) = component.strip_prefix("sha256:") else {
            return;
        };
        self.downloads.store_component(sha, &p.component);
        let entry = ManifestEntry {
            component: component.clone(),
            layout: p.layout.to_string(),
        };
        if let (Some(file), Ok(json)) = (
            manifest_file(&p.manifest_digest),
            serde_json::to_vec(&entry),
        ) {
            store(&dir.join("manifests").join(file), &json);
        }
        if self.image.digest().is_none() {
            let tag = TagEntry {
                image: self.image.whole(),
                digest: p.manifest_digest.clone(),
            };
            if let Ok(json) = serde_json::to_vec(&tag) {
                store(&dir.join("tags").join(tag_file(&self.image)), &json);
            }
        }
    }
}

fn pinned(image: &Reference, manifest_digest: &str) -> String {
    format!(
        "{}/{}@{manifest_digest}",
        image.registry(),
        image.repository()
    )
}

fn manifest_file(digest: &str) -> Option<String> {
    sluice_oci::check_digest(digest).ok()?;
    Some(format!("{}.json", digest.trim_start_matches("sha256:")))
}

fn tag_file(image: &Reference) -> String {
    let d = sluice_oci::sha256_digest(image.whole().as_bytes());
    format!("{}.json", d.trim_start_matches("sha256:"))
}

fn auth_hash(auth: &RegistryAuth) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match auth {
        RegistryAuth::Anonymous => 0u8.hash(&mut h),
        RegistryAuth::Basic(u, p) => (1u8, u, p).hash(&mut h),
        RegistryAuth::Bearer(t) => (2u8, t).hash(&mut h),
    }
    h.finish()
}

/// Credentials from `pullSecretRef`: a `kubernetes.io/dockerconfigjson` Secret in the
/// WasmFilter's namespace. Without one, pulls are anonymous.
fn pull_auth(
    res: &Resources,
    f: &WasmFilter,
    src: &OciSource,
    image: &Reference,
) -> Result<RegistryAuth, String> {
    let Some(r) = &src.pull_secret_ref else {
        return Ok(RegistryAuth::Anonymous);
    };
    let ns = f.metadata.namespace_or_default();
    let secret = res.secret(ns, &r.name).ok_or_else(|| {
            format!(
                "spec.source.oci.pullSecretRef: Secret {ns}/{} not found; create a {DOCKER_CONFIG_JSON} Secret in the WasmFilter's namespace",
                r.name
            )
        })?;
    if secret.type_.as_deref() != Some(DOCKER_CONFIG_JSON) {
        return Err(format!(
            "spec.source.oci.pullSecretRef: Secret {ns}/{} has type {:?}; it must be {DOCKER_CONFIG_JSON}",
            r.name,
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let json = secret.value(".dockerconfigjson").unwrap_or_default();
    let registry = image.resolve_registry();
    match sluice_oci::auth_from_docker_config(&json, registry) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(format!(
            "spec.source.oci.pullSecretRef: Secret {ns}/{} has no credentials for {registry}",
            r.name
        )),
        Err(e) => Err(format!(
            "spec.source.oci.pullSecretRef: Secret {ns}/{}: .dockerconfigjson: {e}",
            r.name
        )),
    }
}
