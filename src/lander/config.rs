//! The lander's configuration.
//!
//! Invariant: the lander runs only with a configuration that passed
//! [`LanderConfig::validate`] (names set, every batch bound at least one).

use std::time::Duration;

use super::LanderError;
use crate::config::Settings;

/// At most this many offset-commit attempts (100 are ~8 minutes: past that, owe the commit).
pub const MAX_COMMIT_ATTEMPTS: u32 = 100;

/// At most this many batches in flight (each holds its records and rows in memory).
pub const MAX_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone)]
pub struct LanderConfig {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub partitions: i32,
    pub batch_rows: usize,
    pub batch_wait: Duration,
    /// Attempts of a batch's offset commit before it is abandoned and owed (`CommitDebt`).
    pub commit_attempts: u32,
    /// Batches in flight at most (`run.rs`): 1..=[`MAX_IN_FLIGHT`].
    pub in_flight: usize,
    /// A partition's batch is flushed at `batch_rows` records or this many bytes.
    pub batch_bytes: usize,
    pub max_event_bytes: usize,
    pub governance_ttl: Duration,
    /// Events whose client clock is further than this from server time are flagged.
    pub clock_skew: Duration,
    /// Idempotent ingest ([`crate::dedup`]): claim event ids before inserting.
    pub dedup: bool,
    /// Days an event id is remembered (at least [`crate::dedup::MIN_WINDOW_DAYS`]).
    pub dedup_window_days: u32,
}

impl LanderConfig {
    pub fn from_settings(s: &Settings) -> Self {
        LanderConfig {
            brokers: s.kafka.brokers.clone(),
            topic: s.kafka.events_topic.clone(),
            dlq_topic: s.kafka.dlq_topic.clone(),
            group: s.lander.consumer_group.clone(),
            partitions: s.kafka.topic_partitions,
            batch_rows: s.lander.batch_rows,
            batch_wait: Duration::from_millis(s.lander.batch_ms),
            commit_attempts: s.lander.commit_attempts,
            in_flight: s.lander.in_flight,
            batch_bytes: s.lander.batch_bytes,
            max_event_bytes: s.lander.max_event_bytes,
            governance_ttl: Duration::from_millis(s.governance.cache_ms),
            clock_skew: Duration::from_secs(s.governance.clock_skew_secs),
            dedup: s.dedup.enabled,
            dedup_window_days: s.dedup.window_days,
        }
    }

    /// Refuse a configuration the lander cannot run with: an empty broker list,
    /// topic or group, one topic for events and dead letters, no partitions, a
    /// zero batch or event size, commit attempts outside 1..=[`MAX_COMMIT_ATTEMPTS`], batches in
    /// flight outside 1..=[`MAX_IN_FLIGHT`], or a deduplication window under
    /// [`crate::dedup::MIN_WINDOW_DAYS`]. (A zero `batch_wait` or `governance_ttl` is allowed:
    /// flush at every tick, ask the vault every time.) `Settings::validate` refuses the same
    /// at start-up, from the same constants; this guards a `LanderConfig` built otherwise.
    pub fn validate(&self) -> Result<(), LanderError> {
        let problem: String = if self.brokers.trim().is_empty() {
            "no Kafka brokers (LEARNVAULT_KAFKA_BROKERS)".into()
        } else if self.topic.is_empty() || self.dlq_topic.is_empty() {
            "an empty topic name (LEARNVAULT_EVENTS_TOPIC, LEARNVAULT_DLQ_TOPIC)".into()
        } else if self.topic == self.dlq_topic {
            "the dead-letter topic is the events topic (LEARNVAULT_DLQ_TOPIC)".into()
        } else if self.group.is_empty() {
            "an empty consumer group (LEARNVAULT_CONSUMER_GROUP)".into()
        } else if self.partitions < 1 {
            "fewer than one partition (LEARNVAULT_TOPIC_PARTITIONS)".into()
        } else if self.batch_rows == 0 {
            "a batch of zero records (LEARNVAULT_LANDER_BATCH_ROWS)".into()
        } else if self.batch_bytes == 0 {
            "a batch of zero bytes (LEARNVAULT_LANDER_BATCH_BYTES)".into()
        } else if !(1..=MAX_COMMIT_ATTEMPTS).contains(&self.commit_attempts) {
            format!("offset commit attempts outside 1..={MAX_COMMIT_ATTEMPTS} (LEARNVAULT_LANDER_COMMIT_ATTEMPTS)")
        } else if !(1..=MAX_IN_FLIGHT).contains(&self.in_flight) {
            format!("batches in flight outside 1..={MAX_IN_FLIGHT} (LEARNVAULT_LANDER_IN_FLIGHT)")
        } else if self.max_event_bytes == 0 {
            "events of at most zero bytes (LEARNVAULT_MAX_EVENT_BYTES)".into()
        } else if self.dedup_window_days < crate::dedup::MIN_WINDOW_DAYS {
            format!("a deduplication window under {} days (LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS)", crate::dedup::MIN_WINDOW_DAYS)
        } else {
            return Ok(());
        };
        Err(LanderError::Config(format!("lander: {problem}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_settings_validate_and_each_broken_field_is_named() {
        let ok = LanderConfig::from_settings(&Settings::default());
        ok.validate().expect("the defaults are a valid lander configuration");
        type Breaks = fn(&mut LanderConfig);
        let broken: [(&str, Breaks); 13] = [
            ("LEARNVAULT_KAFKA_BROKERS", |c| c.brokers = " ".into()),
            ("LEARNVAULT_EVENTS_TOPIC", |c| c.topic.clear()),
            ("LEARNVAULT_DLQ_TOPIC", |c| c.dlq_topic = c.topic.clone()),
            ("LEARNVAULT_CONSUMER_GROUP", |c| c.group.clear()),
            ("LEARNVAULT_TOPIC_PARTITIONS", |c| c.partitions = 0),
            ("LEARNVAULT_LANDER_BATCH_ROWS", |c| c.batch_rows = 0),
            ("LEARNVAULT_LANDER_BATCH_BYTES", |c| c.batch_bytes = 0),
            ("LEARNVAULT_MAX_EVENT_BYTES", |c| c.max_event_bytes = 0),
            ("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", |c| c.commit_attempts = 0),
            ("LEARNVAULT_LANDER_COMMIT_ATTEMPTS", |c| c.commit_attempts = MAX_COMMIT_ATTEMPTS + 1),
            ("LEARNVAULT_INGEST_DEDUP_WINDOW_DAYS", |c| c.dedup_window_days = 6),
            ("LEARNVAULT_LANDER_IN_FLIGHT", |c| c.in_flight = 0),
            ("LEARNVAULT_LANDER_IN_FLIGHT", |c| c.in_flight = MAX_IN_FLIGHT + 1),
        ];
        for (setting, breaks) in broken {
            let mut c = ok.clone();
            breaks(&mut c);
            match c.validate() {
                Err(LanderError::Config(m)) => assert!(m.contains(setting), "{setting}: {m}"),
                other => panic!("{setting}: expected a configuration error, got {other:?}"),
            }
        }
        let mut c = ok.clone();
        c.batch_wait = Duration::ZERO;
        c.governance_ttl = Duration::ZERO;
        c.validate().expect("zero waits are allowed");
    }
}
