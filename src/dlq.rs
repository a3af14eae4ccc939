//! Dead letters replayed after a fix: `learnvault dlq replay --reason R --since T`.
//!
//! Invariants:
//! * a replayed dead letter goes through the normal gate: its event is produced to the
//!   events topic (one JSON event per record, keyed by its pseudonym, partitioned as every
//!   learnvault producer does), and the lander decodes, validates, governs and claims it
//!   like any other; replaying twice lands it once (its `event_id`, [`crate::dedup`]);
//! * only what can be restored exactly is replayed: a dead letter whose payload is one
//!   event (a JSON object) naming its learner by pseudonym (`learner_id`) and carrying an
//!   `event_id`, with nothing redacted. A dead letter that had anything redacted (an
//!   identity, a protected attribute), that names no pseudonym (the identity was never
//!   kept), has no event id (it could not be replayed idempotently), or is not an event
//!   (an undecodable record, a refused xAPI statement's id and verb) is skipped and counted
//!   under that name;
//! * every replay (not a dry run) is audited: one audit row, `dlq.replay`, with the
//!   reason, the time, the operator and the counts.

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::audit::{NewEntry, Outcome};
use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Invalid(String),
}

/// What to replay.
pub struct Replay {
    /// The dead-letter reason code (`no_consent`, `unknown_event_type`, ...).
    pub reason: String,
    /// Dead letters that failed at or after this time.
    pub since: DateTime<Utc>,
    /// Count only: produce nothing, audit nothing.
    pub dry_run: bool,
    /// Who replays (the audit row's actor).
    pub actor: String,
}

/// What a replay did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Dead letters read.
    pub read: u64,
    /// Of the reason and time asked.
    pub matched: u64,
    /// Produced again to the events topic (or, in a dry run, that would be).
    pub replayed: u64,
    /// Matched but not replayable, by why: `redacted`, `no_pseudonym`, `no_event_id`, `not_an_event`.
    pub skipped: BTreeMap<&'static str, u64>,
}

/// The event of a dead letter, when it can be replayed: see the module's invariants.
pub fn replayable(dead_letter: &Value) -> Result<Value, &'static str> {
    let event = match (&dead_letter["payload"], &dead_letter["payload_base64"]) {
        (Value::Object(_), _) => dead_letter["payload"].clone(),
        (Value::String(s), _) => serde_json::from_str::<Value>(s).map_err(|_| "not_an_event")?,
        _ => return Err("not_an_event"),
    };
    if !event.is_object() {
        return Err("not_an_event");
    }
    if dead_letter["redacted"].as_array().is_some_and(|r| !r.is_empty()) {
        return Err("redacted");
    }
    if event["event_id"].as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()).is_none() {
        return Err("no_event_id");
    }
    if event["learner_id"].as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()).is_none() {
        return Err("no_pseudonym");
    }
    Ok(event)
}

/// Read the dead-letter topic and replay what matches `r` (see the module's invariants).
pub async fn replay(settings: &Settings, r: &Replay) -> Result<Report, DlqError> {
    if r.reason.trim().is_empty() {
        return Err(DlqError::Invalid("--reason must name a dead-letter reason code".into()));
    }
    let letters = read_all(&settings.kafka.brokers, &settings.kafka.dlq_topic).await?;
    let mut report = Report { read: letters.len() as u64, ..Report::default() };
    let mut events = Vec::new();
    for dl in &letters {
        let failed_at = dl["failed_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
        if dl["reason"].as_str() != Some(r.reason.as_str()) || failed_at.is_none_or(|t| t < r.since) {
            continue;
        }
        report.matched += 1;
        match replayable(dl) {
            Ok(ev) => events.push(ev),
            Err(why) => *report.skipped.entry(why).or_default() += 1,
        }
    }
    if r.dry_run {
        report.replayed = events.len() as u64;
        return Ok(report);
    }
    let produced = produce(settings, &events).await;
    report.replayed = *produced.as_ref().unwrap_or(&0);
    let pool = crate::db::connect(settings)?;
    let entry = NewEntry {
        request_id: uuid::Uuid::new_v4(),
        actor: r.actor.clone(),
        roles: vec![],
        institution: None,
        action: "dlq.replay".into(),
        target: None,
        purpose: None,
        justification: None,
        outcome: if produced.is_ok() { Outcome::Success } else { Outcome::Error },
        detail: json!({
            "reason": r.reason, "since": r.since.to_rfc3339(), "dlq_topic": settings.kafka.dlq_topic, "events_topic": settings.kafka.events_topic,
            "read": report.read, "matched": report.matched, "replayed": report.replayed, "skipped": report.skipped,
        }),
    };
    let mut tx = pool.begin().await?;
    crate::audit::append(&mut tx, &[entry]).await?;
    tx.commit().await?;
    pool.close().await;
    produced?;
    Ok(report)
}

/// Produce each event to the events topic, keyed by its pseudonym, on the partition every
/// learnvault producer picks (murmur2), acks=all; the number produced.
async fn produce(settings: &Settings, events: &[Value]) -> Result<u64, DlqError> {
    if events.is_empty() {
        return Ok(0);
    }
    let producer: FutureProducer = crate::envelope::producer_config(&settings.kafka.brokers, "lz4").create()?;
    let partitions = partition_count(&settings.kafka.brokers, &settings.kafka.events_topic).await?;
    let bodies: Vec<(String, Vec<u8>)> =
        events.iter().map(|e| (e["learner_id"].as_str().expect("checked").to_owned(), serde_json::to_vec(e).expect("json"))).collect();
    let sends = bodies.iter().map(|(key, body)| {
        let partition = crate::envelope::partition_for(key.as_bytes(), partitions);
        producer.send(FutureRecord::to(&settings.kafka.events_topic).partition(partition).key(key).payload(body), Duration::from_secs(30))
    });
    let mut n = 0;
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e)?;
        n += 1;
    }
    Ok(n)
}

async fn partition_count(brokers: &str, topic: &str) -> Result<i32, DlqError> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let n = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(DlqError::Invalid(format!("topic {topic} does not exist")));
        }
        Ok(n as i32)
    })
    .await
    .map_err(|e| DlqError::Invalid(format!("metadata task: {e}")))?
}

/// Every dead letter in `topic`, from the earliest offset to the end (as JSON; a record that
/// is not JSON is left out: learnvault writes JSON dead letters only).
async fn read_all(brokers: &str, topic: &str) -> Result<Vec<Value>, DlqError> {
    let n = partition_count(brokers, topic).await?;
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = crate::topics::reader(&brokers, "learnvault-dlq-replay")?;
        let mut tpl = TopicPartitionList::new();
        let mut open = std::collections::HashSet::new();
        for p in 0..n {
            let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
                open.insert(p);
            }
        }
        let mut out = Vec::new();
        if open.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let push = |m: &rdkafka::message::BorrowedMessage<'_>, _: &mut std::collections::HashSet<i32>| {
            if let Some(v) = m.payload().and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
                out.push(v);
            }
        };
        if !crate::topics::read_until_closed(&consumer, &mut open, Duration::from_secs(300), "dead-letter read", push, |_| {}) {
            return Err(DlqError::Invalid(format!("partitions {open:?} of {topic} were not read to their end within 300 s")));
        }
        Ok(out)
    })
    .await
    .map_err(|e| DlqError::Invalid(format!("reader task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::replayable;
    use serde_json::json;

    #[test]
    fn only_whole_unredacted_events_named_by_pseudonym_with_an_id_are_replayable() {
        let ev = json!({"event_id": "00000000-0000-4000-8000-000000000001", "learner_id": "00000000-0000-4000-8000-000000000002", "event_type": "content.view"});
        let lander = json!({"reason": "no_consent", "redacted": [], "payload": ev.to_string()});
        assert_eq!(replayable(&lander), Ok(ev.clone()));
        let gateway = json!({"reason": "schema_violation", "redacted": [], "payload": ev});
        assert_eq!(replayable(&gateway), Ok(ev.clone()));
        let cases = [
            (json!({"redacted": [{"path": "$.props.email", "reason": "email"}], "payload": ev.to_string()}), "redacted"),
            (json!({"redacted": [], "payload": {"event_id": ev["event_id"], "event_type": "content.view"}}), "no_pseudonym"),
            (json!({"redacted": [], "payload": {"statement_id": "x", "verb": "v"}}), "no_event_id"),
            (json!({"redacted": [], "payload": "{not json"}), "not_an_event"),
            (json!({"redacted": [], "payload": format!("[{ev}]")}), "not_an_event"),
            (json!({"redacted": [], "payload_base64": "AAE="}), "not_an_event"),
        ];
        for (dl, why) in cases {
            assert_eq!(replayable(&dl), Err(why), "{dl}");
        }
    }
}
