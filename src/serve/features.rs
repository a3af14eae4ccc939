//! A learner's recommendation features (behaviour only: the `features.*`
//! views, whose lineage CI checks against protected attributes), served only
//! when the learner granted `recommendations` consent (or the policy grants it
//! by default). An individual view: the caller authorises and audits.

use serde_json::{Map, Value};

use super::{queries, Serve, ServeError};
use crate::domain::Pseudonym;
use crate::vault::Vault;

/// The feature set served.
pub const FEATURE_SET: &str = "features.learner_engagement";

pub enum Features {
    /// No `recommendations` consent: nothing is read.
    ConsentRequired,
    /// Feature name -> value; empty when the learner has no activity in the window.
    Granted(Map<String, Value>),
}

impl Serve {
    /// The consent check, then the features. `granted_by_default`: the
    /// policy's default for `recommendations` when no decision is recorded.
    pub async fn features(&self, vault: &Vault, granted_by_default: bool, pseudonym: Pseudonym) -> Result<Features, ServeError> {
        let (current, _) = vault.consent(pseudonym).await?;
        let granted = current.iter().find(|c| c.purpose == "recommendations").map(|c| c.granted).unwrap_or(granted_by_default);
        if !granted {
            return Ok(Features::ConsentRequired);
        }
        let rows = self.run(&queries::LEARNER_FEATURES, &[("p", pseudonym.as_uuid().to_string())]).await?;
        Ok(Features::Granted(rows.into_iter().next().and_then(|r| r.as_object().cloned()).unwrap_or_default()))
    }
}
