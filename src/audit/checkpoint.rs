//! Signed checkpoints of the audit chain's head: what anchors the chain outside
//! PostgreSQL (as Certificate Transparency's signed tree heads).
//!
//! A checkpoint is `{"checkpoint": {type, seq, hash, at, signed_at}, "signature":
//! {algorithm: Ed25519, public_key, value}}`, the signature over the body
//! serialised with its keys sorted. The key is derived for this one use
//! (`HKDF(master, "learnvault/v1/service/audit-checkpoint-ed25519")`), so no other
//! key use can forge one. Checkpoints are written (never overwritten) as
//! `{seq:020}.json` into a directory from configuration
//! (`LEARNVAULT_AUDIT_CHECKPOINT_DIR`), at an interval by `serve` and after every
//! successful verification, with a copy in the log; `GET /v1/audit/checkpoint`
//! serves the latest, so an external auditor can keep them.
//!
//! Invariants: a checkpoint is signed only for a head reached by a chain that
//! verified from the previous checkpoint (or from the genesis); verification
//! trusts only checkpoints that carry this deployment's signature, and any other
//! file in the store fails it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

use crate::vault::keys::MasterKey;

pub const KEY_LABEL: &str = "audit-checkpoint-ed25519";
const TYPE: &str = "learnvault.audit-checkpoint/v1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {file} is not trusted: {why}")]
    Untrusted { file: String, why: &'static str },
    #[error("checkpoint store {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// The chain's head as a checkpoint states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Head {
    pub seq: i64,
    /// Hex SHA-256 of the row at `seq`.
    pub hash: String,
    /// The time of the row at `seq`.
    pub at: DateTime<Utc>,
}

/// A trusted (signature checked) checkpoint from the store.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub head: Head,
    pub signed_at: String,
    pub file: PathBuf,
    /// The signed document as stored.
    pub doc: Value,
}

pub struct Anchor {
    pair: Ed25519KeyPair,
    dir: PathBuf,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Anchor(public {}, {})", self.public_key(), self.dir.display())
    }
}

impl Anchor {
    pub fn derive(master: &MasterKey, dir: PathBuf) -> Anchor {
        let seed = master.service_key(KEY_LABEL);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..]).expect("a 32-byte seed is a valid Ed25519 key");
        Anchor { pair, dir }
    }

    /// Base64 of the raw 32-byte public key.
    pub fn public_key(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io { dir: self.dir.display().to_string(), source }
    }

    /// Sign `head` now.
    pub fn sign(&self, head: &Head) -> Value {
        let body = json!({
            "type": TYPE,
            "seq": head.seq,
            "hash": head.hash,
            "at": crate::audit::chain::format_at(&head.at),
            "signed_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        let sig = self.pair.sign(&serde_json::to_vec(&body).expect("JSON"));
        json!({"checkpoint": body, "signature": {"algorithm": "Ed25519", "public_key": self.public_key(), "value": B64.encode(sig.as_ref())}})
    }

    /// Sign `head` and write it to the store unless a checkpoint of that
    /// sequence number is there already (never overwritten); logged either way.
    pub fn store(&self, head: &Head) -> Result<Checkpoint, CheckpointError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let file = self.dir.join(format!("{:020}.json", head.seq));
        if file.exists() {
            return self.read(&file);
        }
        let doc = self.sign(head);
        let tmp = self.dir.join(format!(".{:020}.json.partial", head.seq));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("JSON")).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &file).map_err(|e| self.io(e))?;
        // The copy in the log: whoever keeps the logs keeps the anchors too.
        tracing::info!(seq = head.seq, hash = %head.hash, checkpoint = %doc, "audit checkpoint signed");
        Ok(Checkpoint { head: head.clone(), signed_at: doc["checkpoint"]["signed_at"].as_str().unwrap_or_default().to_owned(), file, doc })
    }

    fn read(&self, file: &Path) -> Result<Checkpoint, CheckpointError> {
        let name = file.display().to_string();
        let untrusted = |why| CheckpointError::Untrusted { file: name.clone(), why };
        let text = std::fs::read(file).map_err(|e| self.io(e))?;
        let doc: Value = serde_json::from_slice(&text).map_err(|_| untrusted("not JSON"))?;
        let (head, signed_at) = check(&doc, &self.public_key()).map_err(untrusted)?;
        Ok(Checkpoint { head, signed_at, file: file.to_owned(), doc })
    }

    /// Every checkpoint in the store, by sequence number; fails on any file
    /// that is not a checkpoint signed by this deployment's key.
    pub fn load_all(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e.map_err(|e| self.io(e))?.path();
            if path.extension().and_then(|x| x.to_str()) == Some("json") {
                out.push(self.read(&path)?);
            }
        }
        out.sort_by_key(|c| c.head.seq);
        Ok(out)
    }
}

/// Check a checkpoint document against `public_key` (base64): its head and signing time.
pub fn check(doc: &Value, public_key: &str) -> Result<(Head, String), &'static str> {
    let body = doc.get("checkpoint").filter(|b| b.is_object()).ok_or("no checkpoint object")?;
    let sig = doc.get("signature").ok_or("no signature")?;
    if body.get("type").and_then(Value::as_str) != Some(TYPE) {
        return Err("not an audit checkpoint");
    }
    if sig.get("algorithm").and_then(Value::as_str) != Some("Ed25519") {
        return Err("signature algorithm must be Ed25519");
    }
    if sig.get("public_key").and_then(Value::as_str) != Some(public_key) {
        return Err("signed by another key than this deployment's");
    }
    let key = B64.decode(public_key).map_err(|_| "public key is not base64")?;
    let value = B64.decode(sig.get("value").and_then(Value::as_str).ok_or("no signature value")?).map_err(|_| "signature is not base64")?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&serde_json::to_vec(body).expect("JSON"), &value)
        .map_err(|_| "the signature does not match: altered or forged")?;
    let seq = body.get("seq").and_then(Value::as_i64).ok_or("no seq")?;
    let hash = body.get("hash").and_then(Value::as_str).filter(|h| h.len() == 64).ok_or("no hash")?.to_owned();
    let at = body
        .get("at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .ok_or("no time")?
        .with_timezone(&Utc);
    Ok((Head { seq, hash, at }, body.get("signed_at").and_then(Value::as_str).unwrap_or_default().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: i64) -> Head {
        Head { seq, hash: "ab".repeat(32), at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap() }
    }

    #[test]
    fn signed_checkpoints_verify_and_foreign_or_altered_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("lv-cp-{}", uuid::Uuid::new_v4().simple()));
        let anchor = Anchor::derive(&MasterKey::generate(), dir.clone());
        let cp = anchor.store(&head(7)).unwrap();
        assert_eq!(check(&cp.doc, &anchor.public_key()).unwrap().0, head(7));
        assert_eq!(anchor.load_all().unwrap().len(), 1);
        // Never overwritten: the same sequence number returns the stored one.
        assert_eq!(anchor.store(&head(7)).unwrap().doc, cp.doc);

        let mut altered = cp.doc.clone();
        altered["checkpoint"]["seq"] = json!(9);
        assert!(check(&altered, &anchor.public_key()).unwrap_err().contains("altered"));
        let other = Anchor::derive(&MasterKey::generate(), dir.clone());
        assert!(check(&other.sign(&head(8)), &anchor.public_key()).unwrap_err().contains("another key"));

        // A foreign checkpoint in the store makes loading fail, naming the file.
        other.store(&head(8)).unwrap();
        match anchor.load_all() {
            Err(CheckpointError::Untrusted { file, .. }) => assert!(file.ends_with("00000000000000000008.json"), "{file}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
