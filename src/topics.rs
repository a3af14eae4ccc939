//! Kafka topics as learnvault provisions them, and their live configuration.
//!
//! # Invariants
//! * Every topic learnvault creates (the events topic and its dead-letter topic) carries
//!   `cleanup.policy=delete` and the `retention.ms` that `policies/retention.yaml` states for
//!   it (`kafka: {learning-events: {days: 7}, learning-events.dlq: {days: 14}}`), so the data
//!   map's retention of the stream and of dead letters is a broker property, not a promise.
//! * An existing topic is never altered here: a drift between its live configuration and the
//!   policy is reported by [`live_configs`] through `learnvault retention verify` (exit 1),
//!   for an operator to decide, as a drifted ClickHouse TTL is.
//!
//! # Public API
//! [`TopicSpec`], [`specs`] (the topics of a [`Settings`] with their policy), [`ensure`]
//! (create what is missing), [`live_configs`] (read configurations through the admin API);
//! [`reader`] and [`read_until_closed`] (read partitions by hand, for the dead-letter and
//! batch replays).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::retention::Policy;

/// The policy name of the events topic in `retention.yaml` (whatever it is called in a deployment).
pub const EVENTS: &str = "learning-events";
/// The policy name of the dead-letter topic in `retention.yaml`.
pub const DEAD_LETTERS: &str = "learning-events.dlq";

/// The longest a segment stays open before it rolls (and can be deleted as a whole).
pub const SEGMENT_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    Create { topic: String, code: String },
    #[error("retention policy: {0}")]
    Policy(String),
}

/// A topic and the configuration it is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name in this deployment (`LEARNVAULT_EVENTS_TOPIC`, ...).
    pub name: String,
    pub partitions: i32,
    /// `retention.ms` from the policy (`None`: the policy names no retention for it).
    pub retention_ms: Option<i64>,
}

impl TopicSpec {
    /// The topic-level configuration learnvault sets, as (key, value).
    pub fn config(&self) -> Vec<(&'static str, String)> {
        let mut c = vec![("cleanup.policy", "delete".to_owned())];
        if let Some(ms) = self.retention_ms {
            c.push(("retention.ms", ms.to_string()));
            // Kafka deletes whole segments: a segment rolls at least daily, so no record
            // outlives its retention by more than a day (within the policy's grace).
            c.push(("segment.ms", ms.min(SEGMENT_MS).to_string()));
        }
        c
    }
}

/// The events and dead-letter topics of `settings`, with the retention of `policy` (validated
/// by `Policy::load`).
pub fn specs_with(settings: &Settings, policy: &Policy) -> Vec<TopicSpec> {
    let spec = |name: &String, policy_name: &str| TopicSpec {
        name: name.clone(),
        partitions: settings.kafka.topic_partitions,
        retention_ms: policy.kafka.get(policy_name).map(|d| i64::from(d.days) * 86_400_000),
    };
    vec![spec(&settings.kafka.events_topic, EVENTS), spec(&settings.kafka.dlq_topic, DEAD_LETTERS)]
}

/// The events and dead-letter topics of `settings`, with the retention of the policy directory's
/// `retention.yaml`.
pub fn specs(settings: &Settings) -> Result<Vec<TopicSpec>, TopicError> {
    let policy = Policy::load(&settings.policy_dir.join("retention.yaml")).map_err(|e| TopicError::Policy(e.to_string()))?;
    Ok(specs_with(settings, &policy))
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, TopicError> {
    Ok(ClientConfig::new().set("bootstrap.servers", brokers).create()?)
}

/// Create every topic of `specs` that does not exist yet, with its configuration. Existing
/// topics are left as they are (see the module invariants).
pub async fn ensure(brokers: &str, specs: &[TopicSpec]) -> Result<(), TopicError> {
    let admin = admin(brokers)?;
    let configs: Vec<Vec<(&'static str, String)>> = specs.iter().map(TopicSpec::config).collect();
    let new: Vec<NewTopic> = specs
        .iter()
        .zip(&configs)
        .map(|(s, c)| c.iter().fold(NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(new.iter(), &opts).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code: code.to_string() }),
        }
    }
    Ok(())
}

/// The live configuration of each topic (`None` when the topic does not exist), read through
/// the admin API.
pub async fn live_configs(brokers: &str, names: &[&str]) -> Result<BTreeMap<String, Option<BTreeMap<String, String>>>, TopicError> {
    let admin = admin(brokers)?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let resources: Vec<ResourceSpecifier> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let results = admin.describe_configs(resources.iter(), &opts).await?;
    let mut out = BTreeMap::new();
    for (name, r) in names.iter().zip(results) {
        let entries = match r {
            // A topic always lists its configuration (defaults included); none means no topic.
            Ok(res) if res.entries.is_empty() => None,
            Ok(res) => Some(res.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()),
            Err(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) => None,
            Err(code) => return Err(TopicError::Create { topic: (*name).to_owned(), code: format!("describe configs: {code}") }),
        };
        out.insert((*name).to_owned(), entries);
    }
    Ok(out)
}

/// A consumer that reads by hand: assigned partitions, outside any group (`group` is a prefix
/// made unique), never committing, told each partition's end (`enable.partition.eof`).
pub fn reader(brokers: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{group}-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
}

/// Poll an assigned [`reader`] until every partition of `open` is closed: at its end
/// (`at_end` is told the partition when that closes it), or by `on_message` (which gets every
/// message and closes a partition by removing it from the set). A consumer error is logged
/// (`what` names the reader) and polling goes on. `false` when `within` ran out first (`open`
/// holds what was left).
// (A repeated end of partition is not a consumer error: the EOF arm matches whether or not it closes one.)
#[allow(clippy::collapsible_match)]
pub fn read_until_closed(
    consumer: &BaseConsumer,
    open: &mut HashSet<i32>,
    within: Duration,
    what: &str,
    mut on_message: impl FnMut(&BorrowedMessage<'_>, &mut HashSet<i32>),
    mut at_end: impl FnMut(i32),
) -> bool {
    let deadline = Instant::now() + within;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if open.remove(&p) {
                    at_end(p);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "{what}: consumer error; retrying"),
            Some(Ok(m)) => on_message(&m, open),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_gives_both_topics_a_retention() {
        let settings = Settings { policy_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(), ..Settings::default() };
        let s = specs(&settings).unwrap();
        assert_eq!(s[0].name, "learning-events");
        assert_eq!(s[0].retention_ms, Some(7 * 86_400_000));
        assert_eq!(s[1].retention_ms, Some(14 * 86_400_000));
        assert_eq!(s[1].config(), vec![
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", "1209600000".to_owned()),
                ("segment.ms", "86400000".to_owned())
            ]);
    }
}
