//! The subject's records in a Kafka topic (the dead letters, keyed by the
//! pseudonym since `redact::dead_letter_key`): read for subject access and
//! counted for the erasure certificate. Kafka cannot delete single records:
//! they age out with the topic's retention, which the certificate states.

use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::Duration;

use super::DsrError;

fn err(e: impl std::fmt::Display) -> DsrError {
    DsrError::Verification(format!("kafka: {e}"))
}

/// Call `each` with the value of every record of `topic` keyed by `key`, from
/// the start of every partition to its end.
/// Blocking (run it on a blocking thread); memory bounded by one record.
pub fn scan_keyed(brokers: &str, topic: &str, key: &str, mut each: impl FnMut(&[u8]) -> Result<(), DsrError>) -> Result<u64, DsrError> {
    let mut found = 0u64;
    scan(brokers, topic, |k, payload| {
        if k == Some(key.as_bytes()) {
            each(payload)?;
            found += 1;
        }
        Ok(())
    })?;
    Ok(found)
}

/// Records of `topic` keyed by each of `keys`, read in one pass (a batch erasure's certificates).
pub fn count_keyed(brokers: &str, topic: &str, keys: &std::collections::HashSet<String>) -> Result<std::collections::HashMap<String, u64>, DsrError> {
    let mut out = std::collections::HashMap::new();
    scan(brokers, topic, |k, _| {
        if let Some(k) = k.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| keys.contains(*k)) {
            *out.entry(k.to_owned()).or_insert(0) += 1;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Every record of `topic` from the start of each partition to its end: `each(key, payload)`.
fn scan(brokers: &str, topic: &str, mut each: impl FnMut(Option<&[u8]>, &[u8]) -> Result<(), DsrError>) -> Result<(), DsrError> {
    let c = crate::topics::reader(brokers, "learnvault-dsr-scan").map_err(err)?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(err)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(()) };
    let mut open = HashSet::new();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).map_err(err)?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low)).map_err(err)?;
            open.insert(p.id());
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    c.assign(&tpl).map_err(err)?;
    let mut failed = None;
    let read = |m: &BorrowedMessage<'_>, open: &mut HashSet<i32>| {
        if let Err(e) = each(m.key(), m.payload().unwrap_or_default()) {
            failed = Some(e);
            open.clear();
        }
    };
    let done = crate::topics::read_until_closed(&c, &mut open, Duration::from_secs(300), "subject scan", read, |_| {});
    match failed {
        Some(e) => Err(e),
        None if !done => Err(err(format!("{topic}: not read to its end within 5 minutes"))),
        None => Ok(()),
    }
}
