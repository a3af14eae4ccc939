//! `learnvault bench gateway`: the ingest gateway over loopback HTTP (batches
//! of 500, pseudonymisation by external id and produce with acks=all
//! included): maximum accepted rate, request latency at a fixed rate, and end
//! to end (gateway -> Kafka -> lander -> rollups) freshness at that rate.
//! Figures, not assertions.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::loadgen::{self, LoadStats, LoadgenArgs, Via};
use crate::config::Settings;
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
}

pub async fn run(mut settings: Settings, args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let db = format!("learnvault_bench_gw_{id}");
    settings.database_url = format!("postgres://learnvault_app@127.0.0.1:5432/{db}").into();
    settings.admin_database_url = format!("postgres://postgres@127.0.0.1:5432/{db}").into();
    settings.events_topic = format!("bench-gw-{id}");
    settings.dlq_topic = format!("bench-gw-{id}.dlq");
    settings.consumer_group = format!("bench-gw-{id}");
    let data = std::env::temp_dir().join(format!("lv-bench-gw-{id}"));
    settings.clickhouse_url = format!("chdb://{}", data.display());
    settings.listen = "127.0.0.1:0".into();
    crate::db::migrate(&settings).await?;
    let state = crate::app::build_state(&settings).await?;
    let state = crate::app::with_gateway(state, &settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crate::app::serve(state, listener, std::future::pending()));
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
    let produced = std::sync::atomic::AtomicU64::new(0);
    produced.fetch_add(phase("warm-up (first sight: pseudonyms issued)", &settings, &warm).await?, Ordering::Relaxed);
    produced.fetch_add(phase("throughput (closed loop)", &settings, &load(args.max_rate, 1)).await?, Ordering::Relaxed);
    produced.fetch_add(phase("fixed rate", &settings, &load(args.rate, 1)).await?, Ordering::Relaxed);

    if !args.no_lander {
        let wh = Warehouse::open(&settings)?;
        let r = async {
            migrate::run(&wh, &settings.clickhouse_migrations_dir).await?;
            // Land what the earlier phases produced, then measure at the fixed rate.
            let lander = super::land::build(&settings, wh.clone()).await?;
            let stats = lander.stats.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(lander.run(async move {
                let _ = rx.await;
            }));
            let t = Instant::now();
            // The earlier phases' events: landed (or refused) before measuring freshness.
            while stats.landed.load(Ordering::Relaxed) + stats.rejected.load(Ordering::Relaxed) < produced.load(Ordering::Relaxed)
                && t.elapsed() < std::time::Duration::from_secs(1800)
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            println!("backlog landed: {} rows in {:.1}s", stats.landed.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
            stats.freshness_ms.lock().expect("stats lock").reset();
            phase("end to end (lander running)", &settings, &load(args.rate, 1)).await?;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let h = stats.freshness_ms.lock().expect("stats lock").clone();
            println!(
                "end-to-end freshness at {}/s (gateway server_ts -> rows visible in the rollups, per batch, upper bound): p50={}ms p99={}ms max={}ms batches={}",
                args.rate,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                h.len()
            );
            let _ = tx.send(());
            handle.await??;
            anyhow::Ok(())
        }
        .await;
        wh.close();
        let _ = std::fs::remove_dir_all(&data);
        r?;
    }
    Ok(ExitCode::SUCCESS)
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
