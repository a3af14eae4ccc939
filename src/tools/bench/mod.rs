//! `learnvault bench pseudonyms`: load the pseudonym API over loopback HTTP and
//! print throughput and latency percentiles. Figures, not assertions. The other
//! benchmarks are one file each.

mod cpu;
mod dsr;
mod gateway;
mod lander;
mod serve;
mod serve_live;
mod signals;

use anyhow::Context;
use secrecy::ExposeSecret;
use clap::Subcommand;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{Application, Parts};
use crate::auth::{parse_ttl, Authenticator};
use crate::config::Settings;
use crate::vault::keys::MasterKey;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Single issuance, batch issuance and resolve against the pseudonym API.
    Pseudonyms(PseudonymArgs),
    /// The event spine: lander/raw-insert ratio, freshness at a fixed rate, funnel latency over a large base table.
    Lander(self::lander::LanderArgs),
    /// Subject access, erasure (with recompute and verification) and retention verify over a large base table.
    Dsr(self::dsr::DsrArgs),
    /// The ingest gateway: accepted events/s over loopback HTTP, latency at a fixed rate, end-to-end freshness.
    Gateway(self::gateway::GatewayArgs),
    /// The governed read path: cohort views (with suppression and audit) and drill-down latency, information loss.
    Serve(self::serve::ServeArgs),
    /// The detectors on a simulated cohort with ground truth: precision, recall, false alarms on a clean run.
    Signals(self::signals::SignalsArgs),
}

#[derive(clap::Args)]
pub struct PseudonymArgs {
    /// Base URL of a running server (same master key). Default: start one in this process.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent clients for single issuance and resolve.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration of the single-issuance and resolve phases.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Learners per batch call.
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
    /// Batch calls to make (sequentially).
    #[arg(long, default_value_t = 10)]
    batches: usize,
}

/// Latency summary of one phase.
pub struct Phase {
    pub name: String,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Phase {
    pub fn print(&self, unit: &str, per_request: u64) {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let rate = (self.ok * per_request) as f64 / self.elapsed.as_secs_f64();
        println!(
            "{:<18} ok={:<7} errors={:<4} elapsed={:>6.2}s throughput={:>9.0} {unit}/s  p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
            self.name,
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            rate,
            ms(0.50),
            ms(0.95),
            ms(0.99),
            self.hist.max() as f64 / 1000.0
        );
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Run `concurrency` clients for `duration`, each calling `call(client, task, i)`.
pub(super) async fn closed_loop<F, Fut>(name: &str, concurrency: usize, duration: Duration, call: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut h, mut ok, mut err, mut i) = (new_hist(), 0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if call(t, i).await { ok += 1 } else { err += 1 }
                let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                i += 1;
            }
            (h, ok, err)
        }));
    }
    let mut phase = Phase { name: name.into(), ok: 0, errors: 0, elapsed: Duration::ZERO, hist: new_hist() };
    for t in tasks {
        let (h, ok, err) = t.await.expect("bench task");
        phase.hist.add(h).expect("same bounds");
        phase.ok += ok;
        phase.errors += err;
    }
    phase.elapsed = started.elapsed();
    phase
}

/// `rate` calls per second for `duration`, each started on its schedule whatever the earlier
/// ones are doing (an open loop: what independent users do); a call's latency counts from its
/// scheduled start, so a stall is not hidden by calls not being made meanwhile.
pub(super) async fn open_loop<F, Fut>(name: &str, rate: f64, duration: Duration, call: F) -> Phase
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = Vec::new();
    let mut i = 0u64;
    loop {
        let at = started + period.mul_f64(i as f64);
        if at >= started + duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let fut = call(i);
        tasks.push(tokio::spawn(async move {
            let ok = fut.await;
            (ok, at.elapsed())
        }));
        i += 1;
    }
    let mut phase = Phase { name: name.into(), ok: 0, errors: 0, elapsed: Duration::ZERO, hist: new_hist() };
    for t in tasks {
        let (ok, took) = t.await.expect("bench task");
        let _ = phase.hist.record(took.as_micros().max(1) as u64);
        if ok { phase.ok += 1 } else { phase.errors += 1 }
    }
    phase.elapsed = started.elapsed();
    phase
}

/// A run of its own: a random id naming its topics (`{topic}-{id}`, `.dlq`), its consumer group
/// (`bench-{name}-{id}`) and its engine data path (returned, under the temporary directory).
fn own_run(settings: &mut Settings, topic: &str, name: &str) -> (String, std::path::PathBuf) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // Its own database (created by the migrations, dropped at the end): the claims and
    // intents of earlier runs do not make this one slower.
    let db = format!("lv_bench_{name}_{id}");
    for url in [&mut settings.database.url, &mut settings.database.admin_url] {
        if let Some(own) = crate::db::with_database(url.expose_secret(), &db) {
            *url = own.into();
        }
    }
    let data = std::env::temp_dir().join(format!("lv-bench-{name}-{id}"));
    settings.warehouse.url = format!("chdb://{}", data.display());
    settings.kafka.events_topic = format!("{topic}-{id}");
    settings.kafka.dlq_topic = format!("{topic}-{id}.dlq");
    settings.lander.consumer_group = format!("bench-{name}-{id}");
    (id, data)
}

/// Run `phases` on the embedded engine at `settings.warehouse.url`, opened for the run (one
/// process per data path), then closed and its data path `data` removed.
async fn on_engine<F>(
    settings: &Settings,
    data: &std::path::Path,
    phases: impl FnOnce(crate::warehouse::Warehouse) -> F,
) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let wh = crate::warehouse::Warehouse::open(settings)?;
    let result = phases(wh.clone()).await;
    wh.close();
    let _ = std::fs::remove_dir_all(data);
    drop_own_database(settings).await;
    result
}

/// Drop the run's own database ([`own_run`]).
async fn drop_own_database(settings: &Settings) {
    if let Err(e) = crate::db::drop_database(settings.database.admin_url.expose_secret()).await {
        eprintln!("cannot drop the run's database: {e}");
    }
}

pub async fn run(settings: Settings, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        BenchCommand::Pseudonyms(a) => a,
        BenchCommand::Lander(a) => return self::lander::run(settings, a).await,
        BenchCommand::Dsr(a) => return self::dsr::run(settings, a).await,
        BenchCommand::Gateway(a) => return self::gateway::run(settings, a).await,
        BenchCommand::Serve(a) => return self::serve::run(settings, a).await,
        BenchCommand::Signals(a) => return self::signals::run(settings, a).await,
    };
    let duration = parse_ttl(&args.duration).context("--duration like 10s")?;
    let master = MasterKey::load(&settings)?;
    let auth = Authenticator::from_settings(&settings, &master)?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let inst = format!("bench-{run_id}");
    let lms = auth.mint("bench-lms", &["lms".into()], std::slice::from_ref(&inst), Duration::from_secs(3600))?;
    let dpo = auth.mint("bench-dpo", &["dpo".into()], std::slice::from_ref(&inst), Duration::from_secs(3600))?;

    let (base, _server) = match &args.url {
        Some(u) => (u.trim_end_matches('/').to_owned(), None),
        None => {
            let local = Settings { listen: "127.0.0.1:0".into(), ..settings.clone() };
            let app = Application::build_with(local, Parts::api_only()).await?;
            let addr = app.addr().context("the API is bound")?;
            (format!("http://{addr}"), Some(tokio::spawn(app.run_until(std::future::pending()))))
        }
    };
    println!("learnvault bench pseudonyms  target={base} institution={inst} concurrency={} duration={:?}", args.concurrency, duration);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;

    // 1. Single issuance: every call creates a new learner.
    let (c, b, t) = (client.clone(), base.clone(), lms.clone());
    let inst2 = inst.clone();
    let issued = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let issued2 = issued.clone();
    let single = closed_loop("single issuance", args.concurrency, duration, move |task, i| {
        let (c, b, t, inst, issued) = (c.clone(), b.clone(), t.clone(), inst2.clone(), issued2.clone());
        async move {
            let body = json!({"institution": inst, "external_id": format!("s-{task}-{i}"), "identity": {"name": format!("Learner {task}-{i}"), "email": format!("l{task}.{i}@example.edu")}});
            match c.post(format!("{b}/v1/pseudonyms")).bearer_auth(&t).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    if i % 16 == 0 {
                        if let Ok(v) = r.json::<Value>().await {
                            issued.lock().unwrap().push(v["pseudonym"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    single.print("req", 1);

    // 2. Batch issuance.
    let mut bh = new_hist();
    let (mut ok, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    for n in 0..args.batches {
        let items: Vec<Value> = (0..args.batch_size)
            .map(|i| json!({"institution": inst, "external_id": format!("b-{n}-{i}"), "identity": {"name": format!("Batch {n}-{i}"), "email": format!("b{n}.{i}@example.edu")}}))
            .collect();
        let body = serde_json::to_vec(&json!({"items": items}))?;
        let t0 = Instant::now();
        let r = client
            .post(format!("{base}/v1/pseudonyms/batch"))
            .bearer_auth(&lms)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await?;
                ok += 1;
                anyhow::ensure!(v["created"].as_u64() == Some(args.batch_size as u64), "batch did not create every learner: {}", v["created"]);
            }
            Ok(r) => {
                errors += 1;
                eprintln!("batch failed: {} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Err(e) => {
                errors += 1;
                eprintln!("batch failed: {e}");
            }
        }
        let _ = bh.record(t0.elapsed().as_micros().max(1) as u64);
    }
    let batch = Phase { name: "batch issuance".into(), ok, errors, elapsed: started.elapsed(), hist: bh };
    batch.print("pseudonyms", args.batch_size as u64);

    // 3. Resolve (DPO, declared purpose), over the pseudonyms issued in phase 1.
    let targets: Arc<Vec<String>> = Arc::new(issued.lock().unwrap().clone());
    anyhow::ensure!(!targets.is_empty(), "no pseudonyms were issued; cannot bench resolve");
    let (c, b) = (client.clone(), base.clone());
    let resolve = closed_loop("resolve", args.concurrency, duration, move |task, i| {
        let (c, b, t, targets) = (c.clone(), b.clone(), dpo.clone(), targets.clone());
        async move {
            let p = &targets[(task * 7919 + i as usize) % targets.len()];
            let body = json!({"purpose": "learner_support", "justification": "benchmark"});
            matches!(c.post(format!("{b}/v1/pseudonyms/{p}/resolve")).bearer_auth(&t).json(&body).send().await, Ok(r) if r.status().is_success())
        }
    })
    .await;
    resolve.print("req", 1);
    Ok(ExitCode::SUCCESS)
}
