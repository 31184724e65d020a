//! Loading the WasmFilters a config names: read the source, verify it, compile it (or
//! take it from the AOT cache), and configure a first instance. The outcome feeds
//! `translate` (as status) and `build` (as instance pools).

use std::path::Path;
use std::sync::Arc;

use sluice_proxy::WasmPools;
use sluice_resources::{Resources, WasmFilter};
use sluice_translate::{WasmState, WasmStates};
use sluice_wasm::{ErrorKind, FilterSpec, Runtime};

use crate::fetch::Downloads;

pub fn prepare(
    res: &Resources,
    base: &Path,
    rt: &Arc<Runtime>,
    downloads: &Downloads,
) -> (WasmStates, WasmPools) {
    let mut states = WasmStates::new();
    let mut pools = WasmPools::default();
    for f in &res.wasm_filters {
        let ns = f.metadata.namespace_or_default().to_string();
        let name = format!("{ns}/{}", f.metadata.name);
        let state = match prepare_one(f, &name, base, rt, downloads) {
            Ok((digest, pool)) => {
                pools.insert(name.clone(), pool);
                WasmState::Ready { digest }
            }
            Err(failed) => {
                if let WasmState::Failed {
                    reason, message, ..
                } = &failed
                {
                    tracing::warn!(filter = %name, reason, "WasmFilter not ready: {message}");
                }
                failed
            }
        };
        states.insert((ns, f.metadata.name.clone()), state);
    }
    (states, pools)
}

fn failed(reason: &str, message: String, digest: Option<String>) -> WasmState {
    WasmState::Failed {
        reason: reason.into(),
        message,
        digest,
        config_errors: Vec::new(),
    }
}

fn prepare_one(
    f: &WasmFilter,
    name: &str,
    base: &Path,
    rt: &Arc<Runtime>,
    downloads: &Downloads,
) -> Result<(String, Arc<sluice_wasm::Pool>), WasmState> {
    let src = &f.spec.source;
    let bytes = match (&src.path, &src.url, &src.oci) {
        (Some(p), _, _) => {
            let full = base.join(p);
            std::fs::read(&full).map_err(|e| {
                failed(
                    "SourceNotFound",
                    format!("spec.source.path: cannot read {}: {e}", full.display()),
                    None,
                )
            })?
        }
        (_, Some(url), _) => {
            // The loader requires sha256 with url, so the download can be verified.
            let sha = src.sha256.as_deref().unwrap_or_default();
            downloads
                .get(url, sha)
                .map_err(|(reason, message)| failed(reason, message, None))?
        }
        _ => {
            return Err(failed(
                "UnsupportedSource",
                "spec.source.oci: OCI sources are not supported by this version yet; use spec.source.path".into(),
                None,
            ));
        }
    };
    let digest = sluice_wasm::sha256_hex(&bytes);
    let shown = format!("sha256:{digest}");
    if let Some(want) = &src.sha256
        && !want.eq_ignore_ascii_case(&digest)
    {
        return Err(failed(
            "DigestMismatch",
            format!("spec.source.sha256 is {want} but the component's SHA-256 is {digest}"),
            Some(shown),
        ));
    }
    let compiled = rt
        .load_digested(&digest, &bytes)
        .map_err(|e| failed("InvalidComponent", e.to_string(), Some(shown.clone())))?;
    let e = sluice_translate::wasm::effective(f);
    let spec = FilterSpec {
        name: name.to_string(),
        config: e.config,
        memory_bytes: usize::try_from(e.memory_bytes).unwrap_or(usize::MAX),
        timeout: e.timeout,
        min_instances: e.min_instances as usize,
    };
    match rt.pool(&compiled, &spec) {
        Ok(pool) => Ok((shown, pool)),
        Err(e) if e.kind == ErrorKind::Config => Err(WasmState::Failed {
            reason: "InvalidConfig".into(),
            message: format!("the filter refused spec.config: {}", e.message),
            digest: Some(shown),
            config_errors: e.config_errors,
        }),
        Err(e) => Err(failed(
            "Trapped",
            format!("the filter failed while starting: {}", e.message),
            Some(shown),
        )),
    }
}
