//! Group commit for audit-only entries (denials, lookups, resolves, reads).
//! Callers wait until their entry is committed: fail closed.

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{append, AuditError, NewEntry};

type Job = (NewEntry, oneshot::Sender<Result<(), String>>);

/// Handle to the audit writer task. Cloning is cheap.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
}

const MAX_BATCH: usize = 1024;

impl Recorder {
    pub fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(16 * 1024);
        tokio::spawn(run(pool, rx));
        Recorder { tx }
    }

    /// Append one entry; returns once it is committed.
    pub async fn record(&self, entry: NewEntry) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx.send((entry, done)).await.map_err(|_| AuditError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(AuditError::Db(sqlx::Error::Protocol(msg))),
            Err(_) => Err(AuditError::WriterGone),
        }
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<NewEntry> = batch.iter().map(|(e, _)| e.clone()).collect();
        let result = async {
            let mut tx = pool.begin().await?;
            append(&mut tx, &entries).await?;
            tx.commit().await?;
            Ok::<(), AuditError>(())
        }
        .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = entries.len(), "audit batch failed; callers refused");
        }
        metrics::histogram!("learnvault_audit_batch_size").record(entries.len() as f64);
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
}
