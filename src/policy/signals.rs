//! `policies/signals.yaml`: the detectors' thresholds, bands, minimum
//! learners, the findings' TTL and the routing of each detector to a review
//! queue (a role). Validated at load: a route to an unknown role, a threshold
//! out of range or a TTL that differs from `retention.yaml` is an error.

use serde::Deserialize;
use std::path::Path;

use super::{read, PolicyError, Policies};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentDefectDef {
    pub route: String,
    pub min_learners: u64,
    pub z: f64,
    pub sd_floor: f64,
    pub course_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisengagementDef {
    pub route: String,
    pub min_active_days: u32,
    pub max_silence_probability: f64,
    pub gap_factor: f64,
    pub trend_ratio: f64,
    pub trend_relief: f64,
    pub min_cohort_learners: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityDef {
    pub route: String,
    pub close_seconds: u32,
    pub min_close_assessments: u32,
    pub min_close_share: f64,
    pub max_chance_probability: f64,
    pub window_days: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsPolicy {
    pub interval_secs: u64,
    pub ttl_months: u32,
    pub baseline_days: u32,
    pub content_defect: ContentDefectDef,
    pub disengagement: DisengagementDef,
    pub integrity: IntegrityDef,
}

#[derive(Deserialize)]
struct RetentionTtl {
    clickhouse: std::collections::BTreeMap<String, TtlDef>,
}
#[derive(Deserialize)]
struct TtlDef {
    months: u32,
}

impl SignalsPolicy {
    /// Load `signals.yaml` from `dir`, checked against its `roles.yaml` and `retention.yaml`.
    pub fn load(dir: &Path) -> Result<SignalsPolicy, PolicyError> {
        let path = dir.join("signals.yaml");
        let p: SignalsPolicy = read(&path)?;
        let invalid = |message: String| PolicyError::Invalid { path: path.display().to_string(), message };
        p.validate().map_err(invalid)?;
        let roles = Policies::load(dir)?;
        for route in [&p.content_defect.route, &p.disengagement.route, &p.integrity.route] {
            if !roles.is_role(route) {
                return Err(invalid(format!("route {route:?} is not a role of roles.yaml")));
            }
        }
        let r: RetentionTtl = read(&dir.join("retention.yaml"))?;
        match r.clickhouse.get("signals.findings") {
            Some(t) if t.months == p.ttl_months => {}
            _ => return Err(invalid(format!("ttl_months {} must equal retention.yaml clickhouse signals.findings", p.ttl_months))),
        }
        Ok(p)
    }

    /// The rules every field must satisfy (pure).
    pub fn validate(&self) -> Result<(), String> {
        let c = &self.content_defect;
        let d = &self.disengagement;
        let i = &self.integrity;
        let checks: [(bool, &str); 15] = [
            ((1..=120).contains(&self.ttl_months), "ttl_months must be 1-120"),
            ((7..=365).contains(&self.baseline_days), "baseline_days must be 7-365"),
            (c.min_learners >= 1, "content_defect.min_learners must be at least 1"),
            (c.z > 0.0 && c.sd_floor > 0.0, "content_defect.z and sd_floor must be positive"),
            (c.course_ratio >= 1.0, "content_defect.course_ratio must be at least 1"),
            (d.min_active_days >= 2, "disengagement.min_active_days must be at least 2"),
            (d.max_silence_probability > 0.0 && d.max_silence_probability < 0.5, "disengagement.max_silence_probability must be in (0, 0.5)"),
            (d.gap_factor >= 1.0, "disengagement.gap_factor must be at least 1"),
            (d.trend_ratio > 0.0 && d.trend_ratio <= 1.0 && d.trend_relief >= 1.0 && d.max_silence_probability * d.trend_relief < 0.5,
             "disengagement.trend_ratio must be in (0, 1], trend_relief at least 1 and max_silence_probability x trend_relief below 0.5"),
            (d.min_cohort_learners >= 1, "disengagement.min_cohort_learners must be at least 1"),
            ((1..=3600).contains(&i.close_seconds), "integrity.close_seconds must be 1-3600"),
            (i.min_close_assessments >= 2, "integrity.min_close_assessments must be at least 2"),
            (i.min_close_share > 0.0 && i.min_close_share <= 1.0, "integrity.min_close_share must be in (0, 1]"),
            (i.max_chance_probability > 0.0 && i.max_chance_probability < 0.5, "integrity.max_chance_probability must be in (0, 0.5)"),
            ((1..=366).contains(&i.window_days), "integrity.window_days must be 1-366"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, m)) => Err((*m).to_owned()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_loads_and_bad_values_are_refused() {
        let dir = crate::policy::shipped_dir();
        let p = SignalsPolicy::load(&dir).unwrap();
        assert_eq!(p.integrity.route, "integrity_panel");
        let mut bad = p.clone();
        bad.integrity.min_close_share = 0.0;
        assert!(bad.validate().unwrap_err().contains("min_close_share"));
        let mut bad = p.clone();
        bad.content_defect.min_learners = 0;
        assert!(bad.validate().is_err());
        assert!(p.validate().is_ok());
    }
}
