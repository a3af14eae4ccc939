//! The intents ledger: the lander's exactly-once record, in PostgreSQL.
//!
//! Invariant: no batch is inserted without its intent, and no intent is
//! forgotten before an offset commit covers it. Before a batch goes to
//! ClickHouse, `lander_intents` holds its offset range and deduplication token,
//! `topic:partition:first-last` (one row per batch, keyed by its first offset).
//! A partition that resumes at its committed offset replays the contiguous
//! chain of intents starting there, each batch re-formed over exactly its
//! range and re-sent with its token, so ClickHouse drops what had landed,
//! however many batches landed before their commits failed. Once a batch's
//! offset commit succeeds, `lander_landed` records the partition as landed
//! through its last offset and the intents it covers are deleted; a consumer
//! that resumes below that mark (a position fetched before the commit, or reset
//! to the earliest offset when the committed one could not be read after a
//! broker crash) skips those records rather than landing them again.

use sqlx::PgPool;
use std::collections::VecDeque;

use super::service::Backoff;

/// A pending batch: its partition's next batch must cover exactly
/// `first..=last`, and carries `token`.
pub(super) struct Intent {
    first: i64,
    pub(super) last: i64,
    token: String,
}

/// The intents of one consumer group on one topic.
pub(super) struct Intents {
    pool: PgPool,
    group: String,
    topic: String,
}

impl Intents {
    pub(super) fn new(pool: PgPool, group: String, topic: String) -> Intents {
        Intents { pool, group, topic }
    }

    /// What partition `p` resumes with when it reads again from `offset`: the
    /// records through `landed_through` are landed and committed (skip them),
    /// and the contiguous chain of recorded intents that starts after them must
    /// be replayed, in order. `high` is the partition's end offset: below the
    /// recorded mark, the topic was recreated and the ledger starts over.
    /// Waits for PostgreSQL.
    pub(super) async fn pending(&self, p: i32, offset: i64, high: Option<i64>) -> Resume {
        let mut backoff = Backoff::POSTGRES;
        let (through, rows) = loop {
            let r = async {
                let mut through = sqlx::query_scalar!(
                    "SELECT through FROM lander_landed WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                    self.group,
                    self.topic,
                    p
                )
                .fetch_optional(&self.pool)
                .await?;
                if let (Some(t), Some(h)) = (through, high) {
                    if h <= t {
                        tracing::warn!(partition = p, landed_through = t, end = h, "the partition ends before what was landed: topic recreated; the ledger starts over");
                        sqlx::query!(
                            "DELETE FROM lander_landed WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                            self.group,
                            self.topic,
                            p
                        )
                        .execute(&self.pool)
                        .await?;
                        sqlx::query!(
                            "DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                            self.group,
                            self.topic,
                            p
                        )
                        .execute(&self.pool)
                        .await?;
                        through = None;
                    }
                }
                let start = through.map_or(offset, |t| offset.max(t + 1));
                sqlx::query!(
                    "DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND last_offset < $4",
                    self.group,
                    self.topic,
                    p,
                    start
                )
                .execute(&self.pool)
                .await?;
                let rows = sqlx::query!(
                    "SELECT first_offset, last_offset, token FROM lander_intents
                      WHERE consumer_group = $1 AND topic = $2 AND partition = $3 ORDER BY first_offset",
                    self.group,
                    self.topic,
                    p
                )
                .fetch_all(&self.pool)
                .await?;
                Ok::<_, sqlx::Error>((through, rows))
            }
            .await;
            match r {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read batch intents from PostgreSQL; retrying");
                    backoff.wait().await;
                }
            }
        };
        let landed_through = through.filter(|t| offset <= *t);
        if let Some(t) = landed_through {
            tracing::warn!(partition = p, offset, landed_through = t, "resuming below what was landed and committed; skipping those records");
        }
        let mut chain = VecDeque::new();
        let mut next = through.map_or(offset, |t| offset.max(t + 1));
        for i in rows {
            if i.first_offset != next {
                if i.first_offset < next {
                    tracing::warn!(partition = p, offset = next, first = i.first_offset, "resuming inside a recorded batch; forming new batches");
                }
                break;
            }
            next = i.last_offset + 1;
            chain.push_back(Intent { first: i.first_offset, last: i.last_offset, token: i.token });
        }
        if let (Some(f), Some(l)) = (chain.front(), chain.back()) {
            tracing::info!(partition = p, batches = chain.len(), first = f.first, last = l.last, "replaying pending batches with their tokens");
        }
        Resume { landed_through, chain }
    }

    /// The token of partition `p`'s batch `first..=last`: the replayed intent's
    /// when the batch is exactly its range, else a new intent's, recorded
    /// before this returns.
    pub(super) async fn record(&self, p: i32, first: i64, last: i64, replay: Option<Intent>) -> String {
        if let Some(intent) = replay.filter(|i| i.first == first && i.last == last) {
            return intent.token;
        }
        let token = token(&self.topic, p, first, last);
        let mut backoff = Backoff::POSTGRES;
        // No insert without its intent: wait for PostgreSQL rather than land unreplayably.
        while let Err(e) = sqlx::query!(
            r#"INSERT INTO lander_intents (consumer_group, topic, partition, first_offset, last_offset, token)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (consumer_group, topic, partition, first_offset)
                       DO UPDATE SET last_offset = EXCLUDED.last_offset, token = EXCLUDED.token, recorded_at = now()"#,
            self.group,
            self.topic,
            p,
            first,
            last,
            token
        )
        .execute(&self.pool)
        .await
        {
            tracing::warn!(error = %e, "cannot record a batch intent in PostgreSQL; retrying");
            super::health::stalled(super::health::Cause::Vault, &e);
            backoff.wait().await;
        }
        super::health::recovered(super::health::Cause::Vault);
        token
    }

    /// Partition `p` is landed and committed through `last`: raise its mark
    /// and forget the intents it covers. A failure only leaves rows that the
    /// next resume deletes (the commit itself is what resumes from).
    pub(super) async fn committed_through(&self, p: i32, last: i64) {
        let r = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query!(
                r#"INSERT INTO lander_landed (consumer_group, topic, partition, through) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (consumer_group, topic, partition)
                   DO UPDATE SET through = GREATEST(lander_landed.through, EXCLUDED.through), updated_at = now()"#,
                self.group,
                self.topic,
                p,
                last
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND last_offset <= $4",
                self.group,
                self.topic,
                p,
                last
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, partition = p, "cannot record the landed mark; the next resume replays by intents");
        }
    }
}

/// How a partition resumes: see [`Intents::pending`].
pub(super) struct Resume {
    /// Records up to this offset are landed and committed: skip them.
    pub(super) landed_through: Option<i64>,
    /// Batches to replay, in offset order.
    pub(super) chain: VecDeque<Intent>,
}

/// A batch's deduplication token: `topic:partition:first-last`.
fn token(topic: &str, p: i32, first: i64, last: i64) -> String {
    format!("{topic}:{p}:{first}-{last}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_names_the_topic_partition_and_offset_range() {
        assert_eq!(super::token("learning-events", 4, 1200, 1299), "learning-events:4:1200-1299");
    }
}
