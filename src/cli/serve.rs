use anyhow::Context;
use std::process::ExitCode;

use crate::config::Settings;
use crate::warehouse::{migrate, Warehouse};

/// The API, and with `LEARNVAULT_LANDER_ENABLED=true` the lander, in one
/// process (the embedded engine allows one process per data path).
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    // Configuration (keys, policies, token verification) fails fast, before any database work.
    let state = crate::app::build_state(&settings).await?;
    crate::db::migrate(&settings).await.context("applying migrations")?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, env = ?settings.env, lander = settings.lander_enabled, "learnvault serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if !settings.lander_enabled {
        crate::app::serve(state, listener, stopped(stop_rx)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let warehouse = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&warehouse, &settings.clickhouse_migrations_dir).await?;
        let lander = super::land::build(&settings, warehouse.clone()).await?;
        let api = crate::app::serve(state, listener, stopped(stop_rx.clone()));
        let land = lander.run(stopped(stop_rx));
        let (a, l) = tokio::join!(api, land);
        a?;
        l?;
        anyhow::Ok(())
    }
    .await;
    warehouse.close();
    result.map(|_| ExitCode::SUCCESS)
}
