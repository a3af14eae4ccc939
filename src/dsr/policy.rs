//! `policies/erasure.yaml`: what erasure keeps and why (suppression after erasure).

use serde::Deserialize;
use std::path::Path;

use super::DsrError;
use crate::policy::PolicyError;

#[derive(Debug, Clone, Deserialize)]
pub struct LiftPurpose {
    pub id: String,
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    /// Keep a blind index of the erased learner in the tombstone and refuse them.
    pub enabled: bool,
    /// The purposes for which a DPO may lift a suppression.
    #[serde(default)]
    pub lift_purposes: Vec<LiftPurpose>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasurePolicy {
    pub suppression: Suppression,
}

impl Default for ErasurePolicy {
    /// Suppression on: the safe side when the file is absent.
    fn default() -> Self {
        ErasurePolicy { suppression: Suppression { enabled: true, lift_purposes: Vec::new() } }
    }
}

impl ErasurePolicy {
    /// `{dir}/erasure.yaml`, or the default (suppression on) when there is none.
    pub fn load(dir: &Path) -> Result<ErasurePolicy, DsrError> {
        let path = dir.join("erasure.yaml");
        let invalid = |message: String| DsrError::DataMap(PolicyError::invalid(&path, message).into());
        let p: ErasurePolicy = match crate::policy::read(&path) {
            Ok(p) => p,
            Err(PolicyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(ErasurePolicy::default()),
            Err(e) => return Err(DsrError::DataMap(e.into())),
        };
        for lp in &p.suppression.lift_purposes {
            if lp.id.is_empty() || !lp.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(invalid(format!("lift purpose {:?}: lowercase letters and _ only", lp.id)));
            }
        }
        Ok(p)
    }

    /// The purposes a suppression may be lifted for.
    pub fn lift_purposes(&self) -> impl Iterator<Item = &str> {
        self.suppression.lift_purposes.iter().map(|p| p.id.as_str())
    }

    pub fn may_lift_for(&self, purpose: &str) -> bool {
        self.suppression.lift_purposes.iter().any(|p| p.id == purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_suppresses_and_names_its_lift_purposes() {
        let p = ErasurePolicy::load(&crate::policy::shipped_dir()).unwrap();
        assert!(p.suppression.enabled);
        assert!(p.may_lift_for("re_enrolment"));
        assert!(!p.may_lift_for("curiosity"));
        assert!(ErasurePolicy::load(Path::new("/nonexistent")).unwrap().suppression.enabled);
    }
}
