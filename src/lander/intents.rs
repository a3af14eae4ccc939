//! The intents ledger: the lander's exactly-once record, in PostgreSQL.
//!
//! Invariant: no batch is inserted without its intent, and no intent is
//! forgotten before an offset commit covers it. Before a batch goes to
//! ClickHouse, `lander_intents` holds its offset range and deduplication token,
//! `topic:partition:first-last` (one row per batch, keyed by its first offset).
//! A partition that resumes at its committed offset replays the contiguous
//! chain of intents starting there, each batch re-formed over exactly its
//! range and re-sent with its token, so ClickHouse drops what had landed,
//! however many batches landed before their commits failed. A batch's intent
//! is deleted once the partition's next commit covers it (the newest committed
//! one stays: a consumer that fetched its position just before that commit
//! resumes at its first offset).

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

    /// The intents partition `p` must replay, in order, when it resumes
    /// reading at its committed `offset`: the contiguous chain of recorded
    /// intents starting there. Intents before `offset` are committed and
    /// deleted. Waits for PostgreSQL.
    pub(super) async fn pending(&self, p: i32, offset: i64) -> VecDeque<Intent> {
        let mut backoff = Backoff::POSTGRES;
        let rows = loop {
            let r = async {
                sqlx::query!(
                    "DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND last_offset < $4",
                    self.group,
                    self.topic,
                    p,
                    offset
                )
                .execute(&self.pool)
                .await?;
                sqlx::query!(
                    "SELECT first_offset, last_offset, token FROM lander_intents
                      WHERE consumer_group = $1 AND topic = $2 AND partition = $3 ORDER BY first_offset",
                    self.group,
                    self.topic,
                    p
                )
                .fetch_all(&self.pool)
                .await
            }
            .await;
            match r {
                Ok(rows) => break rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read batch intents from PostgreSQL; retrying");
                    backoff.wait().await;
                }
            }
        };
        let mut chain = VecDeque::new();
        let mut next = offset;
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
        chain
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
            backoff.wait().await;
        }
        token
    }

    /// Forget partition `p`'s intents up to `last`: an offset commit covers them.
    /// A failure only leaves rows the next resume deletes.
    pub(super) async fn forget_through(&self, p: i32, last: i64) {
        if let Err(e) = sqlx::query!(
            "DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND last_offset <= $4",
            self.group,
            self.topic,
            p,
            last
        )
        .execute(&self.pool)
        .await
        {
            tracing::warn!(error = %e, partition = p, "cannot delete committed intents; the next resume will");
        }
    }
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
