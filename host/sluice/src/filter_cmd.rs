//! `sluice filter push` and `sluice filter pull`: filters in OCI registries.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use sluice_oci::{Reference, RegistryAuth};

/// Transfers at least this large show progress.
const PROGRESS_FROM: u64 = 4 << 20;

/// Where credentials come from, in order: flags, then environment, then Docker's
/// config file.
#[derive(clap::Args, Clone, Debug)]
pub struct Credentials {
    /// Registry user name (also SLUICE_REGISTRY_USERNAME).
    #[arg(long, env = "SLUICE_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the registry password (or token) from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Use plain HTTP for this registry (registries on loopback always use it).
    #[arg(long)]
    insecure: bool,
}

impl Credentials {
    fn auth(&self, image: &Reference) -> anyhow::Result<RegistryAuth> {
        let password = if self.password_stdin {
            let mut p = String::new();
            std::io::stdin()
                .read_to_string(&mut p)
                .context("reading the password from standard input")?;
            Some(p.trim_end_matches(['\r', '\n']).to_string())
        } else {
            std::env::var("SLUICE_REGISTRY_PASSWORD").ok()
        };
        match (&self.username, password) {
            (Some(u), Some(p)) => return Ok(RegistryAuth::Basic(u.clone(), p)),
            (Some(_), None) => bail!(
                "--username needs a password: pass --password-stdin or set SLUICE_REGISTRY_PASSWORD"
            ),
            (None, Some(_)) if self.password_stdin => {
                bail!("--password-stdin needs --username (or SLUICE_REGISTRY_USERNAME)")
            }
            _ => {}
        }
        let registry = image.resolve_registry();
        if let Some(path) = sluice_oci::docker_config_path()
            && let Ok(json) = std::fs::read(&path)
        {
            let found = sluice_oci::auth_from_docker_config(&json, registry)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            if let Some(a) = found {
                return Ok(a);
            }
        }
        Ok(RegistryAuth::Anonymous)
    }
}

fn reference(image: &str) -> anyhow::Result<Reference> {
    sluice_oci::parse_reference(image, None).map_err(|e| anyhow!("{e}"))
}

/// Prints progress to stderr for large transfers: a live line on a terminal, a line
/// per quarter otherwise.
fn progress(verb: &'static str) -> impl FnMut(u64, u64) + Send {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut shown = 0u64;
    move |done, total| {
        if total < PROGRESS_FROM || total == 0 {
            return;
        }
        let pct = done.saturating_mul(100) / total;
        let step = if tty { pct } else { pct / 25 * 25 };
        if step == shown && done != total {
            return;
        }
        shown = step;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let line = format!(
            "{verb} {:.1}/{:.1} MiB ({pct}%) {:.1}s",
            mib(done),
            mib(total),
            start.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{line}");
            if done == total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

pub async fn push(file: &Path, image: &str, creds: &Credentials) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    sluice_wasm::is_component(&bytes)
        .map_err(|e| anyhow!("{} is not a filter: {e}", file.display()))?;
    let image = reference(image)?;
    let auth = creds.auth(&image)?;
    let client = sluice_oci::client(&image, creds.insecure);
    let mut report = progress("pushed");
    let title = file.file_name().and_then(|n| n.to_str());
    let digest = sluice_oci::push(&client, &image, &auth, bytes, title, &mut report)
        .await
        .map_err(|e| anyhow!("pushing {} to {image}: {e}", file.display()))?;
    eprintln!("pushed {} to {image}", file.display());
    println!("{digest}");
    Ok(())
}

pub async fn pull(image: &str, out: Option<PathBuf>, creds: &Credentials) -> anyhow::Result<()> {
    let image = reference(image)?;
    let auth = creds.auth(&image)?;
    let client = sluice_oci::client(&image, creds.insecure);
    let mut report = progress("pulled");
    let pulled = sluice_oci::pull(&client, &image, &auth, &mut report)
        .await
        .map_err(|e| anyhow!("pulling {image}: {e}"))?;
    let out = out.unwrap_or_else(|| {
        let name = image.repository().rsplit('/').next().unwrap_or("filter");
        PathBuf::from(format!("{name}.wasm"))
    });
    std::fs::write(&out, &pulled.component)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "pulled {image} ({}, {} bytes) to {}",
        pulled.layout,
        pulled.component.len(),
        out.display()
    );
    println!("{}", pulled.manifest_digest);
    Ok(())
}
