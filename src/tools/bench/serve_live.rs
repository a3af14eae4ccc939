//! `learnvault bench serve`, its live half: the real lander landing events
//! from Kafka at a fixed rate while the read path is measured, and the live
//! phase (many streams refreshing as the API's `live` handler does, with the
//! event-to-screen freshness they give).

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::producer::FutureProducer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lander::{payload, record, records};
use crate::config::Settings;
use crate::lander::LanderStats;
use crate::serve::{DateRange, Ident, Serve, Thresholds};
use crate::vault::{keys::MasterKey, Vault};
use crate::warehouse::Warehouse;

/// Learners the landed events belong to (in this run's vault).
const LEARNERS: usize = 4_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds")
}

/// The lander landing `rate` events/s from Kafka until stopped.
pub struct Landing {
    stats: Arc<LanderStats>,
    rate: u64,
    started: Instant,
    stop_producer: Arc<AtomicBool>,
    producer: tokio::task::JoinHandle<anyhow::Result<u64>>,
    stop_lander: tokio::sync::oneshot::Sender<()>,
    lander: tokio::task::JoinHandle<Result<(), crate::lander::LanderError>>,
}

impl Landing {
    /// Learners in the vault, the topics, the lander in its own group, and a
    /// producer sending the simulated cohort (envelopes, as the gateway sends them).
    pub async fn start(settings: &Settings, wh: &Warehouse, rate: u64) -> anyhow::Result<Landing> {
        crate::db::migrate(settings).await?;
        let pool = crate::db::connect(settings)?;
        let vault = Vault::new(pool, MasterKey::load(settings)?, 1);
        let learners = super::lander::bench_learners(&vault, LEARNERS).await?;

        let lander = crate::app::lander::build(settings, wh.clone()).await?;
        let stats = lander.stats();
        *stats.landings.lock().expect("stats lock") = Some(Vec::new());
        let (stop_lander, stopped) = tokio::sync::oneshot::channel::<()>();
        let lander = tokio::spawn(lander.run(async move {
            let _ = stopped.await;
        }));

        let producer: FutureProducer = crate::envelope::producer_config(&settings.kafka.brokers, &settings.kafka.produce_compression)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        let stop_producer = Arc::new(AtomicBool::new(false));
        let (topic, partitions, compression) = (settings.kafka.events_topic.clone(), settings.kafka.topic_partitions, settings.kafka.envelope_compression);
        let stop = stop_producer.clone();
        let producer = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut sent = 0usize;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as usize;
                let mut tick = Vec::new();
                while sent < due {
                    let ix = sent % learners.len();
                    tick.push((learners[ix].clone(), payload(&learners[ix], ix, sent, now_ms())));
                    sent += 1;
                }
                for r in records(&tick, false, partitions, compression) {
                    let (producer, topic) = (producer.clone(), topic.clone());
                    inflight.push(tokio::spawn(async move {
                        producer.send(record(&topic, &r), Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
                    }));
                }
                inflight.retain(|f: &tokio::task::JoinHandle<_>| !f.is_finished());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for f in inflight {
                f.await??;
            }
            anyhow::Ok(sent as u64)
        });
        Ok(Landing { stats, rate, started: Instant::now(), stop_producer, producer, stop_lander, lander })
    }

    /// Wait for the first landed batch (the lander has joined its group).
    pub async fn wait_first(&self) -> anyhow::Result<()> {
        let t0 = Instant::now();
        while self.stats.landed.load(Ordering::Relaxed) == 0 {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "the lander landed nothing in 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("lander landing {} events/s from Kafka (first batch after {:.1}s)", self.rate, t0.elapsed().as_secs_f64());
        self.stats.reset_histograms();
        Ok(())
    }

    /// Batches landed so far: (landed at, oldest event), unix milliseconds.
    fn landings(&self) -> Vec<(i64, i64)> {
        self.stats.landings.lock().expect("stats lock").clone().unwrap_or_default()
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_producer.store(true, Ordering::Relaxed);
        let sent = self.producer.await.context("producer task")??;
        let h = self.stats.freshness_ms.lock().expect("stats lock").clone();
        let landed = self.stats.landed.load(Ordering::Relaxed);
        println!(
            "lander            sent {sent} landed {landed} in {:.0}s ({:.0} ev/s landed); per batch (oldest row) freshness p50={}ms p99={}ms max={}ms",
            self.started.elapsed().as_secs_f64(),
            landed as f64 / self.started.elapsed().as_secs_f64(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
        let _ = self.stop_lander.send(());
        self.lander.await.context("lander task")??;
        Ok(())
    }
}

/// `streams` live streams over the 20 courses, each refreshing as the API's
/// handler does ([`Serve::live_wait`], then a step), for `duration`. A batch is on a
/// stream's screen at the end of its first step whose views' rows hold it (their
/// refresh started after the batch landed: [`crate::serve::live::Stream::as_of_ms`]), not merely the
/// first step after it landed.
pub async fn live_phase(
    sv: &Arc<Serve>,
    landing: Option<&Landing>,
    streams: usize,
    duration: Duration,
    range: DateRange,
    t: Thresholds,
) -> anyhow::Result<()> {
    let live = sv.config().policy.live;
    let interval = Duration::from_millis(live.interval_ms);
    let (start_ms, deadline) = (now_ms(), Instant::now() + duration);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let sv = sv.clone();
        tasks.push(tokio::spawn(async move {
            let course = Ident::parse("course_id", &format!("course-{}", s % 20)).expect("valid");
            let mut stream = sv.live_stream(range, 60, t);
            // Streams open spread over one interval, as viewers arrive.
            tokio::time::sleep(interval * s as u32 / streams.max(1) as u32).await;
            let (mut steps, mut h, mut errors, mut messages) = (Vec::new(), hist(), 0u64, 0usize);
            while Instant::now() < deadline {
                sv.live_wait(&mut stream, interval).await;
                let t0 = Instant::now();
                match sv.live_step(&course, &mut stream).await {
                    Ok(m) => {
                        messages += m.len();
                        steps.push((stream.as_of_ms(), now_ms()));
                    }
                    Err(_) => errors += 1,
                }
                let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            }
            (steps, h, errors, messages)
        }));
    }
    let (mut all, mut refresh, mut errors, mut messages) = (Vec::new(), hist(), 0, 0);
    for task in tasks {
        let (steps, h, e, m) = task.await?;
        refresh.add(&h)?;
        errors += e;
        messages += m;
        all.push(steps);
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "live              {streams} streams, interval {} ms, queries shared within {} ms: {} refreshes ({errors} errors), {messages} messages; refresh p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
        live.interval_ms,
        live.coalesce_ms,
        refresh.len(),
        ms(&refresh, 0.5),
        ms(&refresh, 0.95),
        ms(&refresh, 0.99),
        refresh.max() as f64 / 1000.0
    );
    let Some(landing) = landing else { return Ok(()) };
    // Batches that landed while every stream was refreshing and early enough that each had a refresh after them.
    let last = all.iter().filter_map(|s| s.last().map(|x| x.0)).min().unwrap_or(start_ms);
    let first = all.iter().filter_map(|s| s.first().map(|x| x.0)).max().unwrap_or(start_ms);
    let batches: Vec<(i64, i64)> = landing.landings().into_iter().filter(|(l, _)| *l >= first && *l <= last).collect();
    let (mut screen, mut fresh) = (hist(), hist());
    for steps in &all {
        for (landed, oldest) in &batches {
            let i = steps.partition_point(|(q, _)| q < landed);
            if let Some((_, shown)) = steps.get(i) {
                let _ = screen.record(((shown - landed).max(1) * 1000) as u64);
                let _ = fresh.record(((shown - oldest).max(1) * 1000) as u64);
            }
        }
    }
    println!(
        "event-to-screen   {} batches x {} streams: from the batch's oldest event to the stream's refresh showing it p50={:.0}ms p95={:.0}ms p99={:.0}ms max={:.0}ms",
        batches.len(),
        all.len(),
        ms(&fresh, 0.5),
        ms(&fresh, 0.95),
        ms(&fresh, 0.99),
        fresh.max() as f64 / 1000.0
    );
    println!(
        "  of which         landed -> on screen p50={:.0}ms p99={:.0}ms (the rest is the lander's: event -> landed)",
        ms(&screen, 0.5),
        ms(&screen, 0.99)
    );
    Ok(())
}
