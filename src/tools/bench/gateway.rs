//! `learnvault bench gateway`: the ingest gateway over loopback HTTP (batches
//! of 500, pseudonymisation by external id and produce with acks=all
//! included): maximum accepted rate, request latency at a fixed rate, and end
//! to end (gateway -> Kafka -> lander -> rollups) freshness at that rate.
//! Figures, not assertions.

use anyhow::Context;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::app::{Application, Parts};
use crate::config::Settings;
use crate::tools::loadgen::{self, LoadStats, LoadgenArgs, Via};
use crate::warehouse::{migrate, Warehouse};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Rate of the latency and freshness phases (events/s).
    #[arg(long, default_value_t = 15_000)]
    rate: u64,
    /// Target of the throughput phase (events/s; set above what the machine can do).
    #[arg(long, default_value_t = 200_000)]
    max_rate: u64,
    /// Length of each phase.
    #[arg(long, default_value = "20s")]
    duration: String,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 20_000)]
    learners: usize,
    /// Skip the end-to-end phase (lander and engine in this process).
    #[arg(long)]
    no_lander: bool,
    /// Run the end-to-end phase twice, with idempotent ingest off and then on (fresh topics
    /// each), to show what deduplication costs in one run.
    #[arg(long)]
    dedup_compare: bool,
}

pub async fn run(mut settings: Settings, args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let (_, data) = super::own_run(&mut settings, "bench-gw", "gw");
    settings.listen = "127.0.0.1:0".into();
    let base = spawn_gateway(&settings).await?;
    println!("learnvault bench gateway  server={base}  batch={}  concurrency={}  learners={}", args.batch, args.concurrency, args.learners);

    let load = |rate: u64, seed: u64| LoadgenArgs {
        rate,
        learners: args.learners,
        duration: args.duration.clone(),
        via: Via::Http,
        url: base.clone(),
        batch: args.batch,
        concurrency: args.concurrency,
        seed,
        progress: false,
    };
    // Warm-up: the learners' pseudonyms are issued on first sight (issue-or-get).
    let warm = LoadgenArgs { duration: "5s".into(), ..load(args.rate, 1) };
    phase("warm-up (first sight: pseudonyms issued)", &settings, &warm).await?;
    phase("throughput (closed loop)", &settings, &load(args.max_rate, 1)).await?;
    phase("fixed rate", &settings, &load(args.rate, 1)).await?;

    if !args.no_lander {
        let runs: &[(Option<bool>, &str)] = if args.dedup_compare { &[(Some(false), "-off"), (Some(true), "-on")] } else { &[(None, "")] };
        // One engine for the process (the embedded engine is opened once).
        let wh = Warehouse::open(&settings)?;
        let r = async {
            migrate::run(&wh, &settings.warehouse.migrations_dir).await?;
            for (dedup, suffix) in runs {
                end_to_end(&settings, &wh, &args, *dedup, suffix, &load).await?;
            }
            anyhow::Ok(())
        }
        .await;
        wh.close();
        let _ = std::fs::remove_dir_all(&data);
        r?;
    }
    super::drop_own_database(&settings).await;
    Ok(ExitCode::SUCCESS)
}

/// An API process with the gateway only (as `serve` builds it), on 127.0.0.1:0 for the rest of
/// the run; its base URL.
async fn spawn_gateway(settings: &Settings) -> anyhow::Result<String> {
    let local = Settings { listen: "127.0.0.1:0".into(), ..settings.clone() };
    let app = Application::build_with(local, Parts { gateway: true, ..Parts::api_only() }).await?;
    let base = format!("http://{}", app.addr().context("the API is bound")?);
    tokio::spawn(app.run_until(std::future::pending()));
    Ok(base)
}

/// The end-to-end phase: fresh topics and a second gateway, the lander consuming from the
/// start (freshness is measured on a stream without the earlier phases' backlog); `dedup`
/// overrides `LEARNVAULT_INGEST_DEDUP` for both.
async fn end_to_end(
    settings: &Settings,
    wh: &Warehouse,
    args: &GatewayArgs,
    dedup: Option<bool>,
    suffix: &str,
    load: &dyn Fn(u64, u64) -> LoadgenArgs,
) -> anyhow::Result<()> {
    let mut e2e = settings.clone();
    e2e.kafka.events_topic = format!("{}-e2e{suffix}", settings.kafka.events_topic);
    e2e.kafka.dlq_topic = format!("{}-e2e{suffix}.dlq", settings.kafka.events_topic);
    e2e.lander.consumer_group = format!("{}-e2e{suffix}", settings.lander.consumer_group);
    if let Some(d) = dedup {
        e2e.dedup.enabled = d;
    }
    let base2 = spawn_gateway(&e2e).await?;
    async {
        let lander = crate::app::lander::build(&e2e, wh.clone()).await?;
        let stats = lander.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(lander.run(async move {
            let _ = rx.await;
        }));
        tokio::time::sleep(std::time::Duration::from_secs(8)).await; // the consumer joins its group
        let name = match dedup {
            Some(true) => "end to end (lander running, dedup on)",
            Some(false) => "end to end (lander running, dedup off)",
            None => "end to end (lander running)",
        };
        let accepted = phase(name, &e2e, &LoadgenArgs { url: base2.clone(), ..load(args.rate, 1) }).await?;
        let t = Instant::now();
        while stats.landed.load(Ordering::Relaxed) + stats.rejected.load(Ordering::Relaxed) < accepted && t.elapsed().as_secs() < 120 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let h = stats.freshness_ms.lock().expect("stats lock").clone();
        println!(
            "end-to-end at {}/s{}: landed {} of {} accepted, caught up {:.1}s after the load; freshness (gateway server_ts -> rows visible in the rollups, per batch, upper bound): p50={}ms p99={}ms max={}ms batches={}",
            args.rate,
            dedup.map_or(String::new(), |d| format!(" (dedup {})", if d { "on" } else { "off" })),
            stats.landed.load(Ordering::Relaxed),
            accepted,
            t.elapsed().as_secs_f64(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
        let _ = tx.send(());
        handle.await??;
        anyhow::Ok(())
    }
    .await
}

/// Run one load phase, print its figures, return the events accepted.
async fn phase(name: &str, settings: &Settings, args: &LoadgenArgs) -> anyhow::Result<u64> {
    let stats = Arc::new(LoadStats::default());
    let t = Instant::now();
    loadgen::generate(settings, args, stats.clone(), std::future::pending()).await?;
    print!("{name:<44} ");
    loadgen::report(args, &stats, t.elapsed());
    let accepted = stats.accepted.load(Ordering::Relaxed);
    println!("{:<44} accepted {:.0} events/s", "", accepted as f64 / t.elapsed().as_secs_f64());
    Ok(accepted)
}
