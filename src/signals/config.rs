//! The signals context's configuration: `policies/signals.yaml` (loaded and
//! validated by [`crate::policy::signals`]) and where each kind is routed.

use std::path::Path;

use super::finding::Kind;
use super::SignalsError;
use crate::policy::signals::SignalsPolicy;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: SignalsPolicy,
    /// How long a reviewer holds an item they opened (seconds).
    pub lease_secs: i64,
    /// Items returned by one queue listing at most.
    pub max_list: i64,
}

impl Config {
    pub fn load(policy_dir: &Path) -> Result<Config, SignalsError> {
        let policy = SignalsPolicy::load(policy_dir).map_err(|e| SignalsError::Config(e.to_string()))?;
        let c = Config { policy, lease_secs: 15 * 60, max_list: 500 };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), SignalsError> {
        self.policy.validate().map_err(SignalsError::Config)?;
        if !(60..=86_400).contains(&self.lease_secs) || !(1..=10_000).contains(&self.max_list) {
            return Err(SignalsError::Config("lease_secs must be 60-86400 and max_list 1-10000".into()));
        }
        Ok(())
    }

    /// The queue (a role) a kind is routed to.
    pub fn route(&self, kind: Kind) -> &str {
        match kind {
            Kind::ContentDefect => &self.policy.content_defect.route,
            Kind::Disengagement => &self.policy.disengagement.route,
            Kind::Integrity => &self.policy.integrity.route,
        }
    }

    /// The kinds routed to `queue`.
    pub fn kinds_of(&self, queue: &str) -> Vec<Kind> {
        Kind::ALL.into_iter().filter(|k| self.route(*k) == queue).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_routes() {
        let c = Config::load(&crate::policy::shipped_dir()).unwrap();
        assert_eq!(c.route(Kind::ContentDefect), "content_author");
        assert_eq!(c.route(Kind::Disengagement), "advisor");
        assert_eq!(c.kinds_of("integrity_panel"), vec![Kind::Integrity]);
        let mut bad = c.clone();
        bad.lease_secs = 0;
        assert!(bad.validate().is_err());
    }
}
