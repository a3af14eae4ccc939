//! Envelope encryption of identities and blind indexes. Pure functions, no I/O.
//!
//! * blind index = HMAC-SHA256(institution index key, normalised external id)
//! * identity_ct = nonce || AES-256-GCM(DEK, identity JSON, AAD)
//! * wrapped_dek = nonce || AES-256-GCM(institution wrap key, DEK, AAD)
//!
//! The AAD binds each ciphertext to its pseudonym and institution, so a
//! ciphertext copied into another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::domain::{ExternalId, Pseudonym};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext does not authenticate for this row")]
    Authentication,
    #[error("ciphertext is malformed")]
    Malformed,
}

pub fn blind_index(index_key: &[u8; 32], external_id: &ExternalId) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(index_key).expect("HMAC takes any key length");
    mac.update(external_id.normalised());
    mac.finalize().into_bytes().into()
}

fn aad(kind: &str, pseudonym: Pseudonym, institution: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(kind.len() + 17 + institution.len());
    v.extend_from_slice(kind.as_bytes());
    v.push(0);
    v.extend_from_slice(pseudonym.as_uuid().as_bytes());
    v.extend_from_slice(institution.as_bytes());
    v
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption of in-memory data cannot fail");
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 12 + 16 {
        return Err(CryptoError::Malformed);
    }
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let (nonce, ct) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Authentication)
}

/// The two ciphertext columns of a vault row.
pub struct Sealed {
    pub wrapped_dek: Vec<u8>,
    pub identity_ct: Vec<u8>,
}

/// Encrypt `identity` under a fresh DEK, and wrap the DEK.
pub fn seal_identity(wrap_key: &[u8; 32], pseudonym: Pseudonym, institution: &str, identity: &[u8]) -> Sealed {
    let mut dek = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(dek.as_mut());
    Sealed {
        identity_ct: seal(&dek, identity, &aad("identity", pseudonym, institution)),
        wrapped_dek: seal(wrap_key, dek.as_ref(), &aad("dek", pseudonym, institution)),
    }
}

pub fn open_identity(
    wrap_key: &[u8; 32],
    pseudonym: Pseudonym,
    institution: &str,
    wrapped_dek: &[u8],
    identity_ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let dek = open(wrap_key, wrapped_dek, &aad("dek", pseudonym, institution))?;
    let dek: &[u8; 32] = dek.as_slice().try_into().map_err(|_| CryptoError::Malformed)?;
    open(dek, identity_ct, &aad("identity", pseudonym, institution))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_aad_binding() {
        let k = [7u8; 32];
        let p = Pseudonym::new_random();
        let s = seal_identity(&k, p, "uni", b"{\"name\":\"Ada\"}");
        let plain = open_identity(&k, p, "uni", &s.wrapped_dek, &s.identity_ct).unwrap();
        assert_eq!(plain.as_slice(), b"{\"name\":\"Ada\"}");
        // Same key, other row: refused.
        let other = Pseudonym::new_random();
        assert_eq!(
            open_identity(&k, other, "uni", &s.wrapped_dek, &s.identity_ct).unwrap_err(),
            CryptoError::Authentication
        );
        assert!(open_identity(&k, p, "uni2", &s.wrapped_dek, &s.identity_ct).is_err());
        assert!(open_identity(&[8u8; 32], p, "uni", &s.wrapped_dek, &s.identity_ct).is_err());
        assert_eq!(open_identity(&k, p, "uni", &s.wrapped_dek, &[1, 2]).unwrap_err(), CryptoError::Malformed);
    }

    #[test]
    fn blind_index_is_keyed_and_normalised() {
        let a = ExternalId::parse(" S1 ").unwrap();
        let b = ExternalId::parse("S1").unwrap();
        assert_eq!(blind_index(&[1; 32], &a), blind_index(&[1; 32], &b));
        assert_ne!(blind_index(&[1; 32], &a), blind_index(&[2; 32], &a));
    }
}
