//! Data subject requests: subject access (GDPR Art. 15, FERPA inspection) and
//! erasure (Art. 17), as durable jobs driven by the data map.
//!
//! Invariants:
//! * every store the data map lists with a subject key is queried by access and
//!   handled by erasure with its declared method: a new table cannot escape
//!   them (and `datamap check` fails until a new table is mapped);
//! * a job is a PostgreSQL state machine; each step is idempotent and its
//!   progress is saved before the next starts, so a crash resumes at the step
//!   it was in; a lease keeps two workers off one job;
//! * nothing here logs or returns an identity except the access archive, which
//!   exists for exactly that and expires with `retention.yaml`'s `archives`;
//! * every request, completion and failure is in the audit log.

pub mod access;
pub mod certificate;
pub mod erasure;
pub mod kafka;
pub mod policy;
pub mod seal;
pub mod snapshot;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use std::collections::HashMap;
use uuid::Uuid;

use crate::audit::{self, AuditError, NewEntry, Outcome};
use crate::datamap::{CheckError, DataMap, Store, StoreKind};
use crate::retention;
use crate::vault::{Vault, VaultError};
use crate::warehouse::{Warehouse, WarehouseError};

/// Identity of the worker in audit entries.
pub const WORKER: &str = "learnvault:dsr-worker";
/// Days a controller has to answer (GDPR Art. 12(3): one month).
pub const DEADLINE_DAYS: i64 = 30;
const LEASE_SECS: i64 = 120;
const MAX_ATTEMPTS: i32 = 5;

/// Subject-request jobs ended, by kind and outcome (a counter).
pub const JOBS: &str = "learnvault_dsr_jobs_total";

#[derive(Debug, thiserror::Error)]
pub enum DsrError {
    /// The request's own failures.
    #[error("no such job")]
    NotFound,
    #[error("verification failed: {0}")]
    Verification(String),
    #[error("erasure fence: {0}")]
    Fence(String),
    /// The stores and contexts it reaches.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    DataMap(#[from] CheckError),
    #[error("archive: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Access,
    Erasure,
    /// Many subjects of one institution erased in one pass.
    ErasureBatch,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Erasure => "erasure",
            Kind::ErasureBatch => "erasure_batch",
        }
    }
}

/// A job as stored (and as the API shows it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub pseudonym: Uuid,
    #[sqlx(rename = "institution_id")]
    pub institution: String,
    pub requested_by: String,
    pub reference: Option<String>,
    /// pending | running | done | failed
    pub state: String,
    /// The step the job is in (or ended in).
    pub step: String,
    #[schema(value_type = Object)]
    pub progress: Value,
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub requested_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Not done and past its deadline.
    #[sqlx(skip)] // computed when read
    pub overdue: bool,
}

const JOB_COLUMNS: &str = "id, kind, pseudonym, institution_id, requested_by, reference, state, step, progress, result, error, \
                           attempts, requested_at, deadline, completed_at";

fn job_from_row(r: &sqlx::postgres::PgRow) -> Result<Job, sqlx::Error> {
    let mut job = <Job as sqlx::FromRow<_>>::from_row(r)?;
    job.overdue = job.state != "done" && Utc::now() > job.deadline;
    Ok(job)
}

/// A new request, as the API or the CLI makes it.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    /// The subjects of a batch erasure; empty for one subject, named by `pseudonym` (nil
    /// for a batch).
    pub subjects: Vec<Uuid>,
    pub pseudonym: Uuid,
    /// The DPO's case number.
    pub reference: Option<String>,
    /// Whose subjects, and who asked (token `sub`, roles, request id).
    pub institution: String,
    pub requested_by: String,
    pub roles: Vec<String>,
    pub request_id: Uuid,
}

/// Everything a job needs: the stores (from the data map) and the engines.
pub struct Dsr {
    pub pool: PgPool,
    pub warehouse: Warehouse,
    pub vault: Vault,
    pub map: DataMap,
    pub retention: retention::Policy,
    /// The broker and the topics whose retention the retention report reads back.
    pub kafka_brokers: String,
    pub topics: Vec<crate::topics::TopicSpec>,
    pub archive_dir: PathBuf,
    /// `policies/erasure.yaml`: suppression after erasure.
    pub erasure_policy: policy::ErasurePolicy,
    /// Rows per ClickHouse page of a subject-access export.
    pub export_page_rows: u64,
    /// Per-job keys sealing the access archives at rest.
    pub archive_keys: seal::ArchiveKeys,
    pub signer: certificate::Signer,
    /// How long the lander may still land events of a just-tombstoned subject
    /// (its governance cache); erasure re-deletes what lands meanwhile.
    pub settle: Duration,
}

/// Progress reports for the CLI's progress display.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

impl Dsr {
    /// Create a job, or return the open one for the same subject (erasure is
    /// idempotent: asking twice gives the same job). Audited with the request.
    pub async fn submit(&self, req: &Request) -> Result<(Job, bool), DsrError> {
        if req.kind == Kind::Erasure {
            let existing = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM dsr_jobs WHERE kind = 'erasure' AND pseudonym = $1 AND state <> 'failed'
                 ORDER BY requested_at DESC LIMIT 1"
            ))
            .bind(req.pseudonym)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = existing {
                return Ok((job_from_row(&r)?, false));
            }
        }
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let initial = if req.kind == Kind::ErasureBatch { json!({"subjects": req.subjects}) } else { json!({}) };
        let inserted = sqlx::query(&format!(
            "INSERT INTO dsr_jobs (id, kind, pseudonym, institution_id, requested_by, request_id, reference, deadline, progress)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(days => $8), $9)
             ON CONFLICT DO NOTHING RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(req.kind.as_str())
        .bind(req.pseudonym)
        .bind(&req.institution)
        .bind(&req.requested_by)
        .bind(req.request_id)
        .bind(&req.reference)
        .bind(DEADLINE_DAYS as i32)
        .bind(&initial)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            // Lost a race with a concurrent identical erasure request.
            drop(tx);
            let r = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM dsr_jobs WHERE kind = 'erasure' AND pseudonym = $1 AND state IN ('pending', 'running')"
            ))
            .bind(req.pseudonym)
            .fetch_one(&self.pool)
            .await?;
            return Ok((job_from_row(&r)?, false));
        };
        let entry = NewEntry {
            request_id: req.request_id,
            actor: req.requested_by.clone(),
            roles: req.roles.clone(),
            institution: Some(req.institution.clone()),
            action: format!("dsr.{}.request", req.kind.as_str()),
            target: (req.kind != Kind::ErasureBatch).then_some(req.pseudonym),
            purpose: Some(match req.kind {
                Kind::Access => "subject_access".into(),
                Kind::Erasure | Kind::ErasureBatch => "erasure".into(),
            }),
            justification: req.reference.clone(),
            outcome: Outcome::Success,
            detail: if req.kind == Kind::ErasureBatch { json!({"job": id, "subjects": req.subjects}) } else { json!({"job": id}) },
        };
        audit::append(&mut tx, &[entry]).await?;
        tx.commit().await?;
        Ok((job_from_row(&row)?, true))
    }

    pub async fn job(&self, id: Uuid) -> Result<Job, DsrError> {
        let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM dsr_jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DsrError::NotFound)?;
        Ok(job_from_row(&r)?)
    }

    /// The request queue: jobs of `institutions` (all when `None`), overdue
    /// first, then open ones by deadline, then finished ones, newest first.
    pub async fn list(&self, institutions: Option<&[String]>, limit: i64) -> Result<Vec<Job>, DsrError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM dsr_jobs
             WHERE ($1::text[] IS NULL OR institution_id = ANY($1))
             ORDER BY (state <> 'done' AND deadline < now()) DESC, (state = 'done'),
                      CASE WHEN state = 'done' THEN NULL ELSE deadline END, requested_at DESC
             LIMIT $2"
        ))
        .bind(institutions)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_from_row).collect::<Result<_, _>>()?)
    }

    /// Take a runnable job (a specific one when `only` is given): pending, or
    /// running with an expired lease (its worker died).
    async fn claim(&self, only: Option<Uuid>) -> Result<Option<Job>, DsrError> {
        let r = sqlx::query(&format!(
            "UPDATE dsr_jobs SET state = 'running', attempts = attempts + 1, updated_at = now(),
                    lease_until = now() + make_interval(secs => $2)
             WHERE id = (SELECT id FROM dsr_jobs
                         WHERE state IN ('pending', 'running') AND (lease_until IS NULL OR lease_until < now())
                           AND ($1::uuid IS NULL OR id = $1)
                         ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(only)
        .bind(LEASE_SECS as f64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.as_ref().map(job_from_row).transpose()?)
    }

    /// Save a step's progress and renew the lease.
    pub(crate) async fn save(&self, job: &mut Job, step: &str) -> Result<(), DsrError> {
        job.step = step.to_owned();
        sqlx::query!(
            "UPDATE dsr_jobs SET step = $2, progress = $3, updated_at = now(), lease_until = now() + make_interval(secs => $4)
             WHERE id = $1",
            job.id,
            step,
            &job.progress,
            LEASE_SECS as f64
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark a job done with its result, audited in the same transaction.
    pub(crate) async fn finish(&self, job: &mut Job, result: Value, detail: Value) -> Result<(), DsrError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "UPDATE dsr_jobs SET state = 'done', step = 'done', result = $2, progress = $3, error = NULL,
                    completed_at = now(), lease_until = NULL, updated_at = now() WHERE id = $1",
            job.id,
            &result,
            &job.progress
        )
        .execute(&mut *tx)
        .await?;
        audit::append(&mut tx, &[self.worker_entry(job, Outcome::Success, detail)]).await?;
        tx.commit().await?;
        job.state = "done".into();
        job.step = "done".into();
        job.result = Some(result);
        Ok(())
    }

    fn worker_entry(&self, job: &Job, outcome: Outcome, detail: Value) -> NewEntry {
        NewEntry {
            request_id: job.id,
            actor: WORKER.into(),
            roles: vec![],
            institution: Some(job.institution.clone()),
            action: format!("dsr.{}.{}", job.kind, if outcome == Outcome::Success { "complete" } else { "fail" }),
            target: (job.kind != "erasure_batch").then_some(job.pseudonym),
            purpose: Some(if job.kind == "access" { "subject_access".into() } else { "erasure".into() }),
            justification: None,
            outcome,
            detail,
        }
    }

    /// A failed attempt: back to pending (resumes at its step) or, after
    /// `MAX_ATTEMPTS`, failed and audited. The message names the step, never data.
    async fn fail(&self, job: &Job, err: &DsrError) -> Result<(), DsrError> {
        let msg: String = format!("step {}: {err}", job.step).chars().take(1000).collect();
        let give_up = job.attempts >= MAX_ATTEMPTS || matches!(err, DsrError::Verification(_));
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "UPDATE dsr_jobs SET state = $2, error = $3, lease_until = now() + interval '2 seconds', updated_at = now() WHERE id = $1",
            job.id,
            if give_up { "failed" } else { "pending" },
            &msg
        )
        .execute(&mut *tx)
        .await?;
        if give_up {
            audit::append(&mut tx, &[self.worker_entry(job, Outcome::Error, json!({"step": job.step, "error": msg}))]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Run one job to its end (or to a recorded failure). Returns the job as it ended.
    pub async fn run_one(&self, mut job: Job, progress: Progress<'_>) -> Result<Job, DsrError> {
        tracing::info!(job = %job.id, kind = %job.kind, step = %job.step, attempt = job.attempts, "dsr job running");
        let outcome = match job.kind.as_str() {
            "access" => access::run(self, &mut job, progress).await,
            _ => erasure::run(self, &mut job, progress).await,
        };
        match outcome {
            Ok(()) => {
                metrics::counter!(JOBS, "kind" => job.kind.clone(), "outcome" => "done").increment(1);
                tracing::info!(job = %job.id, kind = %job.kind, "dsr job done");
            }
            Err(e) => {
                metrics::counter!(JOBS, "kind" => job.kind.clone(), "outcome" => "error").increment(1);
                tracing::warn!(job = %job.id, kind = %job.kind, step = %job.step, error = %e, "dsr job step failed");
                self.fail(&job, &e).await?;
            }
        }
        self.job(job.id).await
    }

    /// Claim and run the given job now (the CLI), waiting out another worker's lease.
    pub async fn run_job(&self, id: Uuid, progress: Progress<'_>) -> Result<Job, DsrError> {
        loop {
            if let Some(job) = self.claim(Some(id)).await? {
                let job = self.run_one(job, progress).await?;
                if job.state != "pending" {
                    return Ok(job);
                }
            } else {
                let job = self.job(id).await?;
                if job.state == "done" || job.state == "failed" {
                    return Ok(job);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The in-process worker (inside `serve`): runs jobs until `stop`.
    pub async fn work(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut gauges_at = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            if *stop.borrow() {
                return;
            }
            if gauges_at.elapsed() >= Duration::from_secs(30) {
                gauges_at = std::time::Instant::now();
                self.publish_gauges().await;
            }
            match self.claim(None).await {
                Ok(Some(job)) => {
                    if let Err(e) = self.run_one(job, &|_| {}).await {
                        tracing::warn!(error = %e, "dsr worker could not record a job's outcome; its lease will expire and it resumes");
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "dsr worker cannot claim jobs; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// `learnvault_dsr_jobs_open{kind}` and `learnvault_dsr_jobs_overdue{kind}`
    /// (open past the 30-day deadline): what a DPO's alert watches.
    async fn publish_gauges(&self) {
        let rows = sqlx::query!(
            r#"SELECT k.kind AS "kind!", count(j.id) AS "open!", count(j.id) FILTER (WHERE j.deadline < now()) AS "overdue!"
               FROM (VALUES ('access'), ('erasure')) AS k(kind)
               LEFT JOIN dsr_jobs j ON j.kind = k.kind AND j.state IN ('pending', 'running')
               GROUP BY k.kind"#
        )
        .fetch_all(&self.pool)
        .await;
        if let Ok(rows) = rows {
            for r in rows {
                metrics::gauge!("learnvault_dsr_jobs_open", "kind" => r.kind.clone()).set(r.open as f64);
                metrics::gauge!("learnvault_dsr_jobs_overdue", "kind" => r.kind).set(r.overdue as f64);
            }
        }
    }

    /// The deployment's topic of a mapped Kafka store: the dead-letter topic for
    /// `dead_letters`, else the events topic (`topics::specs_with` order).
    pub fn topic_of(&self, store: &Store) -> Option<&crate::topics::TopicSpec> {
        if store.store != StoreKind::Kafka {
            return None;
        }
        self.topics.get(if store.category == "dead_letters" { 1 } else { 0 })
    }

    /// Mapped stores that hold rows keyed by the subject, by engine.
    pub fn subject_stores(&self, kind: StoreKind) -> impl Iterator<Item = (&Store, &str)> {
        self.map.stores.iter().filter(move |s| s.store == kind).filter_map(|s| s.subject_key.as_deref().map(|k| (s, k)))
    }

    /// [`Dsr::counts`] for many subjects at once: one grouped query per store
    /// instead of one per subject and store (a batch erasure of 1,000).
    pub async fn counts_many(&self, subjects: &[Uuid]) -> Result<HashMap<Uuid, serde_json::Map<String, Value>>, DsrError> {
        let mut out: HashMap<Uuid, serde_json::Map<String, Value>> = subjects.iter().map(|p| (*p, serde_json::Map::new())).collect();
        let list = format!("[{}]", subjects.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(","));
        for (s, key) in self.subject_stores(StoreKind::Clickhouse) {
            let rows = self
                .warehouse
                .query(
                    &format!("SELECT toString({k}) AS p, count() AS n FROM {t} WHERE {k} IN {{ps:Array(UUID)}} GROUP BY {k}", t = ident(&s.name)?, k = ident(key)?),
                    &[("ps", list.clone())],
                )
                .await?;
            let found: HashMap<Uuid, u64> = rows.iter().filter_map(|r| Some((r["p"].as_str()?.parse().ok()?, num(&r["n"])))).collect();
            for (p, m) in out.iter_mut() {
                m.insert(format!("clickhouse:{}", s.name), json!(found.get(p).copied().unwrap_or(0)));
            }
        }
        for (s, key) in self.subject_stores(StoreKind::Postgres) {
            let rows: Vec<(Uuid, i64)> =
                sqlx::query_as(&format!("SELECT {key}, count(*) FROM {} WHERE {key} = ANY($1) GROUP BY {key}", pg_ident(&s.name)?, key = pg_ident(key)?))
                    .bind(subjects)
                    .fetch_all(&self.pool)
                    .await?;
            let found: HashMap<Uuid, i64> = rows.into_iter().collect();
            for (p, m) in out.iter_mut() {
                m.insert(format!("postgres:{}", s.name), json!(found.get(p).copied().unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// Rows for the subject in every mapped ClickHouse and PostgreSQL store.
    pub async fn counts(&self, pseudonym: Uuid) -> Result<serde_json::Map<String, Value>, DsrError> {
        let mut out = serde_json::Map::new();
        for (s, key) in self.subject_stores(StoreKind::Clickhouse) {
            let n = ch_count(&self.warehouse, &s.name, key, pseudonym).await?;
            out.insert(format!("clickhouse:{}", s.name), json!(n));
        }
        for (s, key) in self.subject_stores(StoreKind::Postgres) {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {} WHERE {key} = $1", pg_ident(&s.name)?))
                .bind(pseudonym)
                .fetch_one(&self.pool)
                .await?;
            out.insert(format!("postgres:{}", s.name), json!(n));
        }
        Ok(out)
    }
}

/// Identifiers from the data map are ours (a validated file), never a
/// request's; still, only plain identifiers reach SQL text.
pub(crate) fn ident(s: &str) -> Result<&str, DsrError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        Ok(s)
    } else {
        let message = format!("{s:?} is not a plain identifier");
        Err(DsrError::DataMap(crate::policy::PolicyError::invalid(Path::new("data-map.yaml"), message).into()))
    }
}

fn pg_ident(s: &str) -> Result<&str, DsrError> {
    ident(s).and_then(|s| if s.contains('.') { Err(DsrError::Verification(format!("{s}: schema-qualified PostgreSQL names are not supported"))) } else { Ok(s) })
}

pub(crate) async fn ch_count(wh: &Warehouse, table: &str, key: &str, pseudonym: Uuid) -> Result<u64, DsrError> {
    let rows = wh
        .query(
            &format!("SELECT count() AS n FROM {} WHERE {} = {{p:UUID}}", ident(table)?, ident(key)?),
            &[("p", pseudonym.to_string())],
        )
        .await?;
    Ok(rows.first().map(|r| num(&r["n"])).unwrap_or(0))
}

/// ClickHouse prints 64-bit integers in JSON as numbers or as strings.
pub(crate) fn num(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}
