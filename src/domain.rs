//! Domain newtypes. Each validates in its `parse` so that a value of the type is
//! known-good everywhere else. None of them implements `Display` for raw
//! identifiers: an [`ExternalId`] can only be shown redacted.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Why a value was refused; `code` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code, message: message.into() }
}

/// `s` when it is 1 to `max_len` bytes, each of them `allowed`.
fn token(s: &str, max_len: usize, allowed: impl Fn(u8) -> bool) -> Option<String> {
    (!s.is_empty() && s.len() <= max_len && s.bytes().all(allowed)).then(|| s.to_owned())
}

/// A learner pseudonym: a random UUID v4 issued by the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Pseudonym(Uuid);

impl Pseudonym {
    /// A fresh random pseudonym (never derived from the identity).
    pub fn new_random() -> Self {
        Pseudonym(Uuid::new_v4())
    }
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let u = Uuid::parse_str(s.trim())
            .map_err(|_| invalid("invalid_pseudonym", "pseudonym must be a UUID"))?;
        Ok(Pseudonym(u))
    }
    pub fn from_uuid(u: Uuid) -> Self {
        Pseudonym(u)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An institution identifier: 1-128 chars of `[A-Za-z0-9._:-]`. Not personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct InstitutionId(String);

impl InstitutionId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        token(s, 128, |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
            .map(InstitutionId)
            .ok_or_else(|| invalid("invalid_institution", "institution must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"))
    }
}

/// The LMS's own identifier for a learner: personal data. Normalised by
/// trimming surrounding whitespace (case is preserved: LMS ids may be
/// case-sensitive). Its `Debug` is redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalId(String);

impl ExternalId {
    pub const MAX_LEN: usize = 256;
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let t = s.trim();
        if t.is_empty() {
            return Err(invalid("invalid_external_id", "external_id must not be empty"));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(invalid("invalid_external_id", "external_id is longer than 256 characters"));
        }
        if t.chars().any(char::is_control) {
            return Err(invalid("invalid_external_id", "external_id contains control characters"));
        }
        Ok(ExternalId(t.to_owned()))
    }
    /// The normalised bytes fed to the blind index. Only `vault` calls this.
    pub(crate) fn normalised(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExternalId(<redacted>)")
    }
}

/// A declared purpose id (from `policies/purposes.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Purpose(String);

impl Purpose {
    /// Syntactic check only; whether the purpose is declared is the policy's call.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        token(s, 64, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            .map(Purpose)
            .ok_or_else(|| invalid("unknown_purpose", "purpose must be one of the declared purposes"))
    }
}

/// `as_str` and `Display` of the newtypes holding a validated, non-personal string.
macro_rules! shown_as_str {
    ($($t:ident),*) => {$(
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

shown_as_str!(InstitutionId, Purpose);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonym_parses_uuids_only() {
        assert!(Pseudonym::parse("not-a-uuid").is_err());
        let p = Pseudonym::new_random();
        assert_eq!(Pseudonym::parse(&p.to_string()).unwrap(), p);
        assert_eq!(p.as_uuid().get_version_num(), 4);
    }

    #[test]
    fn institution_rejects_spaces_and_empty() {
        assert!(InstitutionId::parse("uni-1.example").is_ok());
        assert_eq!(InstitutionId::parse("").unwrap_err().code, "invalid_institution");
        assert!(InstitutionId::parse("a b").is_err());
        assert!(InstitutionId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn external_id_trims_and_redacts() {
        let e = ExternalId::parse("  S-123  ").unwrap();
        assert_eq!(e.normalised(), b"S-123");
        assert_eq!(format!("{e:?}"), "ExternalId(<redacted>)");
        assert!(ExternalId::parse("   ").is_err());
        assert!(ExternalId::parse("a\nb").is_err());
        assert!(ExternalId::parse(&"x".repeat(257)).is_err());
    }

    #[test]
    fn purpose_syntax() {
        assert!(Purpose::parse("subject_access_request").is_ok());
        assert!(Purpose::parse("Drop Table").is_err());
        assert!(Purpose::parse("").is_err());
    }
}
