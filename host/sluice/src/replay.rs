//! `sluice filter replay`: runs the requests that made a WasmFilter fail in a gateway
//! (kept by `spec.debug.captureFailures`, served at the admin API's
//! `/filters/failures`) again, locally, on the build that failed or on a new one, and
//! says for each whether it still fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use sluice_harness::Harness;

use crate::filter_test::{Case, config, run_case};

/// Where the failures come from.
pub enum Source {
    /// A gateway's admin address, `host:port`.
    Admin(String),
    /// A file holding what `/filters/failures` answered.
    File(PathBuf),
}

pub struct Options {
    pub component: PathBuf,
    pub source: Source,
    /// Only this WasmFilter's failures (`namespace/name`).
    pub filter: Option<String>,
    /// A config to run with instead of the captured one.
    pub config: Option<PathBuf>,
    /// Writes each failure as a `sluice filter test` case into this folder.
    pub save: Option<PathBuf>,
}

/// A plain HTTP/1.0 GET of the admin API (which speaks plain HTTP on the address given).
fn fetch(addr: &str, path: &str) -> Result<String, String> {
    let what = format!("http://{addr}{path}");
    let mut tcp = TcpStream::connect(addr).map_err(|e| format!("{what}: {e}"))?;
    let limit = Some(Duration::from_secs(10));
    tcp.set_read_timeout(limit)
        .and_then(|()| tcp.set_write_timeout(limit))
        .map_err(|e| format!("{what}: {e}"))?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("{what}: {e}"))?;
    let mut raw = Vec::new();
    // The answer is bounded by the gateway's limits (100 captures per filter, 1 MiB
    // bodies); this bounds what a wrong address could send.
    tcp.take(512 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{what}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{what}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(format!(
            "{what} answered {status:?}: is {addr} a Sluice admin address (--admin)?"
        ));
    }
    Ok(body.to_string())
}

fn load(source: &Source, filter: Option<&str>) -> Result<Vec<Value>, String> {
    let (text, from) = match source {
        Source::Admin(addr) => {
            let path = match filter {
                Some(f) => format!("/filters/failures?filter={f}"),
                None => "/filters/failures".to_string(),
            };
            (fetch(addr, &path)?, format!("http://{addr}{path}"))
        }
        Source::File(p) => (
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            p.display().to_string(),
        ),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{from}: {e}"))?;
    let all = v
        .get("failures")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{from}: no `failures` list"))?;
    Ok(all
        .iter()
        .filter(|f| filter.is_none_or(|want| f["filter"] == want))
        .cloned()
        .collect())
}

/// The `sluice filter test` case of one failure: its request and the backend's response.
fn case_of(f: &Value) -> Value {
    let mut case = serde_json::Map::new();
    if let Some(r) = f.get("request").filter(|r| !r.is_null()) {
        case.insert("request".into(), r.clone());
    }
    if let Some(r) = f.get("response").filter(|r| !r.is_null()) {
        case.insert("response".into(), r.clone());
    }
    Value::Object(case)
}

fn text(f: &Value, key: &str) -> String {
    f.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// `sluice filter replay`: 0 when none of the failures happens again, 1 when any does,
/// 2 when they cannot be read or run.
pub fn run(o: &Options) -> ExitCode {
    let failures = match load(&o.source, o.filter.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if failures.is_empty() {
        eprintln!(
            "no failures kept{}: the WasmFilter needs spec.debug.captureFailures, and a hook must have trapped, timed out or run out of memory since the gateway started",
            o.filter
                .as_deref()
                .map(|f| format!(" for {f}"))
                .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let digest = match std::fs::read(&o.component) {
        Ok(b) => format!("sha256:{}", sluice_wasm::sha256_hex(&b)),
        Err(e) => {
            eprintln!("{}: {e}", o.component.display());
            return ExitCode::from(2);
        }
    };
    let own_config = match o.config.as_deref().map(|p| config(Some(p))).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &o.save
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let mut again = 0;
    for (i, f) in failures.iter().enumerate() {
        let n = i + 1;
        let (name, hook, kind) = (text(f, "filter"), text(f, "hook"), text(f, "kind"));
        println!(
            "# {n}. {name} {hook}: {kind} at {}: {}",
            text(f, "time"),
            text(f, "message")
        );
        let failed_on = text(f, "digest");
        if failed_on != digest {
            println!("#    replayed on {digest}, not on the build that failed ({failed_on})");
        }
        if let Some(redacted) = f["redactedHeaders"].as_array().filter(|r| !r.is_empty()) {
            let names: Vec<&str> = redacted.iter().filter_map(Value::as_str).collect();
            println!(
                "#    redacted: {} (their values were not kept)",
                names.join(", ")
            );
        }
        if let Some(notes) = f["notes"].as_object() {
            for (what, note) in notes {
                println!("#    {what}: {}", note.as_str().unwrap_or_default());
            }
        }
        let case_json = case_of(f);
        if let Some(dir) = &o.save {
            let file = dir.join(format!("{n}-{}-{hook}.yaml", name.replace('/', "-")));
            let yaml = serde_norway::to_string(&case_json).unwrap_or_default();
            let header = format!(
                "# {name} {hook}: {kind} on {failed_on}: {}\n# Run: sluice filter test COMPONENT --request {}\n",
                text(f, "message").lines().next().unwrap_or_default(),
                file.display()
            );
            if let Err(e) = std::fs::write(&file, header + &yaml) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
            println!("#    saved as {}", file.display());
        }
        let config = own_config.clone().unwrap_or_else(|| f["config"].clone());
        let result = serde_json::from_value::<Case>(case_json)
            .map_err(|e| format!("the captured request cannot be read: {e}"))
            .and_then(|case| {
                let h = Harness::load(&o.component, config)
                    .map_err(|e| format!("{}: {}", o.component.display(), e.message))?;
                Ok(run_case(&h, &case))
            });
        match result {
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            Ok(Err(e)) => {
                again += 1;
                println!("#    fails again: {e}");
            }
            Ok(Ok(report)) => {
                println!("#    passes now:");
                print!("{}", serde_norway::to_string(&report).unwrap_or_default());
            }
        }
    }
    println!(
        "# {again} of {} failures happen again on {}",
        failures.len(),
        Path::new(&o.component).display()
    );
    if again > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
