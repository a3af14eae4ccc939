//! Erasure certificates: the certificate body signed with Ed25519 under a key
//! derived from the master key for this one purpose (HKDF label
//! `erasure-certificate-ed25519`), so anyone holding the public key
//! (`GET /v1/dsr/certificate-key`, `learnvault dsr certificate-key`) can
//! check a certificate offline and no other key use can forge one.
//!
//! The signed bytes are the body serialised with its object keys sorted
//! (serde_json's default map), so a verifier re-serialises and compares.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::vault::keys::MasterKey;

pub const KEY_LABEL: &str = "erasure-certificate-ed25519";

pub struct Signer {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(public {})", self.public_key())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("not a certificate: {0}")]
    Malformed(&'static str),
    #[error("the certificate was signed by another key than the one given")]
    WrongKey,
    #[error("the signature does not match the certificate: it was altered or forged")]
    BadSignature,
}

impl Signer {
    pub fn derive(master: &MasterKey) -> Signer {
        let seed = master.service_key(KEY_LABEL);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..]).expect("a 32-byte seed is a valid Ed25519 key");
        Signer { pair }
    }

    /// Base64 of the raw 32-byte public key.
    pub fn public_key(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// `{"certificate": body, "signature": {...}}`.
    pub fn sign(&self, body: &Value) -> Value {
        let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
        let sig = self.pair.sign(&bytes);
        json!({
            "certificate": body,
            "signature": {"algorithm": "Ed25519", "public_key": self.public_key(), "value": B64.encode(sig.as_ref())}
        })
    }
}

/// Check a signed certificate against `public_key` (base64), returning its body.
pub fn verify(doc: &Value, public_key: &str) -> Result<Value, CertificateError> {
    let body = doc.get("certificate").filter(|b| b.is_object()).ok_or(CertificateError::Malformed("no certificate object"))?;
    let sig = doc.get("signature").ok_or(CertificateError::Malformed("no signature"))?;
    if sig.get("algorithm").and_then(Value::as_str) != Some("Ed25519") {
        return Err(CertificateError::Malformed("signature algorithm must be Ed25519"));
    }
    if sig.get("public_key").and_then(Value::as_str) != Some(public_key) {
        return Err(CertificateError::WrongKey);
    }
    let key = B64.decode(public_key).map_err(|_| CertificateError::Malformed("public key is not base64"))?;
    let value = sig.get("value").and_then(Value::as_str).ok_or(CertificateError::Malformed("no signature value"))?;
    let value = B64.decode(value).map_err(|_| CertificateError::Malformed("signature is not base64"))?;
    let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
    UnparsedPublicKey::new(&ED25519, key).verify(&bytes, &value).map_err(|_| CertificateError::BadSignature)?;
    Ok(body.clone())
}

/// Hex SHA-256 of a signed certificate (for the audit entry).
pub fn digest(doc: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(doc).expect("a JSON value serialises")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_catches_tampering_and_foreign_keys() {
        let signer = Signer::derive(&MasterKey::generate());
        let doc = signer.sign(&json!({"job_id": "j", "stores": [{"store": "clickhouse:events.learning_events", "rows_after": 0}]}));
        assert!(verify(&doc, &signer.public_key()).is_ok());

        let mut altered = doc.clone();
        altered["certificate"]["stores"][0]["rows_after"] = json!(3);
        assert_eq!(verify(&altered, &signer.public_key()), Err(CertificateError::BadSignature));

        // A certificate signed by another deployment's key (or an attacker's) is refused
        // even though its own signature is consistent.
        let other = Signer::derive(&MasterKey::generate());
        let forged = other.sign(&doc["certificate"]);
        assert_eq!(verify(&forged, &signer.public_key()), Err(CertificateError::WrongKey));

        // Key order in the file does not matter: the signed bytes are canonical.
        let reparsed: Value = serde_json::from_str(&serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        assert!(verify(&reparsed, &signer.public_key()).is_ok());
    }
}
