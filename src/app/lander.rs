//! The lander's wiring: built from settings and the policy files, supervised
//! (restarted with a backoff after a failure) inside `serve` and `land`.

use anyhow::Context;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::config::Settings;
use crate::lander::{Lander, LanderConfig};
use crate::policy::{Policies, ProtectedAttributes};
use crate::taxonomy::Taxonomy;
use crate::warehouse::Warehouse;

/// What a lander is made from that comes from the policy files, read once (a supervised
/// lander is rebuilt from it after each failure).
pub struct LanderPolicy {
    taxonomy: Taxonomy,
    protected: ProtectedAttributes,
    analytics_default: bool,
    topics: Vec<crate::topics::TopicSpec>,
}

impl LanderPolicy {
    pub fn load(settings: &Settings) -> anyhow::Result<LanderPolicy> {
        Ok(LanderPolicy {
            taxonomy: Taxonomy::load(&settings.policy_dir.join("taxonomy"))?,
            protected: ProtectedAttributes::load(&settings.policy_dir)?,
            analytics_default: Policies::load(&settings.policy_dir)?.consent_default("analytics"),
            topics: crate::topics::specs(settings)?,
        })
    }
}

/// Build a lander from settings (opens nothing but Kafka clients; the caller owns the warehouse).
pub async fn build(settings: &Settings, warehouse: Warehouse) -> anyhow::Result<Lander> {
    build_with(settings, &LanderPolicy::load(settings)?, warehouse).await
}

/// Build a lander from settings and policy read before: create the topics if missing, join the group.
pub async fn build_with(settings: &Settings, policy: &LanderPolicy, warehouse: Warehouse) -> anyhow::Result<Lander> {
    let pool = crate::db::connect(settings)?;
    crate::topics::ensure(&settings.kafka.brokers, &policy.topics).await.context("creating the topics")?;
    Lander::new(
        LanderConfig::from_settings(settings),
        warehouse,
        pool,
        policy.taxonomy.clone(),
        policy.protected.clone(),
        policy.analytics_default,
    )
    .await
    .context("starting the lander")
}

/// Run the lander until `stop` turns true, starting a new one after a failure (PostgreSQL or
/// the broker away, the warehouse refusing for longer than the lander's own retries, the group
/// membership lost) with a backoff of 1 s doubling to 30 s. A restart is safe by construction: the
/// new lander resumes from the committed offsets and replays a pending intent with its
/// deduplication token. Policy files are read once, before the first start: an invalid one fails.
pub async fn supervise(settings: &Settings, warehouse: Warehouse, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let policy = LanderPolicy::load(settings)?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let stopped = {
            let mut rx = stop.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let outcome = match build_with(settings, &policy, warehouse.clone()).await {
            Ok(lander) => {
                tracing::info!(topic = %settings.kafka.events_topic, group = %settings.lander.consumer_group, "lander running");
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
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "the lander stopped; starting a new one"
                );
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
