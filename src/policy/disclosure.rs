//! `policies/disclosure.yaml`: the thresholds of disclosure control (default
//! and per institution) and the drill-down limits. Validated at load.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::{read, PolicyError};

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdDef {
    pub min_cell: u64,
    pub extreme_share_min: u64,
    pub protection_width: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrilldownDef {
    pub max_per_hour: u32,
    pub timeline_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosurePolicy {
    pub defaults: ThresholdDef,
    #[serde(default)]
    pub institutions: BTreeMap<String, ThresholdDef>,
    pub drilldown: DrilldownDef,
    #[serde(default)]
    pub live: LiveDef,
    #[serde(default)]
    pub released: ReleasedDef,
    /// Cohort views asked with the same parameters share the rows of a query
    /// that started at most this long before (milliseconds; 0: every request
    /// queries). Each response is still released and audited on its own.
    #[serde(default = "default_shared_query_ms")]
    pub shared_query_ms: u64,
    /// A cohort view may take rows up to this old (milliseconds) while one refresh runs
    /// in the background (stale-while-revalidate: a dashboard reloaded within it paints
    /// without waiting for the warehouse). At least twice `shared_query_ms` in effect.
    #[serde(default = "default_stale_query_ms")]
    pub stale_query_ms: u64,
}

fn default_shared_query_ms() -> u64 {
    500
}

fn default_stale_query_ms() -> u64 {
    120_000
}

/// The released tables for BI tools (`released.cells`), refreshed by `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedDef {
    /// Seconds between refreshes (0: never published).
    pub refresh_secs: u64,
    /// The engagement window published, minutes.
    pub engagement_minutes: u32,
}

impl Default for ReleasedDef {
    fn default() -> Self {
        ReleasedDef { refresh_secs: 60, engagement_minutes: 60 }
    }
}

/// The live view (`GET /v1/courses/{course}/live`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveDef {
    /// Live counts are released as the floor of bands this wide; wider than
    /// every `protection_width`, so the difference of two messages never
    /// narrows a withheld cell below it.
    pub band: u64,
    /// Refresh interval of a stream, milliseconds.
    pub interval_ms: u64,
    /// Streams of one course share their queries: a stream refreshing takes
    /// the rows of a query that started at most this long before it asked
    /// (0: every stream queries on its own). At most `interval_ms`.
    #[serde(default = "default_coalesce_ms")]
    pub coalesce_ms: u64,
}

fn default_coalesce_ms() -> u64 {
    250
}

impl Default for LiveDef {
    fn default() -> Self {
        LiveDef { band: 20, interval_ms: 2000, coalesce_ms: default_coalesce_ms() }
    }
}

impl DisclosurePolicy {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("disclosure.yaml");
        let p: DisclosurePolicy = read(&path)?;
        p.validate().map_err(|message| PolicyError::Invalid { path: path.display().to_string(), message })?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        let check = |what: &str, t: &ThresholdDef| -> Result<(), String> {
            if t.min_cell < 3 {
                return Err(format!("{what}: min_cell must be at least 3"));
            }
            if t.extreme_share_min < t.min_cell {
                return Err(format!("{what}: extreme_share_min must be at least min_cell"));
            }
            if !(t.protection_width >= 1.0 && t.protection_width.is_finite()) {
                return Err(format!("{what}: protection_width must be at least 1"));
            }
            Ok(())
        };
        check("defaults", &self.defaults)?;
        for (i, t) in &self.institutions {
            check(&format!("institution {i}"), t)?;
        }
        let widest = self.institutions.values().chain([&self.defaults]).map(|t| t.protection_width).fold(0.0, f64::max);
        if (self.live.band as f64) <= widest || !(100..=60_000).contains(&self.live.interval_ms) || self.live.coalesce_ms > self.live.interval_ms {
            return Err(format!(
                "live: band must be wider than every protection_width ({widest}), interval_ms 100-60000 and coalesce_ms at most interval_ms"
            ));
        }
        if self.shared_query_ms > 10_000 {
            return Err("shared_query_ms must be at most 10000".into());
        }
        if self.stale_query_ms > 300_000 {
            return Err("stale_query_ms must be at most 300000".into());
        }
        if self.released.engagement_minutes == 0 || self.released.engagement_minutes > 24 * 60 {
            return Err("released: engagement_minutes must be 1-1440".into());
        }
        if self.drilldown.max_per_hour == 0 || self.drilldown.timeline_limit == 0 || self.drilldown.timeline_limit > 10_000 {
            return Err("drilldown: max_per_hour must be positive and timeline_limit 1-10000".into());
        }
        Ok(())
    }

    /// The thresholds in force for `institution`.
    pub fn thresholds(&self, institution: &str) -> ThresholdDef {
        self.institutions.get(institution).copied().unwrap_or(self.defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_loads_with_the_nces_default() {
        let p = DisclosurePolicy::load(&crate::policy::shipped_dir()).unwrap();
        assert_eq!(p.defaults.min_cell, 10);
        assert_eq!(p.thresholds("uni-strict").min_cell, 20);
        assert_eq!(p.thresholds("uni-a"), p.defaults);
    }

    #[test]
    fn invalid_thresholds_are_refused() {
        let mut p = DisclosurePolicy {
            defaults: ThresholdDef { min_cell: 10, extreme_share_min: 20, protection_width: 10.0 },
            institutions: BTreeMap::new(),
            drilldown: DrilldownDef { max_per_hour: 10, timeline_limit: 100 },
            live: LiveDef::default(),
            released: ReleasedDef::default(),
            shared_query_ms: default_shared_query_ms(),
            stale_query_ms: default_stale_query_ms(),
        };
        assert!(p.validate().is_ok());
        p.institutions.insert("x".into(), ThresholdDef { min_cell: 1, extreme_share_min: 20, protection_width: 10.0 });
        assert!(p.validate().unwrap_err().contains("institution x"));
        p.institutions.clear();
        p.defaults.extreme_share_min = 5;
        assert!(p.validate().is_err());
    }
}
