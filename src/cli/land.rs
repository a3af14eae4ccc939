use anyhow::Context;
use std::process::ExitCode;

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
    Lander::new(LanderConfig::from_settings(settings), warehouse, pool, taxonomy, protected, policies.consent_default("analytics"))
        .await
        .context("starting the lander")
}

/// `learnvault land`: run the lander alone until SIGINT/SIGTERM (drains and commits).
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    crate::db::migrate(&settings).await.context("applying postgresql migrations")?;
    let warehouse = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&warehouse, &settings.clickhouse_migrations_dir).await?;
        let lander = build(&settings, warehouse.clone()).await?;
        tracing::info!(topic = %settings.events_topic, group = %settings.consumer_group, "lander running");
        lander.run(crate::app::shutdown_signal()).await?;
        anyhow::Ok(())
    }
    .await;
    warehouse.close();
    result.map(|_| ExitCode::SUCCESS)
}
