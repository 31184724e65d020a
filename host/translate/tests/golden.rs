//! Golden tests: `testdata/<case>.in.yaml` must translate to `testdata/<case>.out.yaml`
//! (statuses plus IR, or the load errors for an input the loader refuses).
//!
//! Every case is read together with `testdata/_common.yaml` (a GatewayClass, a Gateway
//! `default/gw` with an HTTP listener on port 80, and two echo Services with endpoints),
//! unless its first line is `# standalone`.
//!
//! WasmFilters are not loaded here (that is the provider's I/O); the test stands in for
//! the loader: a filter whose `spec.source.path` ends in `missing.wasm` failed with
//! `SourceNotFound`, one ending in `bad-config.wasm` failed with `InvalidConfig`, and
//! every other one is ready. Regenerate the outputs after an intended
//! change with `SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-translate --test golden`,
//! then review the diff.

use std::path::Path;

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let common = std::fs::read_to_string(dir.join("_common.yaml")).expect("testdata/_common.yaml");
    let update = std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 40,
        "expected at least 40 golden cases, found {}",
        cases.len()
    );
    let mut failed = Vec::new();
    for input in &cases {
        let text = std::fs::read_to_string(input).expect("read case");
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".in.yaml")
            .to_string();
        let full = if text.starts_with("# standalone") {
            text.clone()
        } else {
            format!("{common}\n---\n{text}")
        };
        let value = match sluice_resources::load_str(&format!("{name}.in.yaml"), &full) {
            Ok(loaded) => {
                // `# serve: shared`: as the shared fleet in Kubernetes mode serves.
                // `# serve: gateway NS/NAME`: as that Gateway's own data plane serves.
                let serve = match text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("# serve: "))
                {
                    Some("shared") => sluice_translate::Serve::Shared,
                    Some(g) => {
                        let (ns, name) = g
                            .strip_prefix("gateway ")
                            .and_then(|g| g.split_once('/'))
                            .expect("# serve: shared, or gateway NS/NAME");
                        sluice_translate::Serve::Gateway(ns.into(), name.into())
                    }
                    None => sluice_translate::Serve::All,
                };
                let inputs = sluice_translate::Inputs {
                    wasm: stand_in_loader(&loaded.resources),
                    serve,
                    ..Default::default()
                };
                serde_json::to_value(sluice_translate::translate(&loaded.resources, &inputs))
                    .expect("serialize")
            }
            Err(errors) => serde_json::json!({
                "loadErrors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            }),
        };
        let got = serde_norway::to_string(&value).expect("yaml");
        let out = dir.join(format!("{name}.out.yaml"));
        if update {
            std::fs::write(&out, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&out).unwrap_or_default();
        if want != got {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "golden outputs differ for {failed:?}; if the change is intended, run \
         SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-translate --test golden and review the diff"
    );
}

fn stand_in_loader(res: &sluice_resources::Resources) -> sluice_translate::WasmStates {
    use sluice_translate::WasmState;
    // The WasmFilters Sluice makes for Ingress annotations load as the loader loads
    // them in the gateway.
    let ingress = sluice_translate::ingress::convert(res, &Default::default()).wasm_filters;
    res.wasm_filters
        .iter()
        .chain(&ingress)
        .map(|f| {
            let path = f.spec.source.path.clone().unwrap_or_default();
            let state = if path.ends_with("missing.wasm") {
                WasmState::Failed {
                    reason: sluice_translate::Reason::SourceNotFound,
                    message: format!("{path}: no such file"),
                    digest: None,
                    config_errors: vec![],
                }
            } else if path.ends_with("bad-config.wasm") {
                WasmState::Failed {
                    reason: sluice_translate::Reason::InvalidConfig,
                    message: "the filter refused its config".into(),
                    digest: Some("sha256:0b".into()),
                    config_errors: vec![(".greeting".into(), "must not be empty".into())],
                }
            } else {
                WasmState::Ready {
                    digest: format!("sha256:{}", path.len()),
                    image: None,
                    signed_by: None,
                }
            };
            (
                sluice_ir::FilterKey::new(
                    f.metadata.namespace.clone().unwrap_or_default(),
                    f.metadata.name.clone(),
                ),
                state,
            )
        })
        .collect()
}
