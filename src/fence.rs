//! Erasure fences the landers: after its tombstone, an erasure waits until
//! every live lander, in this process or another, has seen it and has no batch
//! in flight that was governed before it; only then does it delete, recompute
//! and verify (so a certificate never counts 0 while a batch of the subject is
//! still on its way). Shared by the lander and the erasure job, hence its own module.
//!
//! Protocol (PostgreSQL, see `migrations/postgres/0007_privacy_edges.sql`):
//! * erasure commits its tombstone, then advances the sequence `erasure_epoch`
//!   ([`advance`]) and waits ([`wait_for_landers`]) until every lander whose
//!   heartbeat is recent has `acked_epoch` at least that epoch;
//! * a lander registers each batch before governing it ([`Fence::enter`],
//!   a [`Ticket`] dropped once the batch landed or was abandoned), reads the
//!   epoch ([`Fence::refresh`], dropping its governance cache when it moved), and
//!   acknowledges `min(seen epoch, epochs of the batches in flight)` every heartbeat.
//!
//! Invariant: a lander acknowledges epoch E only when every batch it still has
//! in flight was governed with a cache emptied after E was visible, i.e. after
//! the tombstone committed.

use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use uuid::Uuid;

use crate::governance::Governance;

/// How often a lander acknowledges.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// A lander whose heartbeat is older than this is gone (crashed or stopped):
/// its unacknowledged batches were never committed and are replayed, governed afresh.
pub const LIVE: Duration = Duration::from_secs(10);

/// The current epoch (0 before any erasure).
pub async fn current_epoch(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS "epoch!" FROM erasure_epoch"#).fetch_one(pool).await
}

/// Advance the epoch (call after the tombstone committed); returns the new epoch.
pub async fn advance(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT nextval('erasure_epoch') AS "epoch!""#).fetch_one(pool).await
}

/// Live landers that have not acknowledged `epoch`.
pub async fn laggards(pool: &PgPool, epoch: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT lander_id FROM lander_fences WHERE acked_epoch < $1 AND heartbeat_at > now() - make_interval(secs => $2) ORDER BY lander_id",
        epoch,
        LIVE.as_secs_f64()
    )
    .fetch_all(pool)
    .await
}

/// Wait until every live lander acknowledged `epoch`; `Err` with the laggards after `timeout`.
pub async fn wait_for_landers(pool: &PgPool, epoch: i64, timeout: Duration) -> Result<Result<(), Vec<Uuid>>, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let late = laggards(pool, epoch).await?;
        if late.is_empty() {
            return Ok(Ok(()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err(late));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Inner {
    id: Uuid,
    pool: PgPool,
    governance: Arc<Governance>,
    seen: AtomicI64,
    next: AtomicU64,
    in_flight: Mutex<HashMap<u64, i64>>,
}

/// One lander's side of the fence.
#[derive(Clone)]
pub struct Fence(Arc<Inner>);

/// A batch in flight, registered with the epoch it was governed at; removed when dropped.
pub struct Ticket {
    fence: Weak<Inner>,
    n: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(f) = self.fence.upgrade() {
            f.in_flight.lock().expect("fence lock").remove(&self.n);
        }
    }
}

impl Fence {
    /// A lander's fence, acknowledging every [`HEARTBEAT`] until the last clone is dropped.
    pub fn start(pool: PgPool, governance: Arc<Governance>) -> Fence {
        let inner = Arc::new(Inner {
            id: Uuid::new_v4(),
            pool: pool.clone(),
            governance,
            seen: AtomicI64::new(0),
            next: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        let id = inner.id;
        tokio::spawn(async move {
            loop {
                let Some(f) = weak.upgrade().map(Fence) else { break };
                if let Err(e) = f.acknowledge().await {
                    tracing::warn!(error = %e, "lander fence: cannot acknowledge; erasures wait for this lander");
                }
                drop(f);
                tokio::time::sleep(HEARTBEAT).await;
            }
            let _ = sqlx::query!("DELETE FROM lander_fences WHERE lander_id = $1", id).execute(&pool).await;
        });
        Fence(inner)
    }

    pub fn id(&self) -> Uuid {
        self.0.id
    }

    /// Register a batch before governing it (call [`Fence::refresh`] next).
    pub fn enter(&self) -> Ticket {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut m = self.0.in_flight.lock().expect("fence lock");
        m.insert(n, self.0.seen.load(Ordering::SeqCst));
        Ticket { fence: Arc::downgrade(&self.0), n }
    }

    /// Read the epoch; when it moved, drop the governance cache (the next
    /// standings come from the vault, tombstones included).
    pub async fn refresh(&self) -> Result<i64, sqlx::Error> {
        let e = current_epoch(&self.0.pool).await?;
        if e > self.0.seen.load(Ordering::SeqCst) {
            self.0.governance.clear();
            self.0.seen.fetch_max(e, Ordering::SeqCst);
        }
        Ok(e)
    }

    /// The epoch this lander can acknowledge now.
    pub fn acknowledgeable(&self) -> i64 {
        let seen = self.0.seen.load(Ordering::SeqCst);
        let m = self.0.in_flight.lock().expect("fence lock");
        m.values().copied().min().map_or(seen, |oldest| oldest.min(seen))
    }

    /// Refresh and record the acknowledgement with a heartbeat.
    pub async fn acknowledge(&self) -> Result<i64, sqlx::Error> {
        self.refresh().await?;
        let acked = self.acknowledgeable();
        sqlx::query!(
            "INSERT INTO lander_fences (lander_id, acked_epoch, heartbeat_at) VALUES ($1, $2, now())
             ON CONFLICT (lander_id) DO UPDATE SET acked_epoch = EXCLUDED.acked_epoch, heartbeat_at = now()",
            self.0.id,
            acked
        )
        .execute(&self.0.pool)
        .await?;
        Ok(acked)
    }
}
