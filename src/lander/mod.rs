//! The governed Kafka -> ClickHouse lander.
//!
//! consume `learning-events` (keyed by pseudonym) -> decode and validate
//! against the taxonomy -> govern (vault standing, analytics consent,
//! protected attributes) -> one batch across the partitions this lander holds
//! (size and time) -> record the batch intent (every member's offset range +
//! deduplication token) in PostgreSQL -> insert into ClickHouse with that token
//! -> commit the members' offsets.
//!
//! Invariants:
//! * an offset is committed only after ClickHouse accepted its batch and the
//!   batch's refused events are in the dead-letter topic, and only while this
//!   lander still owns the partition (a late commit would move the new owner's
//!   offset back);
//! * a batch is identified by `topic:p:first-last[_p:first-last...]` (one range
//!   per member partition); every batch not yet
//!   covered by a commit keeps its intent, and a partition that resumes (after
//!   a crash, a rebalance or a failed commit) replays that chain of intents,
//!   each range rebuilt exactly and re-sent with its token, so ClickHouse
//!   (deduplication on the base table and its views) lands it at most once:
//!   exactly-once without Kafka transactions; records below the partition's
//!   landed mark (`lander_landed`) are skipped when a consumer resumes under it;
//! * an event (its id and client time) lands once within the deduplication window
//!   ([`crate::dedup`]): a batch claims its events' keys after its intent is recorded and
//!   before its insert, and inserts each event once, only if it claimed it (now, or before:
//!   its replay under its token keeps its own claims); duplicates are counted, not
//!   dead-lettered;
//! * every refused event goes to the dead-letter topic with a typed reason and
//!   its original payload (redacted by [`crate::redact`]); nothing is
//!   dropped silently and nothing is retried forever;
//! * only data the warehouse refuses as data (it does not parse as the table's
//!   columns) is dead-lettered; every other failure of the warehouse, the vault
//!   or the broker is retried with back-off while the partition stops landing
//!   (memory stays bounded: at most `LEARNVAULT_LANDER_IN_FLIGHT` batches in flight, `run.rs`), offsets never
//!   move past an unlanded row, and the stall is visible ([`health`]: `/readyz`,
//!   `learnvault_lander_stalled`).
//!
//! # Layout
//! - `config`: [`LanderConfig`], from the settings, validated.
//! - `run`: [`Lander`]: the consumer loop, one batch across partitions by size
//!   and time, intents recorded between polls, rebalances, replays, lag.
//! - `replay`: a pending batch re-read whole from Kafka for its replay.
//! - `decode`: records -> events on two decode threads (single events and
//!   envelopes, plain or zstd), validated.
//! - `row`: the hand-written rows (binary, `RowBinaryWithNamesAndTypes`; JSONEachRow) and
//!   their reused buffers.
//! - `intents`: the exactly-once record (`lander_intents`, deduplication tokens).
//! - `health`: landing or stalled, and why ([`health::current`]).
//! - `service`: a batch from its intent through prepare (decode, fence,
//!   governance, dead letters) to land
//!   (insert with its token, figures, offset commit), with one retry policy;
//!   [`LanderStats`].
//!
//! Governance is [`crate::governance`], shared with the gateway.

mod config;
mod decode;
pub mod health;
mod intents;
mod replay;
mod row;
mod run;
mod service;

pub use config::{LanderConfig, MAX_COMMIT_ATTEMPTS, MAX_IN_FLIGHT};
pub(crate) use row::{write_binary_header, write_row_binary, BINARY_FORMAT};
pub use run::Lander;
pub use service::LanderStats;


use crate::warehouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum LanderError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}
