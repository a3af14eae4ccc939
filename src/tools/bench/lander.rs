//! `learnvault bench lander`: the event spine's figures on the real services.
//!
//! 1. ratio: lander end-to-end throughput (Kafka -> base table with every view)
//!    over the raw engine insert rate of the same rows into the same tables;
//! 2. freshness p99 (produced -> visible in the funnel rollup) at a fixed rate;
//! 3. funnel query p50/p99 over a base table of `--base-rows` rows.

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::domain::{ExternalId, InstitutionId};
use crate::envelope::Compression;
use crate::vault::{keys::MasterKey, Identity, NewLearner, Vault};
use crate::warehouse::{migrate, Warehouse};

#[derive(clap::Args)]
pub struct LanderArgs {
    /// Events for the throughput ratio.
    #[arg(long, default_value_t = 300_000)]
    events: usize,
    /// Fixed produce rate for the freshness phase (events/s).
    #[arg(long, default_value_t = 15_000)]
    rate: usize,
    /// Seconds of the freshness phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Base-table rows for the funnel query phase (0 skips it).
    #[arg(long, default_value_t = 50_000_000)]
    base_rows: u64,
    /// Learners in the generated cohort.
    #[arg(long, default_value_t = 5_000)]
    learners: usize,
    /// Produce one record per event instead of per-partition envelopes of up
    /// to 500 events (as `LEARNVAULT_RECORD_FORMAT=single` does; see `envelope`).
    #[arg(long)]
    singles: bool,
    /// Pause the engine's background merges during the timed raw-insert and lander phases
    /// (`SYSTEM STOP MERGES`), catching them up between phases, so neither side is charged
    /// merges of rows the other inserted. By default merges run, as in production.
    #[arg(long)]
    pause_merges: bool,
    /// Only measure single inserts of a few batch sizes, with and without the lander's
    /// deduplication token, one at a time (what one batch's insert costs), then stop.
    #[arg(long)]
    insert_probe: bool,
    /// Land the backlog twice, from two topics holding the same records: with idempotent
    /// ingest off, then on (the lander from Kafka and the lander without a broker), so the
    /// cost of deduplication is measured in one run. The freshness phase runs with it on.
    #[arg(long)]
    dedup_compare: bool,
    /// Event-id claims already in the run's own (fresh) database before the timed phases:
    /// a deduplication window's worth (rate x window) makes each claim an insert into a
    /// larger index.
    #[arg(long, default_value_t = 0)]
    base_claims: u64,
    /// Only measure the candidate deduplication mechanisms on batches of 20,000 event ids
    /// against 1,000,000 remembered ones: claims in PostgreSQL (what the lander does) and a
    /// lookup-then-insert in a ClickHouse table ordered by event id; then stop.
    #[arg(long)]
    dedup_probe: bool,
    /// Stamp every event of a backlog with one client time (the benchmark before session 16)
    /// instead of the times a stream at `--rate` sends them: the claims' key (client time,
    /// then id) then orders a backlog's claims by random id alone, its worst case.
    #[arg(long)]
    one_client_time: bool,
    /// An engine setting for the probe's inserts, `name=value` (repeatable).
    #[arg(long, requires = "insert_probe")]
    probe_setting: Vec<String>,
}

/// `n` learners of `bench-uni` (external ids `bench-0`..), issued in batches of
/// 10,000: their pseudonyms, for the simulated cohort's events.
pub(super) async fn bench_learners(vault: &Vault, n: usize) -> anyhow::Result<Vec<String>> {
    let inst = InstitutionId::parse("bench-uni")?;
    let mut learners = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let items: Vec<(InstitutionId, NewLearner)> = chunk
            .iter()
            .map(|i| Ok((inst.clone(), NewLearner { external_id: ExternalId::parse(&format!("bench-{i}"))?, identity: Identity::empty() })))
            .collect::<anyhow::Result<_>>()?;
        let entry = crate::audit::NewEntry {
            request_id: uuid::Uuid::new_v4(),
            actor: "bench".into(),
            roles: vec![],
            institution: Some("bench-uni".into()),
            action: "pseudonym.issue_batch".into(),
            target: None,
            purpose: None,
            justification: None,
            outcome: crate::audit::Outcome::Success,
            detail: json!({}),
        };
        learners.extend(vault.issue_batch(items, entry).await?.into_iter().map(|r| r.pseudonym.to_string()));
    }
    Ok(learners)
}

/// A backlog of `n` new events (pseudonym, event JSON) of `learners`, as a stream at `rate`
/// events/s sent them up to `end_ms` (client and server time; one time for all with
/// `--one-client-time`).
fn backlog(learners: &[String], n: usize, rate: usize, end_ms: i64, one_time: bool) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let l = &learners[i % learners.len()];
            let sent_ms = if one_time { end_ms } else { end_ms - ((n - 1 - i) as u64 * 1000 / rate.max(1) as u64) as i64 };
            (l.clone(), payload(l, i % learners.len(), i, sent_ms))
        })
        .collect()
}

/// Records for `events` (pseudonym, event JSON), as a producer sends them:
/// one per event, or envelopes per partition for each group of 500 events
/// (the gateway's request size), encoded as `compression` says.
pub(super) fn records(events: &[(String, Vec<u8>)], singles: bool, partitions: i32, compression: Compression) -> Vec<(Option<i32>, String, Vec<u8>)> {
    if singles {
        return events.iter().map(|(k, p)| (None, k.clone(), p.clone())).collect();
    }
    events
        .chunks(500)
        .flat_map(|req| {
            crate::envelope::pack(req.iter().enumerate().map(|(i, (k, p))| (i, k.as_str(), p.as_slice())), partitions, compression)
                .into_iter()
                .map(|e| (Some(e.partition), e.key, e.value))
        })
        .collect()
}

pub(super) fn record<'a>(topic: &'a str, r: &'a (Option<i32>, String, Vec<u8>)) -> FutureRecord<'a, String, Vec<u8>> {
    let rec = FutureRecord::to(topic).key(&r.1).payload(&r.2);
    match r.0 {
        Some(p) => rec.partition(p),
        None => rec,
    }
}

const TYPES: [&str; 10] = [
    "session.heartbeat",
    "session.heartbeat",
    "session.heartbeat",
    "session.heartbeat",
    "session.heartbeat",
    "session.heartbeat",
    "content.start",
    "interact.pause",
    "content.complete",
    "assess.submit",
];

/// Event `i` of learner number `learner_ix` (a learner belongs to one cohort).
pub(super) fn payload(learner: &str, learner_ix: usize, i: usize, server_ms: i64) -> Vec<u8> {
    let cohort = learner_ix % 8;
    serde_json::to_vec(&json!({
        "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": TYPES[i % TYPES.len()],
        "learner_id": learner, "session_id": format!("s{}", i % 97), "course_id": format!("course-{}", i % 20),
        "content_id": format!("video-{}", i % 50), "cohort_id": format!("cohort-{}", cohort), "institution_id": "bench-uni",
        "position_sec": (i % 600) as u32, "client_ts": server_ms, "server_ts": server_ms, "props": {"player": "web"}
    }))
    .expect("json")
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

pub async fn run(mut settings: Settings, args: LanderArgs) -> anyhow::Result<ExitCode> {
    let (_, data) = super::own_run(&mut settings, "bench-events", "lander");
    crate::db::migrate(&settings).await?;
    let (s, a) = (&settings, &args);
    super::on_engine(s, &data, |wh| async move { phases(s, &wh, a).await }).await
}

async fn phases(settings: &Settings, wh: &Warehouse, args: &LanderArgs) -> anyhow::Result<ExitCode> {
    migrate::run(wh, &settings.warehouse.migrations_dir).await?;
    println!(
        "learnvault bench lander  engine={}  partitions={}  background merges during timed phases: {}",
        wh.version().await?,
        settings.kafka.topic_partitions,
        if args.pause_merges { "paused" } else { "running" }
    );

    let pool = crate::db::connect(settings)?;
    if args.dedup_probe {
        return dedup_probe(&pool, wh).await;
    }
    if args.base_claims > 0 {
        let started = Instant::now();
        // As a lander at 15,000 events/s would have left them: client times in order, up to the
        // first of the backlog's (which is sent at `--rate` up to now).
        let backlog_secs = if args.one_client_time { 0.0 } else { args.events as f64 / args.rate.max(1) as f64 };
        sqlx::query(
            "INSERT INTO ingest_event_ids (client_ts, event_id, batch)
             SELECT now() - make_interval(secs => $2 + ($1 - g) / 15000.0), gen_random_uuid(), 0 FROM generate_series(1, $1) AS g",
        )
        .bind(args.base_claims as i64)
        .bind(backlog_secs)
        .execute(&pool)
        .await?;
        println!("claims already held: {} event ids (inserted in {:.1}s)", args.base_claims, started.elapsed().as_secs_f64());
        // As a running system holds them: vacuumed and analyzed, their pages written out (not an
        // autovacuum of the rows just inserted, nor a checkpoint of their pages, during the timed phases).
        let started = Instant::now();
        let admin = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.admin_url)).await?;
        sqlx::query("VACUUM (ANALYZE) ingest_event_ids").execute(&admin).await?;
        sqlx::query("CHECKPOINT").execute(&admin).await?;
        admin.close().await;
        println!("claims vacuumed, analyzed and checkpointed in {:.1}s", started.elapsed().as_secs_f64());
    }
    // Learners in the vault (the lander refuses unknown pseudonyms).
    let vault = Vault::new(pool.clone(), MasterKey::load(settings)?, 1);
    let learners = bench_learners(&vault, args.learners).await?;

    let producer: FutureProducer = crate::envelope::producer_config(&settings.kafka.brokers, &settings.kafka.produce_compression)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    crate::topics::ensure(&settings.kafka.brokers, &crate::topics::specs(settings)?).await?;

    // Phase 1: backlog of N events, then the lander drains it.
    let payloads = backlog(&learners, args.events, args.rate, chrono::Utc::now().timestamp_millis(), args.one_client_time);
    let t0 = Instant::now();
    let compression = settings.kafka.envelope_compression;
    let singles = args.singles || settings.kafka.record_format == crate::envelope::RecordFormat::Single;
    let recs = records(&payloads, singles, settings.kafka.topic_partitions, compression);
    let rec_bytes: usize = recs.iter().map(|r| r.2.len()).sum();
    let json_bytes: usize = payloads.iter().map(|p| p.1.len()).sum();
    // With `--dedup-compare`, the same records in a second topic for the lander without deduplication.
    let mut off = settings.clone();
    off.dedup.enabled = false;
    off.kafka.events_topic = format!("{}-nodedup", settings.kafka.events_topic);
    off.kafka.dlq_topic = format!("{}-nodedup.dlq", settings.kafka.events_topic);
    off.lander.consumer_group = format!("{}-nodedup", settings.lander.consumer_group);
    let mut topics = vec![settings.kafka.events_topic.clone()];
    if args.dedup_compare {
        crate::topics::ensure(&off.kafka.brokers, &crate::topics::specs(&off)?).await?;
        topics.push(off.kafka.events_topic.clone());
    }
    for topic in &topics {
        for chunk in recs.chunks(20_000) {
            let futs = chunk.iter().map(|r| producer.send(record(topic, r), Duration::from_secs(30)));
            for r in futures::future::join_all(futs).await {
                r.map_err(|(e, _)| e)?;
            }
        }
    }
    println!(
        "produced {} events in {} records ({}, value compression {:?}, Kafka batch compression {}; {:.1} MB of record values for {:.1} MB of event JSON) in {:.1}s",
        args.events,
        recs.len(),
        if singles { "one event per record" } else { "envelopes of up to 500 events per partition" },
        if singles { crate::envelope::Compression::None } else { compression },
        settings.kafka.produce_compression,
        rec_bytes as f64 / 1e6,
        json_bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    drop(recs);
    // Raw engine insert of the same rows, same tables and views, same batch size:
    // run before and after the lander (the engine's rate drifts between runs on this
    // shared machine); the ratio is taken against the faster of the two.
    let rows: Vec<u8> = {
        let mut out = Vec::new();
        for (_, p) in &payloads {
            let mut v: Value = serde_json::from_slice(p)?;
            for k in ["client_ts", "server_ts"] {
                let ms = v[k].as_i64().unwrap_or_default();
                v[k] = json!(chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%d %H:%M:%S%.3f").to_string());
            }
            serde_json::to_writer(&mut out, &v)?;
            out.push(b'\n');
        }
        out
    };
    let per_insert = settings.lander.batch_rows.min(args.events.div_ceil(settings.kafka.topic_partitions as usize));
    let lines: Vec<&[u8]> = rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let raw_insert = || async {
        let t0 = Instant::now();
        for chunk in lines.chunks(per_insert) {
            let mut buf = Vec::with_capacity(chunk.iter().map(|l| l.len() + 1).sum());
            for l in chunk {
                buf.extend_from_slice(l);
                buf.push(b'\n');
            }
            wh.insert("events.learning_events", "JSONEachRow", buf.into(), &[]).await?;
        }
        anyhow::Ok(args.events as f64 / t0.elapsed().as_secs_f64())
    };
    if args.insert_probe {
        return insert_probe(wh, &lines, &args.probe_setting).await;
    }
    // The same rows in the lander's binary format (what it inserts), encoded up front.
    let binary: Vec<Vec<u8>> = {
        let taxonomy = crate::taxonomy::Taxonomy::load(&settings.policy_dir.join("taxonomy"))?;
        let mut out = Vec::new();
        for chunk in payloads.chunks(per_insert) {
            let mut buf = Vec::with_capacity(chunk.len() * 200 + 512);
            crate::lander::write_binary_header(&mut buf);
            for (_, p) in chunk {
                let ev = taxonomy.validate_bytes(p).map_err(|r| anyhow::anyhow!("bench event invalid: {}", r.detail))?;
                let server = ev.server_ts.unwrap_or_else(chrono::Utc::now);
                crate::lander::write_row_binary(&mut buf, &ev, &server);
            }
            out.push(buf);
        }
        out
    };
    let raw_insert_binary = || async {
        let t0 = Instant::now();
        for buf in &binary {
            wh.insert("events.learning_events", crate::lander::BINARY_FORMAT, buf.clone().into(), &[]).await?;
        }
        anyhow::Ok(args.events as f64 / t0.elapsed().as_secs_f64())
    };
    let pause = args.pause_merges;
    phase(wh, pause).await?;
    let raw_before = raw_insert().await?;
    phase(wh, pause).await?;
    let bin_before = raw_insert_binary().await?;
    phase(wh, pause).await?;

    // Without deduplication first (when compared), then as configured (on by default): the
    // second one lands into the larger table.
    let off_rate = if args.dedup_compare {
        let cpu = super::cpu::Cpu::now();
        let lander = crate::app::lander::build(&off, wh.clone()).await?;
        let stats = lander.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(lander.run(async move {
            let _ = stopped.await;
        }));
        let r = drain(&stats, args.events as u64).await?;
        let cpu = cpu.per_event_since(args.events as u64);
        print_stages("lander from Kafka, dedup off", &stats);
        let _ = stop.send(());
        handle.await.context("lander task")??;
        phase(wh, pause).await?;
        Some((r, cpu))
    } else {
        None
    };
    let cpu = super::cpu::Cpu::now();
    let lander = crate::app::lander::build(settings, wh.clone()).await?;
    let stats = lander.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(lander.run(async move {
        let _ = stopped.await;
    }));
    let (lander_rate, lander_secs, join_secs) = drain(&stats, args.events as u64).await?;
    let cpu = cpu.per_event_since(args.events as u64);
    print_stages("lander from Kafka", &stats);
    phase(wh, pause).await?;
    let raw_after = raw_insert().await?;
    phase(wh, pause).await?;
    let bin_after = raw_insert_binary().await?;
    phase(wh, pause).await?;
    let raw_rate = raw_before.max(raw_after);
    let bin_rate = bin_before.max(bin_after);
    let raw_secs = args.events as f64 / raw_rate;
    // The lander's own pipeline (decode, validate, govern, intent, deduplication, insert with
    // token), no broker. Its own group and topic: it never consumes, and must not take partitions
    // from the live lander. New event ids: the backlog's are landed already.
    let mut core_settings = settings.clone();
    core_settings.lander.consumer_group = format!("{}-core", settings.lander.consumer_group);
    core_settings.kafka.events_topic = format!("{}-core", settings.kafka.events_topic);
    core_settings.kafka.dlq_topic = format!("{}-core.dlq", settings.kafka.events_topic);
    let core_off = if args.dedup_compare {
        let mut s = core_settings.clone();
        s.dedup.enabled = false;
        s.lander.consumer_group = format!("{}-off", core_settings.lander.consumer_group);
        let r = core_rate(&s, wh, args, &learners, per_insert, singles, compression).await?;
        phase(wh, false).await?;
        Some(r)
    } else {
        None
    };
    let core_rate = core_rate(&core_settings, wh, args, &learners, per_insert, singles, compression).await?;
    let core_secs = args.events as f64 / core_rate;
    println!(
        "raw engine insert {:>9.0} rows/s ({:.2}s, {} rows per insert, every view; before the lander {:.0}, after {:.0}: the faster is used)",
        raw_rate, raw_secs, per_insert, raw_before, raw_after
    );
    println!(
        "raw engine insert {:>9.0} rows/s in the lander's binary format ({}; before {:.0}, after {:.0}): the ratios below are to the JSONEachRow insert above; to this one: no broker {:.2}, from Kafka {:.2}",
        bin_rate,
        crate::lander::BINARY_FORMAT,
        bin_before,
        bin_after,
        core_rate / bin_rate,
        lander_rate / bin_rate
    );
    println!(
        "lander, no broker {:>9.0} ev/s ({:.2}s)  ratio to raw insert {:.2}   (decode, validate, govern, intent, claim, insert with token; batches in flight as consumed ones)",
        core_rate,
        core_secs,
        core_rate / raw_rate
    );
    println!(
        "lander from Kafka {:>9.0} ev/s ({:.2}s after the first batch; group join and first batch {:.2}s)  ratio to raw insert {:.2}   (end to end: broker fetch, decode, govern, intent, insert, commit)",
        lander_rate,
        lander_secs,
        join_secs,
        lander_rate / raw_rate
    );
    println!("  {cpu}");
    if let (Some(core_off), Some(((off_rate, off_secs, _), off_cpu))) = (core_off, off_rate) {
        let on = if settings.dedup.enabled { "on" } else { "off (LEARNVAULT_INGEST_DEDUP=false)" };
        println!("deduplication     the two lines above with it {on}; the same phases with it off, same run:");
        println!("  lander, no broker, dedup off {:>9.0} ev/s  ratio {:.2}  (with it: {:.2} of this rate)", core_off, core_off / raw_rate, core_rate / core_off);
        println!(
            "  lander from Kafka, dedup off {:>9.0} ev/s ({:.2}s)  ratio {:.2}  (with it: {:.2} of this rate)",
            off_rate,
            off_secs,
            off_rate / raw_rate,
            lander_rate / off_rate
        );
        println!("    {off_cpu}");
    }

    // Phase 2: freshness at a fixed rate, lander live.
    stats.reset_histograms();
    let total = args.rate * args.seconds as usize;
    let landed_before = stats.landed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let tick = Duration::from_millis(10);
    let mut sent = 0usize;
    let mut inflight = Vec::new();
    while sent < total {
        let due = ((t0.elapsed().as_secs_f64() * args.rate as f64) as usize).min(total);
        let mut tick_events = Vec::new();
        while sent < due {
            let l = &learners[sent % learners.len()];
            tick_events.push((l.clone(), payload(l, sent % learners.len(), sent, chrono::Utc::now().timestamp_millis())));
            sent += 1;
        }
        for r in records(&tick_events, singles, settings.kafka.topic_partitions, compression) {
            let producer = producer.clone();
            let topic = settings.kafka.events_topic.clone();
            inflight.push(tokio::spawn(async move {
                producer.send(record(&topic, &r), Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
            }));
        }
        tokio::time::sleep(tick).await;
    }
    for f in inflight {
        f.await??;
    }
    let produce_secs = t0.elapsed().as_secs_f64();
    let mut behind = 0;
    while stats.landed.load(Ordering::Relaxed) < landed_before + total as u64 {
        if t0.elapsed() > Duration::from_secs(args.seconds + 60) {
            behind = landed_before + total as u64 - stats.landed.load(Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if behind > 0 {
        println!("freshness         NOT CAUGHT UP: {behind} events still unlanded 60 s after the last produce (broker saturated)");
    }
    let h = stats.freshness_ms.lock().expect("stats").clone();
    println!(
        "freshness         {} events at {:.0} ev/s: per batch (oldest row) p50={:.0}ms p95={:.0}ms p99={:.0}ms max={}ms over {} batches",
        total,
        total as f64 / produce_secs,
        pct(&h, 0.5),
        pct(&h, 0.95),
        pct(&h, 0.99),
        h.max(),
        h.len()
    );
    let (q, ins) = (stats.queued_ms.lock().expect("stats").clone(), stats.insert_ms.lock().expect("stats").clone());
    println!(
        "  of which         oldest row's age when its insert started p50={:.0}ms p99={:.0}ms; insert p50={:.0}ms p99={:.0}ms",
        pct(&q, 0.5),
        pct(&q, 0.99),
        pct(&ins, 0.5),
        pct(&ins, 0.99)
    );
    let _ = stop.send(());
    handle.await.context("lander task")??;

    // Phase 3: funnel over a large base table.
    if args.base_rows > 0 {
        let have: u64 = count(wh, "SELECT count() AS n FROM events.learning_events").await?;
        let need = args.base_rows.saturating_sub(have);
        let t0 = Instant::now();
        let step = 5_000_000u64;
        let mut done = 0;
        while done < need {
            let n = step.min(need - done);
            wh.execute(
                "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                     course_id, content_id, cohort_id, institution_id, position_sec, props)
                 SELECT now64(3) - toIntervalSecond(number % 2419200) AS ts, ts, generateUUIDv4(), '2.3',
                        ['session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat',
                         'content.start','interact.pause','content.complete','assess.submit'][(number % 10) + 1],
                        toUUID(concat(substring(h, 1, 8), '-', substring(h, 9, 4), '-', substring(h, 13, 4), '-', substring(h, 17, 4), '-', substring(h, 21, 12))), 's',
                        concat('course-', toString(number % 20)), concat('video-', toString(number % 50)),
                        concat('cohort-', toString((number % {learners:UInt64}) % 8)), 'bench-uni', toUInt32(number % 600), map()
                 FROM (SELECT number, concat(leftPad(hex(cityHash64(number % {learners:UInt64})), 16, '0'),
                                             leftPad(hex(cityHash64(number % {learners:UInt64}, 1)), 16, '0')) AS h
                       FROM numbers({offset:UInt64}, {n:UInt64}))",
                &[("learners", (args.learners as u64 * 10).to_string()), ("offset", done.to_string()), ("n", n.to_string())],
            )
            .await?;
            done += n;
        }
        if need > 0 {
            println!(
                "loaded {need} base rows in {:.1}s ({:.0} rows/s, every view updating)",
                t0.elapsed().as_secs_f64(),
                need as f64 / t0.elapsed().as_secs_f64()
            );
        }
        let total = count(wh, "SELECT count() AS n FROM events.learning_events").await?;
        let mut rt = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..200 {
            let t = Instant::now();
            wh.query("SELECT 1 AS one", &[]).await?;
            rt.record(t.elapsed().as_micros().max(1) as u64)?;
        }
        println!("engine round trip SELECT 1 x200: p50={:.2}ms p99={:.2}ms", pct(&rt, 0.5) / 1000.0, pct(&rt, 0.99) / 1000.0);
        for (label, step) in [("unmerged", 0), ("settled", 1), ("merged", 2)] {
            if step == 1 {
                // What a live system sees a minute after the load: the engine's own background
                // merges done (including the funnel's forced merge of parts older than 30 s,
                // migration 0007), no OPTIMIZE.
                let t = Instant::now();
                settle(wh, 600).await?;
                tokio::time::sleep(Duration::from_secs(35)).await;
                settle(wh, 600).await?;
                println!("background merges settled in {:.1}s", t.elapsed().as_secs_f64());
            }
            let parts =
                count(wh, "SELECT count() AS n FROM system.parts WHERE database = 'agg' AND table = 'funnel_by_cohort' AND active").await?;
            if step == 2 {
                let t = Instant::now();
                wh.execute("OPTIMIZE TABLE agg.funnel_by_cohort FINAL", &[]).await?;
                println!("OPTIMIZE agg.funnel_by_cohort FINAL in {:.1}s", t.elapsed().as_secs_f64());
            }
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for i in 0..200 {
                let t = Instant::now();
                let rows = wh
                    .query(
                        "SELECT cohort_id, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started, uniqMerge(completed) AS completed,
                                uniqMerge(assessed) AS assessed
                         FROM agg.funnel_by_cohort WHERE course_id = {course:String} AND event_date >= today() - 27 GROUP BY cohort_id",
                        &[("course", format!("course-{}", i % 20))],
                    )
                    .await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
                anyhow::ensure!(!rows.is_empty(), "funnel returned nothing");
            }
            println!(
                "funnel query      base rows={total} ({label}, {parts} parts) 200 queries: p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
                pct(&h, 0.5) / 1000.0,
                pct(&h, 0.95) / 1000.0,
                pct(&h, 0.99) / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Where a lander's batches spent their time (p50/p99 per batch).
fn print_stages(what: &str, stats: &crate::lander::LanderStats) {
    let get = |h: &std::sync::Mutex<Histogram<u64>>| {
        let h = h.lock().expect("stats");
        format!("p50={:.0} p99={:.0}", pct(&h, 0.5), pct(&h, 0.99))
    };
    println!(
        "  {what}: {} batches; per batch ms: prepare {} (decode {}; its claim {}), insert {}",
        stats.batches.load(Ordering::Relaxed),
        get(&stats.prepare_ms),
        get(&stats.decode_ms),
        get(&stats.claim_ms),
        get(&stats.insert_ms)
    );
}

/// Wait until the lander has landed `events` rows; its steady rate: from the first landed
/// batch (the consumer has joined its group and fetches) to the last. Returns the rate, the
/// seconds it took, and the seconds to the first batch (the join, reported apart).
async fn drain(stats: &crate::lander::LanderStats, events: u64) -> anyhow::Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let landed = stats.landed.load(Ordering::Relaxed);
        if landed > 0 && first.is_none() {
            first = Some((Instant::now(), landed));
        }
        if landed >= events {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "lander did not drain the backlog");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (t_first, n_first) = first.expect("landed");
    let secs = t_first.elapsed().as_secs_f64();
    Ok(((events - n_first) as f64 / secs, secs, t_first.duration_since(t0).as_secs_f64()))
}

/// The lander's pipeline without a broker ([`crate::lander::Lander::land_direct`]) over a
/// backlog of `args.events` new events, `per_insert` a batch: events per second.
#[allow(clippy::too_many_arguments)]
async fn core_rate(
    settings: &Settings,
    wh: &Warehouse,
    args: &LanderArgs,
    learners: &[String],
    per_insert: usize,
    singles: bool,
    compression: Compression,
) -> anyhow::Result<f64> {
    let payloads = backlog(learners, args.events, args.rate, chrono::Utc::now().timestamp_millis(), args.one_client_time);
    let mut core = crate::app::lander::build(settings, wh.clone()).await?;
    let t0 = Instant::now();
    // The records a producer sends (envelopes, compressed as configured), `per_insert` events a batch.
    let mut offset = 0i64;
    for (n, chunk) in payloads.chunks(per_insert).enumerate() {
        let msgs = records(chunk, singles, settings.kafka.topic_partitions, compression)
            .into_iter()
            .map(|(_, k, v)| {
                offset += 1;
                (offset, Some(k.into_bytes()), v)
            })
            .collect();
        core.land_direct(1000 + (n % settings.kafka.topic_partitions as usize) as i32, msgs).await?;
    }
    let core_rows = core.settle_direct().await?;
    let secs = t0.elapsed().as_secs_f64();
    print_stages(if settings.dedup.enabled { "lander, no broker" } else { "lander, no broker, dedup off" }, &core.stats());
    phase(wh, false).await?;
    anyhow::ensure!(core_rows == args.events as u64, "lander core landed {core_rows}");
    Ok(args.events as f64 / secs)
}

/// The cost of each deduplication mechanism for one lander batch (20,000 new ids) with
/// 1,000,000 ids remembered: what chose PostgreSQL claims (BENCHMARKS.md, issue 13).
async fn dedup_probe(pool: &sqlx::PgPool, wh: &Warehouse) -> anyhow::Result<ExitCode> {
    const BATCH: usize = 20_000;
    const REMEMBERED: usize = 1_000_000;
    let ids = |n: usize| {
        let client_ts = chrono::Utc::now();
        (0..n).map(|_| crate::dedup::EventKey::new(client_ts, uuid::Uuid::new_v4())).collect::<Vec<_>>()
    };
    let report = |what: &str, h: &Histogram<u64>, total_secs: f64, n: usize| {
        println!(
            "{what:<58} p50={:>7.1}ms p99={:>7.1}ms  {:>9.0} ids/s over {} batches",
            pct(h, 0.5) / 1000.0,
            pct(h, 0.99) / 1000.0,
            (n * BATCH) as f64 / total_secs,
            n
        );
    };
    // PostgreSQL: the lander's claims.
    let claims = crate::dedup::Claims::new(pool.clone(), crate::dedup::MIN_WINDOW_DAYS);
    let t = Instant::now();
    for i in 0..REMEMBERED / BATCH {
        claims.claim(&format!("probe-preload:{i}"), &ids(BATCH)).await?;
    }
    println!("postgres: {REMEMBERED} ids claimed in {:.1}s (preload)", t.elapsed().as_secs_f64());
    let hist = || Histogram::<u64>::new(3);
    let (mut upsert, mut fresh, mut again, mut dup, mut again_u) = (hist()?, hist()?, hist()?, hist()?, hist()?);
    let (mut upsert_s, mut fresh_s, mut again_s, mut dup_s, mut again_u_s) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let n = 20;
    for i in 0..n {
        // Alternating, so that both see the same machine: ON CONFLICT for every id, then the
        // lander's claim (one binary COPY per range; a new `Claims` each time, which has seen no
        // conflict yet: the replay and the duplicate pay the failed COPY, their worst case).
        let batch = ids(BATCH);
        let t = Instant::now();
        anyhow::ensure!(claims.claim_upsert(&format!("probe-upsert:{i}"), &batch).await?.of(&batch).len() == BATCH);
        upsert.record(t.elapsed().as_micros().max(1) as u64)?;
        upsert_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        anyhow::ensure!(claims.claim_upsert(&format!("probe-upsert:{i}"), &batch).await?.of(&batch).len() == BATCH);
        again_u.record(t.elapsed().as_micros().max(1) as u64)?;
        again_u_s += t.elapsed().as_secs_f64();
        let batch = ids(BATCH);
        let token = format!("probe:{i}");
        let t = Instant::now();
        anyhow::ensure!(crate::dedup::Claims::new(pool.clone(), crate::dedup::MIN_WINDOW_DAYS).claim(&token, &batch).await?.of(&batch).len() == BATCH);
        fresh.record(t.elapsed().as_micros().max(1) as u64)?;
        fresh_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        anyhow::ensure!(crate::dedup::Claims::new(pool.clone(), crate::dedup::MIN_WINDOW_DAYS).claim(&token, &batch).await?.of(&batch).len() == BATCH);
        again.record(t.elapsed().as_micros().max(1) as u64)?;
        again_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        anyhow::ensure!(crate::dedup::Claims::new(pool.clone(), crate::dedup::MIN_WINDOW_DAYS).claim(&format!("{token}-other"), &batch).await?.of(&batch).is_empty());
        dup.record(t.elapsed().as_micros().max(1) as u64)?;
        dup_s += t.elapsed().as_secs_f64();
    }
    report("postgres claim by ON CONFLICT, 20k new ids", &upsert, upsert_s, n);
    report("postgres claim by ON CONFLICT, the same batch replayed", &again_u, again_u_s, n);
    report("postgres claim by COPY (the lander's), 20k new ids", &fresh, fresh_s, n);
    report("postgres claim by COPY, replayed (COPY refused, ON CONFLICT)", &again, again_s, n);
    report("postgres claim by COPY, 20k ids claimed by another batch", &dup, dup_s, n);
    // ClickHouse: look the batch's ids up in a table ordered by event id, then insert them.
    wh.execute(
        "CREATE TABLE IF NOT EXISTS events.probe_seen_ids (event_id UUID, batch Int64, seen_at DateTime DEFAULT now())
         ENGINE = ReplacingMergeTree ORDER BY event_id",
        &[],
    )
    .await?;
    wh.execute(
        "INSERT INTO events.probe_seen_ids (event_id, batch) SELECT generateUUIDv4(), 0 FROM numbers({n:UInt64})",
        &[("n", REMEMBERED.to_string())],
    )
    .await?;
    settle(wh, 120).await?;
    let mut h = Histogram::<u64>::new(3)?;
    let mut total = 0.0;
    for i in 0..n {
        let batch = ids(BATCH);
        let batch: Vec<uuid::Uuid> = batch.iter().map(|k| k.event_id()).collect();
        let list = format!("[{}]", batch.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(","));
        let mut rows = Vec::with_capacity(BATCH * 60);
        for u in &batch {
            rows.extend_from_slice(format!("{{\"event_id\":\"{u}\",\"batch\":{i}}}\n").as_bytes());
        }
        let t = Instant::now();
        let found = wh.query("SELECT count() AS n FROM events.probe_seen_ids WHERE event_id IN {ids:Array(UUID)}", &[("ids", list)]).await?;
        let found = found[0]["n"].as_u64().or_else(|| found[0]["n"].as_str().and_then(|s| s.parse().ok())).unwrap_or(u64::MAX);
        anyhow::ensure!(found == 0);
        wh.insert("events.probe_seen_ids", "JSONEachRow", rows.into(), &[]).await?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
        total += t.elapsed().as_secs_f64();
    }
    report("clickhouse lookup (IN 20k ids) then insert of the ids", &h, total, n);
    wh.execute("DROP TABLE events.probe_seen_ids", &[]).await?;
    Ok(ExitCode::SUCCESS)
}

/// One insert at a time, of 600, 2,500 and 20,000 rows, with and without the lander's
/// deduplication settings: the cost of one batch's insert beside its size.
async fn insert_probe(wh: &Warehouse, lines: &[&[u8]], extra: &[String]) -> anyhow::Result<ExitCode> {
    let mut at = 0usize;
    wh.execute("CREATE TABLE IF NOT EXISTS events.probe_no_views AS events.learning_events", &[]).await?;
    for rows in [600usize, 2_500, 20_000] {
        for (dedup, table) in [(false, "events.probe_no_views"), (false, "events.learning_events"), (true, "events.learning_events")] {
            phase(wh, false).await?;
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let reps = (120_000 / rows).clamp(6, 100);
            let t0 = Instant::now();
            for _ in 0..reps {
                let mut buf = Vec::new();
                for l in lines.iter().cycle().skip(at).take(rows) {
                    buf.extend_from_slice(l);
                    buf.push(b'\n');
                }
                at = (at + rows) % lines.len();
                let mut settings: Vec<(&str, String)> =
                    extra.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.to_string())).collect();
                if dedup {
                    settings.extend([
                        ("insert_deduplicate", "1".to_string()),
                        ("insert_deduplication_token", uuid::Uuid::new_v4().to_string()),
                        ("deduplicate_blocks_in_dependent_materialized_views", "1".to_string()),
                    ]);
                }
                let t = Instant::now();
                wh.insert(table, "JSONEachRow", buf.into(), &settings).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            println!(
                "insert of {rows:>6} rows into {table:<22}, dedup token {:<5}: p50={:>7.1}ms p99={:>7.1}ms  {:>8.0} rows/s over {reps} inserts",
                dedup,
                pct(&h, 0.5) / 1000.0,
                pct(&h, 0.99) / 1000.0,
                (rows * reps) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Between timed phases: merges on again and caught up; then, when `pause`,
/// paused for the phase about to start.
async fn phase(wh: &Warehouse, pause: bool) -> anyhow::Result<()> {
    wh.execute("SYSTEM START MERGES", &[]).await?;
    settle(wh, 120).await?;
    if pause {
        wh.execute("SYSTEM STOP MERGES", &[]).await?;
    }
    Ok(())
}

/// Wait until the engine's background merges are done (at most `max_secs`), so each
/// timed phase starts from the same state instead of sharing the cores with the
/// previous phase's merges.
async fn settle(wh: &Warehouse, max_secs: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    while count(wh, "SELECT count() AS n FROM system.merges").await? > 0 && t.elapsed() < Duration::from_secs(max_secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn count(wh: &Warehouse, sql: &str) -> anyhow::Result<u64> {
    let rows = wh.query(sql, &[]).await?;
    let v = &rows[0]["n"];
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).context("count")
}
