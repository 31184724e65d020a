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
//!   with the registry down still has the filter (`IfNotPresent`);
//! - `oci/signatures/<hex of the manifest digest>.json`: the cosign signatures that
//!   verified it, checked again against the current trust policy on every load.
//!
//! When the filter trust policy (GatewayClass `parametersRef`) names an image, the
//! component is pulled, then its signatures are fetched and verified in the background
//! as well; it loads only once a key the policy names has signed its digest. While it
//! has not, the fetch is retried with the same backoff as pulls, so a signature added
//! later is found.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_oci::CosignSignature;
use sluice_oci::{Reference, RegistryAuth};
use sluice_resources::{DOCKER_CONFIG_JSON, OciSource, Resources, WasmFilter};
use sluice_translate::Reason;
use sluice_translate::trust::{ImagePolicy, Requirement, TrustPolicy};
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
        /// The key that signed it, when the trust policy asks for a signature.
        signer: Option<String>,
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
        index_digest: Option<String>,
        component: Arc<Vec<u8>>,
    },
}

/// A background fetch and check of an image's signatures against the policies that
/// name it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SigKey {
    /// `registry/repository@digest`.
    image: String,
    /// The policies' names and key fingerprints, so a changed policy checks again.
    policy: u64,
    auth: u64,
}

enum SigState {
    Checking {
        attempt: u32,
    },
    Verified {
        signer: String,
    },
    /// Not verified (or not fetched); checked again at `retry_at`.
    Refused {
        reason: Reason,
        message: String,
        retry_at: Instant,
    },
}

struct SigJob {
    state: Arc<Mutex<SigState>>,
    task: tokio::task::JoinHandle<()>,
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
    /// Signature checks, by image digest and policy.
    sigs: Mutex<HashMap<SigKey, SigJob>>,
    /// The checks asked for since the last [`OciSources::retain`].
    sigs_used: Mutex<HashSet<SigKey>>,
}

#[derive(Serialize, Deserialize)]
struct SignatureEntry {
    /// The digests a signature may name: the manifest's, and the index's that led to it.
    digests: Vec<String>,
    signatures: Vec<CosignSignature>,
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
            sigs: Mutex::new(HashMap::new()),
            sigs_used: Mutex::new(HashSet::new()),
        })
    }

    /// The component for WasmFilter `f` (named `name`), verified as `trust` asks, or
    /// why not yet. Marks the pull it uses in `used`; see [`OciSources::retain`].
    pub fn get(
        &self,
        res: &Resources,
        f: &WasmFilter,
        src: &OciSource,
        name: &str,
        trust: &TrustPolicy,
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
        let repo = format!("{}/{}", image.registry(), image.repository());
        let policies = match trust.requirement(&repo) {
            Requirement::None => Vec::new(),
            Requirement::Invalid(message) => {
                return Outcome::Failed {
                    reason: Reason::InvalidTrustPolicy,
                    message,
                };
            }
            Requirement::Denied(message) => {
                return Outcome::Failed {
                    reason: Reason::UntrustedImage,
                    message,
                };
            }
            Requirement::Signed(p) => p.into_iter().cloned().collect(),
        };
        let (component, manifest_digest, index_digest) =
            match self.component(res, f, src, name, &image, used) {
                Ok(c) => c,
                Err(o) => return o,
            };
        let pinned = pinned(&image, &manifest_digest);
        if policies.is_empty() {
            return Outcome::Ready {
                component,
                pinned,
                signer: None,
            };
        }
        let mut digests = vec![manifest_digest];
        digests.extend(index_digest);
        match self.signer(res, f, src, &image, &digests, &policies) {
            Ok(signer) => Outcome::Ready {
                component,
                pinned,
                signer: Some(signer),
            },
            Err(o) => o,
        }
    }

    /// Who signed `digests` (the manifest's first) of `image`, as `policies` ask: from
    /// a finished check, from the signatures on disk, or by starting a check.
    fn signer(
        &self,
        res: &Resources,
        f: &WasmFilter,
        src: &OciSource,
        image: &Reference,
        digests: &[String],
        policies: &[ImagePolicy],
    ) -> Result<String, Outcome> {
        let auth = pull_auth(res, f, src, image).unwrap_or(RegistryAuth::Anonymous);
        let key = SigKey {
            image: pinned(image, &digests[0]),
            policy: policy_hash(policies),
            auth: auth_hash(&auth),
        };
        lock(&self.sigs_used).insert(key.clone());
        let mut sigs = lock(&self.sigs);
        if let Some(job) = sigs.get(&key)
            && let SigState::Verified { signer } = &*lock(&job.state)
        {
            return Ok(signer.clone());
        }
        // Signatures that verified before, checked against today's policy: a restart
        // with the registry down keeps its verified filters.
        if let Some(entry) = self.cached_signatures(&digests[0])
            && let Ok(signer) = verify(&entry.signatures, &entry.digests, policies)
        {
            return Ok(signer);
        }
        let state = match sigs.get(&key) {
            Some(job) => job.state.clone(),
            None => {
                let job = self.spawn_check(image, digests, policies, auth);
                let state = job.state.clone();
                sigs.insert(key, job);
                state
            }
        };
        drop(sigs);
        let outcome = match &*lock(&state) {
            SigState::Verified { signer } => return Ok(signer.clone()),
            SigState::Checking { attempt } => Outcome::Pending {
                message: format!(
                    "checking the signatures of {} (attempt {attempt}); the previous configuration serves until it is verified",
                    pinned(image, &digests[0])
                ),
            },
            SigState::Refused {
                reason,
                message,
                retry_at,
            } => Outcome::Failed {
                reason: *reason,
                message: format!(
                    "{message} (checked again in {}s)",
                    retry_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                        .ceil()
                ),
            },
        };
        Err(outcome)
    }

    fn cached_signatures(&self, digest: &str) -> Option<SignatureEntry> {
        let dir = self.dir.as_ref()?;
        let raw = std::fs::read(dir.join("signatures").join(manifest_file(digest)?)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    fn spawn_check(
        &self,
        image: &Reference,
        digests: &[String],
        policies: &[ImagePolicy],
        auth: RegistryAuth,
    ) -> SigJob {
        let state = Arc::new(Mutex::new(SigState::Checking { attempt: 1 }));
        let insecure = self
            .insecure
            .contains(&image.resolve_registry().to_string());
        let check = SigCheck {
            image: image.clone(),
            digests: digests.to_vec(),
            policies: policies.to_vec(),
            auth,
            insecure,
            state: state.clone(),
            dir: self.dir.clone(),
            wake: self.wake.clone(),
        };
        let task = self.handle.spawn(check.run());
        SigJob { state, task }
    }

    /// The component, its manifest digest and (when the reference named an index) the
    /// index's digest; or why not yet.
    fn component(
        &self,
        res: &Resources,
        f: &WasmFilter,
        src: &OciSource,
        name: &str,
        image: &Reference,
        used: &mut HashSet<Key>,
    ) -> Result<(Vec<u8>, String, Option<String>), Outcome> {
        let auth = match pull_auth(res, f, src, image) {
            Ok(a) => a,
            Err(message) => {
                return Err(Outcome::Failed {
                    reason: Reason::InvalidPullSecret,
                    message,
                });
            }
        };
        let key = Key {
            image: image.whole(),
            auth: auth_hash(&auth),
        };
        used.insert(key.clone());
        let always = src.pull_policy.as_deref() == Some("Always") && image.digest().is_none();
        let cached = self.cached(image);
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
                    index_digest,
                    component,
                } => {
                    return Ok((
                        component.to_vec(),
                        manifest_digest.clone(),
                        index_digest.clone(),
                    ));
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
                        return Ok((component, manifest_digest, None));
                    }
                    return Err(match last {
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
                    });
                }
            }
        }
        match cached {
            Some((component, manifest_digest)) => Ok((component, manifest_digest, None)),
            // Unreachable in practice: a job was started above when nothing was cached.
            None => Err(Outcome::Pending {
                message: format!("pulling {image}"),
            }),
        }
    }

    /// Stops and forgets the pulls and signature checks no filter used in this load.
    pub fn retain(&self, used: &HashSet<Key>) {
        lock(&self.jobs).retain(|k, j| {
            let keep = used.contains(k);
            if !keep {
                j.task.abort();
            }
            keep
        });
        let sigs_used = std::mem::take(&mut *lock(&self.sigs_used));
        lock(&self.sigs).retain(|k, j| {
            let keep = sigs_used.contains(k);
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
                        index_digest: p.index_digest,
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

/// Fetches an image's signatures and checks them against the policies that name it,
/// again with backoff until they verify.
struct SigCheck {
    image: Reference,
    /// The manifest's digest, then the index's when there was one.
    digests: Vec<String>,
    policies: Vec<ImagePolicy>,
    auth: RegistryAuth,
    insecure: bool,
    state: Arc<Mutex<SigState>>,
    dir: Option<PathBuf>,
    wake: mpsc::UnboundedSender<()>,
}

impl SigCheck {
    async fn run(self) {
        let client = sluice_oci::client(&self.image, self.insecure);
        let shown = pinned(&self.image, &self.digests[0]);
        let mut attempt = 1u32;
        let mut delay = FIRST_RETRY;
        loop {
            let fetched = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
                let mut all = Vec::new();
                for d in &self.digests {
                    all.extend(
                        sluice_oci::cosign_signatures(&client, &self.image, d, &self.auth).await?,
                    );
                }
                Ok::<_, sluice_oci::Error>(all)
            })
            .await
            .unwrap_or_else(|_| {
                Err(sluice_oci::Error {
                    kind: sluice_oci::ErrorKind::Unavailable,
                    message: format!("{shown}: no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
                })
            });
            let refused = match fetched {
                Ok(sigs) => match verify(&sigs, &self.digests, &self.policies) {
                    Ok(signer) => {
                        tracing::info!(image = %shown, %signer, "filter signature verified");
                        self.remember(sigs);
                        *lock(&self.state) = SigState::Verified { signer };
                        let _ = self.wake.send(());
                        return;
                    }
                    Err(r) => r,
                },
                Err(e) => (
                    reason(e.kind),
                    format!("fetching the signatures of {shown}: {e}"),
                ),
            };
            tracing::warn!(image = %shown, attempt, retry_in = ?delay, "filter not verified: {}", refused.1);
            attempt += 1;
            *lock(&self.state) = SigState::Refused {
                reason: refused.0,
                message: refused.1,
                retry_at: Instant::now() + delay,
            };
            let _ = self.wake.send(());
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    fn remember(&self, signatures: Vec<CosignSignature>) {
        let (Some(dir), Some(file)) = (&self.dir, manifest_file(&self.digests[0])) else {
            return;
        };
        let entry = SignatureEntry {
            digests: self.digests.clone(),
            signatures,
        };
        if let Ok(json) = serde_json::to_vec(&entry) {
            store(&dir.join("signatures").join(file), &json);
        }
    }
}

/// Who signed one of `digests`, for each policy a key of its own: `key release (ECDSA
/// P-256 sha256:…) of policy class/name`, joined with `; `. Or the reason and message
/// of the first policy that no signature meets, naming the keys it expects.
fn verify(
    sigs: &[CosignSignature],
    digests: &[String],
    policies: &[ImagePolicy],
) -> Result<String, (Reason, String)> {
    let mut signers = Vec::new();
    for p in policies {
        let mut wrong_payload = None;
        let found = sigs.iter().find_map(|s| {
            let k = p
                .keys
                .iter()
                .find(|k| k.key.verify(&s.payload, &s.signature))?;
            match digests
                .iter()
                .map(|d| sluice_oci::check_payload(&s.payload, d))
                .find(Result::is_ok)
            {
                Some(_) => Some(k),
                None => {
                    wrong_payload = sluice_oci::check_payload(&s.payload, &digests[0])
                        .err()
                        .map(|e| format!("a signature by key {}: {e}", k.describe()));
                    None
                }
            }
        });
        match found {
            Some(k) => signers.push(format!("key {} of policy {}", k.describe(), p.name)),
            None => {
                let expected: Vec<String> = p.keys.iter().map(|k| k.describe()).collect();
                let expected = expected.join(", ");
                let digest = &digests[0];
                return Err(match (sigs.len(), wrong_payload) {
                    (0, _) => (
                        Reason::Unsigned,
                        format!(
                            "{digest} has no cosign signature (tag {} or an OCI referrer); policy {} wants one by {expected}: sign it with `cosign sign --key <key> <image>@{digest}`",
                            sluice_oci::signature_tag(digest),
                            p.name
                        ),
                    ),
                    (_, Some(e)) => (
                        Reason::SignatureInvalid,
                        format!("{e}; policy {} wants {digest} signed by {expected}", p.name),
                    ),
                    (n, None) => (
                        Reason::SignatureInvalid,
                        format!(
                            "{n} signature(s) of {digest}, none by a key of policy {}: it expects {expected}",
                            p.name
                        ),
                    ),
                });
            }
        }
    }
    Ok(signers.join("; "))
}

/// A hash of the policies' names and keys.
fn policy_hash(policies: &[ImagePolicy]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in policies {
        p.name.hash(&mut h);
        for k in &p.keys {
            (&k.name, k.key.fingerprint()).hash(&mut h);
        }
    }
    h.finish()
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
