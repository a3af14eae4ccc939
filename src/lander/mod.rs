//! The governed Kafka -> ClickHouse lander.
//!
//! consume `learning-events` (keyed by pseudonym) -> decode and validate
//! against the taxonomy -> govern (vault standing, analytics consent,
//! protected attributes) -> batch per partition (size and time) -> record the
//! batch intent (offset range + deduplication token) in PostgreSQL -> insert
//! into ClickHouse with that token -> commit the offset.
//!
//! Invariants:
//! * an offset is committed only after ClickHouse accepted its batch and the
//!   batch's refused events are in the dead-letter topic;
//! * a batch is identified by `topic:partition:first-last`; after a crash the
//!   pending intent is rebuilt over exactly that range and re-sent with the same
//!   token, so ClickHouse (deduplication on the base table and its views)
//!   lands it at most once: exactly-once without Kafka transactions;
//! * every refused event goes to the dead-letter topic with a typed reason and
//!   its original payload (protected attribute values redacted); nothing is
//!   dropped silently and nothing is retried forever;
//! * retryable warehouse errors back off while the consumer stops reading
//!   (memory stays bounded by one batch per partition).

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::governance::{check_props_and_clock, Governance};
use crate::policy::ProtectedAttributes;
use crate::taxonomy::{Reason, Taxonomy, ValidEvent};
use crate::warehouse::{Warehouse, WarehouseError};

#[derive(Debug, thiserror::Error)]
pub enum LanderError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
pub struct LanderConfig {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub partitions: i32,
    pub batch_rows: usize,
    pub batch_wait: Duration,
    /// A partition's batch is flushed at `batch_rows` records or this many bytes.
    pub batch_bytes: usize,
    pub max_event_bytes: usize,
    pub governance_ttl: Duration,
    /// Events whose client clock is further than this from server time are flagged.
    pub clock_skew: Duration,
}

impl LanderConfig {
    pub fn from_settings(s: &Settings) -> Self {
        LanderConfig {
            brokers: s.kafka_brokers.clone(),
            topic: s.events_topic.clone(),
            dlq_topic: s.dlq_topic.clone(),
            group: s.consumer_group.clone(),
            partitions: s.topic_partitions,
            batch_rows: s.lander_batch_rows,
            batch_wait: Duration::from_millis(s.lander_batch_ms),
            batch_bytes: s.lander_batch_bytes,
            max_event_bytes: s.max_event_bytes,
            governance_ttl: Duration::from_millis(s.governance_cache_ms),
            clock_skew: Duration::from_secs(300),
        }
    }
}

/// Create the events and dead-letter topics if missing (tansu does not auto-create).
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), LanderError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(new.iter(), &opts).await? {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(LanderError::Config(format!("cannot create topic {t}: {code}"))),
        }
    }
    Ok(())
}

/// Counters shared with the demo and the benchmarks.
#[derive(Debug)]
pub struct LanderStats {
    pub landed: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    /// Milliseconds between `server_ts` and the insert, of the last batch's oldest row.
    pub last_freshness_ms: AtomicU64,
    /// Per batch: milliseconds from the oldest row's `server_ts` to the end of
    /// its insert (when the rollups show it): an upper bound of every row's freshness.
    pub freshness_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for LanderStats {
    fn default() -> Self {
        LanderStats {
            landed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            last_freshness_ms: AtomicU64::new(0),
            freshness_ms: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds")),
        }
    }
}

struct Ctx {
    revoked: Arc<Mutex<Vec<i32>>>,
}
impl ClientContext for Ctx {}
impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("revoked lock");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

/// A message as read, decoded when its batch is prepared.
struct Raw {
    offset: i64,
    key: Option<Vec<u8>>,
    raw: Vec<u8>,
    broker_ts: Option<DateTime<Utc>>,
}

/// Decoding and validation: pure, shared by the decode threads.
pub struct Decoder {
    taxonomy: Taxonomy,
    protected: ProtectedAttributes,
    max_event_bytes: usize,
    clock_skew: Duration,
    /// The decode threads' queue (they end when the decoder is dropped).
    jobs: std::sync::mpsc::Sender<DecodeJob>,
}

type DecodeJob = (Arc<Decoder>, Vec<Raw>, tokio::sync::oneshot::Sender<Vec<Item>>);

/// Two long-lived decode threads. A batch's events are always allocated by the
/// same threads, so the allocator reuses the memory of the batches before
/// instead of faulting in fresh pages: spread over tokio's blocking pool (other
/// threads every time) 20k events took 30-460 ms to decode instead of 20-60 ms,
/// most of it zeroing new pages.
fn decode_threads() -> std::sync::mpsc::Sender<DecodeJob> {
    let (tx, rx) = std::sync::mpsc::channel::<DecodeJob>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..2 {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("lander-decode-{i}"))
            .spawn(move || loop {
                let job = rx.lock().expect("decode queue").recv();
                let Ok((decoder, raws, done)) = job else { return };
                let mut out = Vec::with_capacity(raws.len());
                raws.into_iter().for_each(|r| decoder.decode(r, &mut out));
                let _ = done.send(out);
            })
            .expect("a decode thread starts");
    }
    tx
}

impl Decoder {
    /// One record -> its events: a record is one event object or an envelope
    /// (a JSON array of events, see [`crate::envelope`]).
    fn decode(&self, m: Raw, out: &mut Vec<Item>) {
        let key: Option<Arc<[u8]>> = m.key.map(Into::into);
        use crate::envelope::{decode_value, DecodeError, MAX_DECODED_RECORD_BYTES};
        let (raw, refused) = match decode_value(&m.raw) {
            Ok(Some(json)) => (json, None),
            Ok(None) => (m.raw, None),
            Err(e) => (
                m.raw,
                Some(match e {
                    DecodeError::Corrupt => (Reason::InvalidEncoding, "payload is a zstd frame that does not decompress".to_string()),
                    DecodeError::Oversized => (Reason::Oversized, format!("compressed payload decodes to more than {MAX_DECODED_RECORD_BYTES} bytes")),
                }),
            ),
        };
        let raw = Arc::new(raw);
        let whole = 0..raw.len();
        let item = |index: Option<u32>, span: std::ops::Range<usize>, outcome| Item { offset: m.offset, index, key: key.clone(), raw: raw.clone(), span, outcome };
        if let Some(refusal) = refused {
            out.push(item(None, whole, Err(refusal)));
            return;
        }
        if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&raw) {
                Ok(events) if !events.is_empty() => {
                    for (ix, ev) in events.iter().enumerate() {
                        let start = ev.get().as_ptr() as usize - raw.as_ptr() as usize;
                        let span = start..start + ev.get().len();
                        let outcome = self.decode_event(&raw[span.clone()], m.broker_ts);
                        out.push(item(Some(ix as u32), span, outcome));
                    }
                }
                Ok(_) => out.push(item(None, whole, Err((Reason::SchemaViolation, "an envelope must hold at least one event".into())))),
                Err(_) => out.push(item(None, whole, Err((Reason::InvalidJson, "payload is not valid JSON".into())))),
            }
            return;
        }
        let outcome = self.decode_event(&raw, m.broker_ts);
        out.push(item(None, whole, outcome));
    }

    fn decode_event(&self, bytes: &[u8], broker_ts: Option<DateTime<Utc>>) -> Result<ValidEvent, (Reason, String)> {
        if bytes.len() > self.max_event_bytes {
            return Err((Reason::Oversized, format!("event is larger than {} bytes", self.max_event_bytes)));
        }
        let mut ev = self.taxonomy.validate_bytes(bytes).map_err(|r| (r.reason, r.detail))?;
        ev.server_ts.get_or_insert_with(|| broker_ts.unwrap_or_else(Utc::now));
        check_props_and_clock(&mut ev, &self.protected, self.clock_skew)?;
        Ok(ev)
    }

    /// Decode a batch off the async runtime on the decode threads, split in two
    /// halves by decoded bytes when it is large, keeping order.
    async fn decode_all(self: &Arc<Self>, mut raws: Vec<Raw>) -> Vec<Item> {
        let run = |part: Vec<Raw>| {
            let (done, out) = tokio::sync::oneshot::channel();
            self.jobs.send((self.clone(), part, done)).expect("the decode threads run while the decoder lives");
            out
        };
        let size = |r: &Raw| crate::envelope::decoded_len(&r.raw);
        let total: usize = raws.iter().map(size).sum();
        if total < 512 * 1024 || raws.len() < 2 {
            return run(raws).await.expect("decode thread");
        }
        let mut acc = 0;
        let cut = raws.iter().position(|r| {
            acc += size(r);
            acc >= total / 2
        });
        let cut = cut.map_or(raws.len() / 2, |c| (c + 1).min(raws.len() - 1)).max(1);
        let second = raws.split_off(cut);
        let (first, second) = tokio::join!(run(raws), run(second));
        let mut out = first.expect("decode thread");
        out.extend(second.expect("decode thread"));
        out
    }
}

/// One event of a record (a record holds one, or many when it is an envelope).
struct Item {
    offset: i64,
    /// The event's position in its envelope; `None` for a single-event record.
    index: Option<u32>,
    /// The record's key (shared by an envelope's events).
    key: Option<Arc<[u8]>>,
    /// The whole record (decompressed); `span` is this event's bytes in it.
    raw: Arc<Vec<u8>>,
    span: std::ops::Range<usize>,
    outcome: Result<ValidEvent, (Reason, String)>,
}

impl Item {
    fn bytes(&self) -> &[u8] {
        &self.raw[self.span.clone()]
    }
}

#[derive(Default)]
struct PartitionState {
    loaded: bool,
    /// A pending intent: the next batch must cover exactly `first..=last`.
    replay: Option<(i64, i64, String)>,
    items: Vec<Raw>,
    /// Bytes held in `items` (envelopes make record counts a poor measure).
    bytes: usize,
    started: Option<Instant>,
}

pub struct Lander {
    cfg: LanderConfig,
    /// The consumer, producer, warehouse, decoder and figures, shared with the landing tasks.
    sink: Sink,
    /// Batches being landed by their tasks, oldest first (at most one per partition).
    inflight: std::collections::VecDeque<(i32, tokio::task::JoinHandle<Result<(), LanderError>>)>,
    pool: PgPool,
    governance: Governance,
    parts: HashMap<i32, PartitionState>,
    revoked: Arc<Mutex<Vec<i32>>>,
}

/// A batch ready to insert: governed, refusals dead-lettered, intent recorded.
struct Prepared {
    partition: i32,
    first: i64,
    last: i64,
    token: String,
    /// JSONEachRow rows, shared with the insert (retries re-send them without a copy).
    rows: Arc<Vec<u8>>,
    landed: u64,
    oldest: Option<DateTime<Utc>>,
    items: Vec<Item>,
}

/// Insert a prepared batch with its deduplication token, backing off on
/// retryable errors; `Err` only when the warehouse refuses the data itself.
async fn insert_with_retry(warehouse: &Warehouse, b: &Prepared) -> Result<(), WarehouseError> {
    if b.landed == 0 {
        return Ok(());
    }
    let settings = [
        ("insert_deduplicate", "1".to_string()),
        ("insert_deduplication_token", b.token.clone()),
        ("deduplicate_blocks_in_dependent_materialized_views", "1".to_string()),
        ("max_insert_block_size", "10000000".to_string()),
        ("min_insert_block_size_rows", "0".to_string()),
        ("min_insert_block_size_bytes", "0".to_string()),
    ];
    let mut backoff = Duration::from_millis(100);
    loop {
        let inserted = {
            let _rebuild = crate::warehouse::AGGREGATE_REBUILD.read().await;
            warehouse.insert("events.learning_events", "JSONEachRow", b.rows.clone(), &settings).await
        };
        match inserted {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, partition = b.partition, "warehouse busy or down; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Append `ev` as one JSONEachRow line of the base table, stamped `server`.
/// Written by hand, without serde or an allocation: it runs once per landed
/// event (2.5 us per event through serde_json and chrono's formatter, measured
/// by `decode_cost`). Strings are escaped as serde_json escapes them.
fn write_row(rows: &mut Vec<u8>, ev: &ValidEvent, server: &DateTime<Utc>) {
    let mut uuid = [0u8; 36];
    rows.extend_from_slice(b"{\"server_ts\":\"");
    push_ts(rows, server);
    rows.extend_from_slice(b"\",\"client_ts\":\"");
    push_ts(rows, &ev.client_ts);
    rows.extend_from_slice(b"\",\"event_id\":\"");
    rows.extend_from_slice(ev.event_id.hyphenated().encode_lower(&mut uuid).as_bytes());
    rows.extend_from_slice(b"\",\"learner_id\":\"");
    rows.extend_from_slice(ev.learner_id.hyphenated().encode_lower(&mut uuid).as_bytes());
    rows.push(b'"');
    for (key, value) in [
        (&b",\"event_version\":"[..], &ev.event_version),
        (b",\"event_type\":", &ev.event_type),
        (b",\"session_id\":", &ev.session_id),
        (b",\"course_id\":", &ev.course_id),
        (b",\"content_id\":", &ev.content_id),
        (b",\"cohort_id\":", &ev.cohort_id),
        (b",\"institution_id\":", &ev.institution_id),
    ] {
        rows.extend_from_slice(key);
        push_str(rows, value);
    }
    rows.extend_from_slice(b",\"position_sec\":");
    match ev.position_sec {
        Some(p) => rows.extend_from_slice(itoa::Buffer::new().format(p).as_bytes()),
        None => rows.extend_from_slice(b"null"),
    }
    rows.extend_from_slice(b",\"props\":{");
    for (i, (k, v)) in ev.props.iter().enumerate() {
        if i > 0 {
            rows.push(b',');
        }
        push_str(rows, k);
        rows.push(b':');
        push_str(rows, v);
    }
    rows.extend_from_slice(b"}}\n");
}

/// `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

/// `YYYY-MM-DD hh:mm:ss.mmm`, as ClickHouse's DateTime64(3) reads it.
fn push_ts(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    fn digits(out: &mut Vec<u8>, v: u32, width: u32) {
        for i in (0..width).rev() {
            out.push(b'0' + (v / 10u32.pow(i) % 10) as u8);
        }
    }
    digits(out, t.year().clamp(0, 9999) as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b' ');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    digits(out, t.second(), 2);
    out.push(b'.');
    digits(out, t.timestamp_subsec_millis().min(999), 3);
}

/// A landing task's outcome (a panicked task is an error, not a hang).
async fn joined(h: tokio::task::JoinHandle<Result<(), LanderError>>) -> Result<(), LanderError> {
    h.await.map_err(|e| LanderError::Config(format!("landing task failed: {e}")))?
}

/// What landing a prepared batch needs, shared by the lander and its landing tasks.
#[derive(Clone)]
struct Sink {
    cfg: Arc<LanderConfig>,
    consumer: Arc<StreamConsumer<Ctx>>,
    producer: FutureProducer,
    warehouse: Warehouse,
    decoder: Arc<Decoder>,
    stats: Arc<LanderStats>,
    /// Row buffers of landed batches, kept for the next ones: fresh memory costs a
    /// page fault per 4 KiB, which on our VMs cost more than writing the rows.
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Row buffers kept for reuse (one per partition in flight, and one being filled).
const KEPT_BUFFERS: usize = 8;

impl Sink {
    /// An empty row buffer, reused when one is free.
    fn buffer(&self) -> Vec<u8> {
        self.buffers.lock().expect("buffers lock").pop().unwrap_or_default()
    }

    /// Give a landed batch's row buffer back for reuse.
    fn recycle(&self, rows: Arc<Vec<u8>>) {
        if let Ok(mut rows) = Arc::try_unwrap(rows) {
            rows.clear();
            let mut kept = self.buffers.lock().expect("buffers lock");
            if kept.len() < KEPT_BUFFERS {
                kept.push(rows);
            }
        }
    }

    fn redact(&self, raw: &[u8]) -> Vec<u8> {
        match serde_json::from_slice::<Value>(raw) {
            Ok(mut v) => {
                if let Some(props) = v.get_mut("props").and_then(Value::as_object_mut) {
                    for (k, val) in props.iter_mut() {
                        if self.decoder.protected.matches(k).is_some() {
                            *val = Value::String("<redacted>".into());
                        }
                    }
                }
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => raw.to_vec(),
        }
    }

    async fn dead_letter(&self, p: i32, item: &Item, reason: Reason, detail: &str) -> Result<(), LanderError> {
        let payload = if reason == Reason::ProtectedAttribute { self.redact(item.bytes()) } else { item.bytes().to_vec() };
        let mut rec = serde_json::json!({
            "reason": reason.as_str(),
            "detail": detail,
            "topic": self.cfg.topic,
            "partition": p,
            "offset": item.offset,
            "index": item.index,
            "failed_at": Utc::now().to_rfc3339(),
        });
        match String::from_utf8(payload) {
            Ok(s) => rec["payload"] = Value::String(s),
            Err(e) => {
                use base64::Engine;
                rec["payload_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
            }
        }
        let body = serde_json::to_vec(&rec).expect("json");
        // A member of an envelope is keyed by its own learner (the record's key names the
        // envelope's first learner), when it names one.
        let key: Option<Vec<u8>> = match (&item.outcome, item.index) {
            (Ok(ev), _) => Some(ev.learner_id.to_string().into_bytes()),
            (Err(_), Some(_)) => serde_json::from_slice::<Value>(item.bytes())
                .ok()
                .and_then(|v| v.get("learner_id").and_then(Value::as_str).and_then(|l| uuid::Uuid::parse_str(l).ok()))
                .map(|l| l.to_string().into_bytes()),
            (Err(_), None) => item.key.as_deref().map(<[u8]>::to_vec),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut record = FutureRecord::to(&self.cfg.dlq_topic).payload(&body);
            if let Some(k) = &key {
                record = record.key(k);
            }
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "dead-letter produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        metrics::counter!("learnvault_lander_rejects_total", "reason" => reason.as_str()).increment(1);
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Insert a prepared batch with its token, record its figures, and commit
    /// its partition's offset (when `commit`).
    async fn land(self, b: Prepared, commit: bool) -> Result<(), LanderError> {
        let started = Instant::now();
        let mut landed = b.landed;
        if let Err(e) = insert_with_retry(&self.warehouse, &b).await {
            // Bad data the gate did not catch: dead-letter the batch, never retry forever.
            tracing::error!(error = %e, partition = b.partition, rows = b.landed, "warehouse refused a batch; dead-lettering it");
            for item in b.items.iter().filter(|i| i.outcome.is_ok()) {
                self.dead_letter(b.partition, item, Reason::WarehouseRejected, "the warehouse refused the batch").await?;
            }
            landed = 0;
        }
        let now = Utc::now();
        self.stats.landed.fetch_add(landed, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("learnvault_lander_rows_total").increment(landed);
        if let Some(o) = b.oldest {
            let fresh = now.signed_duration_since(o).num_milliseconds().max(0) as u64;
            self.stats.last_freshness_ms.store(fresh, Ordering::Relaxed);
            let _ = self.stats.freshness_ms.lock().expect("stats lock").record(fresh.max(1));
            metrics::histogram!("learnvault_lander_freshness_seconds").record(fresh as f64 / 1000.0);
        }
        tracing::debug!(partition = b.partition, first = b.first, last = b.last, landed, "batch landed");
        if commit {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.cfg.topic, b.partition, Offset::Offset(b.last + 1))?;
            self.commit(tpl).await;
        }
        metrics::histogram!("learnvault_lander_batch_seconds").record(started.elapsed().as_secs_f64());
        self.recycle(b.rows);
        Ok(())
    }

    /// Commit offsets, retrying while the broker is away. Gives up after ~30 s (the
    /// partitions may have moved to another member): the batches stay replayable
    /// by their intents and tokens, and a later commit covers them.
    async fn commit(&self, tpl: TopicPartitionList) {
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=10 {
            let consumer = self.consumer.clone();
            let tpl = tpl.clone();
            match tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "offset commit failed; retrying"),
                Err(e) => tracing::warn!(error = %e, attempt, "offset commit task failed; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tracing::error!("offset commit abandoned after 10 attempts; the batches will be replayed with their tokens");
    }
}

impl Lander {
    pub async fn new(
        cfg: LanderConfig,
        warehouse: Warehouse,
        pool: PgPool,
        taxonomy: Taxonomy,
        protected: ProtectedAttributes,
        analytics_default: bool,
    ) -> Result<Lander, LanderError> {
        ensure_topics(&cfg.brokers, &[(&cfg.topic, cfg.partitions), (&cfg.dlq_topic, cfg.partitions)]).await?;
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let consumer: StreamConsumer<Ctx> = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A lander that dies is replaced quickly: its session expires in 6 s and a
            // rebalance waits at most 30 s for members that will not come back.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "30000")
            .set("fetch.wait.max.ms", "50")
            .create_with_context(Ctx { revoked: revoked.clone() })?;
        consumer.subscribe(&[&cfg.topic])?;
        // Dead letters: few, so compressed whatever the broker.
        let producer: FutureProducer = crate::envelope::producer_config(&cfg.brokers, "lz4")
            .set("message.timeout.ms", "30000")
            .create()?;
        let governance = Governance::new(pool.clone(), cfg.governance_ttl, analytics_default);
        let decoder = Arc::new(Decoder { taxonomy, protected, max_event_bytes: cfg.max_event_bytes, clock_skew: cfg.clock_skew, jobs: decode_threads() });
        let consumer = Arc::new(consumer);
        let stats = Arc::new(LanderStats::default());
        let sink = Sink { cfg: Arc::new(cfg.clone()), consumer, producer, warehouse, decoder, stats, buffers: Arc::default() };
        Ok(Lander { cfg, sink, inflight: std::collections::VecDeque::new(), pool, governance, parts: HashMap::new(), revoked })
    }

    /// The lander's figures (rows landed, refusals, batches, freshness).
    pub fn stats(&self) -> Arc<LanderStats> {
        self.sink.stats.clone()
    }

    /// Consume until `shutdown` resolves, then flush what is pending and commit.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), LanderError> {
        tokio::pin!(shutdown);
        let consumer = self.sink.consumer.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        // A slow flush must not be followed by a burst of ticks that starves the consumer.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag_every = Instant::now();
        loop {
            // Unbiased: under load both the consumer and the flush timer get their turn.
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    self.reap().await?;
                    self.apply_revocations();
                    self.flush_due(false).await?;
                    if lag_every.elapsed() > Duration::from_secs(5) {
                        lag_every = Instant::now();
                        self.report_lag().await;
                    }
                }
                m = consumer.recv() => match m {
                    Ok(m) => self.handle(&m).await?,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        tracing::info!("lander draining");
        self.flush_due(true).await?;
        self.settle(None).await?;
        Ok(())
    }

    fn apply_revocations(&mut self) {
        let revoked: Vec<i32> = std::mem::take(&mut *self.revoked.lock().expect("revoked lock"));
        for p in revoked {
            // Uncommitted work is re-read by the partition's next owner.
            self.parts.remove(&p);
        }
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), LanderError> {
        let p = m.partition();
        let offset = m.offset();
        if !self.parts.get(&p).is_some_and(|s| s.loaded) {
            // A batch of this partition still landing (it was revoked and came back) settles first.
            self.settle(Some(p)).await?;
            let intent = loop {
                let r = sqlx::query!(
                    "SELECT first_offset, last_offset, token FROM lander_intents WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                    self.cfg.group,
                    self.cfg.topic,
                    p
                )
                .fetch_optional(&self.pool)
                .await;
                match r {
                    Ok(i) => break i,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read batch intents from PostgreSQL; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            let state = self.parts.entry(p).or_default();
            state.loaded = true;
            state.replay = intent.and_then(|i| {
                if i.first_offset == offset {
                    tracing::info!(partition = p, first = i.first_offset, last = i.last_offset, "replaying a pending batch with its token");
                    Some((i.first_offset, i.last_offset, i.token))
                } else {
                    if offset > i.first_offset && offset <= i.last_offset {
                        tracing::warn!(partition = p, offset, "resuming inside a recorded batch; forming new batches");
                    }
                    None
                }
            });
        }
        let broker_ts = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
        let item = Raw { offset, key: m.key().map(<[u8]>::to_vec), raw: m.payload().unwrap_or_default().to_vec(), broker_ts };
        let state = self.parts.get_mut(&p).expect("state loaded");
        if let Some((_, last, _)) = &state.replay {
            if offset > *last {
                // The replayed range ended without its last offset (compaction/retention): flush what we have.
                tracing::warn!(partition = p, "pending batch range no longer complete; flushing what was re-read");
            }
        }
        state.started.get_or_insert_with(Instant::now);
        state.bytes += crate::envelope::decoded_len(&item.raw);
        state.items.push(item);
        let full = match &state.replay {
            Some((_, last, _)) => offset >= *last,
            None => state.items.len() >= self.cfg.batch_rows || state.bytes >= self.cfg.batch_bytes,
        };
        if full {
            self.flush(p).await?;
        }
        Ok(())
    }

    /// Flush partitions whose batch is old enough (or all, when draining).
    async fn flush_due(&mut self, drain: bool) -> Result<(), LanderError> {
        let wait = self.cfg.batch_wait;
        let due: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, s)| !s.items.is_empty())
            .filter(|(_, s)| s.replay.is_none() && (drain || s.started.is_some_and(|t| t.elapsed() >= wait)))
            .map(|(p, _)| *p)
            .collect();
        self.flush_many(&due, true).await
    }

    /// Land already-read messages of partition `p` as one batch, without Kafka
    /// (no consume, no offset commit): the lander's own pipeline, for the
    /// benchmark that separates it from the broker. Returns the rows landed.
    pub async fn land_direct(&mut self, p: i32, messages: Vec<(i64, Option<Vec<u8>>, Vec<u8>)>) -> Result<u64, LanderError> {
        let before = self.sink.stats.landed.load(Ordering::Relaxed);
        let now = Some(Utc::now());
        let items: Vec<Raw> = messages.into_iter().map(|(offset, key, raw)| Raw { offset, key, raw, broker_ts: now }).collect();
        let state = self.parts.entry(p).or_default();
        state.loaded = true;
        state.items = items;
        self.flush_many(&[p], false).await?;
        self.settle(None).await?;
        Ok(self.sink.stats.landed.load(Ordering::Relaxed) - before)
    }

    async fn flush(&mut self, p: i32) -> Result<(), LanderError> {
        self.flush_many(&[p], true).await
    }

    /// Flush the batches of `partitions`. Each is prepared here (decode,
    /// governance, dead letters, intent) and landed by a task of its own
    /// (insert with its token, then the partition's offset commit), so the
    /// next batch decodes while earlier ones insert. One batch per partition is
    /// in flight at a time: a partition's next intent is written only after
    /// its previous batch committed, which keeps every pending range replayable.
    async fn flush_many(&mut self, partitions: &[i32], commit: bool) -> Result<(), LanderError> {
        for &p in partitions {
            self.settle(Some(p)).await?;
            if let Some(b) = self.prepare(p).await? {
                let sink = self.sink.clone();
                self.inflight.push_back((p, tokio::spawn(sink.land(b, commit))));
            }
        }
        Ok(())
    }

    /// Collect finished landing tasks (an error ends the lander, as before).
    async fn reap(&mut self) -> Result<(), LanderError> {
        while self.inflight.front().is_some_and(|(_, h)| h.is_finished()) {
            let (_, h) = self.inflight.pop_front().expect("front");
            joined(h).await?;
        }
        Ok(())
    }

    /// Wait for the in-flight batches up to and including partition `p`'s
    /// (all of them when `None`), oldest first.
    async fn settle(&mut self, p: Option<i32>) -> Result<(), LanderError> {
        let Some(upto) = (match p {
            Some(p) => self.inflight.iter().rposition(|(q, _)| *q == p),
            None => self.inflight.len().checked_sub(1),
        }) else {
            return Ok(());
        };
        for (_, h) in self.inflight.drain(..=upto).collect::<Vec<_>>() {
            joined(h).await?;
        }
        Ok(())
    }

    /// Take partition `p`'s batch: govern it, dead-letter its refusals, record its intent.
    async fn prepare(&mut self, p: i32) -> Result<Option<Prepared>, LanderError> {
        let Some(state) = self.parts.get_mut(&p) else { return Ok(None) };
        if state.items.is_empty() {
            return Ok(None);
        }
        let raws = std::mem::take(&mut state.items);
        state.bytes = 0;
        let replay = state.replay.take();
        state.started = None;
        let items = self.sink.decoder.decode_all(raws).await;
        let first = items.first().expect("non-empty").offset;
        let last = items.last().expect("non-empty").offset;

        // Governance, one query for the batch's cache misses.
        let ids: Vec<uuid::Uuid> = items.iter().filter_map(|i| i.outcome.as_ref().ok().map(|e| e.learner_id)).collect();
        let standings = loop {
            match self.governance.standings(ids.iter().copied()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "vault unavailable for governance; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut rows = self.sink.buffer();
        rows.reserve(items.len() * 400);
        let mut landed = 0u64;
        let mut oldest: Option<DateTime<Utc>> = None;
        let mut refused: Vec<(usize, Reason, String)> = Vec::new();
        for (ix, item) in items.iter().enumerate() {
            match &item.outcome {
                Err((reason, detail)) => refused.push((ix, *reason, detail.clone())),
                Ok(ev) => match standings.get(&ev.learner_id).and_then(|s| s.refusal(&ev.institution_id)) {
                    Some(reason) => refused.push((ix, reason, "refused by the vault's governance".into())),
                    None => {
                        let server = ev.server_ts.expect("set at decode");
                        oldest = Some(oldest.map_or(server, |o| o.min(server)));
                        write_row(&mut rows, ev, &server);
                        landed += 1;
                    }
                },
            }
        }
        for (ix, reason, detail) in &refused {
            self.sink.dead_letter(p, &items[*ix], *reason, detail).await?;
        }
        let token = match replay {
            Some((f, l, token)) if f == first && l == last => token,
            _ => {
                let token = format!("{}:{}:{}-{}", self.cfg.topic, p, first, last);
                // No insert without its intent: wait for PostgreSQL rather than land unreplayably.
                while let Err(e) = sqlx::query!(
                    r#"INSERT INTO lander_intents (consumer_group, topic, partition, first_offset, last_offset, token)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (consumer_group, topic, partition)
                       DO UPDATE SET first_offset = EXCLUDED.first_offset, last_offset = EXCLUDED.last_offset,
                                     token = EXCLUDED.token, recorded_at = now()"#,
                    self.cfg.group,
                    self.cfg.topic,
                    p,
                    first,
                    last,
                    token
                )
                .execute(&self.pool)
                .await
                {
                    tracing::warn!(error = %e, "cannot record a batch intent in PostgreSQL; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                token
            }
        };
        Ok(Some(Prepared { partition: p, first, last, token, rows: Arc::new(rows), landed, oldest, items }))
    }

    async fn report_lag(&self) {
        let consumer = self.sink.consumer.clone();
        let topic = self.cfg.topic.clone();
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        let lags = tokio::task::spawn_blocking(move || {
            let positions = consumer.position().ok();
            parts
                .into_iter()
                .filter_map(|p| {
                    let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(1)).ok()?;
                    let pos = positions.as_ref()?.find_partition(&topic, p)?.offset().to_raw()?;
                    Some((p, (high - pos).max(0)))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (p, lag) in lags {
            metrics::gauge!("learnvault_lander_consumer_lag", "partition" => p.to_string()).set(lag as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{push_ts, write_row};
    use crate::taxonomy::ValidEvent;
    use chrono::{DateTime, Utc};

    #[test]
    fn timestamps_format_as_strftime_does() {
        for ms in [0i64, 1_764_072_000_123, 946_684_799_999, 4_102_444_800_007] {
            let t: DateTime<Utc> = DateTime::from_timestamp_millis(ms).unwrap();
            let mut out = Vec::new();
            push_ts(&mut out, &t);
            assert_eq!(String::from_utf8(out).unwrap(), t.format("%Y-%m-%d %H:%M:%S%.3f").to_string());
        }
    }

    #[test]
    fn a_row_is_the_json_object_of_its_event_whatever_its_strings_hold() {
        let t = |ms| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        for (text, position) in [("plain", Some(42)), ("quote \" back\\slash \u{1} tab\t nl\n del\u{7f} é 学 😀", None)] {
            let ev = ValidEvent {
                event_id: uuid::Uuid::new_v4(),
                event_version: "2.3".into(),
                event_type: "interact.pause".into(),
                learner_id: uuid::Uuid::new_v4(),
                session_id: text.into(),
                course_id: format!("c-{text}"),
                content_id: text.into(),
                cohort_id: text.into(),
                institution_id: "uni".into(),
                position_sec: position,
                client_ts: t(1_764_072_000_123),
                server_ts: None,
                props: [("player".to_string(), text.to_string()), (text.to_string(), "v".to_string())].into(),
            };
            let mut rows = Vec::new();
            write_row(&mut rows, &ev, &t(1_764_072_001_007));
            write_row(&mut rows, &ev, &t(1_764_072_001_007));
            let lines: Vec<&[u8]> = rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            assert_eq!(lines.len(), 2, "one line per row");
            let got: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
            let want = serde_json::json!({
                "server_ts": "2025-11-25 12:00:01.007", "client_ts": "2025-11-25 12:00:00.123",
                "event_id": ev.event_id, "event_version": "2.3", "event_type": "interact.pause", "learner_id": ev.learner_id,
                "session_id": text, "course_id": format!("c-{text}"), "content_id": text, "cohort_id": text,
                "institution_id": "uni", "position_sec": position, "props": {"player": text, text: "v"},
            });
            assert_eq!(got, want);
        }
    }
}

#[cfg(test)]
mod cost {
    //! `cargo test --release --lib -- --ignored --nocapture decode_cost`: where a lander batch's CPU goes.
    use super::*;

    #[test]
    #[ignore]
    fn decode_cost() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let taxonomy = Taxonomy::load(&root.join("taxonomy")).unwrap();
        let protected = ProtectedAttributes::load(&root).unwrap();
        let events: Vec<Vec<u8>> = (0..200_000)
            .map(|i| {
                serde_json::to_vec(&serde_json::json!({
                    "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "session.heartbeat",
                    "learner_id": uuid::Uuid::new_v4(), "session_id": format!("s{}", i % 97), "course_id": format!("course-{}", i % 20),
                    "content_id": format!("video-{}", i % 50), "cohort_id": "cohort-3", "institution_id": "bench-uni",
                    "position_sec": i % 600, "client_ts": 1_764_072_000_000i64 + i, "server_ts": "2026-11-25T13:55:03.123Z", "props": {"player": "web"}
                }))
                .unwrap()
            })
            .collect();
        let t = Instant::now();
        let values: Vec<Value> = events.iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
        let parse = t.elapsed();
        let t = Instant::now();
        let mut valid: Vec<ValidEvent> = values.iter().map(|v| taxonomy.validate(v).unwrap()).collect();
        let validate = t.elapsed();
        let t = Instant::now();
        for ev in valid.iter_mut() {
            check_props_and_clock(ev, &protected, Duration::from_secs(300)).unwrap();
        }
        let checks = t.elapsed();
        let t = Instant::now();
        let mut rows = Vec::with_capacity(events.len() * 300);
        for ev in &valid {
            write_row(&mut rows, ev, &ev.server_ts.unwrap());
        }
        let serialise_cold = t.elapsed();
        // Again into the same, already touched buffer: the writer alone, without page faults.
        rows.clear();
        let t = Instant::now();
        for ev in &valid {
            write_row(&mut rows, ev, &ev.server_ts.unwrap());
        }
        let serialise = t.elapsed();
        let t = Instant::now();
        drop(values);
        drop(valid);
        let drop_t = t.elapsed();
        let t = Instant::now();
        let fast: Vec<ValidEvent> = events.iter().map(|e| taxonomy.validate_bytes(e).unwrap()).collect();
        let fast_t = t.elapsed();
        drop(fast);
        let per = |d: Duration| d.as_nanos() as f64 / events.len() as f64;
        println!("per event: validate_bytes (fast path, incl. parse) {:.0} ns", per(fast_t));
        println!(
            "per event: parse {:.0} ns, validate {:.0} ns, checks {:.0} ns, serialise {:.0} ns ({:.0} ns into a fresh buffer), drop {:.0} ns",
            per(parse),
            per(validate),
            per(checks),
            per(serialise),
            per(serialise_cold),
            per(drop_t)
        );
    }
}
