//! What a detector returns: a [`Finding`], a hypothesis about content or
//! learners with its statistic, baseline, band and evidence. Pseudonyms only;
//! the evidence names a finding's learners by position (subject 0, 1), so an
//! erased subject disappears from every item that named them.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// The detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "signal_kind", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ContentDefect,
    Disengagement,
    Integrity,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::ContentDefect, Kind::Disengagement, Kind::Integrity];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ContentDefect => "content_defect",
            Kind::Disengagement => "disengagement",
            Kind::Integrity => "integrity",
        }
    }
}

/// A labelled count of learners for the cohort context of an item; released
/// through the read path's disclosure rules when the item is viewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextCount {
    pub label: String,
    pub learners: u64,
}

/// One detector's hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    /// Where: the course (of an institution), and the content item or cohort when it is about one.
    pub institution: String,
    pub course: String,
    pub content: Option<String>,
    pub cohort: Option<String>,
    /// The day the finding is about (the evaluated day).
    pub day: NaiveDate,
    /// The learners it is about (pseudonyms); empty for a content defect.
    pub subjects: Vec<Uuid>,
    /// The statistic, its baseline and the band outside which it was flagged.
    pub statistic: f64,
    pub baseline: f64,
    pub band: (f64, f64),
    /// One open item per key (`kind:course:...`): a finding seen again on a
    /// later day while its item is undecided adds nothing.
    pub key: String,
    /// What a reviewer needs: the statistic's inputs and the events behind
    /// it (counts, dates, timings), subjects by position.
    pub evidence: Value,
    /// Counts of learners describing the cohort, withheld below `min_cell` when shown.
    pub context: Vec<ContextCount>,
}

/// `P(X >= k)` for `X ~ Poisson(lambda)`, summed from `k` upward (no
/// cancellation for the tiny tails the detectors care about).
pub fn poisson_tail(k: u32, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    // log of the k-th term, then the ratio of successive terms.
    let mut log_term = -lambda + k as f64 * lambda.ln() - ln_factorial(k);
    let mut sum = 0.0;
    for i in k..k + 200 {
        let t = log_term.exp();
        sum += t;
        if t < sum * 1e-15 {
            break;
        }
        log_term += lambda.ln() - ((i + 1) as f64).ln();
    }
    sum.min(1.0)
}

fn ln_factorial(n: u32) -> f64 {
    (2..=n).map(|i| (i as f64).ln()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tail_matches_the_closed_forms() {
        let cases: [(u32, f64, f64); 4] = [(0, 3.0, 1.0), (1, 2.0, 1.0 - (-2.0f64).exp()), (2, 1.0, 1.0 - 2.0 * (-1.0f64).exp()), (3, 0.0, 0.0)];
        for (k, l, want) in cases {
            assert!((poisson_tail(k, l) - want).abs() < 1e-12, "k={k} l={l}: {} != {want}", poisson_tail(k, l));
        }
        // A tiny tail is computed, not rounded to zero by 1 - (1 - x).
        let t = poisson_tail(4, 0.001);
        assert!(t > 4.0e-14 && t < 4.3e-14, "{t}");
    }
}
