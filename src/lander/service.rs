//! The insert/commit service: a batch of read records, from prepare to land.
//!
//! Invariant: a batch goes to the warehouse in this order and no other: its
//! intent recorded ([`Sink::intend`], by the run loop while it owns the
//! partition); decoded and governed, its refusals in the dead-letter topic
//! ([`Sink::prepare`]); then inserted with its intent's token, then its
//! partition's offset committed ([`Sink::land`]). Every call a batch makes
//! out of the process (vault, PostgreSQL, dead letters, insert, commit) retries
//! on one policy, [`Backoff`]; data the warehouse refuses is dead-lettered,
//! never retried forever.

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::decode::{Decoder, Item, Raw};
use super::health::{self, Cause};
use super::intents::{Intent, Intents, Range};
use super::row::{write_binary_header, write_row_binary, RowBuffers, BINARY_FORMAT};
use super::run::Ctx;
use super::{LanderConfig, LanderError};
use crate::governance::Governance;
use crate::policy::ProtectedAttributes;
use crate::taxonomy::{Reason, Taxonomy};
use crate::warehouse::{Warehouse, WarehouseError};

/// Batches landed whose offset commit was abandoned (owed, committed later: [`CommitDebt`]).
pub const COMMITS_ABANDONED: &str = "learnvault_lander_commits_abandoned_total";

/// Counters shared with the demo and the benchmarks.
#[derive(Debug)]
pub struct LanderStats {
    pub landed: AtomicU64,
    pub rejected: AtomicU64,
    /// Events dropped because their id landed already (idempotent ingest, [`crate::dedup`]).
    pub duplicates: AtomicU64,
    /// Batches landed whose offset commit was abandoned after `LEARNVAULT_LANDER_COMMIT_ATTEMPTS`
    /// (owed: [`CommitDebt`]).
    pub commits_abandoned: AtomicU64,
    pub batches: AtomicU64,
    /// Milliseconds between `server_ts` and the insert, of the last batch's oldest row.
    pub last_freshness_ms: AtomicU64,
    /// Per batch: milliseconds from the oldest row's `server_ts` to the end of
    /// its insert (when the rollups show it): an upper bound of every row's freshness.
    pub freshness_ms: Mutex<hdrhistogram::Histogram<u64>>,
    /// Per batch: the oldest row's age when its insert started (waiting to be batched,
    /// decoded, governed and queued behind earlier inserts): freshness minus the insert.
    pub queued_ms: Mutex<hdrhistogram::Histogram<u64>>,
    /// Per batch: milliseconds the insert took (with every view), retries included.
    pub insert_ms: Mutex<hdrhistogram::Histogram<u64>>,
    /// Per batch: milliseconds from its task's start to its rows ready to insert (decode,
    /// governance, dead letters, claims, rows), and of these, the decode and the claim.
    pub prepare_ms: Mutex<hdrhistogram::Histogram<u64>>,
    pub decode_ms: Mutex<hdrhistogram::Histogram<u64>>,
    pub claim_ms: Mutex<hdrhistogram::Histogram<u64>>,
    /// Per batch, when recording (a benchmark measuring event-to-screen
    /// freshness turns it on): unix milliseconds when its insert ended and of
    /// its oldest row's `server_ts`.
    pub landings: Mutex<Option<Vec<(i64, i64)>>>,
}

impl LanderStats {
    /// Forget the per-batch histograms (a benchmark's phase starts).
    pub fn reset_histograms(&self) {
        for h in [&self.freshness_ms, &self.queued_ms, &self.insert_ms, &self.prepare_ms, &self.decode_ms, &self.claim_ms] {
            h.lock().expect("stats lock").reset();
        }
    }
}

fn ms_histogram() -> Mutex<hdrhistogram::Histogram<u64>> {
    Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds"))
}

impl Default for LanderStats {
    fn default() -> Self {
        LanderStats {
            landed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            commits_abandoned: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            last_freshness_ms: AtomicU64::new(0),
            freshness_ms: ms_histogram(),
            queued_ms: ms_histogram(),
            insert_ms: ms_histogram(),
            prepare_ms: ms_histogram(),
            decode_ms: ms_histogram(),
            claim_ms: ms_histogram(),
            landings: Mutex::new(None),
        }
    }
}

/// The lander's one retry policy: wait, then double the wait, up to a ceiling.
/// Each call out of the process that a batch cannot do without retries on one
/// of these schedules until it succeeds (offset commits give up after
/// `LEARNVAULT_LANDER_COMMIT_ATTEMPTS`, 10: the batches stay replayable by their intents).
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    wait: Duration,
    max: Duration,
}

impl Backoff {
    /// Warehouse inserts, while the error is retryable: 100 ms doubling to 10 s.
    const INSERT: Backoff = Backoff::new(100, 10_000);
    /// Dead-letter produces: 100 ms doubling to 5 s.
    const DEAD_LETTER: Backoff = Backoff::new(100, 5_000);
    /// Offset commits: 250 ms doubling to 5 s.
    const COMMIT: Backoff = Backoff::new(250, 5_000);
    /// PostgreSQL (intents, governance): every 500 ms.
    pub(super) const POSTGRES: Backoff = Backoff::new(500, 500);

    const fn new(first_ms: u64, max_ms: u64) -> Backoff {
        Backoff { wait: Duration::from_millis(first_ms), max: Duration::from_millis(max_ms) }
    }

    /// Sleep the current wait, then double it (up to the ceiling).
    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(self.max);
    }

    /// `op` until it succeeds, on this schedule: each failure logged (`"{failed}; retrying"`)
    /// and reported to the health endpoint as `cause` stalling; `cause` recovered once it succeeds.
    pub(super) async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        mut self,
        cause: Cause,
        failed: &str,
        mut op: impl FnMut() -> F,
    ) -> T {
        loop {
            match op().await {
                Ok(v) => {
                    health::recovered(cause);
                    return v;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{failed}; retrying");
                    health::stalled(cause, &e);
                    self.wait().await;
                }
            }
        }
    }
}

/// A batch whose intent is recorded: its members' ranges and its token.
pub(super) struct Intended {
    ranges: Vec<Range>,
    token: String,
}

/// A batch's records, per member partition.
pub(super) type Records = Vec<(i32, Vec<Raw>)>;

/// Which partitions' offsets a landed batch commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    /// None (the benchmark's direct path).
    Nothing,
    /// Every member this lander still owns.
    Members,
    /// Only this one (a replay by the member that resumed).
    Only(i32),
}

/// Where a batch stands among the batches in flight: it commits only after the batch
/// before it (`after` resolves when that one committed, and errors when it failed), and
/// says so to the next (`done`).
#[derive(Default)]
pub(super) struct Order {
    pub(super) after: Option<tokio::sync::oneshot::Receiver<()>>,
    pub(super) done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A batch ready to insert: governed, refusals dead-lettered, intent recorded.
pub(super) struct Prepared {
    ranges: Vec<Range>,
    token: String,
    /// The rows ([`BINARY_FORMAT`]), shared with the insert (retries re-send them without a copy).
    rows: Arc<Vec<u8>>,
    landed: u64,
    oldest: Option<DateTime<Utc>>,
    /// The decoded events, per member partition.
    items: Vec<(i32, Vec<Item>)>,
    /// The events in `rows`: (partition, index in its `items`).
    landable: Vec<(i32, usize)>,
    /// In flight for the erasure fence until the batch is dropped (landed or abandoned).
    _fence: crate::fence::Ticket,
}

/// What preparing and landing a batch needs, shared by the lander and its landing tasks.
#[derive(Clone)]
pub(super) struct Sink {
    cfg: Arc<LanderConfig>,
    /// The lander's consumer: landing commits its partitions' offsets.
    pub(super) consumer: Arc<StreamConsumer<Ctx>>,
    /// Dead letters.
    dead: crate::dead_letter::DeadLetters,
    warehouse: Warehouse,
    decoder: Arc<Decoder>,
    governance: Arc<Governance>,
    pub(super) intents: Arc<Intents>,
    pub(super) stats: Arc<LanderStats>,
    buffers: RowBuffers,
    /// This lander's side of the erasure fence.
    fence: crate::fence::Fence,
    /// Event-id claims (idempotent ingest); `None` when `LEARNVAULT_INGEST_DEDUP=false`.
    claims: Option<crate::dedup::Claims>,
}

/// What this lander landed (or skipped as landed) in a partition it owns without the
/// group's offset showing it yet: a commit abandoned while the broker was away, or a
/// resumed partition whose pending batch was replayed under another member partition.
/// Without a later batch nothing would ever commit it (the group would show a lag
/// forever, and a restart would replay by intents again), so the run loop pays it when
/// idle. Never below what this lander committed, and forgotten when a partition is
/// revoked (its next owner commits; a late commit of ours could move its offset back).
#[derive(Default)]
pub(super) struct CommitDebt {
    /// Partition -> last offset landed and not committed.
    owed: std::collections::HashMap<i32, i64>,
    /// Partition -> last offset this lander committed, since it was assigned.
    paid: std::collections::HashMap<i32, i64>,
}

impl CommitDebt {
    /// Owe partition `p` through `last` (ignored when committed already).
    pub(super) fn owe(&mut self, p: i32, last: i64) {
        if self.paid.get(&p).is_some_and(|&c| c >= last) {
            return;
        }
        let e = self.owed.entry(p).or_insert(last);
        *e = (*e).max(last);
    }
    /// Partition `p` is committed through `last`.
    pub(super) fn paid(&mut self, p: i32, last: i64) {
        let c = self.paid.entry(p).or_insert(last);
        *c = (*c).max(last);
        if self.owed.get(&p).is_some_and(|&o| o <= last) {
            self.owed.remove(&p);
        }
    }
    /// Partition `p` left this lander.
    pub(super) fn forget(&mut self, p: i32) {
        self.owed.remove(&p);
        self.paid.remove(&p);
    }
    /// What is owed, as ranges to commit.
    pub(super) fn owed(&self) -> Vec<Range> {
        self.owed.iter().map(|(&partition, &last)| Range { partition, first: last, last }).collect()
    }
}

impl Sink {
    /// The service of the lander reading with `consumer`.
    pub(super) fn new(
        cfg: &LanderConfig,
        consumer: Arc<StreamConsumer<Ctx>>,
        warehouse: Warehouse,
        pool: PgPool,
        taxonomy: Taxonomy,
        protected: ProtectedAttributes,
        analytics_default: bool,
    ) -> Result<Sink, LanderError> {
        // Dead letters: few, so compressed whatever the broker.
        let producer: FutureProducer = crate::envelope::producer_config(&cfg.brokers, "lz4").set("message.timeout.ms", "30000").create()?;
        let dead = crate::dead_letter::DeadLetters::new(producer, &cfg.dlq_topic);
        let governance = Arc::new(Governance::new(pool.clone(), cfg.governance_ttl, analytics_default));
        let fence = crate::fence::Fence::start(pool.clone(), governance.clone());
        let decoder = Decoder::new(taxonomy, protected, cfg.max_event_bytes, cfg.clock_skew);
        let claims = cfg.dedup.then(|| crate::dedup::Claims::new(pool.clone(), cfg.dedup_window_days));
        if let Some(c) = &claims {
            c.spawn_purge();
        }
        let intents = Arc::new(Intents::new(pool, cfg.group.clone(), cfg.topic.clone()));
        let stats = Arc::new(LanderStats::default());
        let buffers = RowBuffers::default();
        Ok(Sink { cfg: Arc::new(cfg.clone()), consumer, dead, warehouse, decoder, governance, intents, stats, buffers, fence, claims })
    }

    /// Record the intent of the batch `batches` (the records of each member partition, in
    /// offset order). Called by the run loop between two polls, so while it owns every
    /// member (a rebalance runs inside a poll), before any of the batch's work. `None`
    /// for no records.
    pub(super) async fn intend(&self, batches: &Records) -> Option<Intended> {
        let ranges: Vec<Range> = batches
            .iter()
            .filter_map(|(p, raws)| Some(Range { partition: *p, first: raws.first()?.offset, last: raws.last()?.offset }))
            .collect();
        if ranges.is_empty() {
            return None;
        }
        let token = self.intents.record(&ranges).await;
        Some(Intended { ranges, token })
    }

    /// The batch whose intent is recorded, from its records: decoded, governed, its
    /// refusals dead-lettered, its ids claimed, its rows encoded.
    ///
    /// Each member partition is decoded and governed on its own, all at once. Then the batch
    /// keeps each event's first occurrence among its members' landable events and claims
    /// them at once, in key order, in one statement: an event lands once, and only if this
    /// batch claimed it (now, or before: its replay). One claim per batch rather than one per
    /// member, although a member's claim could overlap the others' decode: keyed by client
    /// time, a batch's claims in key order go mostly onto the claims index's rightmost page
    /// (PostgreSQL inserts there without descending the index), where members' claims at
    /// once interleave with each other. With PostgreSQL on the same two cores, its share of
    /// them fell from 28 % to 19 % and the lander landed 1.11x the events per second
    /// (BENCHMARKS.md, session 15).
    pub(super) async fn prepare(&self, intended: Intended, batches: Records) -> Result<Prepared, LanderError> {
        let Intended { ranges, token } = intended;
        let started = Instant::now();
        // The erasure fence: the batch is in flight from before it is governed until it is dropped,
        // and is governed with a cache emptied after any erasure epoch the lander has read.
        let ticket = self.fence.enter();
        let mut backoff = Backoff::POSTGRES;
        while let Err(e) = self.fence.refresh().await {
            tracing::warn!(error = %e, "vault unavailable for the erasure fence; retrying");
            health::stalled(Cause::Vault, &e);
            backoff.wait().await;
        }
        let decoded_by = Mutex::new(Duration::ZERO);
        let members = futures::future::try_join_all(batches.into_iter().map(|(p, raws)| {
            let decoded_by = &decoded_by;
            async move {
                let items = self.decoder.decode_all(raws).await;
                {
                    let mut d = decoded_by.lock().expect("decode time");
                    *d = (*d).max(started.elapsed());
                }
                let landable = self.gate(p, &items).await?;
                Ok::<_, LanderError>((p, items, landable))
            }
        }))
        .await?;
        let decode_ms = decoded_by.into_inner().expect("decode time").as_millis().max(1) as u64;
        let _ = self.stats.decode_ms.lock().expect("stats lock").record(decode_ms);
        // Each event once in the batch (its first occurrence), then those the batch may land.
        let governed: usize = members.iter().map(|m| m.2.len()).sum();
        let mut first = crate::dedup::KeySet::with_capacity_and_hasher(governed, Default::default());
        let mut landable: Vec<(usize, usize)> = Vec::with_capacity(governed);
        let mut keys: Vec<crate::dedup::EventKey> = Vec::with_capacity(governed);
        for (pi, (_, items, ixs)) in members.iter().enumerate() {
            for &ix in ixs {
                let key = items[ix].event_key().expect("landable");
                if first.insert(key) {
                    landable.push((pi, ix));
                    keys.push(key);
                }
            }
        }
        drop(first);
        if let Some(claims) = &self.claims {
            let claimed = Instant::now();
            let mine = Backoff::POSTGRES
                .until_ok(Cause::Vault, "cannot claim the batch's event ids in PostgreSQL", || claims.claim(&token, &keys))
                .await;
            record_ms(&self.stats.claim_ms, claimed);
            if mine != crate::dedup::Claimed::All {
                landable = landable.into_iter().zip(&keys).filter(|(_, k)| mine.allows(k)).map(|(l, _)| l).collect();
            }
        }
        let duplicates = (governed - landable.len()) as u64;
        if duplicates > 0 {
            self.stats.duplicates.fetch_add(duplicates, Ordering::Relaxed);
            metrics::counter!(crate::dedup::DUPLICATES).increment(duplicates);
            tracing::debug!(token = %token, duplicates, "events whose id landed already were dropped");
        }
        let event = |&(pi, ix): &(usize, usize)| members[pi].1[ix].outcome.as_ref().expect("landable");
        let mut rows = self.buffers.take();
        rows.reserve(landable.len() * 200 + 512);
        write_binary_header(&mut rows);
        let mut oldest: Option<DateTime<Utc>> = None;
        for l in &landable {
            let ev = event(l);
            let server = ev.server_ts.expect("set at decode");
            oldest = Some(oldest.map_or(server, |o| o.min(server)));
            write_row_binary(&mut rows, ev, &server);
        }
        let landed = landable.len() as u64;
        let landable = landable.into_iter().map(|(pi, ix)| (members[pi].0, ix)).collect();
        let items = members.into_iter().map(|(p, items, _)| (p, items)).collect();
        record_ms(&self.stats.prepare_ms, started);
        Ok(Prepared { ranges, token, rows: Arc::new(rows), landed, oldest, items, landable, _fence: ticket })
    }

    /// The gate of member partition `p`'s decoded events: governance (one query for the
    /// cache misses) and the refusals dead-lettered. Returns the landable events (indexes in
    /// `items`, in order).
    async fn gate(&self, p: i32, items: &[Item]) -> Result<Vec<usize>, LanderError> {
        let ids: Vec<uuid::Uuid> = items.iter().filter_map(|i| i.outcome.as_ref().ok().map(|e| e.learner_id)).collect();
        let standings = Backoff::POSTGRES
            .until_ok(Cause::Vault, "vault unavailable for governance", || self.governance.standings(ids.iter().copied()))
            .await;
        // The gate: refusals (dead-lettered) and the events that may land, in order.
        let mut landable: Vec<usize> = Vec::new();
        let mut refused: Vec<(usize, Reason, String)> = Vec::new();
        for (ix, item) in items.iter().enumerate() {
            match &item.outcome {
                Err((reason, detail)) => refused.push((ix, *reason, detail.clone())),
                Ok(ev) => match standings.get(&ev.learner_id).and_then(|s| s.refusal(&ev.institution_id)) {
                    Some(reason) => refused.push((ix, reason, "refused by the vault's governance".into())),
                    None => landable.push(ix),
                },
            }
        }
        for (ix, reason, detail) in &refused {
            self.dead_letter(p, &items[*ix], *reason, detail).await?;
        }
        Ok(landable)
    }

    /// Replay partition `p`'s pending batch `intent`: re-read every member's range
    /// from Kafka, prepare it and land it with the intent's token, committing `p` alone
    /// (another member's owner replays it too when that member resumes: a duplicate
    /// under the same token, dropped by the warehouse).
    pub(super) async fn replay(&self, p: i32, intent: &Intent) -> Result<(), LanderError> {
        let batches = super::replay::read(&self.cfg.brokers, &self.cfg.topic, &intent.members).await?;
        let intended = Intended { ranges: intent.members.clone(), token: intent.token.clone() };
        let b = self.prepare(intended, batches).await?;
        self.clone().land(b, Commit::Only(p), Order::default()).await
    }

    /// A landing task: prepare the batch whose intent is recorded, then land it.
    pub(super) async fn prepare_and_land(self, intended: Intended, batches: Records, commit: Commit, order: Order) -> Result<(), LanderError> {
        let b = self.prepare(intended, batches).await?;
        self.land(b, commit, order).await
    }

    /// Insert a prepared batch with its token, record its figures, and commit
    /// its partition's offset (when `commit`).
    pub(super) async fn land(self, b: Prepared, commit: Commit, order: Order) -> Result<(), LanderError> {
        let started = Instant::now();
        if let Some(o) = b.oldest {
            let queued = Utc::now().signed_duration_since(o).num_milliseconds().max(1) as u64;
            let _ = self.stats.queued_ms.lock().expect("stats lock").record(queued);
        }
        let mut landed = b.landed;
        let inserted = insert_with_retry(&self.warehouse, &b).await;
        if b.landed > 0 {
            let _ = self.stats.insert_ms.lock().expect("stats lock").record(started.elapsed().as_millis().max(1) as u64);
        }
        if let Err(e) = inserted {
            // Bad data the gate did not catch: dead-letter the batch, never retry forever.
            tracing::error!(error = %e, token = %b.token, rows = b.landed, "warehouse refused a batch; dead-lettering it");
            for (p, ix) in &b.landable {
                let items = &b.items.iter().find(|(q, _)| q == p).expect("a member partition").1;
                self.dead_letter(*p, &items[*ix], Reason::WarehouseRejected, "the warehouse refused the batch").await?;
            }
            // Its claims go with it: a corrected delivery of these ids must be able to land.
            if let Some(claims) = &self.claims {
                // Every decoded event's key: a superset of what the batch claimed for.
                let keys: Vec<crate::dedup::EventKey> = b
                    .items
                    .iter()
                    .flat_map(|(_, items)| items.iter().filter_map(|i| i.event_key()))
                    .collect();
                let mut backoff = Backoff::POSTGRES;
                while let Err(e) = claims.release(&b.token, &keys).await {
                    tracing::warn!(error = %e, "cannot release a dead-lettered batch's event-id claims; retrying");
                    backoff.wait().await;
                }
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
            if let Some(log) = self.stats.landings.lock().expect("stats lock").as_mut() {
                log.push((now.timestamp_millis(), o.timestamp_millis()));
            }
        }
        tracing::debug!(token = %b.token, landed, "batch landed");
        // Offsets commit in batch order: a later batch may insert first, never commit first
        // (its commit would cover, and forget, the earlier batch's intent).
        if let Some(before) = order.after {
            before.await.map_err(|_| LanderError::Config("the batch before this one failed; this one stays uncommitted, to be replayed".into()))?;
        }
        let members: Vec<Range> = match commit {
            Commit::Nothing => Vec::new(),
            Commit::Members => b.ranges.clone(),
            Commit::Only(p) => b.ranges.iter().filter(|r| r.partition == p).copied().collect(),
        };
        if !members.is_empty() {
            match self.commit(&members, self.cfg.commit_attempts).await {
                Some(committed) => {
                    for r in committed {
                        self.intents.committed_through(r.partition, r.last).await;
                    }
                }
                None => {
                    // Landed, not committed: owed for the partitions still ours, paid when idle.
                    self.stats.commits_abandoned.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(COMMITS_ABANDONED).increment(1);
                    let owned = self.consumer.context().owned.lock().expect("owned lock");
                    let mut debt = self.consumer.context().debt.lock().expect("debt lock");
                    for r in members.iter().filter(|r| owned.contains(&r.partition)) {
                        debt.owe(r.partition, r.last);
                    }
                }
            }
        }
        metrics::histogram!("learnvault_lander_batch_seconds").record(started.elapsed().as_secs_f64());
        self.buffers.recycle(b.rows);
        if let Some(done) = order.done {
            let _ = done.send(());
        }
        Ok(())
    }

    /// Commit the offsets after `members`' ranges, of those partitions this lander still
    /// owns (checked and committed under the ownership lock), retrying while the broker
    /// is away; returns the ranges committed. Gives up after `attempts` (10 by default: ~30 s; the
    /// partitions may have moved to another member) with `None`: the batches stay
    /// replayable by their intents and tokens, and a later commit, or the debt's, covers them.
    pub(super) async fn commit(&self, members: &[Range], attempts: u32) -> Option<Vec<Range>> {
        let mut backoff = Backoff::COMMIT;
        for attempt in 1..=attempts {
            let consumer = self.consumer.clone();
            let topic = self.cfg.topic.clone();
            let wanted = members.to_vec();
            let commit = move || {
                let owned = consumer.context().owned.lock().expect("owned lock");
                let mine: Vec<Range> = wanted.into_iter().filter(|r| owned.contains(&r.partition)).collect();
                let mut tpl = TopicPartitionList::new();
                for r in &mine {
                    tpl.add_partition_offset(&topic, r.partition, Offset::Offset(r.last + 1))?;
                }
                if !mine.is_empty() {
                    consumer.commit(&tpl, CommitMode::Sync)?;
                }
                let mut debt = consumer.context().debt.lock().expect("debt lock");
                for r in &mine {
                    debt.paid(r.partition, r.last);
                }
                Ok::<_, rdkafka::error::KafkaError>(mine)
            };
            match tokio::task::spawn_blocking(commit).await {
                Ok(Ok(mine)) => {
                    health::recovered(Cause::Broker);
                    if mine.len() < members.len() {
                        tracing::info!(moved = members.len() - mine.len(), "partitions moved before their batch committed; their owners replay it by its intent");
                    }
                    return Some(mine);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, attempt, "offset commit failed; retrying");
                    health::stalled(Cause::Broker, &e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "offset commit task failed; retrying")
                }
            }
            if attempt < attempts {
                backoff.wait().await;
            }
        }
        tracing::warn!(attempts, "offset commit abandoned; owed, committed when the lander is idle or by a later batch");
        None
    }

    async fn dead_letter(&self, p: i32, item: &Item, reason: Reason, detail: &str) -> Result<(), LanderError> {
        // One record shape and one redaction for both writers (`dead_letter`): identifiers out
        // (emails, phones, identifier fields, protected attributes; path and reason kept). Keyed by
        // the event's learner; a refused member of an envelope by its own learner (the record's key
        // names the envelope's first one); a refused record by its key only when it is a pseudonym.
        use crate::dead_letter::{DeadLetter, Origin, Refused, Stage};
        let cx = crate::redact::Context { external_ids: &[], protected: Some(self.decoder.protected()) };
        let origin = Origin { topic: &self.cfg.topic, partition: p, offset: item.offset, index: item.index };
        let learner = item.outcome.as_ref().ok().map(|ev| ev.learner_id);
        let record_key = if item.index.is_none() { item.key.as_deref() } else { None };
        let dl = DeadLetter::new(reason.as_str(), detail, Stage::Lander, Some(&origin), Refused::Bytes(item.bytes()), &cx, learner, record_key);
        Backoff::DEAD_LETTER.until_ok(Cause::Broker, "dead-letter produce failed", || self.dead.send(&dl)).await;
        metrics::counter!("learnvault_lander_rejects_total", "reason" => reason.as_str()).increment(1);
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Record the milliseconds since `started` in `h`.
fn record_ms(h: &Mutex<hdrhistogram::Histogram<u64>>, started: Instant) {
    let _ = h.lock().expect("stats lock").record(started.elapsed().as_millis().max(1) as u64);
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
    let mut backoff = Backoff::INSERT;
    loop {
        let inserted = {
            let _rebuild = crate::warehouse::AGGREGATE_REBUILD.read().await;
            warehouse.insert("events.learning_events", BINARY_FORMAT, b.rows.clone(), &settings).await
        };
        match inserted {
            Ok(()) => {
                health::recovered(Cause::Warehouse);
                crate::warehouse::rows_landed();
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, token = %b.token, "warehouse unavailable; backing off (the batch waits, nothing is dead-lettered)");
                health::stalled(Cause::Warehouse, &e);
                backoff.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CommitDebt;

    #[test]
    fn commit_debt_is_never_below_what_was_committed_and_forgotten_on_revocation() {
        let mut d = CommitDebt::default();
        d.owe(0, 10);
        d.owe(0, 7);
        d.owe(1, 4);
        let mut owed: Vec<(i32, i64)> = d.owed().iter().map(|r| (r.partition, r.last)).collect();
        owed.sort();
        assert_eq!(owed, vec![(0, 10), (1, 4)], "the highest landed offset per partition");
        d.paid(0, 12);
        assert!(d.owed().iter().all(|r| r.partition != 0), "a later commit covers the debt");
        d.owe(0, 11);
        assert!(d.owed().iter().all(|r| r.partition != 0), "nothing owed below what was committed (a commit must never move back)");
        d.paid(1, 3);
        assert_eq!(d.owed().len(), 1, "a lower commit leaves the debt owed");
        d.forget(1);
        assert!(d.owed().is_empty(), "a revoked partition's debt is its next owner's");
    }
}
