//! Signed manifests: an ed25519 signature over the manifest without its `signature` field, in
//! RFC 8785 canonical JSON, so that an auditor holding the public key can tell years later that
//! the bundle is the one this tool wrote. The private key comes from a PKCS#8 PEM file or the
//! environment and is never logged; `audit` trusts a list of public keys, so keys can rotate.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The `[signing]` settings.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSettings {
    /// An ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
    pub key_file: String,
    /// The same PEM text (`EVIDENCE_LOCKER__SIGNING__KEY`).
    pub key: String,
    /// Default: the first 16 hex digits of the SHA-256 of the public key's DER.
    pub key_id: String,
}

impl std::fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSettings")
            .field("key_file", &self.key_file)
            .field("key", &if self.key.is_empty() { "" } else { "<set>" })
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// The manifest's `signature`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestSignature {
    pub algorithm: String,
    pub key_id: String,
    /// Base64 of the signature over the canonical manifest without this field.
    pub value: String,
}

/// A signing key and its id.
pub struct ManifestSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The id of a public key: the first 16 hex digits of the SHA-256 of its DER
/// (SubjectPublicKeyInfo).
pub fn key_id(key: &VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_else(|_| key.as_bytes().to_vec());
    hex::encode(sha2::Sha256::digest(der))[..16].to_owned()
}

/// The manifest's canonical bytes (RFC 8785), without its `signature` field.
pub fn canonical_unsigned(manifest: &serde_json::Value) -> Result<Vec<u8>, String> {
    let mut m = manifest.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("signature");
    }
    serde_json_canonicalizer::to_vec(&m).map_err(|e| e.to_string())
}

impl ManifestSigner {
    /// The signer `[signing]` configures, or `None` without a key. A key that cannot be read is
    /// an error that names where it came from, never its content.
    pub fn from_settings(s: &SigningSettings) -> Result<Option<Self>, String> {
        let (pem, from) = match (s.key_file.trim(), s.key.trim()) {
            ("", "") => return Ok(None),
            (_, k) if !k.is_empty() => (k.to_owned(), "signing.key".to_owned()),
            (file, _) => (
                std::fs::read_to_string(file)
                    .map_err(|e| format!("signing.key_file {file}: {e}"))?,
                format!("signing.key_file {file}"),
            ),
        };
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
            format!("{from} is not an ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)")
        })?;
        let key_id = if s.key_id.trim().is_empty() {
            key_id(&key.verifying_key())
        } else {
            s.key_id.trim().to_owned()
        };
        Ok(Some(Self { key, key_id }))
    }

    pub fn from_key(key: SigningKey, key_id: Option<String>) -> Self {
        let key_id = key_id.unwrap_or_else(|| self::key_id(&key.verifying_key()));
        Self { key, key_id }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs a manifest (its `signature` field, if any, left out).
    pub fn sign(&self, manifest: &serde_json::Value) -> Result<ManifestSignature, String> {
        let bytes = canonical_unsigned(manifest)?;
        let sig = self.key.sign(&bytes);
        Ok(ManifestSignature {
            algorithm: "ed25519".into(),
            key_id: self.key_id.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        })
    }
}

/// Public keys an auditor trusts, by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(pub BTreeMap<String, VerifyingKey>);

impl TrustedKeys {
    /// Every `PUBLIC KEY` PEM block of a file (`openssl pkey -pubout`), one per key in use or
    /// retired; a line `key_id: <id>` before a block gives it an id of its own.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut keys = BTreeMap::new();
        let mut given_id: Option<String> = None;
        let mut block: Option<String> = None;
        for line in text.lines() {
            let l = line.trim();
            if let Some(id) = l.strip_prefix("key_id:") {
                given_id = Some(id.trim().to_owned());
            } else if l == "-----BEGIN PUBLIC KEY-----" {
                block = Some(format!("{l}\n"));
            } else if let Some(b) = block.as_mut() {
                b.push_str(l);
                b.push('\n');
                if l == "-----END PUBLIC KEY-----" {
                    let key = VerifyingKey::from_public_key_pem(b).map_err(|_| {
                        format!(
                            "{}: a PUBLIC KEY block is not an ed25519 key",
                            path.display()
                        )
                    })?;
                    let id = given_id.take().unwrap_or_else(|| key_id(&key));
                    keys.insert(id, key);
                    block = None;
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "{}: no ed25519 PUBLIC KEY block (openssl pkey -in key.pem -pubout)",
                path.display()
            ));
        }
        Ok(Self(keys))
    }
}

/// What checking a manifest's signature found.
#[derive(Clone, Debug, PartialEq)]
pub enum SignatureCheck {
    Valid { key_id: String },
    Missing,
    UntrustedKey { key_id: String },
    Invalid { key_id: String, why: String },
}

/// Checks a manifest's signature against trusted keys.
pub fn check(manifest: &serde_json::Value, trusted: &TrustedKeys) -> SignatureCheck {
    let Some(sig) = manifest.get("signature").filter(|s| !s.is_null()) else {
        return SignatureCheck::Missing;
    };
    let sig: ManifestSignature = match serde_json::from_value(sig.clone()) {
        Ok(s) => s,
        Err(e) => {
            return SignatureCheck::Invalid {
                key_id: String::new(),
                why: format!("the signature field is malformed: {e}"),
            };
        }
    };
    let Some(key) = trusted.0.get(&sig.key_id) else {
        return SignatureCheck::UntrustedKey { key_id: sig.key_id };
    };
    let invalid = |why: String| SignatureCheck::Invalid {
        key_id: sig.key_id.clone(),
        why,
    };
    if sig.algorithm != "ed25519" {
        return invalid(format!("algorithm {:?} is not ed25519", sig.algorithm));
    }
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&sig.value) else {
        return invalid("the value is not base64".into());
    };
    let Ok(signature) = Signature::from_slice(&raw) else {
        return invalid("the value is not a 64-byte ed25519 signature".into());
    };
    let bytes = match canonical_unsigned(manifest) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    match key.verify(&bytes, &signature) {
        Ok(()) => SignatureCheck::Valid {
            key_id: sig.key_id.clone(),
        },
        Err(_) => invalid("the signature does not match the manifest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    #[test]
    fn a_signed_manifest_verifies_and_any_change_breaks_it() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let signer = ManifestSigner::from_settings(&SigningSettings {
            key: pem.to_string(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(signer.key_id().len(), 16);
        let mut m = serde_json::json!({"b": 1, "a": {"z": "é", "y": [1, 2.5]}, "files": []});
        let sig = signer.sign(&m).unwrap();
        m["signature"] = serde_json::to_value(&sig).unwrap();
        let trusted = TrustedKeys(BTreeMap::from([(
            signer.key_id().to_owned(),
            key.verifying_key(),
        )]));
        assert_eq!(
            check(&m, &trusted),
            SignatureCheck::Valid {
                key_id: signer.key_id().to_owned()
            }
        );
        // Key order does not matter (canonical form); content does.
        let reordered: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(matches!(
            check(&reordered, &trusted),
            SignatureCheck::Valid { .. }
        ));
        m["b"] = serde_json::json!(2);
        assert!(matches!(
            check(&m, &trusted),
            SignatureCheck::Invalid { .. }
        ));
        assert!(matches!(
            check(&m, &TrustedKeys::default()),
            SignatureCheck::UntrustedKey { .. }
        ));
        m.as_object_mut().unwrap().remove("signature");
        assert_eq!(check(&m, &trusted), SignatureCheck::Missing);
    }

    #[test]
    fn a_bad_key_is_refused_without_showing_it() {
        let e = ManifestSigner::from_settings(&SigningSettings {
            key: "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----"
                .into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("signing.key") && !e.contains("c2VjcmV0"), "{e}");
    }
}
