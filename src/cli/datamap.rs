use clap::Subcommand;
use secrecy::ExposeSecret;
use std::process::ExitCode;

use crate::config::Settings;
use crate::datamap::{compare, live_clickhouse, live_postgres, DataMap};
use crate::warehouse::Warehouse;

#[derive(Subcommand)]
pub enum DataMapCommand {
    /// Compare policies/data-map.yaml with the live ClickHouse and PostgreSQL schemas.
    Check,
}

pub async fn run(settings: Settings, DataMapCommand::Check: DataMapCommand) -> anyhow::Result<ExitCode> {
    let map = DataMap::load(&settings.policy_dir.join("data-map.yaml"))?;
    // The owner connection: information_schema shows only what the role may read.
    let pool = sqlx::PgPool::connect(settings.database.admin_url.expose_secret()).await?;
    let pg = live_postgres(&pool).await;
    pool.close().await;
    let wh = Warehouse::open(&settings)?;
    let ch = live_clickhouse(&wh).await;
    wh.close();
    let problems = compare(&map, &ch?, &pg?);
    let ok = format!("data map ok: {} stores mapped, every live object holding a learner key is mapped", map.stores.len());
    Ok(super::verdict(&problems, &ok, None))
}
