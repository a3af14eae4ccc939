//! The intents ledger: the lander's exactly-once record, in PostgreSQL.
//!
//! Invariant: no batch is inserted without its intent, and no intent is
//! forgotten before an offset commit covers it. Before a batch goes to
//! ClickHouse, `lander_intents` holds its offset ranges and deduplication token,
//! `topic:partition:first-last[_partition:first-last...]` (a batch may span the
//! partitions a lander holds: one row per member partition, keyed by its first
//! offset there, each naming every member). A partition that resumes at its
//! committed offset replays the contiguous chain of intents starting there, each
//! batch re-read from Kafka over exactly its members' ranges (`replay`) and
//! re-sent with its token, so ClickHouse drops what had landed, however many
//! batches landed before their commits failed, and whichever member resumes. Once a batch's
//! offset commit succeeds, `lander_landed` records the partition as landed
//! through its last offset and the intents it covers are deleted; a consumer
//! that resumes below that mark (a position fetched before the commit, or reset
//! to the earliest offset when the committed one could not be read after a
//! broker crash) skips those records rather than landing them again.

use sqlx::PgPool;
use std::collections::VecDeque;

use super::service::Backoff;

/// One partition's part of a batch: the records `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Range {
    pub(super) partition: i32,
    pub(super) first: i64,
    pub(super) last: i64,
}

/// A pending batch of the resuming partition: its range there is `first..=last`;
/// the whole batch is `members` (every partition's range, this one included),
/// landed with `token`.
pub(super) struct Intent {
    first: i64,
    pub(super) last: i64,
    pub(super) members: Vec<Range>,
    pub(super) token: String,
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
                            "WITH landed AS (DELETE FROM lander_landed WHERE consumer_group = $1 AND topic = $2 AND partition = $3)
                             DELETE FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
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
                    "SELECT first_offset, last_offset, token, members FROM lander_intents
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
        // Intents that will not be replayed under their token (the chain broke before them):
        // their records are batched again under new tokens, so their event-id claims are
        // released, or the new batches would drop those events as duplicates of a batch that
        // may never have landed.
        let mut superseded: Vec<i64> = Vec::new();
        let mut broken = false;
        for i in rows {
            if broken || i.first_offset != next {
                if !broken && i.first_offset < next {
                    tracing::warn!(partition = p, offset = next, first = i.first_offset, "resuming inside a recorded batch; forming new batches");
                }
                broken = true;
                superseded.push(crate::dedup::batch_key(&i.token));
                continue;
            }
            next = i.last_offset + 1;
            let own = Range { partition: p, first: i.first_offset, last: i.last_offset };
            let members = match i.members.map(serde_json::from_value::<Vec<Range>>) {
                Some(Ok(m)) if m.contains(&own) => m,
                None => vec![own],
                Some(_) => {
                    tracing::error!(partition = p, first = i.first_offset, "a batch intent's members are unreadable; replaying this partition's range alone");
                    vec![own]
                }
            };
            chain.push_back(Intent { first: i.first_offset, last: i.last_offset, members, token: i.token });
        }
        if !superseded.is_empty() {
            let mut backoff = Backoff::POSTGRES;
            while let Err(e) = sqlx::query!("DELETE FROM ingest_event_ids WHERE batch = ANY($1)", &superseded).execute(&self.pool).await {
                tracing::warn!(error = %e, "cannot release the event-id claims of superseded batch intents; retrying");
                backoff.wait().await;
            }
        }
        if let (Some(f), Some(l)) = (chain.front(), chain.back()) {
            tracing::info!(partition = p, batches = chain.len(), first = f.first, last = l.last, "replaying pending batches with their tokens");
        }
        Resume { landed_through, chain }
    }

    /// Record the intent of a batch of `ranges` (one per partition, at least one) and
    /// return its token: one row per member partition, each naming every member, in one
    /// transaction, before this returns (waiting for PostgreSQL rather than landing a
    /// batch that could not be replayed).
    pub(super) async fn record(&self, ranges: &[Range]) -> String {
        let token = token(&self.topic, ranges);
        let members = (ranges.len() > 1).then(|| serde_json::to_value(ranges).expect("ranges serialise"));
        let partitions: Vec<i32> = ranges.iter().map(|r| r.partition).collect();
        let firsts: Vec<i64> = ranges.iter().map(|r| r.first).collect();
        let lasts: Vec<i64> = ranges.iter().map(|r| r.last).collect();
        let record = || {
            sqlx::query!(
                r#"INSERT INTO lander_intents (consumer_group, topic, partition, first_offset, last_offset, token, members)
               SELECT $1, $2, p, f, l, $6, $7 FROM UNNEST($3::int4[], $4::int8[], $5::int8[]) AS m(p, f, l)
               ON CONFLICT (consumer_group, topic, partition, first_offset)
               DO UPDATE SET last_offset = EXCLUDED.last_offset, token = EXCLUDED.token, members = EXCLUDED.members,
                             recorded_at = now()"#,
                self.group,
                self.topic,
                &partitions,
                &firsts,
                &lasts,
                token,
                members
            )
            .execute(&self.pool)
        };
        Backoff::POSTGRES.until_ok(super::health::Cause::Vault, "cannot record a batch intent in PostgreSQL", record).await;
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

/// A batch's deduplication token: `topic:partition:first-last`, one per member
/// partition joined by `_` (a batch of one partition keeps the token it always had; the
/// warehouse takes `[A-Za-z0-9_:.-]` in a setting).
fn token(topic: &str, ranges: &[Range]) -> String {
    let parts: Vec<String> = ranges.iter().map(|r| format!("{}:{}-{}", r.partition, r.first, r.last)).collect();
    format!("{topic}:{}", parts.join("_"))
}

#[cfg(test)]
mod tests {
    use super::Range;

    #[test]
    fn a_token_names_the_topic_partitions_and_offset_ranges() {
        let r = |partition, first, last| Range { partition, first, last };
        assert_eq!(super::token("learning-events", &[r(4, 1200, 1299)]), "learning-events:4:1200-1299");
        assert_eq!(super::token("learning-events", &[r(0, 10, 19), r(3, 7, 7)]), "learning-events:0:10-19_3:7-7");
    }
}
