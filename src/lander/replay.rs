//! Re-reading a pending batch from Kafka, for its replay.
//!
//! Invariant: a replayed batch is re-read over exactly its members' ranges,
//! whichever partitions this lander holds now, with a consumer of its own
//! (assigned, outside the group: it never commits and never takes partitions
//! from anyone), so it is re-sent whole under its token (a part of it under
//! the whole batch's token would be dropped as a duplicate of the rest).
//! Records that retention removed meanwhile are missing from the replay, and
//! said so.

use chrono::DateTime;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::decode::Raw;
use super::intents::Range;
use super::LanderError;

/// The records of `ranges` in `topic`, per member partition in the order of `ranges`.
pub(super) async fn read(brokers: &str, topic: &str, ranges: &[Range]) -> Result<Vec<(i32, Vec<Raw>)>, LanderError> {
    let (brokers, topic, ranges) = (brokers.to_owned(), topic.to_owned(), ranges.to_vec());
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, &ranges))
        .await
        .map_err(|e| LanderError::Config(format!("replay reader failed: {e}")))?
}

// (A repeated end of partition is not a consumer error: the EOF arm matches whether or not it closes one.)
#[allow(clippy::collapsible_match)]
fn read_blocking(brokers: &str, topic: &str, ranges: &[Range]) -> Result<Vec<(i32, Vec<Raw>)>, LanderError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("learnvault-replay-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.first))?;
    }
    consumer.assign(&tpl)?;
    let mut out: HashMap<i32, Vec<Raw>> = ranges.iter().map(|r| (r.partition, Vec::new())).collect();
    let want: HashMap<i32, Range> = ranges.iter().map(|r| (r.partition, *r)).collect();
    let mut open: std::collections::HashSet<i32> = want.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(LanderError::Config(format!("replay: partitions {open:?} of {topic} did not deliver their ranges within 120 s")));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if open.remove(&p) {
                    tracing::warn!(partition = p, "replay: the partition ends before the batch's range does; replaying what is left");
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "replay: consumer error; retrying"),
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(r) = want.get(&p) else { continue };
                if m.offset() > r.last {
                    open.remove(&p);
                    continue;
                }
                if m.offset() >= r.first {
                    let broker_ts = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
                    let raw = Raw { offset: m.offset(), key: m.key().map(<[u8]>::to_vec), raw: m.payload().unwrap_or_default().to_vec(), broker_ts };
                    out.get_mut(&p).expect("wanted").push(raw);
                }
                if m.offset() >= r.last {
                    open.remove(&p);
                }
            }
        }
    }
    Ok(ranges
        .iter()
        .map(|r| {
            let raws = out.remove(&r.partition).unwrap_or_default();
            if raws.first().map(|x| x.offset) != Some(r.first) || raws.last().map(|x| x.offset) != Some(r.last) {
                tracing::warn!(partition = r.partition, first = r.first, last = r.last, read = raws.len(), "replay: part of the batch's range is gone from Kafka (retention)");
            }
            (r.partition, raws)
        })
        .collect())
}
