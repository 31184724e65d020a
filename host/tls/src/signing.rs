//! Public keys that verify detached signatures, as cosign makes them: a PEM
//! `PUBLIC KEY` (SubjectPublicKeyInfo) and a signature over a message's SHA-256.
//!
//! The algorithms are the ones cosign signs with: ECDSA on P-256 (its default) or
//! P-384, with SHA-256 and an ASN.1 DER signature; RSA PKCS#1 v1.5 with SHA-256
//! (2048 to 8192 bits); and Ed25519. The verification is ring's, through webpki.

use rustls::pki_types::SignatureVerificationAlgorithm;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// A public key that signatures are checked against.
#[derive(Clone)]
pub struct PublicKey {
    alg: &'static dyn SignatureVerificationAlgorithm,
    /// The SubjectPublicKeyInfo's `subjectPublicKey` bits.
    key: Vec<u8>,
    /// `sha256:` and the first 16 hex digits of the DER SubjectPublicKeyInfo's digest.
    fingerprint: String,
    kind: &'static str,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key {}", self.kind, self.fingerprint)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.key == other.key
    }
}

impl Eq for PublicKey {}

/// The algorithms a key may be for, each with the name said in errors. The webpki
/// algorithm knows its key's AlgorithmIdentifier, which picks the one that fits.
const ALGORITHMS: [(&str, &dyn SignatureVerificationAlgorithm); 4] = [
    ("ECDSA P-256", webpki::ring::ECDSA_P256_SHA256),
    ("ECDSA P-384", webpki::ring::ECDSA_P384_SHA256),
    ("RSA", webpki::ring::RSA_PKCS1_2048_8192_SHA256),
    ("Ed25519", webpki::ring::ED25519),
];

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` block (what `cosign generate-key-pair` writes to
    /// `cosign.pub`, and `openssl pkey -pubout` prints).
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            format!("not a PEM public key ({e}); give the -----BEGIN PUBLIC KEY----- block of cosign.pub")
        })?;
        PublicKey::from_spki(spki.as_ref())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
        let bad = || "the public key is not a valid SubjectPublicKeyInfo".to_string();
        let (outer, rest) = der_item(der, 0x30).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        let (alg_id, rest) = der_item(outer, 0x30).ok_or_else(bad)?;
        let (bits, rest) = der_item(rest, 0x03).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        // A BIT STRING's first byte counts the unused bits of the last; a key has none.
        let key = match bits.split_first() {
            Some((0, key)) if !key.is_empty() => key.to_vec(),
            _ => return Err(bad()),
        };
        let (kind, alg) = ALGORITHMS
            .iter()
            .find(|(_, a)| a.public_key_alg_id().as_ref() == alg_id)
            .copied()
            .ok_or_else(|| {
                "the public key's algorithm is not one Sluice verifies: use ECDSA P-256 (cosign's default), ECDSA P-384, RSA or Ed25519".to_string()
            })?;
        let digest = Sha256::digest(der);
        let fingerprint = format!(
            "sha256:{}",
            digest[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(PublicKey {
            alg,
            key,
            fingerprint,
            kind,
        })
    }

    /// True when `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.alg
            .verify_signature(&self.key, message, signature)
            .is_ok()
    }

    /// A short fingerprint for status and logs: `sha256:` and 16 hex digits.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The algorithm, in words (`ECDSA P-256`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// The contents of the DER item at the start of `der` if its tag is `tag`, and what
/// follows it.
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Keys and signatures made by the openssl CLI, the independent implementation.
    fn openssl(args: &[&str], dir: &std::path::Path) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn keys_of_each_algorithm_verify_their_signatures_and_no_others() {
        let dir = std::env::temp_dir().join(format!("sluice-signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("msg"), b"the signed payload").expect("msg");
        std::fs::write(dir.join("other"), b"another payload").expect("other");
        let cases: [(&str, &[&str], bool); 4] = [
            (
                "ECDSA P-256",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                false,
            ),
            (
                "ECDSA P-384",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                false,
            ),
            (
                "RSA",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                false,
            ),
            ("Ed25519", &["-algorithm", "ED25519"], true),
        ];
        let mut keys = Vec::new();
        for (i, (kind, genpkey, raw)) in cases.iter().enumerate() {
            let (k, p, s) = (format!("{i}.key"), format!("{i}.pub"), format!("{i}.sig"));
            let mut args = vec!["genpkey"];
            args.extend_from_slice(genpkey);
            args.extend_from_slice(&["-out", &k]);
            openssl(&args, &dir);
            openssl(&["pkey", "-in", &k, "-pubout", "-out", &p], &dir);
            if *raw {
                openssl(
                    &[
                        "pkeyutl", "-sign", "-rawin", "-inkey", &k, "-in", "msg", "-out", &s,
                    ],
                    &dir,
                );
            } else {
                openssl(&["dgst", "-sha256", "-sign", &k, "-out", &s, "msg"], &dir);
            }
            let pem = std::fs::read_to_string(dir.join(&p)).expect("pub");
            let key = PublicKey::from_pem(&pem).expect("key");
            assert_eq!(key.kind(), *kind);
            assert!(key.fingerprint().starts_with("sha256:") && key.fingerprint().len() == 23);
            let sig = std::fs::read(dir.join(&s)).expect("sig");
            assert!(key.verify(b"the signed payload", &sig), "{kind}");
            assert!(
                !key.verify(b"another payload", &sig),
                "{kind}: other message"
            );
            keys.push((key, sig));
        }
        // No key verifies another's signature.
        for (i, (key, _)) in keys.iter().enumerate() {
            for (j, (_, sig)) in keys.iter().enumerate() {
                if i != j {
                    assert!(
                        !key.verify(b"the signed payload", sig),
                        "{i} verified {j}'s"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_is_not_a_usable_public_key_is_refused_with_the_fix() {
        let e = PublicKey::from_pem("hello").expect_err("not pem");
        assert!(e.contains("BEGIN PUBLIC KEY"), "{e}");
        // A P-521 key: valid, but not an algorithm cosign's keys use here.
        let dir = std::env::temp_dir().join(format!("sluice-signing-521-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-521",
                "-out",
                "k",
            ],
            &dir,
        );
        openssl(&["pkey", "-in", "k", "-pubout", "-out", "p"], &dir);
        let pem = std::fs::read_to_string(dir.join("p")).expect("pub");
        let e = PublicKey::from_pem(&pem).expect_err("p-521");
        assert!(e.contains("ECDSA P-256"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(PublicKey::from_spki(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
        assert!(PublicKey::from_spki(&[0x30, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
