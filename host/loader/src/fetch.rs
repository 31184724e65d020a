//! `spec.source.url`: components downloaded over HTTPS, verified against
//! `spec.source.sha256`, and kept in a download cache by digest, so a restart (or an
//! unreachable server) does not need the network for a component it already has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_translate::Reason;

/// Components larger than this are refused.
const MAX_COMPONENT: usize = crate::path::MAX_COMPONENT as usize;
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Downloads {
    dir: Option<PathBuf>,
}

/// Why a download did not give the component.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server could not be reached, refused, or sent something unusable; retried
    /// on the next reload.
    #[error("spec.source.url: {url}: {why}")]
    Unavailable { url: String, why: String },
    #[error(
        "spec.source.url: {url} has SHA-256 {got}, but spec.source.sha256 is {want}; refusing it"
    )]
    DigestMismatch {
        url: String,
        got: String,
        want: String,
    },
}

impl Failure {
    /// The WasmFilter `Ready=False` reason.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Unavailable { .. } => Reason::SourceUnavailable,
            Failure::DigestMismatch { .. } => Reason::DigestMismatch,
        }
    }
}

impl Downloads {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Downloads { dir }
    }

    fn cached(&self, sha256: &str) -> Option<PathBuf> {
        Some(
            self.dir
                .as_ref()?
                .join(format!("{}.wasm", sha256.to_ascii_lowercase())),
        )
    }

    /// The cached component whose SHA-256 is `sha256`, verified; a damaged entry is
    /// dropped.
    pub fn cached_component(&self, sha256: &str) -> Option<Vec<u8>> {
        let p = self.cached(sha256)?;
        let bytes = std::fs::read(&p).ok()?;
        if sluice_wasm::sha256_hex(&bytes).eq_ignore_ascii_case(sha256) {
            return Some(bytes);
        }
        let _ = std::fs::remove_file(&p);
        None
    }

    /// Keeps `bytes` (whose SHA-256 the caller has checked) in the cache.
    pub fn store_component(&self, sha256: &str, bytes: &[u8]) {
        if let Some(p) = self.cached(sha256) {
            store(&p, bytes);
        }
    }

    /// The component at `url` whose SHA-256 is `sha256`: from the cache when present,
    /// else downloaded, verified and cached.
    pub fn get(&self, url: &str, sha256: &str) -> Result<Vec<u8>, Failure> {
        if let Some(bytes) = self.cached_component(sha256) {
            return Ok(bytes);
        }
        let bytes = download(url)?;
        let got = sluice_wasm::sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(Failure::DigestMismatch {
                url: url.to_string(),
                got,
                want: sha256.to_string(),
            });
        }
        self.store_component(sha256, &bytes);
        Ok(bytes)
    }
}

/// Writes `bytes` to `path` atomically (a temporary file, then a rename).
pub fn store(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(file = %path.display(), "cannot write the download cache");
    }
}

/// Downloads over HTTPS only, trusting the system's roots (and `SSL_CERT_FILE`).
/// Runs on the caller's thread: the loader is already off the serving threads.
fn download(url: &str) -> Result<Vec<u8>, Failure> {
    let unavailable = |why: String| Failure::Unavailable {
        url: url.to_string(),
        why,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| unavailable(format!("not a valid URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(unavailable("only https:// URLs are fetched".into()));
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| unavailable(format!("no TLS root certificates: {e}")))?
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let fetch = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| unavailable(format!("{e:#}")))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!(
                "the server answered {}",
                resp.status()
            )));
        }
        let body = Limited::new(resp.into_body(), MAX_COMPONENT)
            .collect()
            .await
            .map_err(|e| unavailable(format!("reading the body: {e}")))?;
        Ok(body.to_bytes().to_vec())
    };
    let fetch = async {
        tokio::time::timeout(TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| Err(unavailable("timed out".into())))
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(fetch),
        // `sluice check` runs without a runtime.
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start a runtime: {e}")))?
            .block_on(fetch),
    }
}
