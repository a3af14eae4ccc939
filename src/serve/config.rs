//! The serving layer's configuration: the disclosure policy
//! (`policies/disclosure.yaml`, loaded by [`crate::policy::disclosure`]) and
//! the limits of the query shapes.

use std::path::Path;

use super::disclosure::Thresholds;
use super::ServeError;
use crate::policy::disclosure::DisclosurePolicy;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: DisclosurePolicy,
    /// Longest `from..to` range of the funnel, time-on-task and replays views.
    pub max_window_days: i64,
    /// Longest engagement window (`minutes`).
    pub max_engagement_minutes: u32,
}

impl Config {
    pub fn load(policy_dir: &Path) -> Result<Config, ServeError> {
        let policy = DisclosurePolicy::load(policy_dir).map_err(|e| ServeError::Config(e.to_string()))?;
        let c = Config { policy, max_window_days: 400, max_engagement_minutes: 24 * 60 };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ServeError> {
        self.policy.validate().map_err(ServeError::Config)?;
        if !(1..=800).contains(&self.max_window_days) || !(1..=7 * 24 * 60).contains(&self.max_engagement_minutes) {
            return Err(ServeError::Config("max_window_days must be 1-800 and max_engagement_minutes 1-10080".into()));
        }
        Ok(())
    }

    /// The thresholds for a course whose learners belong to `institutions`:
    /// the strictest of theirs.
    pub fn thresholds(&self, institutions: &[String]) -> Thresholds {
        let mut t = self.policy.defaults;
        for (k, i) in institutions.iter().enumerate() {
            let o = self.policy.thresholds(i);
            if k == 0 {
                t = o;
            } else {
                t.min_cell = t.min_cell.max(o.min_cell);
                t.extreme_share_min = t.extreme_share_min.max(o.extreme_share_min);
                t.protection_width = t.protection_width.max(o.protection_width);
            }
        }
        Thresholds { min_cell: t.min_cell, extreme_share_min: t.extreme_share_min, protection_width: t.protection_width }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_institution_wins() {
        let c = Config::load(&crate::policy::shipped_dir()).unwrap();
        assert_eq!(c.thresholds(&[]).min_cell, 10);
        assert_eq!(c.thresholds(&["uni-a".into()]).min_cell, 10);
        assert_eq!(c.thresholds(&["uni-a".into(), "uni-strict".into()]).min_cell, 20);
        let mut bad = c.clone();
        bad.max_window_days = 0;
        assert!(bad.validate().is_err());
    }
}
