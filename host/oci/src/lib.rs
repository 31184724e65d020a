//! Wasm filters in OCI registries: push and pull, the image layouts Sluice reads,
//! and registry credentials.
//!
//! Pushes write the CNCF Wasm OCI artifact layout (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), with the
//! config made by `oci-wasm` and the transfers done by `oci-client`. Pulls read that
//! layout and the ones other tools write; see [`extract`] for the exact list.
//!
//! Everything pulled is verified: the manifest against the pinned digest (when the
//! reference has one), the layer against the manifest's descriptor.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::{Client, RegistryOperation};
use oci_wasm::{ToConfig, WASM_MANIFEST_MEDIA_TYPE, WasmConfig};
use sha2::{Digest, Sha256};

pub use oci_client::Reference;
pub use oci_client::secrets::RegistryAuth;

mod auth;
pub use auth::{auth_from_docker_config, docker_config_path, registry_key};
mod cosign;
pub use cosign::{
    COSIGN_SIGNATURE_ARTIFACT, CosignSignature, MAX_SIGNATURE_PAYLOAD, MAX_SIGNATURES,
    check_payload, cosign_signatures, signature_tag,
};

/// Components (and image layers) larger than this are refused.
pub const MAX_COMPONENT: u64 = 64 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
const WASM_MAGIC: &[u8] = b"\0asm";
const CHUNK: usize = 1 << 20;

/// Why a registry operation failed (the loader turns it into a WasmFilter status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a valid image reference.
    InvalidReference,
    /// The registry has no such repository, tag or digest.
    NotFound,
    /// The registry refused the credentials (or asked for some).
    Unauthorized,
    /// The registry could not be reached, timed out, or failed.
    Unavailable,
    /// Content did not match its digest: a wrong pin, or a corrupt blob.
    DigestMismatch,
    /// The image is not in a layout Sluice reads.
    InvalidLayout,
}

#[derive(Clone, Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error {
        kind,
        message: message.into(),
    }
}

/// Classifies an `oci-client` error for `image`.
fn classify(image: &Reference, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let kind = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ErrorKind::Unauthorized,
        E::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        E::DigestError(_) => ErrorKind::DigestMismatch,
        E::ServerError { code: 404, .. } => ErrorKind::NotFound,
        E::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => ErrorKind::NotFound,
        E::RequestError(r) if r.status().is_some_and(|s| matches!(s.as_u16(), 401 | 403)) => {
            ErrorKind::Unauthorized
        }
        E::ServerError {
            code: 401 | 403, ..
        } => ErrorKind::Unauthorized,
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| {
                matches!(
                    c,
                    C::BlobUnknown
                        | C::ManifestBlobUnknown
                        | C::ManifestUnknown
                        | C::BlobUploadUnknown
                        | C::NameUnknown
                        | C::NotFound
                )
            }) {
                ErrorKind::NotFound
            } else if codes().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                ErrorKind::Unauthorized
            } else {
                ErrorKind::Unavailable
            }
        }
        E::UnsupportedMediaTypeError(_)
        | E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::IncompatibleLayerMediaTypeError(_) => ErrorKind::InvalidLayout,
        _ => ErrorKind::Unavailable,
    };
    let hint = match kind {
        ErrorKind::Unauthorized => {
            "; check the credentials (pullSecretRef, ~/.docker/config.json, or --username)"
        }
        ErrorKind::NotFound => "; check the repository and the tag or digest",
        ErrorKind::Unavailable => "; is the registry up and reachable?",
        _ => "",
    };
    // reqwest's errors keep the cause (connection refused, timeout) in the source chain.
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    err(kind, format!("{image}: {chain}{hint}"))
}

/// Parses an image reference (`registry/repository[:tag][@digest]`), pinning it to
/// `digest` when one is given.
pub fn parse_reference(image: &str, digest: Option<&str>) -> Result<Reference, Error> {
    let r: Reference = image
        .parse()
        .map_err(|e| err(ErrorKind::InvalidReference, format!("{image}: {e}")))?;
    match (digest, r.digest()) {
        (None, _) => Ok(r),
        (Some(d), Some(own)) if own != d => Err(err(
            ErrorKind::InvalidReference,
            format!("{image} names digest {own}, but the pinned digest is {d}; give one"),
        )),
        (Some(d), _) => {
            check_digest(d)?;
            Ok(Reference::with_digest(
                r.registry().to_string(),
                r.repository().to_string(),
                d.to_string(),
            ))
        }
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(d: &str) -> Result<(), Error> {
    let hex = d.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(err(
            ErrorKind::InvalidReference,
            format!("digest {d:?} must be sha256: followed by 64 lowercase hex digits"),
        ))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in Sha256::digest(bytes) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// True for `localhost`, 127.0.0.0/8 and `::1`, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client for the registry of `image`: HTTPS, except plain HTTP for registries on
/// loopback or when `insecure` is set.
pub fn client(image: &Reference, insecure: bool) -> Client {
    // reqwest is built without a TLS provider of its own; it takes the process
    // default, which is ring here as everywhere else in Sluice. An error only means
    // one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = image.resolve_registry().to_string();
    let protocol = if insecure || is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

/// Which of the accepted layouts an image had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The CNCF Wasm OCI artifact: config `application/vnd.wasm.config.v0+json`, one
    /// `application/wasm` layer.
    Wasm,
    /// One layer holding the component itself, under another media type.
    RawLayer { media_type: String },
    /// One (optionally gzipped) tar layer holding the component as `file`.
    Tar { file: String },
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Wasm => f.write_str("wasm artifact"),
            Layout::RawLayer { media_type } => write!(f, "single {media_type} layer"),
            Layout::Tar { file } => write!(f, "image layer with {file}"),
        }
    }
}

/// A pulled, verified component.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image manifest's digest: what a WasmFilter pins with `digest`.
    pub manifest_digest: String,
    /// When the reference named an image index: the index's digest (what a signer
    /// who signed the tag signed).
    pub index_digest: Option<String>,
    /// The layer's digest.
    pub layer_digest: String,
    pub layout: Layout,
    pub component: Vec<u8>,
}

/// Progress of a transfer: `(bytes done, bytes in all)`.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Pulls the component `image` names, verifying every byte against its digest.
pub async fn pull(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
    progress: Progress<'_>,
) -> Result<Pulled, Error> {
    let (manifest, manifest_digest, index_digest) = image_manifest(client, image, auth).await?;
    let [layer] = manifest.layers.as_slice() else {
        return Err(err(
            ErrorKind::InvalidLayout,
            format!(
                "{image}: the image has {} layers; Sluice reads images with exactly one layer (see docs/oci.md)",
                manifest.layers.len()
            ),
        ));
    };
    let size = u64::try_from(layer.size).unwrap_or(0);
    if size > MAX_COMPONENT {
        return Err(err(
            ErrorKind::InvalidLayout,
            format!("{image}: the layer is {size} bytes; the limit is {MAX_COMPONENT}"),
        ));
    }
    let blob = pull_blob(client, image, layer, MAX_COMPONENT, progress).await?;
    let (layout, component) = extract(&manifest, layer, blob)
        .map_err(|m| err(ErrorKind::InvalidLayout, format!("{image}: {m}")))?;
    Ok(Pulled {
        manifest_digest,
        index_digest,
        layer_digest: layer.digest.clone(),
        layout,
        component,
    })
}

/// The image manifest for `image`, following an index to its Wasm (or only) entry,
/// verified against the digest that named it.
async fn image_manifest(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
) -> Result<(OciImageManifest, String, Option<String>), Error> {
    let (raw, digest) = manifest_raw(client, image, auth).await?;
    let v: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| err(ErrorKind::InvalidLayout, format!("{image}: manifest: {e}")))?;
    if let Some(entries) = v.get("manifests").and_then(|m| m.as_array()) {
        let pick = pick_index_entry(entries).ok_or_else(|| {
            err(
                ErrorKind::InvalidLayout,
                format!(
                    "{image}: the image index has {} entries and none is for wasm (platform os wasip1/wasip2/wasi or architecture wasm)",
                    entries.len()
                ),
            )
        })?;
        let inner = Reference::with_digest(
            image.registry().to_string(),
            image.repository().to_string(),
            pick,
        );
        let (raw, inner_digest) = manifest_raw(client, &inner, auth).await?;
        return parse_image_manifest(image, &raw).map(|m| (m, inner_digest, Some(digest)));
    }
    parse_image_manifest(image, &raw).map(|m| (m, digest, None))
}

fn parse_image_manifest(image: &Reference, raw: &[u8]) -> Result<OciImageManifest, Error> {
    serde_json::from_slice(raw).map_err(|e| {
        err(
            ErrorKind::InvalidLayout,
            format!("{image}: not an image manifest: {e}"),
        )
    })
}

/// Raw manifest bytes and their digest, checked against the reference's digest.
async fn manifest_raw(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
) -> Result<(bytes::Bytes, String), Error> {
    let (raw, _) = client
        .pull_manifest_raw(image, auth, &ACCEPTED)
        .await
        .map_err(|e| classify(image, e))?;
    let digest = sha256_digest(&raw);
    if let Some(want) = image.digest()
        && want != digest
    {
        return Err(err(
            ErrorKind::DigestMismatch,
            format!("{image}: the registry's manifest has digest {digest}, not the pinned {want}"),
        ));
    }
    Ok((raw, digest))
}

fn pick_index_entry(entries: &[serde_json::Value]) -> Option<String> {
    let digest = |e: &serde_json::Value| e.get("digest")?.as_str().map(str::to_string);
    let is_wasm = |e: &serde_json::Value| {
        let p = e.get("platform");
        let os = p.and_then(|p| p.get("os")).and_then(|o| o.as_str());
        let arch = p
            .and_then(|p| p.get("architecture"))
            .and_then(|o| o.as_str());
        matches!(os, Some("wasip1" | "wasip2" | "wasi")) || arch == Some("wasm")
    };
    if let Some(e) = entries.iter().find(|e| is_wasm(e)) {
        return digest(e);
    }
    match entries {
        [only] => digest(only),
        _ => None,
    }
}

async fn pull_blob(
    client: &Client,
    image: &Reference,
    layer: &OciDescriptor,
    limit: u64,
    progress: Progress<'_>,
) -> Result<Vec<u8>, Error> {
    let mut stream = client
        .pull_blob_stream(image, layer)
        .await
        .map_err(|e| classify(image, e))?;
    let total = u64::try_from(layer.size).unwrap_or(0);
    let mut out = Vec::with_capacity(usize::try_from(total.min(limit)).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // The verifying stream reports a digest mismatch as an I/O error at the end.
            if e.to_string().to_ascii_lowercase().contains("digest") {
                err(
                    ErrorKind::DigestMismatch,
                    format!(
                        "{image}: layer {} does not match its digest; the registry's copy is corrupt ({e})",
                        layer.digest
                    ),
                )
            } else {
                err(
                    ErrorKind::Unavailable,
                    format!("{image}: reading layer {}: {e}", layer.digest),
                )
            }
        })?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(err(
                ErrorKind::InvalidLayout,
                format!("{image}: blob {} is over {limit} bytes", layer.digest),
            ));
        }
        progress(out.len() as u64, total);
    }
    let got = sha256_digest(&out);
    if got != layer.digest {
        return Err(err(
            ErrorKind::DigestMismatch,
            format!(
                "{image}: layer {} has content {got}; the registry's copy is corrupt",
                layer.digest
            ),
        ));
    }
    Ok(out)
}

/// The component in a pulled layer. The layouts read, in order:
///
/// 1. The CNCF Wasm artifact: config `application/vnd.wasm.config.v0+json`, one
///    `application/wasm` layer (what `sluice filter push`, `wkg` and `oras` with that
///    media type write).
/// 2. Any single layer whose bytes are a Wasm binary (`\0asm`), whatever its media
///    type (for example `application/vnd.module.wasm.content.layer.v1+wasm`).
/// 3. A single tar layer, gzipped or not (a `FROM scratch` image with one `COPY`),
///    holding exactly one `*.wasm` file, or several of which one is `plugin.wasm`.
pub fn extract(
    manifest: &OciImageManifest,
    layer: &OciDescriptor,
    blob: Vec<u8>,
) -> Result<(Layout, Vec<u8>), String> {
    if blob.starts_with(WASM_MAGIC) {
        let cncf = manifest.config.media_type == oci_wasm::WASM_MANIFEST_CONFIG_MEDIA_TYPE
            && layer.media_type == oci_wasm::WASM_LAYER_MEDIA_TYPE;
        let layout = if cncf {
            Layout::Wasm
        } else {
            Layout::RawLayer {
                media_type: layer.media_type.clone(),
            }
        };
        return Ok((layout, blob));
    }
    let tar_bytes = if blob.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(blob.as_slice())
            .take(MAX_COMPONENT + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("the layer is gzip but does not decompress: {e}"))?;
        if out.len() as u64 > MAX_COMPONENT {
            return Err(format!("the layer unpacks to over {MAX_COMPONENT} bytes"));
        }
        out
    } else {
        blob
    };
    if tar_bytes.get(257..262) != Some(b"ustar") {
        return Err(format!(
            "the layer ({}) is neither a Wasm binary nor a tar archive",
            layer.media_type
        ));
    }
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let entries = archive
        .entries()
        .map_err(|e| format!("reading the tar layer: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the tar layer: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("reading the tar layer: {e}"))?
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".wasm") {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {name} from the tar layer: {e}"))?;
        found.push((name, bytes));
    }
    let pick = match found.len() {
        0 => return Err("the tar layer holds no *.wasm file".into()),
        1 => 0,
        _ => found
            .iter()
            .position(|(n, _)| n.rsplit('/').next() == Some("plugin.wasm"))
            .ok_or_else(|| {
                let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "the tar layer holds several *.wasm files ({}); keep one, or name it plugin.wasm",
                    names.join(", ")
                )
            })?,
    };
    let (file, bytes) = found.swap_remove(pick);
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(format!("{file} in the tar layer is not a Wasm binary"));
    }
    Ok((
        Layout::Tar {
            file: file.trim_start_matches("./").to_string(),
        },
        bytes,
    ))
}

/// Pushes `component` to `image` in the CNCF Wasm layout and returns the manifest
/// digest. `title` (a file name) becomes the layer's `org.opencontainers.image.title`,
/// which `oras pull` uses to name the file it writes.
pub async fn push(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
    component: Vec<u8>,
    title: Option<&str>,
    progress: Progress<'_>,
) -> Result<String, Error> {
    let (config, mut layer): (WasmConfig, ImageLayer) =
        WasmConfig::from_raw_component(component, None).map_err(|e| {
            err(
                ErrorKind::InvalidLayout,
                format!("not a Wasm component: {e:#}"),
            )
        })?;
    if let Some(t) = title {
        layer.annotations =
            Some([("org.opencontainers.image.title".to_string(), t.to_string())].into());
    }
    let config = config
        .to_config()
        .map_err(|e| err(ErrorKind::InvalidLayout, format!("{e:#}")))?;
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(WASM_MANIFEST_MEDIA_TYPE.to_string());
    let c = |e| classify(image, e);
    client
        .store_auth_if_needed(image.resolve_registry(), auth)
        .await;
    client
        .auth(image, auth, RegistryOperation::Push)
        .await
        .map_err(c)?;

    let layer_digest = layer.sha256_digest();
    let total = layer.data.len() as u64;
    if client.blob_exists(image, &layer_digest).await.map_err(c)? {
        progress(total, total);
    } else {
        let data = layer.data.clone();
        let chunks = futures_util::stream::iter((0..data.len()).step_by(CHUNK).map(move |at| {
            Ok::<_, OciDistributionError>(data.slice(at..(at + CHUNK).min(data.len())))
        }));
        // The stream is consumed one chunk at a time, each uploaded before the next
        // is taken, so counting taken chunks counts uploads to within one chunk.
        let counted = CountingStream::new(chunks, total, progress);
        client
            .push_blob_stream(image, counted, &layer_digest)
            .await
            .map_err(c)?;
    }
    client
        .push_blob(image, config.data.clone(), &manifest.config.digest)
        .await
        .map_err(c)?;
    let body = serde_json::to_vec(&manifest)
        .map_err(|e| err(ErrorKind::InvalidLayout, format!("manifest: {e}")))?;
    let digest = sha256_digest(&body);
    client
        .push_manifest_raw(
            image,
            body,
            reqwest::header::HeaderValue::from_static(WASM_MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(c)?;
    Ok(digest)
}

/// Reports progress as chunks are taken from the inner stream.
struct CountingStream<'p, S> {
    inner: S,
    done: u64,
    total: u64,
    progress: Progress<'p>,
}

impl<'p, S> CountingStream<'p, S> {
    fn new(inner: S, total: u64, progress: Progress<'p>) -> Self {
        CountingStream {
            inner,
            done: 0,
            total,
            progress,
        }
    }
}

impl<S> futures_util::Stream for CountingStream<'_, S>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = this.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(Ok(c))) = &next {
            this.done += c.len() as u64;
            (this.progress)(this.done, this.total);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "ghcr.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn references_and_pins() {
        let pin = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference("127.0.0.1:5000/filters/hello:v1", Some(&pin)).expect("ref");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "filters/hello");
        assert_eq!(r.digest(), Some(pin.as_str()));
        let e = parse_reference("127.0.0.1:5000/filters/hello", Some("sha256:zz")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidReference);
        let other = format!("sha256:{}", "b".repeat(64));
        let e = parse_reference(&format!("r.io/x@{other}"), Some(&pin)).unwrap_err();
        assert!(e.message.contains("pinned digest"), "{e}");
    }

    fn manifest(config_type: &str, layer_type: &str) -> (OciImageManifest, OciDescriptor) {
        let layer = OciDescriptor {
            media_type: layer_type.into(),
            ..Default::default()
        };
        let mut m = OciImageManifest::default();
        m.config.media_type = config_type.into();
        m.layers = vec![layer.clone()];
        (m, layer)
    }

    fn tar_of(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        let raw = b.into_inner().expect("tar");
        if !gzip {
            return raw;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gzip");
        gz.finish().expect("gzip")
    }

    #[test]
    fn layouts() {
        let wasm = b"\0asm\x0d\0\x01\0rest".to_vec();
        let (m, l) = manifest(
            oci_wasm::WASM_MANIFEST_CONFIG_MEDIA_TYPE,
            "application/wasm",
        );
        assert_eq!(extract(&m, &l, wasm.clone()).expect("cncf").0, Layout::Wasm);

        let solo = "application/vnd.module.wasm.content.layer.v1+wasm";
        let (m, l) = manifest("application/vnd.module.wasm.config.v1+json", solo);
        let (layout, bytes) = extract(&m, &l, wasm.clone()).expect("raw");
        assert_eq!(
            layout,
            Layout::RawLayer {
                media_type: solo.into()
            }
        );
        assert_eq!(bytes, wasm);

        let (m, l) = manifest(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        for gzip in [false, true] {
            let t = tar_of(&[("README", b"x"), ("filter.wasm", &wasm)], gzip);
            let (layout, bytes) = extract(&m, &l, t).expect("tar");
            assert_eq!(
                layout,
                Layout::Tar {
                    file: "filter.wasm".into()
                }
            );
            assert_eq!(bytes, wasm);
        }
        let t = tar_of(&[("a.wasm", &wasm), ("plugin.wasm", &wasm)], true);
        assert_eq!(
            extract(&m, &l, t).expect("plugin").0,
            Layout::Tar {
                file: "plugin.wasm".into()
            }
        );
        let t = tar_of(&[("a.wasm", &wasm), ("b.wasm", &wasm)], false);
        assert!(extract(&m, &l, t).unwrap_err().contains("several"));
        let t = tar_of(&[("a.txt", b"x")], false);
        assert!(extract(&m, &l, t).unwrap_err().contains("no *.wasm"));
        assert!(
            extract(&m, &l, b"junk".to_vec())
                .unwrap_err()
                .contains("neither")
        );
    }
}
