//! The run loop: consume, gather every partition's records, send them as one
//! batch by size and time, follow rebalances, replay pending batches when a
//! partition resumes, report lag. Batches go to the service (`service.rs`).
//!
//! Invariant: a batch spans the partitions that had records (one insert per
//! flush, whatever the partition count: each insert pays a fixed cost per
//! materialized view); at most `LEARNVAULT_LANDER_IN_FLIGHT` are in flight,
//! the newer decoding, claiming and inserting while the older finish, and
//! they commit in the order their
//! intents were written (a later batch never commits first: its commit would
//! cover the earlier batch's pending intent), so every pending range stays in
//! a replayable chain. Intents are written by this loop, between two polls,
//! so always while every member partition is owned (a rebalance runs inside a
//! poll); the batch's work (decode, governance, dead letters, insert, commit)
//! runs in a task of its own, so the loop keeps reading meanwhile. A partition
//! that resumes waits for the batches in flight, then replays its pending
//! batches (re-read from Kafka whole, `replay.rs`) before anything else of it
//! lands. A revoked
//! partition's unlanded records are dropped, to be re-read by its next owner.

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientContext;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::decode::Raw;
use super::service::{Commit, CommitDebt, LanderStats, Order, Sink};
use super::{LanderConfig, LanderError};
use crate::policy::ProtectedAttributes;
use crate::taxonomy::Taxonomy;
use crate::warehouse::Warehouse;

/// Records skipped because the ledger shows them landed and committed (the consumer resumed
/// below its group's mark: a stale position or an offset reset).
pub const SKIPPED_LANDED: &str = "learnvault_lander_skipped_landed_total";

/// The consumer's context: notes the partitions a rebalance revokes, and keeps the set this
/// member owns, which offset commits consult under the same lock.
pub(super) struct Ctx {
    revoked: Arc<Mutex<Vec<i32>>>,
    /// The partitions assigned to this member. A landing task commits only while its partition
    /// is in here, holding the lock through the commit; a revocation takes the lock first. So a
    /// batch that finishes after its partition moved never commits: a late commit would move
    /// the new owner's committed offset backwards, past intents it already forgot.
    pub(super) owned: Mutex<std::collections::HashSet<i32>>,
    /// Offsets landed and not committed yet of owned partitions; taken after `owned`.
    pub(super) debt: Mutex<CommitDebt>,
}
impl ClientContext for Ctx {}
impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut owned = self.owned.lock().expect("owned lock");
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let mut debt = self.debt.lock().expect("debt lock");
                for p in &parts {
                    owned.remove(p);
                    debt.forget(*p);
                }
                self.revoked.lock().expect("revoked lock").extend(parts);
            }
            Rebalance::Assign(tpl) => {
                let mut debt = self.debt.lock().expect("debt lock");
                for e in tpl.elements() {
                    owned.insert(e.partition());
                    debt.forget(e.partition());
                }
            }
            Rebalance::Error(_) => {}
        }
    }
}

#[derive(Default)]
struct PartitionState {
    loaded: bool,
    /// Records up to here are landed already (committed, or replayed when the partition
    /// resumed): the consumer delivers them again, and they are skipped.
    landed_through: Option<i64>,
    items: Vec<Raw>,
    /// Bytes held in `items` (envelopes make record counts a poor measure).
    bytes: usize,
    started: Option<Instant>,
}

impl PartitionState {
    /// Take the records gathered (empty when none).
    fn take_batch(&mut self) -> Vec<Raw> {
        self.bytes = 0;
        self.started = None;
        std::mem::take(&mut self.items)
    }
}

pub struct Lander {
    cfg: LanderConfig,
    /// The consumer, producer, warehouse, decoder, governance, intents and
    /// figures, shared with the landing tasks.
    sink: Sink,
    /// The batches being landed by their tasks, oldest first (at most
    /// `LEARNVAULT_LANDER_IN_FLIGHT`: the newer ones decode, claim and insert while the older
    /// finish; they commit in order).
    inflight: VecDeque<tokio::task::JoinHandle<Result<(), LanderError>>>,
    /// Tokens of the pending batches this lander has replayed (each is replayed once).
    replayed: std::collections::HashSet<String>,
    /// Resolves when the newest batch in flight has committed (for the next one to wait on).
    last_done: Option<tokio::sync::oneshot::Receiver<()>>,
    parts: HashMap<i32, PartitionState>,
    revoked: Arc<Mutex<Vec<i32>>>,
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
        cfg.validate()?;
        // The topics exist already: `app::lander::build` creates them with their policy (`topics`).
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
            .create_with_context(Ctx { revoked: revoked.clone(), owned: Mutex::default(), debt: Mutex::default() })?;
        consumer.subscribe(&[&cfg.topic])?;
        let sink = Sink::new(&cfg, Arc::new(consumer), warehouse, pool, taxonomy, protected, analytics_default)?;
        Ok(Lander { cfg, sink, inflight: VecDeque::new(), replayed: Default::default(), last_done: None, parts: HashMap::new(), revoked })
    }

    /// The lander's figures (rows landed, refusals, batches, freshness).
    pub fn stats(&self) -> Arc<LanderStats> {
        self.sink.stats.clone()
    }

    /// Consume until `shutdown` resolves, then flush what is pending and commit.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), LanderError> {
        tokio::pin!(shutdown);
        let consumer = self.sink.consumer.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        // A slow flush must not be followed by a burst of ticks that starves the consumer.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag_every = Instant::now();
        let mut debt_every = Instant::now();
        loop {
            // Unbiased: under load both the consumer and the flush timer get their turn.
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    self.reap().await?;
                    self.apply_revocations();
                    self.flush_due(false).await?;
                    if debt_every.elapsed() > Duration::from_secs(1) && self.inflight.is_empty() {
                        debt_every = Instant::now();
                        self.pay_debt(1).await;
                    }
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
        self.settle().await?;
        self.pay_debt(self.cfg.commit_attempts).await;
        Ok(())
    }

    /// Commit what was landed and not committed (see [`CommitDebt`]), with nothing in flight
    /// (every batch of these partitions landed), in `attempts` tries (one while running:
    /// the loop must keep reading; the debt stays owed until paid).
    async fn pay_debt(&self, attempts: u32) {
        let owed = self.sink.consumer.context().debt.lock().expect("debt lock").owed();
        if owed.is_empty() {
            return;
        }
        if let Some(committed) = self.sink.commit(&owed, attempts).await {
            for r in committed {
                tracing::info!(partition = r.partition, through = r.last, "owed offset committed");
                self.sink.intents.committed_through(r.partition, r.last).await;
            }
        }
    }

    fn apply_revocations(&mut self) {
        let revoked: Vec<i32> = std::mem::take(&mut *self.revoked.lock().expect("revoked lock"));
        for p in revoked {
            // Uncommitted work is re-read by the partition's next owner.
            self.parts.remove(&p);
        }
    }

    async fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), LanderError> {
        // A rebalance that revoked partitions ran inside the last poll: drop their state before
        // this message, which may already be the partition's first of a new assignment.
        self.apply_revocations();
        let p = m.partition();
        let offset = m.offset();
        if !self.parts.get(&p).is_some_and(|s| s.loaded) {
            self.resume(p, offset).await?;
        }
        if self.parts.get(&p).and_then(|s| s.landed_through).is_some_and(|t| offset <= t) {
            metrics::counter!(SKIPPED_LANDED).increment(1);
            return Ok(());
        }
        let broker_ts = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
        let item = Raw { offset, key: m.key().map(<[u8]>::to_vec), raw: m.payload().unwrap_or_default().to_vec(), broker_ts };
        let state = self.parts.get_mut(&p).expect("state loaded");
        state.started.get_or_insert_with(Instant::now);
        state.bytes += crate::envelope::decoded_len(&item.raw);
        state.items.push(item);
        if state.items.len() >= self.cfg.batch_rows || state.bytes >= self.cfg.batch_bytes {
            // Full: wait for room (backpressure), then send what is gathered.
            self.make_room().await?;
            self.dispatch(true).await?;
        }
        Ok(())
    }

    /// Partition `p` is read again (first message after an assignment), from `offset`:
    /// replay its chain of pending batches, each re-read from Kafka over all its members'
    /// ranges and landed with its token, then skip what they covered.
    async fn resume(&mut self, p: i32, offset: i64) -> Result<(), LanderError> {
        // The batch in flight may hold records of this partition (revoked and back): it settles first.
        self.settle().await?;
        let high = {
            let consumer = self.sink.consumer.clone();
            let topic = self.cfg.topic.clone();
            tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)).ok().map(|w| w.1))
                .await
                .ok()
                .flatten()
        };
        let resume = self.sink.intents.pending(p, offset, high).await;
        let mut landed_through = resume.landed_through;
        for intent in &resume.chain {
            // A batch spanning several of the partitions resuming here (after a restart, all
            // of them) is replayed once; the others skip its ranges, and their next commit
            // covers its intent.
            if self.replayed.insert(intent.token.clone()) {
                self.sink.replay(p, intent).await?;
            }
            landed_through = Some(landed_through.map_or(intent.last, |t| t.max(intent.last)));
        }
        if let Some(t) = landed_through.filter(|&t| t >= offset) {
            // Landed (replayed here or under another member partition, or committed and read
            // again): the group's offset may stay behind it if no later record comes.
            self.sink.consumer.context().debt.lock().expect("debt lock").owe(p, t);
        }
        let state = self.parts.entry(p).or_default();
        state.loaded = true;
        state.landed_through = landed_through;
        Ok(())
    }

    /// When the oldest record gathered has waited `batch_wait` (or when draining), and
    /// there is room in flight, send everything gathered as one batch.
    async fn flush_due(&mut self, drain: bool) -> Result<(), LanderError> {
        if drain {
            self.settle().await?;
        }
        self.reap().await?;
        if self.inflight.len() >= self.cfg.in_flight {
            return Ok(());
        }
        let wait = self.cfg.batch_wait;
        let due = self.parts.values().any(|s| !s.items.is_empty() && (drain || s.started.is_some_and(|t| t.elapsed() >= wait)));
        if due {
            self.dispatch(true).await?;
        }
        Ok(())
    }

    /// Land already-read messages of partition `p` as one batch, without Kafka
    /// (no consume, no offset commit): the lander's own pipeline through the
    /// same [`Sink`] calls as consumed batches, for the benchmark that
    /// separates it from the broker. The batch is sent as a consumed one is (its
    /// intent recorded, then landed by a task of its own, at most
    /// `LEARNVAULT_LANDER_IN_FLIGHT` in flight: this waits for room); [`Lander::settle_direct`]
    /// waits for them all.
    pub async fn land_direct(&mut self, p: i32, messages: Vec<(i64, Option<Vec<u8>>, Vec<u8>)>) -> Result<(), LanderError> {
        let now = Some(Utc::now());
        let raws: Vec<Raw> = messages.into_iter().map(|(offset, key, raw)| Raw { offset, key, raw, broker_ts: now }).collect();
        self.make_room().await?;
        self.send(vec![(p, raws)], Commit::Nothing).await;
        Ok(())
    }

    /// Wait for the batches [`Lander::land_direct`] sent; returns the rows this lander landed.
    pub async fn settle_direct(&mut self) -> Result<u64, LanderError> {
        self.settle().await?;
        Ok(self.sink.stats.landed.load(Ordering::Relaxed))
    }

    /// Send everything gathered, every partition's records, as one batch: the one way a
    /// consumed batch goes. Its intent is recorded here, by the loop (see the module's
    /// invariant); a task of its own prepares it (decode, governance, dead letters) and
    /// lands it (one insert with its token, then, after the batch before it committed,
    /// one offset commit for its members). Called with room in flight.
    async fn dispatch(&mut self, commit: bool) -> Result<(), LanderError> {
        debug_assert!(self.inflight.len() < self.cfg.in_flight);
        let mut batches: Vec<(i32, Vec<Raw>)> =
            self.parts.iter_mut().filter(|(_, s)| !s.items.is_empty()).map(|(p, s)| (*p, s.take_batch())).collect();
        batches.sort_by_key(|(p, _)| *p);
        self.send(batches, if commit { Commit::Members } else { Commit::Nothing }).await;
        Ok(())
    }

    /// Record the intent of `batches` and hand it to a landing task of its own, after the
    /// batches in flight (it commits after them). Called with room in flight.
    async fn send(&mut self, batches: Vec<(i32, Vec<Raw>)>, commit: Commit) {
        if let Some(intended) = self.sink.intend(&batches).await {
            let sink = self.sink.clone();
            let (done, next) = tokio::sync::oneshot::channel();
            let order = Order { after: self.last_done.replace(next), done: Some(done) };
            self.inflight.push_back(tokio::spawn(sink.prepare_and_land(intended, batches, commit, order)));
        }
    }

    /// Collect the landing tasks that finished, oldest first (an error ends the lander, as before).
    async fn reap(&mut self) -> Result<(), LanderError> {
        while self.inflight.front().is_some_and(|h| h.is_finished()) {
            joined(self.inflight.pop_front().expect("front")).await?;
        }
        Ok(())
    }

    /// Wait until fewer than `in_flight` batches are in flight.
    async fn make_room(&mut self) -> Result<(), LanderError> {
        while self.inflight.len() >= self.cfg.in_flight {
            joined(self.inflight.pop_front().expect("front")).await?;
        }
        Ok(())
    }

    /// Wait for every batch in flight.
    async fn settle(&mut self) -> Result<(), LanderError> {
        while let Some(h) = self.inflight.pop_front() {
            joined(h).await?;
        }
        self.last_done = None;
        Ok(())
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

/// A landing task's outcome (a panicked task is an error, not a hang).
async fn joined(h: tokio::task::JoinHandle<Result<(), LanderError>>) -> Result<(), LanderError> {
    h.await.map_err(|e| LanderError::Config(format!("landing task failed: {e}")))?
}
