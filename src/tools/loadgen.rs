//! `learnvault loadgen`: a simulated cohort ([`crate::tools::sim`]) sent at a fixed
//! rate for a bounded time, through the gateway (`--via http`), as xAPI
//! (`--via xapi`) or straight to Kafka with pre-issued pseudonyms
//! (`--via kafka`). Prints the achieved rate, errors and request latency.

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{parse_ttl, Authenticator};
use crate::config::Settings;
use crate::tools::sim::{self, Cohort, INSTITUTIONS};
use crate::vault::keys::MasterKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Kafka,
    Http,
    Xapi,
}

#[derive(clap::Args, Clone)]
pub struct LoadgenArgs {
    /// Events per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Simulated learners (spread over 3 institutions, 2 courses each, 3 cohorts per course).
    #[arg(long, default_value_t = 1_000)]
    pub learners: usize,
    /// How long to send (e.g. 30s, 5m).
    #[arg(long, default_value = "30s")]
    pub duration: String,
    #[arg(long, value_enum, default_value = "http")]
    pub via: Via,
    /// The learnvault server (tokens are minted with this machine's key).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Events per request (http, xapi) .
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a line per second.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub progress: bool,
}

/// Counters a running load shares with its watcher (the demo's dashboard).
#[derive(Default)]
pub struct LoadStats {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub latency_us: Mutex<Option<Histogram<u64>>>,
}

pub async fn run(settings: Settings, args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    let stats = Arc::new(LoadStats::default());
    let started = Instant::now();
    generate(&settings, &args, stats.clone(), std::future::pending()).await?;
    report(&args, &stats, started.elapsed());
    Ok(if stats.errors.load(Ordering::Relaxed) == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn report(args: &LoadgenArgs, s: &LoadStats, elapsed: Duration) {
    let sent = s.sent.load(Ordering::Relaxed);
    let (p50, p95, p99) = s
        .latency_us
        .lock()
        .expect("not poisoned")
        .as_ref()
        .map(|h| (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.95) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0))
        .unwrap_or_default();
    println!(
        "loadgen via={:?} target={}/s sent={} accepted={} rejected={} errors={} elapsed={:.1}s achieved={:.0} events/s  request p50={:.2}ms p95={:.2}ms p99={:.2}ms",
        args.via,
        args.rate,
        sent,
        s.accepted.load(Ordering::Relaxed),
        s.rejected.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        p50,
        p95,
        p99
    );
}

/// Send the simulated cohort at `args.rate` until `args.duration` passes or `stop` resolves.
pub async fn generate(
    settings: &Settings,
    args: &LoadgenArgs,
    stats: Arc<LoadStats>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let duration = parse_ttl(&args.duration).context("--duration")?;
    let master = MasterKey::load(settings)?;
    let auth = Authenticator::from_settings(settings, &master)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).timeout(Duration::from_secs(30)).build()?;
    let all: Vec<String> = INSTITUTIONS.iter().map(|s| s.to_string()).collect();
    let token = auth.mint("loadgen", &["lms".into()], &all, Duration::from_secs(86_400))?;
    let per_inst: HashMap<&str, String> = INSTITUTIONS
        .iter()
        .map(|i| Ok((*i, auth.mint("loadgen", &["lms".into()], &[i.to_string()], Duration::from_secs(86_400))?)))
        .collect::<anyhow::Result<_>>()?;
    *stats.latency_us.lock().expect("not poisoned") = Some(Histogram::new_with_bounds(1, 120_000_000, 3)?);
    let mut cohort = Cohort::new(args.learners, args.seed);

    // --via kafka: the LMS is its own producer: pseudonyms first, through the batch API.
    let mut pseudonyms: HashMap<String, String> = HashMap::new();
    let producer: Option<FutureProducer> = if args.via == Via::Kafka {
        for chunk in cohort.learners.chunks(5_000) {
            let items: Vec<Value> =
                chunk.iter().map(|l| json!({"institution": l.institution, "external_id": l.external_id, "identity": {}})).collect();
            let r: Value = client
                .post(format!("{}/v1/pseudonyms/batch", args.url))
                .bearer_auth(&token)
                .json(&json!({"items": items}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for (l, res) in chunk.iter().zip(r["results"].as_array().context("batch results")?) {
                pseudonyms.insert(l.external_id.clone(), res["pseudonym"].as_str().context("pseudonym")?.to_owned());
            }
        }
        Some(
            crate::envelope::producer_config(&settings.kafka.brokers, &settings.kafka.produce_compression)
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()?,
        )
    } else {
        None
    };

    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent: u64 = 0;
    let mut last_print = Instant::now();
    let mut last_sent = 0;
    let mut inflight = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        // Never more than one round of requests ahead: when the target is out of reach the
        // generator sends as fast as answers come back (closed loop) instead of queueing without bound.
        let due = ((args.rate as f64 * elapsed.as_secs_f64()) as u64).min(sent + (args.concurrency * args.batch.max(1)) as u64);
        let now = chrono::Utc::now();
        while let Some(res) = inflight.try_join_next() {
            res?;
        }
        if args.via == Via::Http {
            // The request bodies written straight from the simulation (the bytes `serde_json`
            // writes for the events' values, without building them): the gateway does all its
            // work per request whatever the generator's cost, which is kept small.
            while sent < due {
                let n = ((due - sent) as usize).min(args.batch.max(1));
                let mut body = Vec::with_capacity(n * 448 + 2);
                body.push(b'[');
                for k in 0..n {
                    if k > 0 {
                        body.push(b',');
                    }
                    cohort.next_json(now, &mut body);
                }
                body.push(b']');
                sent += n as u64;
                stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                spawn_request(&mut inflight, &sem, &client, format!("{}/v1/events", args.url), token.clone(), body, false, n, stats.clone()).await;
            }
        }
        let mut pending: Vec<Value> = Vec::new();
        while sent < due {
            pending.push(cohort.next(now).event);
            sent += 1;
        }
        for batch in pending.chunks(args.batch.max(1)) {
            stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            match args.via {
                Via::Kafka => {
                    let producer = producer.clone().expect("kafka producer");
                    let topic = settings.kafka.events_topic.clone();
                    let stats = stats.clone();
                    let events: Vec<(String, Vec<u8>)> = batch
                        .iter()
                        .map(|e| {
                            let mut e = e.clone();
                            let ext = e["learner"]["external_id"].as_str().unwrap_or_default().to_owned();
                            let p = pseudonyms.get(&ext).cloned().unwrap_or_default();
                            e.as_object_mut().expect("object").remove("learner");
                            e["learner_id"] = json!(p);
                            (p, serde_json::to_vec(&e).expect("json"))
                        })
                        .collect();
                    inflight.spawn(async move {
                        let sends = events.iter().map(|(k, body)| producer.send(FutureRecord::to(&topic).key(k).payload(body), Duration::from_secs(0)));
                        for r in futures::future::join_all(sends).await {
                            match r {
                                Ok(_) => stats.accepted.fetch_add(1, Ordering::Relaxed),
                                Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    });
                }
                Via::Http => unreachable!("written above"),
                Via::Xapi => {
                    let mut by_inst: HashMap<&str, Vec<Value>> = HashMap::new();
                    for e in batch {
                        let inst = INSTITUTIONS.iter().find(|i| e["institution_id"] == **i).copied().unwrap_or(INSTITUTIONS[0]);
                        match sim::to_xapi(e, &format!("https://{inst}.lms.example")) {
                            Some(st) => by_inst.entry(inst).or_default().push(st),
                            None => {
                                // Event types xAPI clients do not send: counted as sent, not as errors.
                                stats.sent.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                    for (inst, statements) in by_inst {
                        let n = statements.len();
                        spawn_request(&mut inflight, &sem, &client, format!("{}/xapi/statements", args.url), per_inst[inst].clone(), serde_json::to_vec(&statements).expect("json"), true, n, stats.clone())
                            .await;
                    }
                }
            }
        }
        if args.progress && last_print.elapsed() >= Duration::from_secs(1) {
            let s = stats.sent.load(Ordering::Relaxed);
            eprintln!(
                "[{:>5.1}s] {:>8.0} events/s  sent={} accepted={} rejected={} errors={}",
                elapsed.as_secs_f64(),
                (s - last_sent) as f64 / last_print.elapsed().as_secs_f64(),
                s,
                stats.accepted.load(Ordering::Relaxed),
                stats.rejected.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed)
            );
            last_sent = s;
            last_print = Instant::now();
        }
    }
    while let Some(res) = inflight.join_next().await {
        res?;
    }
    if let Some(p) = producer {
        use rdkafka::producer::Producer;
        let _ = p.flush(Duration::from_secs(10));
    }
    Ok(())
}

/// The counts of a `POST /v1/events` answer.
#[derive(serde::Deserialize)]
struct Summary {
    accepted: u64,
    rejected: u64,
}

#[allow(clippy::too_many_arguments)]
async fn spawn_request(
    set: &mut tokio::task::JoinSet<()>,
    sem: &Arc<tokio::sync::Semaphore>,
    client: &reqwest::Client,
    url: String,
    token: String,
    body: Vec<u8>,
    xapi: bool,
    n: usize,
    stats: Arc<LoadStats>,
) {
    let permit = sem.clone().acquire_owned().await.expect("semaphore open");
    let client = client.clone();
    set.spawn(async move {
        let _permit = permit;
        let t = Instant::now();
        let mut req = client.post(url).bearer_auth(token).header("content-type", "application/json").body(body);
        if xapi {
            req = req.header("X-Experience-API-Version", "1.0.3");
        }
        let resp = req.send().await;
        let us = t.elapsed().as_micros().max(1) as u64;
        if let Some(h) = stats.latency_us.lock().expect("not poisoned").as_mut() {
            let _ = h.record(us);
        }
        match resp {
            Ok(r) if r.status().is_success() => {
                if xapi {
                    // The ids of the statements acknowledged; the others were refused alone.
                    let acked = r.json::<Vec<serde_json::Value>>().await.map_or(n, |ids| ids.len());
                    stats.accepted.fetch_add(acked as u64, Ordering::Relaxed);
                    stats.rejected.fetch_add(n.saturating_sub(acked) as u64, Ordering::Relaxed);
                } else if let Ok(v) = r.json::<Summary>().await {
                    // Only the counts: the per-event results are skipped, not built.
                    stats.accepted.fetch_add(v.accepted, Ordering::Relaxed);
                    stats.rejected.fetch_add(v.rejected, Ordering::Relaxed);
                }
            }
            Ok(r) => {
                if std::env::var_os("LEARNVAULT_LOADGEN_DEBUG").is_some() {
                    eprintln!("{} {}", r.status(), r.text().await.unwrap_or_default());
                }
                stats.errors.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                stats.errors.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
}
