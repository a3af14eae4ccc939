//! Key hierarchy. The 32-byte master key is never stored in the database.
//! Every other key is derived from it with HKDF-SHA256, with a distinct `info`
//! label per use, institution and key version:
//!
//! ```text
//! learnvault/v1/{use}/{institution}/{version}
//! ```
//! uses: `blind-index` (HMAC key for external-id lookups), `key-wrap` (AES-256-GCM
//! key wrapping per-learner data keys), and process-wide `jwt-dev-hs256`.

use base64::Engine as _;
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

use crate::config::Settings;

const SALT: &[u8] = b"learnvault/hkdf-salt/v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key is not valid base64 of 32 bytes")]
    Malformed,
    #[error("production mode requires LEARNVAULT_MASTER_KEY or LEARNVAULT_MASTER_KEY_FILE")]
    MissingInProduction,
    #[error("cannot read or create the master key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Purposes a derived key serves; distinct HKDF `info` labels.
#[derive(Debug, Clone, Copy)]
pub enum KeyUse {
    BlindIndex,
    KeyWrap,
}

impl KeyUse {
    fn label(self) -> &'static str {
        match self {
            KeyUse::BlindIndex => "blind-index",
            KeyUse::KeyWrap => "key-wrap",
        }
    }
}

#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

impl MasterKey {
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| KeyError::Malformed)?,
        );
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Malformed)?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        MasterKey(k)
    }

    pub fn to_base64(&self) -> SecretString {
        base64::engine::general_purpose::STANDARD.encode(self.0.as_ref()).into()
    }

    /// Load per settings: explicit key, then key file; in development only,
    /// generate a key file (0600) with a loud warning.
    pub fn load(settings: &Settings) -> Result<Self, KeyError> {
        Self::load_at(settings, settings.dev_key_path())
    }

    /// [`MasterKey::load`] with the key file at `path` (`settings.dev_key_path()`).
    fn load_at(settings: &Settings, path: std::path::PathBuf) -> Result<Self, KeyError> {
        if let Some(k) = &settings.vault.master_key {
            return Self::from_base64(k.expose_secret());
        }
        if settings.is_production() && settings.vault.master_key_file.is_none() {
            // Production never reads the development key file, even if one is lying around:
            // the key must be configured on purpose.
            if path.exists() {
                tracing::warn!(path = %path.display(), "a development master key file exists; production mode ignores it");
            }
            return Err(KeyError::MissingInProduction);
        }
        if settings.vault.master_key_file.is_some() || path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
                path: path.display().to_string(),
                source,
            })?;
            return Self::from_base64(&text);
        }
        if settings.is_production() {
            return Err(KeyError::MissingInProduction);
        }
        let key = Self::generate();
        write_private(&path, key.to_base64().expose_secret()).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        tracing::warn!(
            path = %path.display(),
            "GENERATED A DEVELOPMENT MASTER KEY. Every vault key derives from it: losing it loses every identity. \
             Never use it in production: set LEARNVAULT_MASTER_KEY or LEARNVAULT_MASTER_KEY_FILE and LEARNVAULT_ENV=production."
        );
        Ok(key)
    }

    fn derive(&self, info: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(SALT), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(info.as_bytes(), out.as_mut()).expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }

    /// A per-institution key for `use_`, at key `version`.
    pub fn institution_key(&self, use_: KeyUse, institution: &str, version: i32) -> Zeroizing<[u8; 32]> {
        self.derive(&format!("learnvault/v1/{}/{}/{}", use_.label(), institution, version))
    }

    /// A process-wide key for a named use (e.g. `jwt-dev-hs256`, `dsr-certificate`).
    pub fn service_key(&self, name: &str) -> Zeroizing<[u8; 32]> {
        self.derive(&format!("learnvault/v1/service/{name}"))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_distinct_per_use_institution_and_version() {
        let m = MasterKey::generate();
        let a = m.institution_key(KeyUse::BlindIndex, "uni-a", 1);
        assert_ne!(*a, *m.institution_key(KeyUse::KeyWrap, "uni-a", 1));
        assert_ne!(*a, *m.institution_key(KeyUse::BlindIndex, "uni-b", 1));
        assert_ne!(*a, *m.institution_key(KeyUse::BlindIndex, "uni-a", 2));
        assert_eq!(*a, *m.institution_key(KeyUse::BlindIndex, "uni-a", 1));
    }

    #[test]
    fn production_never_loads_the_development_key_file() {
        let dir = std::env::temp_dir().join(format!("lv-devkey-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = dir.join("dev-master.key");
        std::fs::write(&dev, MasterKey::generate().to_base64().expose_secret()).unwrap();
        // Development with no key configured reads the file at the development path...
        let mut s = Settings::default();
        assert!(MasterKey::load_at(&s, dev.clone()).is_ok());
        // ...production refuses to, however the file got there.
        s.env = crate::config::Environment::Production;
        assert!(matches!(MasterKey::load_at(&s, dev.clone()), Err(KeyError::MissingInProduction)));
        // A key file named on purpose is the production way.
        s.vault.master_key_file = Some(dev.clone());
        assert!(MasterKey::load_at(&s, s.dev_key_path()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn base64_roundtrip_and_rejects_short_keys() {
        let m = MasterKey::generate();
        let b = m.to_base64();
        let again = MasterKey::from_base64(b.expose_secret()).unwrap();
        assert_eq!(*m.service_key("x"), *again.service_key("x"));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }
}
