//! The review queues: one per role a detector is routed to. An item is a
//! state machine (`open -> in_review -> decided`): viewing it takes a lease
//! for the reviewer (others still see it, but cannot decide it until the
//! lease ends); a decision with a note closes it. Every view and decision is
//! appended to the audit log in the same transaction. A caller's [`Scope`]
//! (queue, kinds, institutions, courses) is checked on every item; an item
//! outside it is "not found" (its existence is not revealed).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::finding::{ContextCount, Kind};
use super::{Signals, SignalsError};
use crate::audit::NewEntry;
use crate::serve::counts::Counts;
use crate::serve::Released;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "signal_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    InReview,
    Decided,
}

/// What a reviewer decided. None of these is carried out by learnvault: a
/// decision records what a human did or will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "signal_decision", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Dismissed,
    Contacted,
    EscalatedToHumanPanel,
    ContentFixed,
    Monitoring,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Dismissed => "dismissed",
            Decision::Contacted => "contacted",
            Decision::EscalatedToHumanPanel => "escalated_to_human_panel",
            Decision::ContentFixed => "content_fixed",
            Decision::Monitoring => "monitoring",
        }
    }
}

/// What a caller may see: one queue, the kinds routed to it they may see,
/// their institutions (`None`: all) and courses (`None`: all of them).
#[derive(Debug, Clone)]
pub struct Scope {
    pub queue: String,
    pub kinds: Vec<Kind>,
    pub institutions: Option<Vec<String>>,
    pub courses: Option<Vec<String>>,
}

impl Scope {
    fn admits(&self, queue: &str, kind: Kind, institution: &str, course: &str) -> bool {
        queue == self.queue
            && self.kinds.contains(&kind)
            && self.institutions.as_ref().is_none_or(|i| i.iter().any(|x| x == institution))
            && self.courses.as_ref().is_none_or(|c| c.iter().any(|x| x == course))
    }
}

/// An item in a queue listing (no subjects, no evidence).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SignalItemSummary {
    pub id: Uuid,
    pub kind: Kind,
    pub state: State,
    pub created_at: DateTime<Utc>,
    /// The day the finding is about.
    pub event_date: NaiveDate,
    pub institution_id: String,
    pub course_id: String,
    pub content_id: Option<String>,
}

/// One item with its evidence.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SignalItem {
    #[serde(flatten)]
    pub summary: SignalItemSummary,
    pub queue: String,
    /// The learners it is about (pseudonyms; subject 0, 1 in the evidence); empty for content.
    pub subjects: Vec<Uuid>,
    /// The statistic, its baseline, the band, the detector's details (the events behind it).
    #[schema(value_type = Object)]
    pub evidence: Value,
    /// Counts of learners around the finding, released through disclosure control.
    #[schema(value_type = Object)]
    pub cohort_context: Released<Counts>,
    pub lease_by: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub decision: Option<Decision>,
    pub note: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    kind: Kind,
    queue: String,
    state: State,
    institution_id: String,
    course_id: String,
    content_id: Option<String>,
    event_date: NaiveDate,
    created_at: DateTime<Utc>,
    evidence: Value,
    lease_by: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    decision: Option<Decision>,
    note: Option<String>,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, kind, queue, state, institution_id, course_id, content_id, event_date, created_at, evidence,
                       lease_by, lease_until, decision, note, decided_by, decided_at";

impl Row {
    fn summary(&self) -> SignalItemSummary {
        SignalItemSummary {
            id: self.id,
            kind: self.kind,
            state: self.state,
            institution_id: self.institution_id.clone(),
            course_id: self.course_id.clone(),
            content_id: self.content_id.clone(),
            event_date: self.event_date,
            created_at: self.created_at,
        }
    }
}

impl Signals {
    /// The items of the caller's queue (newest first), optionally in one state.
    pub async fn list(&self, scope: &Scope, state: Option<State>) -> Result<Vec<SignalItemSummary>, SignalsError> {
        let kinds: Vec<String> = scope.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM signal_items
             WHERE queue = $1 AND kind::text = ANY($2) AND ($3::text[] IS NULL OR institution_id = ANY($3))
               AND ($4::text[] IS NULL OR course_id = ANY($4)) AND ($5::signal_state IS NULL OR state = $5)
             ORDER BY created_at DESC, id LIMIT $6"
        ))
        .bind(&scope.queue)
        .bind(&kinds)
        .bind(&scope.institutions)
        .bind(&scope.courses)
        .bind(state)
        .bind(self.config.max_list)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Row::summary).collect())
    }

    /// One item with its evidence: takes the review lease for `reviewer` when
    /// the item is free, audits the view (`entry`, completed here) in the same
    /// transaction, then returns it.
    pub async fn view(&self, id: Uuid, scope: &[Scope], reviewer: &str, entry: NewEntry) -> Result<SignalItem, SignalsError> {
        let mut tx = self.pool.begin().await?;
        let row = self.locked(&mut tx, id, scope).await?;
        let free = row.state != State::Decided && (row.lease_until.is_none_or(|u| u < Utc::now()) || row.lease_by.as_deref() == Some(reviewer));
        let row = if free { self.lease(&mut tx, id, reviewer).await? } else { row };
        let item = self.item(&mut tx, row).await?;
        let mut entry = entry;
        complete(&mut entry, &item, serde_json::json!({"item": id, "kind": item.summary.kind, "queue": item.queue}));
        crate::audit::append(&mut tx, &[entry]).await.map_err(audit_error)?;
        tx.commit().await?;
        Ok(item)
    }

    /// Take the oldest free item of the caller's queue (open, or held under an
    /// expired lease) for `reviewer`, skipping items another reviewer is taking
    /// at the same moment (`FOR UPDATE SKIP LOCKED`); audited like a view.
    /// `None` when nothing is free.
    pub async fn next(&self, scope: &Scope, reviewer: &str, entry: NewEntry) -> Result<Option<SignalItem>, SignalsError> {
        let kinds: Vec<String> = scope.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM signal_items
             WHERE queue = $1 AND kind::text = ANY($2) AND ($3::text[] IS NULL OR institution_id = ANY($3))
               AND ($4::text[] IS NULL OR course_id = ANY($4))
               AND (state = 'open' OR (state = 'in_review' AND lease_until < now()))
             ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&scope.queue)
        .bind(&kinds)
        .bind(&scope.institutions)
        .bind(&scope.courses)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else { return Ok(None) };
        let row = self.lease(&mut tx, id, reviewer).await?;
        let item = self.item(&mut tx, row).await?;
        let mut entry = entry;
        complete(&mut entry, &item, serde_json::json!({"item": id, "kind": item.summary.kind, "queue": item.queue, "taken": true}));
        crate::audit::append(&mut tx, &[entry]).await.map_err(audit_error)?;
        tx.commit().await?;
        Ok(Some(item))
    }

    /// Record a decision with a note (final); audited in the same transaction.
    pub async fn decide(&self, id: Uuid, scope: &[Scope], reviewer: &str, decision: Decision, note: &str, entry: NewEntry) -> Result<SignalItem, SignalsError> {
        let note = note.trim();
        if note.is_empty() || note.chars().count() > 4000 {
            return Err(SignalsError::invalid("note_required", "a `note` of 1-4000 characters is required"));
        }
        let mut tx = self.pool.begin().await?;
        let row = self.locked(&mut tx, id, scope).await?;
        if row.state == State::Decided {
            return Err(SignalsError::Decided);
        }
        if let (Some(by), Some(until)) = (&row.lease_by, row.lease_until) {
            if by != reviewer && until > Utc::now() {
                return Err(SignalsError::Leased { until });
            }
        }
        let row: Row = sqlx::query_as(&format!(
            "UPDATE signal_items SET state = 'decided', decision = $2, note = $3, decided_by = $4, decided_at = now(),
                    lease_by = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(decision)
        .bind(note)
        .bind(reviewer)
        .fetch_one(&mut *tx)
        .await?;
        let item = self.item(&mut tx, row).await?;
        let mut entry = entry;
        complete(&mut entry, &item, serde_json::json!({"item": id, "kind": item.summary.kind, "queue": item.queue, "decision": decision.as_str()}));
        entry.justification = Some(note.to_owned());
        crate::audit::append(&mut tx, &[entry]).await.map_err(audit_error)?;
        tx.commit().await?;
        Ok(item)
    }

    /// Put item `id` in review under `reviewer`'s lease (`lease_secs` from now).
    async fn lease(&self, tx: &mut sqlx::PgConnection, id: Uuid, reviewer: &str) -> Result<Row, SignalsError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE signal_items SET state = 'in_review', lease_by = $2, lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(reviewer)
        .bind(self.config.lease_secs as f64)
        .fetch_one(tx)
        .await?)
    }

    async fn locked(&self, tx: &mut sqlx::PgConnection, id: Uuid, scope: &[Scope]) -> Result<Row, SignalsError> {
        let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM signal_items WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        match row {
            Some(r) if scope.iter().any(|s| s.admits(&r.queue, r.kind, &r.institution_id, &r.course_id)) => Ok(r),
            _ => Err(SignalsError::NotFound),
        }
    }

    async fn item(&self, tx: &mut sqlx::PgConnection, row: Row) -> Result<SignalItem, SignalsError> {
        let subjects: Vec<Uuid> = sqlx::query_scalar("SELECT pseudonym FROM signal_subjects WHERE item_id = $1 ORDER BY position")
            .bind(row.id)
            .fetch_all(&mut *tx)
            .await?;
        let context: Vec<ContextCount> = serde_json::from_value(row.evidence["context"].clone()).unwrap_or_default();
        let t = self.disclosure.thresholds(std::slice::from_ref(&row.institution_id));
        let cohort_context = super::evidence::release(&context, &t)?;
        let mut evidence = row.evidence.clone();
        if let Some(o) = evidence.as_object_mut() {
            // The raw counts leave only as released cells (`cohort_context`).
            o.remove("context");
        }
        Ok(SignalItem {
            summary: row.summary(),
            queue: row.queue,
            subjects,
            evidence,
            cohort_context,
            lease_by: row.lease_by,
            lease_until: row.lease_until,
            decision: row.decision,
            note: row.note,
            decided_by: row.decided_by,
            decided_at: row.decided_at,
        })
    }
}

fn complete(entry: &mut NewEntry, item: &SignalItem, detail: Value) {
    entry.institution = Some(item.summary.institution_id.clone());
    entry.target = item.subjects.first().copied();
    let mut detail = detail;
    if item.subjects.len() > 1 {
        detail["other_subjects"] = serde_json::json!(item.subjects[1..]);
    }
    entry.detail = detail;
}

fn audit_error(e: crate::audit::AuditError) -> SignalsError {
    match e {
        crate::audit::AuditError::Db(d) => SignalsError::Db(d),
        crate::audit::AuditError::WriterGone => SignalsError::Db(sqlx::Error::PoolClosed),
        crate::audit::AuditError::Checkpoint(m) => SignalsError::Db(sqlx::Error::Protocol(format!("audit checkpoint: {m}"))),
    }
}
