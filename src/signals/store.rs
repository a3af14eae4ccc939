//! Where findings go: a review item per finding key in PostgreSQL (with its
//! subjects) and the learner-level rows of `signals.findings` in ClickHouse,
//! written together (the item commits only once the warehouse took its
//! rows); and the detector runs, durable jobs taken with `FOR UPDATE SKIP
//! LOCKED` under a lease so tests drain them with [`Signals::try_run_one`].

use chrono::{NaiveDate, Utc};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

use super::finding::{Finding, Kind};
use super::{Signals, SignalsError, METRIC_ITEMS, METRIC_RUNS};

/// What [`Signals::record`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// New review items.
    pub new: usize,
    /// Findings whose key already had an undecided item.
    pub known: usize,
}

/// What [`Signals::try_run_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// Evaluated `day`: findings per kind, new items.
    Ran { day: NaiveDate, findings: Vec<(Kind, usize)>, new_items: usize },
    /// Evaluated nothing: the run failed (retried up to 3 attempts).
    Failed { day: NaiveDate, error: String },
    /// No run was waiting.
    Empty,
}

impl Signals {
    /// Record findings: a new item (and its `signals.findings` rows) per key
    /// without an undecided item; the rest are counted as known.
    pub async fn record(&self, findings: &[Finding]) -> Result<Recorded, SignalsError> {
        let mut r = Recorded::default();
        for f in findings {
            let mut tx = self.pool.begin().await?;
            let id = Uuid::new_v4();
            let evidence = json!({
                "statistic": f.statistic, "baseline": f.baseline, "band": [f.band.0, f.band.1],
                "cohort_id": f.cohort, "details": f.evidence, "context": f.context,
            });
            let inserted = sqlx::query(
                "INSERT INTO signal_items (id, kind, queue, institution_id, course_id, content_id, event_date, fingerprint, evidence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (fingerprint) WHERE state <> 'decided' DO NOTHING",
            )
            .bind(id)
            .bind(f.kind)
            .bind(self.config.route(f.kind))
            .bind(&f.institution)
            .bind(&f.course)
            .bind(&f.content)
            .bind(f.day)
            .bind(&f.key)
            .bind(&evidence)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                r.known += 1;
                continue;
            }
            for (i, s) in f.subjects.iter().enumerate() {
                sqlx::query("INSERT INTO signal_subjects (item_id, position, pseudonym) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(i as i16)
                    .bind(s)
                    .execute(&mut *tx)
                    .await?;
            }
            self.warehouse.insert("signals.findings", "JSONEachRow", Arc::new(rows(f, id, self.config.route(f.kind))), &[]).await?;
            tx.commit().await?;
            metrics::counter!(METRIC_ITEMS, "kind" => f.kind.as_str()).increment(1);
            r.new += 1;
        }
        Ok(r)
    }

    /// Ask for `day` to be evaluated (once: a day already waiting is not added again).
    pub async fn enqueue(&self, day: NaiveDate) -> Result<(), SignalsError> {
        sqlx::query(
            "INSERT INTO signal_runs (day) SELECT $1
             WHERE NOT EXISTS (SELECT 1 FROM signal_runs WHERE day = $1 AND state IN ('pending', 'running'))",
        )
        .bind(day)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Take one waiting run (or one whose lease expired), evaluate its day, record its findings.
    pub async fn try_run_one(&self) -> Result<Ran, SignalsError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, NaiveDate, i32)> = sqlx::query_as(
            "SELECT id, day, attempts FROM signal_runs
             WHERE state = 'pending' OR (state = 'running' AND lease_until < now())
             ORDER BY requested_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, day, attempts)) = row else { return Ok(Ran::Empty) };
        sqlx::query("UPDATE signal_runs SET state = 'running', attempts = attempts + 1, lease_until = now() + interval '10 minutes' WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let outcome = async {
            let findings = self.evaluate_day(day).await?;
            let rec = self.record(&findings).await?;
            Ok::<_, SignalsError>((findings, rec))
        }
        .await;
        match outcome {
            Ok((findings, rec)) => {
                let per_kind: Vec<(Kind, usize)> = Kind::ALL.iter().map(|k| (*k, findings.iter().filter(|f| f.kind == *k).count())).collect();
                let result = json!(per_kind.iter().map(|(k, n)| (k.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>());
                sqlx::query("UPDATE signal_runs SET state = 'done', result = $2, error = NULL, completed_at = now(), lease_until = NULL WHERE id = $1")
                    .bind(id)
                    .bind(json!({"findings": result, "new_items": rec.new, "known": rec.known}))
                    .execute(&self.pool)
                    .await?;
                metrics::counter!(METRIC_RUNS, "outcome" => "done").increment(1);
                Ok(Ran::Ran { day, findings: per_kind, new_items: rec.new })
            }
            Err(e) => {
                let error: String = e.to_string().chars().take(400).collect();
                tracing::warn!(error = %error, %day, "signals run failed");
                let state = if attempts + 1 >= 3 { "failed" } else { "pending" };
                sqlx::query("UPDATE signal_runs SET state = $2::signal_run_state, error = $3, lease_until = NULL WHERE id = $1")
                    .bind(id)
                    .bind(state)
                    .bind(&error)
                    .execute(&self.pool)
                    .await?;
                metrics::counter!(METRIC_RUNS, "outcome" => "failed").increment(1);
                Ok(Ran::Failed { day, error })
            }
        }
    }

    /// Delete decided items older than the findings' TTL (and their subjects).
    pub async fn purge(&self) -> Result<u64, SignalsError> {
        let months = self.config.policy.ttl_months as i32;
        let n = sqlx::query("DELETE FROM signal_items WHERE state = 'decided' AND decided_at < now() - make_interval(months => $1)")
            .bind(months)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }
}

/// The `signals.findings` rows of a finding: one per subject (the nil learner for content).
fn rows(f: &Finding, id: Uuid, route: &str) -> Vec<u8> {
    let subjects: Vec<Uuid> = if f.subjects.is_empty() { vec![Uuid::nil()] } else { f.subjects.clone() };
    // A learner's own rows (their access export) keep how far apart the pair's
    // submissions were, never when the other learner submitted.
    let mut evidence = f.evidence.clone();
    if let Some(list) = evidence.get_mut("submissions").and_then(|v| v.as_array_mut()) {
        for e in list.iter_mut().filter_map(|e| e.as_object_mut()) {
            e.retain(|k, _| k == "assessment" || k == "seconds_apart");
        }
    }
    let mut out = Vec::new();
    for s in subjects {
        let row = json!({
            "event_date": f.day.to_string(),
            "detected_at": Utc::now().format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            "finding_id": id, "kind": f.kind.as_str(), "learner_id": s, "institution_id": f.institution,
            "course_id": f.course, "content_id": f.content.clone().unwrap_or_default(), "cohort_id": f.cohort.clone().unwrap_or_default(),
            "statistic": f.statistic, "baseline": f.baseline, "band_lo": f.band.0, "band_hi": f.band.1, "route": route,
            // The row's evidence never names another learner: subject positions only.
            "evidence": evidence.to_string(),
        });
        serde_json::to_writer(&mut out, &row).expect("json");
        out.push(b'\n');
    }
    out
}
