//! Group commit for single issuance: concurrent `POST /v1/pseudonyms` calls are
//! coalesced into one transaction (vault rows + one audit row per call), so
//! throughput is not bounded by one fsync per call.

use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{issue_in_tx, Issued, NewLearner, VaultError};
use crate::audit::{self, NewEntry};
use crate::domain::InstitutionId;
use crate::vault::keys::MasterKey;

struct Job {
    institution: InstitutionId,
    learner: NewLearner,
    audit: NewEntry,
    done: oneshot::Sender<Result<Issued, String>>,
}

#[derive(Clone)]
pub struct Issuer {
    tx: mpsc::Sender<Job>,
}

const MAX_BATCH: usize = 512;

impl Issuer {
    pub fn spawn(pool: PgPool, master: MasterKey, writers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(16 * 1024);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(run(pool.clone(), master.clone(), rx.clone()));
        }
        Issuer { tx }
    }

    pub async fn submit(&self, institution: InstitutionId, learner: NewLearner, audit: NewEntry) -> Result<Issued, VaultError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Job { institution, learner, audit, done }).await.map_err(|_| VaultError::WriterGone)?;
        match wait.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(msg)) => Err(VaultError::Db(sqlx::Error::Protocol(msg))),
            Err(_) => Err(VaultError::WriterGone),
        }
    }
}

async fn run(pool: PgPool, master: MasterKey, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = rx.lock().await.recv_many(&mut jobs, MAX_BATCH).await;
        if n == 0 {
            return;
        }
        match commit(&pool, &master, &mut jobs).await {
            Ok(results) => {
                let created = results.iter().filter(|r| r.created).count();
                metrics::counter!(super::ISSUED).increment(created as u64);
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.done.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, calls = jobs.len(), "issuance batch failed");
                let msg = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(msg.clone()));
                }
            }
        }
    }
}

async fn commit(pool: &PgPool, master: &MasterKey, jobs: &mut [Job]) -> Result<Vec<Issued>, VaultError> {
    // Group by institution, keeping each job's index; institutions in sorted order.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| jobs[a].institution.cmp(&jobs[b].institution));
    let mut results: Vec<Option<Issued>> = vec![None; jobs.len()];
    let mut tx = pool.begin().await?;
    let mut start = 0;
    while start < order.len() {
        let inst = jobs[order[start]].institution.clone();
        let end = start + order[start..].iter().take_while(|&&i| jobs[i].institution == inst).count();
        let idxs = &order[start..end];
        let learners: Vec<&NewLearner> = idxs.iter().map(|&i| &jobs[i].learner).collect();
        let issued = issue_in_tx(&mut tx, master, &inst, &learners).await?;
        // Two calls for the same learner in one batch: only the first "created" it.
        for (&i, r) in idxs.iter().zip(issued) {
            results[i] = Some(r);
        }
        start = end;
    }
    let results: Vec<Issued> = results.into_iter().map(|r| r.expect("every job issued")).collect();
    for (job, r) in jobs.iter_mut().zip(&results) {
        job.audit.target = Some(r.pseudonym.as_uuid());
        job.audit.detail = serde_json::json!({"count": 1, "created": usize::from(r.created)});
    }
    let entries: Vec<NewEntry> = jobs.iter().map(|j| j.audit.clone()).collect();
    audit::append(&mut tx, &entries).await?;
    tx.commit().await?;
    Ok(results)
}
