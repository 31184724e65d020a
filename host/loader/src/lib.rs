//! Loading the WasmFilters a config names: read the source, verify it, compile it (or
//! take it from the AOT cache), and configure a first instance. The outcome feeds
//! `translate` (as status) and `build` (as instance pools).

#![forbid(unsafe_code)]

pub mod fetch;
pub mod oci;
pub mod path;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sluice_ir::FilterKey;
use sluice_resources::{Resources, WasmFilter};
use sluice_translate::trust::TrustPolicy;
use sluice_translate::{Reason, WasmState, WasmStates};
use sluice_wasm::{ErrorKind, FilterSpec, Pool, Runtime};

use crate::fetch::Downloads;
use crate::oci::{OciSources, Outcome};

/// Where filters come from, and what each filter name last loaded as.
pub struct Sources {
    pub base_downloads: Arc<Downloads>,
    /// `None` in `sluice check`, which does not pull.
    pub oci: Option<Arc<OciSources>>,
    /// Per filter: the digest and pool that last loaded. A filter whose new spec fails
    /// keeps serving this one.
    last_good: Mutex<HashMap<FilterKey, Loaded>>,
}

impl Sources {
    pub fn new(downloads: Arc<Downloads>, oci: Option<Arc<OciSources>>) -> Self {
        Sources {
            base_downloads: downloads,
            oci,
            last_good: Mutex::new(HashMap::new()),
        }
    }
}

/// A filter that loaded: its component digest, the image it came from (OCI
/// sources), and its instances.
#[derive(Clone)]
struct Loaded {
    digest: String,
    image: Option<String>,
    signed_by: Option<String>,
    pool: Arc<Pool>,
}

/// What loading a config's WasmFilters gave.
pub struct Prepared {
    pub states: WasmStates,
    /// The instances of each filter that loaded (or that last loaded).
    pub pools: HashMap<FilterKey, Arc<Pool>>,
    /// Filters whose first pull is still running, with what each waits for: while any
    /// is, the previous snapshot keeps serving.
    pub pending: Vec<(FilterKey, String)>,
}

/// Loads every WasmFilter of `res`. `paths` is the folder `source.path` is read under
/// (`None`: path sources are refused).
pub fn prepare(
    res: &Resources,
    paths: Option<&Path>,
    rt: &Arc<Runtime>,
    sources: &Sources,
) -> Prepared {
    let mut out = Prepared {
        states: WasmStates::new(),
        pools: HashMap::new(),
        pending: Vec::new(),
    };
    let mut used = HashSet::new();
    let mut last_good = sources.last_good.lock().unwrap_or_else(|p| p.into_inner());
    let trust = sluice_translate::trust::trust_policy(res);
    for f in &res.wasm_filters {
        let key = sluice_translate::wasm::key(f);
        let name = key.to_string();
        let env = Env {
            res,
            paths,
            rt,
            sources,
            trust: &trust,
        };
        let state = match prepare_one(&env, f, &name, &mut used) {
            Ok(l) => {
                last_good.insert(key.clone(), l.clone());
                out.pools.insert(key.clone(), l.pool);
                WasmState::Ready {
                    digest: l.digest,
                    image: l.image,
                    signed_by: l.signed_by,
                }
            }
            Err(Failure::Pending(message)) => {
                out.pending.push((key.clone(), message.clone()));
                WasmState::Failed {
                    reason: Reason::Pulling,
                    message,
                    digest: None,
                    config_errors: Vec::new(),
                }
            }
            Err(Failure::Failed(failure)) => match *failure {
                WasmState::Failed {
                    reason,
                    message,
                    config_errors,
                    digest,
                } => {
                    tracing::warn!(filter = %name, %reason, "WasmFilter not ready: {message}");
                    match last_good.get(&key) {
                        Some(good) => {
                            out.pools.insert(key.clone(), good.pool.clone());
                            WasmState::Stale {
                                digest: good.digest.clone(),
                                image: good.image.clone(),
                                signed_by: good.signed_by.clone(),
                                reason,
                                message,
                                config_errors,
                            }
                        }
                        None => WasmState::Failed {
                            reason,
                            message,
                            digest,
                            config_errors,
                        },
                    }
                }
                other => other,
            },
        };
        out.states.insert(key, state);
    }
    // Filters that are gone from the config are forgotten, and so are their pulls.
    last_good.retain(|key, _| out.states.contains_key(key));
    if let Some(oci) = &sources.oci {
        oci.retain(&used);
    }
    out
}

enum Failure {
    Pending(String),
    Failed(Box<WasmState>),
}

impl From<WasmState> for Failure {
    fn from(s: WasmState) -> Self {
        Failure::Failed(Box::new(s))
    }
}

fn failed(reason: Reason, message: String, digest: Option<String>) -> WasmState {
    WasmState::Failed {
        reason,
        message,
        digest,
        config_errors: Vec::new(),
    }
}

/// What loading one filter reads besides the filter.
struct Env<'a> {
    res: &'a Resources,
    paths: Option<&'a Path>,
    rt: &'a Arc<Runtime>,
    sources: &'a Sources,
    trust: &'a TrustPolicy,
}

fn prepare_one(
    env: &Env<'_>,
    f: &WasmFilter,
    name: &str,
    used: &mut HashSet<crate::oci::Key>,
) -> Result<Loaded, Failure> {
    let Env {
        res,
        paths,
        rt,
        sources,
        trust,
    } = *env;
    let src = &f.spec.source;
    let mut image = None;
    let mut signed_by = None;
    let bytes = match (&src.path, &src.url, &src.oci) {
        (Some(p), _, _) => {
            path::read(paths, p).map_err(|e| failed(e.reason(), e.to_string(), None))?
        }
        (_, Some(url), _) => {
            // The loader requires sha256 with url, so the download can be verified.
            let sha = src.sha256.as_deref().unwrap_or_default();
            sources
                .base_downloads
                .get(url, sha)
                .map_err(|e| failed(e.reason(), e.to_string(), None))?
        }
        (_, _, Some(o)) => {
            let Some(oci) = &sources.oci else {
                return Err(failed(
                    Reason::NotPulled,
                    format!(
                        "spec.source.oci: `sluice check` does not pull images; `sluice filter pull {}` fetches it",
                        o.image
                    ),
                    None,
                )
                .into());
            };
            match oci.get(res, f, o, name, trust, used) {
                Outcome::Ready {
                    component,
                    pinned,
                    signer,
                } => {
                    image = Some(pinned);
                    signed_by = signer;
                    component
                }
                Outcome::Pending { message } => return Err(Failure::Pending(message)),
                Outcome::Failed { reason, message } => {
                    return Err(failed(reason, message, None).into());
                }
            }
        }
        _ => {
            return Err(failed(
                Reason::UnsupportedSource,
                "spec.source: set one of path, url or oci".into(),
                None,
            )
            .into());
        }
    };
    let digest = sluice_wasm::sha256_hex(&bytes);
    let shown = format!("sha256:{digest}");
    if let Some(want) = &src.sha256
        && !want.eq_ignore_ascii_case(&digest)
    {
        return Err(failed(
            Reason::DigestMismatch,
            format!("spec.source.sha256 is {want} but the component's SHA-256 is {digest}"),
            Some(shown),
        )
        .into());
    }
    if !bytes.starts_with(b"\0asm") {
        // Said without echoing any of the bytes: a path or URL may name a file that is
        // not meant to be shown.
        return Err(failed(
            Reason::InvalidComponent,
            "spec.source: not a WebAssembly component (it does not start with \\0asm)".into(),
            None,
        )
        .into());
    }
    let compiled = rt.load_digested(&digest, &bytes).map_err(|e| {
        Failure::from(failed(
            Reason::InvalidComponent,
            e.to_string(),
            Some(shown.clone()),
        ))
    })?;
    let kv = kv_backend(res, f)
        .map_err(|m| Failure::from(failed(Reason::InvalidKvSecret, m, Some(shown.clone()))))?;
    let e = sluice_translate::wasm::effective(f);
    let spec = FilterSpec {
        kv,
        name: name.to_string(),
        config: e.config,
        memory_bytes: usize::try_from(e.memory_bytes).unwrap_or(usize::MAX),
        timeout: e.timeout,
        min_instances: e.min_instances as usize,
        capture: capture_spec(f),
    };
    // The loader runs on a blocking thread (or in `sluice check`): the first instance's
    // `configure` runs here, to completion.
    match sluice_wasm::block_on(rt.pool(&compiled, &spec)) {
        Ok(pool) => Ok(Loaded {
            digest: shown,
            image,
            signed_by,
            pool,
        }),
        Err(e) if e.kind == ErrorKind::Config => Err(Failure::from(WasmState::Failed {
            reason: Reason::InvalidConfig,
            message: format!("the filter refused spec.config: {}", e.message),
            digest: Some(shown),
            config_errors: e.config_errors,
        })),
        Err(e) => Err(failed(
            Reason::Trapped,
            format!("the filter failed while starting: {}", e.message),
            Some(shown),
        )
        .into()),
    }
}

/// The time one Redis kv call may take by default (`spec.kv.redis.timeout`).
pub const KV_REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a WasmFilter's `kv` lives, with the Redis password read from its Secret.
fn kv_backend(res: &Resources, f: &WasmFilter) -> Result<sluice_wasm::KvBackend, String> {
    let Some(r) = f.spec.kv.as_ref().and_then(|k| k.redis.as_ref()) else {
        return Ok(sluice_wasm::KvBackend::Memory);
    };
    let timeout = r
        .timeout
        .as_deref()
        .and_then(|t| sluice_resources::parse_duration(t).ok())
        .unwrap_or(KV_REDIS_TIMEOUT);
    let mut url = r.url.clone();
    if let Some(s) = &r.password_secret_ref {
        let ns = f.metadata.namespace_or_default();
        let secret = res.secret(ns, &s.name).ok_or_else(|| {
                format!(
                    "spec.kv.redis.passwordSecretRef: Secret {ns}/{} not found; create it with the password under {:?}",
                    s.name, s.key
                )
            })?;
        let password = secret
            .value(&s.key)
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                format!(
                    "spec.kv.redis.passwordSecretRef: Secret {ns}/{} has no UTF-8 value under {:?}",
                    s.name, s.key
                )
            })?;
        let user = r.username.as_deref().unwrap_or("");
        let enc = |v: &str| -> String {
            v.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        if let Some(rest) = url.strip_prefix("redis://") {
            url = format!("redis://{}:{}@{rest}", enc(user), enc(&password));
        }
    }
    Ok(sluice_wasm::KvBackend::Redis(sluice_wasm::RedisSpec {
        url,
        timeout,
    }))
}

/// What `spec.debug` asks to keep of the filter's failures (validated on load).
fn capture_spec(f: &WasmFilter) -> sluice_wasm::CaptureSpec {
    let Some(d) = &f.spec.debug else {
        return sluice_wasm::CaptureSpec::default();
    };
    sluice_wasm::CaptureSpec {
        failures: d.capture_failures.unwrap_or(0) as usize,
        redact: d
            .redact_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        max_body: d
            .max_body_bytes
            .as_deref()
            .and_then(|m| sluice_resources::parse_quantity(m).ok())
            .unwrap_or(sluice_resources::WASM_DEFAULT_CAPTURE_BODY) as usize,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_limit_the_loader_admits_is_the_one_the_runtime_gives() {
        assert_eq!(
            sluice_resources::WASM_MAX_MEMORY,
            sluice_wasm::MAX_MEMORY as u64
        );
    }

    #[test]
    fn a_redis_kv_store_gets_its_password_from_the_secret() {
        let yaml = |secret: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {{name: limit, namespace: apps}}
spec:
  source: {{path: limit.wasm}}
  kv: {{redis: {{url: 'redis://redis:6379/2', username: gw, passwordSecretRef: {{name: redis, key: pw}}, timeout: 50ms}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: apps}}
stringData: {{pw: 'p@ss:w/rd'}}
"
            )
        };
        let res = sluice_resources::load_str("kv.yaml", &yaml("redis"))
            .expect("load")
            .resources;
        let kv = super::kv_backend(&res, &res.wasm_filters[0]).expect("kv");
        assert_eq!(
            kv,
            sluice_wasm::KvBackend::Redis(sluice_wasm::RedisSpec {
                url: "redis://gw:p%40ss%3Aw%2Frd@redis:6379/2".into(),
                timeout: std::time::Duration::from_millis(50),
            })
        );
        if let sluice_wasm::KvBackend::Redis(r) = &kv {
            assert_eq!(
                sluice_wasm::redacted_redis_url(&r.url),
                "redis://redis:6379/2"
            );
        }
        let res = sluice_resources::load_str("kv.yaml", &yaml("other"))
            .expect("load")
            .resources;
        let e = super::kv_backend(&res, &res.wasm_filters[0]).expect_err("no secret");
        assert!(e.contains("Secret apps/redis not found"), "{e}");
    }
}
