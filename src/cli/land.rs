use anyhow::Context;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::config::Settings;
use crate::lander::{Lander, LanderConfig};
use crate::policy::{Policies, ProtectedAttributes};
use crate::taxonomy::Taxonomy;
use crate::warehouse::{migrate, Warehouse};

/// Build a lander from settings (opens nothing but Kafka clients; the caller owns the warehouse).
pub async fn build(settings: &Settings, warehouse: Warehouse) -> anyhow::Result<Lander> {
    let taxonomy = Taxonomy::load(&settings.policy_dir.join("taxonomy"))?;
    let protected = ProtectedAttributes::load(&settings.policy_dir)?;
    let policies = Policies::load(&settings.policy_dir)?;
    let pool = crate::db::connect(settings)?;
    crate::topics::ensure(&settings.kafka_brokers, &crate::topics::specs(settings)?).await.context("creating the topics")?;
    Lander::new(LanderConfig::from_settings(settings), warehouse, pool, taxonomy, protected, policies.consent_default("analytics"))
        .await
        .context("starting the lander")
}

/// Run the lander until `stop` turns true, starting a new one after a failure (PostgreSQL or
/// the broker away, the warehouse refusing for longer than the lander's own retries, the group
/// membership lost) with a backoff of 1 s doubling to 30 s. A restart is safe by construction: the
/// new lander resumes from the committed offsets and replays a pending intent with its
/// deduplication token. Policy files are read once, before the first start: an invalid one fails.
pub async fn supervise(settings: &Settings, warehouse: Warehouse, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    Taxonomy::load(&settings.policy_dir.join("taxonomy"))?;
    ProtectedAttributes::load(&settings.policy_dir)?;
    Policies::load(&settings.policy_dir)?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let stopped = {
            let mut rx = stop.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let outcome = match build(settings, warehouse.clone()).await {
            Ok(lander) => {
                tracing::info!(topic = %settings.events_topic, group = %settings.consumer_group, "lander running");
                lander.run(stopped).await.map_err(anyhow::Error::from)
            }
            Err(e) => Err(e),
        };
        if *stop.borrow() {
            return outcome;
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "the lander stopped; starting a new one");
                metrics::counter!(LANDER_RESTARTS).increment(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Lander restarts by the supervisor (a rising count means an outage it is riding out).
pub const LANDER_RESTARTS: &str = "learnvault_lander_restarts_total";

/// `learnvault land`: run the lander alone until SIGINT/SIGTERM (drains and commits), riding
/// out outages of PostgreSQL, the broker and the warehouse ([`supervise`]).
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    crate::db::migrate(&settings).await.context("applying postgresql migrations")?;
    let warehouse = Warehouse::open(&settings)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let result = async {
        migrate::run(&warehouse, &settings.clickhouse_migrations_dir).await?;
        supervise(&settings, warehouse.clone(), stop_rx).await
    }
    .await;
    warehouse.close();
    result.map(|_| ExitCode::SUCCESS)
}
