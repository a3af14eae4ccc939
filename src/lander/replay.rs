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
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

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

fn read_blocking(brokers: &str, topic: &str, ranges: &[Range]) -> Result<Vec<(i32, Vec<Raw>)>, LanderError> {
    let consumer = crate::topics::reader(brokers, "learnvault-replay")?;
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.first))?;
    }
    consumer.assign(&tpl)?;
    let mut out: HashMap<i32, Vec<Raw>> = ranges.iter().map(|r| (r.partition, Vec::new())).collect();
    let want: HashMap<i32, Range> = ranges.iter().map(|r| (r.partition, *r)).collect();
    let mut open: HashSet<i32> = want.keys().copied().collect();
    let take = |m: &BorrowedMessage<'_>, open: &mut HashSet<i32>| {
        let p = m.partition();
        let Some(r) = want.get(&p) else { return };
        if m.offset() > r.last {
            open.remove(&p);
            return;
        }
        if m.offset() >= r.first {
            let broker_ts = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
            let raw =
                Raw { offset: m.offset(), key: m.key().map(<[u8]>::to_vec), raw: m.payload().unwrap_or_default().to_vec(), broker_ts };
            out.get_mut(&p).expect("wanted").push(raw);
        }
        if m.offset() >= r.last {
            open.remove(&p);
        }
    };
    let at_end = |p: i32| tracing::warn!(partition = p, "replay: the partition ends before the batch's range does; replaying what is left");
    if !crate::topics::read_until_closed(&consumer, &mut open, Duration::from_secs(120), "replay", take, at_end) {
        return Err(LanderError::Config(format!("replay: partitions {open:?} of {topic} did not deliver their ranges within 120 s")));
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
