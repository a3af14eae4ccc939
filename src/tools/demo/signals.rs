//! The live demo's signals: eight weeks of simulated history for a separate
//! cohort (`demo-*` courses) loaded straight into the warehouse, with one case
//! of each kind planted (a defective segment that shipped yesterday,
//! learners who went silent, one colluding pair, one study-partner pair as
//! the trap), and the review queues as the dashboard shows them.

use chrono::Duration;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::signals::sim::{Plan, Sim, Truth};
use crate::warehouse::Warehouse;

/// Load the history; returns what was planted.
pub async fn plant(wh: &Warehouse) -> anyhow::Result<Truth> {
    let days = 56;
    let start = chrono::Utc::now().date_naive() - Duration::days(days as i64);
    let mut plan = Plan::new(400, days, start, 42, true, "demo");
    plan.disengage_share = 0.02;
    plan.collude_share = 2.0 / 400.0;
    plan.partner_share = 2.0 / 400.0;
    // The segment ships yesterday: the detectors' next pass flags it.
    plan.defect_days = [days - 1, days - 1];
    let mut sim = Sim::new(plan);
    while let Some(chunk) = sim.chunk(200) {
        wh.insert("events.learning_events", "JSONEachRow", Arc::new(chunk), &[]).await?;
    }
    Ok(sim.truth.clone())
}

/// Open items per queue and the newest item's evidence.
pub async fn screen(pool: &sqlx::PgPool, truth: &Truth) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n\x1b[1mreview queues\x1b[0m (signals inform humans; planted in the demo-* history: {} defects, {} silent learners, {} colluding pair, {} study-partner pair)",
        truth.defects.len(),
        truth.disengaged.len(),
        truth.colluders.len(),
        truth.partners.len()
    );
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT queue, kind::text, count(*) FROM signal_items WHERE state <> 'decided' GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    if counts.is_empty() {
        let _ = writeln!(s, "  (the detectors' first pass is running)");
    }
    for (q, k, n) in &counts {
        let _ = writeln!(s, "  {q:<16} {k:<15} {n:>4} open");
    }
    let newest: Option<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT kind::text, course_id, evidence FROM signal_items ORDER BY created_at DESC LIMIT 1").fetch_optional(pool).await.unwrap_or(None);
    if let Some((kind, course, e)) = newest {
        let d = &e["details"];
        let what = match kind.as_str() {
            "content_defect" => format!("{} {}-{} s: share {:.2} vs baseline {:.2}", d["peak_bucket_sec"], d["segment"]["from_sec"], d["segment"]["to_sec"], e["statistic"].as_f64().unwrap_or(0.0), e["baseline"].as_f64().unwrap_or(0.0)),
            "disengagement" => format!("silent {} days, chance {:.1e}, usual longest silence {} days", e["statistic"], d["silence_probability"].as_f64().unwrap_or(0.0), d["usual_longest_silence_days"]),
            _ => format!("{} close submissions of {} shared, chance {:.1e}", e["statistic"], d["assessments_both_submitted"], d["chance_under_independence"].as_f64().unwrap_or(0.0)),
        };
        let _ = writeln!(s, "  newest: {kind} in {course}: {what}");
    }
    s
}
