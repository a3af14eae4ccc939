//! The intents ledger: the lander's exactly-once record, in PostgreSQL.
//!
//! Invariant: no batch is inserted without its intent. Before a batch goes to
//! ClickHouse, `lander_intents` holds its offset range and deduplication token,
//! `topic:partition:first-last` (one row per consumer group, topic and
//! partition, overwritten by the partition's next batch). A partition that
//! resumes at its intent's first offset re-forms exactly that range and
//! re-sends it with that token, so ClickHouse drops it if it had landed.

use sqlx::PgPool;

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

    /// The intent partition `p` must replay when it resumes reading at
    /// `offset`: its recorded intent, if that starts there (waits for PostgreSQL).
    pub(super) async fn pending(&self, p: i32, offset: i64) -> Option<Intent> {
        let mut backoff = Backoff::POSTGRES;
        let intent = loop {
            let r = sqlx::query!(
                "SELECT first_offset, last_offset, token FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                self.group,
                self.topic,
                p
            )
            .fetch_optional(&self.pool)
            .await;
            match r {
                Ok(i) => break i,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read batch intents from PostgreSQL; retrying");
                    backoff.wait().await;
                }
            }
        };
        intent.and_then(|i| {
            if i.first_offset == offset {
                tracing::info!(partition = p, first = i.first_offset, last = i.last_offset, "replaying a pending batch with its token");
                Some(Intent { first: i.first_offset, last: i.last_offset, token: i.token })
            } else {
                if offset > i.first_offset && offset <= i.last_offset {
                    tracing::warn!(partition = p, offset, "resuming inside a recorded batch; forming new batches");
                }
                None
            }
        })
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
                       ON CONFLICT (consumer_group, topic, partition)
                       DO UPDATE SET first_offset = EXCLUDED.first_offset, last_offset = EXCLUDED.last_offset,
                                     token = EXCLUDED.token, recorded_at = now()"#,
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
