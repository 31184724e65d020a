//! Cosign signatures as registries hold them, for keyed verification.
//!
//! Cosign signs an image's manifest digest with a "simple signing" payload (a JSON
//! document naming that digest) and stores the payload as a layer of a signature
//! manifest, the base64 signature in the layer's `dev.cosignproject.cosign/signature`
//! annotation. The signature manifest is found in one of two places:
//! - the tag `sha256-<hex>.sig` in the image's repository (cosign's default);
//! - an OCI 1.1 referrer of the image with artifact type
//!   `application/vnd.dev.cosign.artifact.sig.v1+json` (`cosign sign
//!   --registry-referrers-mode=oci-1-1`): through the registry's referrers API, or the
//!   `sha256-<hex>` tag index where the registry has none.
//!
//! This module fetches the payloads and signatures; the caller checks them against its
//! keys and then checks the payload with [`check_payload`].

use base64::Engine;
use oci_client::Client;
use serde::{Deserialize, Serialize};

use super::{
    DOCKER_MANIFEST, Error, ErrorKind, OCI_MANIFEST, Reference, RegistryAuth, classify,
    parse_image_manifest, pull_blob,
};

/// The media type of a simple-signing payload layer.
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// At most this many signatures are read for one digest; the rest are ignored.
pub const MAX_SIGNATURES: usize = 32;
/// A payload larger than this is not read (cosign's are a few hundred bytes).
pub const MAX_SIGNATURE_PAYLOAD: u64 = 64 << 10;

/// One signature: the payload as stored, and the signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignSignature {
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// Every cosign signature the registry holds for `digest` in `image`'s repository,
/// from the `.sig` tag and from the image's referrers. None is not an error: the
/// caller says the image is unsigned.
pub async fn cosign_signatures(
    client: &Client,
    image: &Reference,
    digest: &str,
    auth: &RegistryAuth,
) -> Result<Vec<CosignSignature>, Error> {
    let registry = image.registry().to_string();
    let repository = image.repository().to_string();
    let mut out = Vec::new();
    let tagged = Reference::with_tag(registry.clone(), repository.clone(), signature_tag(digest));
    match client
        .pull_manifest_raw(&tagged, auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
        .await
    {
        Ok((raw, _)) => read_layers(client, &tagged, &raw, &mut out).await?,
        Err(e) => {
            let e = classify(&tagged, e);
            if e.kind != ErrorKind::NotFound {
                return Err(e);
            }
        }
    }
    if out.len() >= MAX_SIGNATURES {
        return Ok(out);
    }
    let subject = Reference::with_digest(registry.clone(), repository.clone(), digest.into());
    let referrers = match client
        .pull_referrers(&subject, Some(COSIGN_SIGNATURE_ARTIFACT))
        .await
    {
        Ok(index) => index.manifests,
        Err(e) => {
            let e = classify(&subject, e);
            // A registry without the referrers API (or with no referrers) answers 404.
            if e.kind != ErrorKind::NotFound {
                return Err(e);
            }
            Vec::new()
        }
    };
    for entry in referrers
        .iter()
        .filter(|e| e.artifact_type.as_deref() == Some(COSIGN_SIGNATURE_ARTIFACT))
        .take(MAX_SIGNATURES)
    {
        if super::check_digest(&entry.digest).is_err() {
            continue;
        }
        let r = Reference::with_digest(registry.clone(), repository.clone(), entry.digest.clone());
        let (raw, _) = super::manifest_raw(client, &r, auth).await?;
        read_layers(client, &r, &raw, &mut out).await?;
        if out.len() >= MAX_SIGNATURES {
            break;
        }
    }
    out.truncate(MAX_SIGNATURES);
    Ok(out)
}

/// The signatures in a signature manifest's layers, appended to `out`.
async fn read_layers(
    client: &Client,
    at: &Reference,
    raw: &[u8],
    out: &mut Vec<CosignSignature>,
) -> Result<(), Error> {
    let manifest = parse_image_manifest(at, raw)?;
    for layer in &manifest.layers {
        if out.len() >= MAX_SIGNATURES {
            break;
        }
        if layer.media_type != SIMPLE_SIGNING
            || u64::try_from(layer.size).map_or(true, |n| n > MAX_SIGNATURE_PAYLOAD)
        {
            continue;
        }
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            })
        else {
            continue;
        };
        let payload = pull_blob(client, at, layer, MAX_SIGNATURE_PAYLOAD, &mut |_, _| {}).await?;
        out.push(CosignSignature { payload, signature });
    }
    Ok(())
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    type_: String,
    image: PayloadImage,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Checks a verified payload: a cosign container image signature of `digest`.
pub fn check_payload(payload: &[u8], digest: &str) -> Result<(), String> {
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not a cosign simple-signing document ({e})"))?;
    if p.critical.type_ != "cosign container image signature" {
        return Err(format!(
            "the signed payload is a {:?}, not a cosign container image signature",
            p.critical.type_
        ));
    }
    if p.critical.image.digest != digest {
        return Err(format!(
            "the signature is for {}, not {digest}",
            p.critical.image.digest
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_must_name_the_digest_it_signs() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/x"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        assert_eq!(check_payload(p.as_bytes(), &d), Ok(()));
        let other = format!("sha256:{}", "b".repeat(64));
        let e = check_payload(p.as_bytes(), &other).expect_err("other digest");
        assert!(e.contains("is for sha256:aaaa"), "{e}");
        let e = check_payload(b"{}", &d).expect_err("not a payload");
        assert!(e.contains("simple-signing"), "{e}");
        let e = check_payload(
            p.replace("cosign container image signature", "attestation")
                .as_bytes(),
            &d,
        )
        .expect_err("other type");
        assert!(e.contains("\"attestation\""), "{e}");
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "a".repeat(64)));
    }

    #[test]
    fn signatures_keep_their_bytes_through_the_cache_format() {
        let s = CosignSignature {
            payload: b"{\"critical\":{}}".to_vec(),
            signature: vec![0, 1, 2, 255],
        };
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            serde_json::from_str::<CosignSignature>(&json).expect("back"),
            s
        );
    }
}
