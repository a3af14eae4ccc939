//! The shapes the cohort views' bodies share: one row per cohort ([`CohortRow`]: the cohort
//! and the view's values, flattened) and, for the views over a date range, the envelope
//! ([`RangeView`]: the course, the range, a row per cohort and the course total). What the
//! values are, and how they are released, is each view's.
//!
//! In `#[utoipa::path(..., body = ...)]` write the generic (`RangeView<FunnelCounts>`), never
//! an alias of it (`Funnel`): utoipa names a schema by the path it is given, so two aliases of
//! `RangeView` would both be `RangeView`, one overwriting the other in the document.

use serde::Serialize;
use utoipa::ToSchema;

use super::params::DateRange;

/// One cohort's values in a view: `{"cohort_id": "c1", ...the values' fields}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CohortRow<T> {
    pub cohort_id: String,
    #[serde(flatten)]
    pub values: T,
}

impl<T> CohortRow<T> {
    pub fn new(cohort_id: impl Into<String>, values: T) -> CohortRow<T> {
        CohortRow { cohort_id: cohort_id.into(), values }
    }
}

/// A view of one course over a date range: its cohorts' rows and the course total.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RangeView<T> {
    pub course_id: String,
    /// First day (UTC, inclusive).
    pub from: String,
    /// Last day (UTC, inclusive).
    pub to: String,
    pub cohorts: Vec<CohortRow<T>>,
    pub total: T,
}

impl<T> RangeView<T> {
    pub fn new(course: &str, range: &DateRange, cohorts: Vec<CohortRow<T>>, total: T) -> RangeView<T> {
        RangeView { course_id: course.to_owned(), from: range.from.to_string(), to: range.to.to_string(), cohorts, total }
    }
}
