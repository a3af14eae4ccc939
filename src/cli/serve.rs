use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::warehouse::{migrate, Warehouse};

/// The API, the subject-request worker, the retention purge and, unless
/// `LEARNVAULT_LANDER_ENABLED=false`, the lander, in one process (the embedded
/// engine allows one process per data path).
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    // Configuration (keys, policies, token verification) fails fast, before any database work.
    let state = crate::app::build_state(&settings).await?;
    crate::db::migrate(&settings).await.context("applying migrations")?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let warehouse = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&warehouse, &settings.clickhouse_migrations_dir).await?;
        let state = crate::app::with_warehouse(state, &settings, warehouse.clone())?;
        let state = crate::app::with_gateway(state, &settings).await?;
        tracing::info!(addr = %listener.local_addr()?, env = ?settings.env, lander = settings.lander_enabled,
            jobs = settings.jobs_enabled, "learnvault serving");
        let dsr = state.dsr.clone().expect("set by with_warehouse");
        let publish = publish_loop(state.serve.clone().expect("set by with_warehouse"), stop_rx.clone());
        let anchor = state.anchor.clone();
        let anchoring = crate::audit::anchor_loop(
            state.pool.clone(),
            state.anchor.clone(),
            Duration::from_secs(settings.audit_checkpoint_interval_secs.max(1)),
            stop_rx.clone(),
        );
        let signals = super::signals::serve_loop(state.signals.clone().expect("set by with_warehouse"), stop_rx.clone());
        let jobs = {
            let rx = stop_rx.clone();
            let enabled = settings.jobs_enabled;
            async move {
                if enabled {
                    tokio::join!(dsr.clone().work(rx.clone()), purge_loop(dsr, anchor, rx));
                }
            }
        };
        let sessions = crate::console::purge_loop(state.clone(), stop_rx.clone());
        let api = crate::app::serve(state, listener, stopped(stop_rx.clone()));
        let land = async {
            if settings.lander_enabled {
                super::land::supervise(&settings, warehouse.clone(), stop_rx.clone()).await?;
            }
            anyhow::Ok(())
        };
        let (a, l, (), (), (), (), ()) = tokio::join!(api, land, jobs, publish, anchoring, signals, sessions);
        a?;
        l?;
        anyhow::Ok(())
    }
    .await;
    warehouse.close();
    result.map(|_| ExitCode::SUCCESS)
}

/// Every `released.refresh_secs`: the released tables for BI tools.
async fn publish_loop(serve: std::sync::Arc<crate::serve::Serve>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = serve.config().policy.released;
    if cfg.refresh_secs == 0 {
        return;
    }
    loop {
        match serve.publish(cfg.engagement_minutes).await {
            Ok(p) => tracing::debug!(courses = p.courses, cells = p.cells, withheld = p.withheld, "released tables refreshed"),
            Err(e) => tracing::warn!(error = %e, "released tables not refreshed; retrying at the next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cfg.refresh_secs)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Hourly: delete finished request records and archives past their retention,
/// and audit rows past retention below a signed checkpoint.
async fn purge_loop(
    dsr: std::sync::Arc<crate::dsr::Dsr>,
    anchor: std::sync::Arc<crate::audit::checkpoint::Anchor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = crate::audit::prune(&dsr.pool, &anchor).await {
            tracing::warn!(error = %e, "audit retention prune failed; retrying next hour");
        }
        match crate::retention::purge(&dsr.pool, &dsr.retention, &dsr.archive_dir).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "retention purge"),
            Err(e) => tracing::warn!(error = %e, "retention purge failed; retrying next hour"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
