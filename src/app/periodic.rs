//! The periodic work of a `serve` process, each loop ending when `stop` turns true:
//! released tables, the detectors, and the hourly retention purge.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::signals::{Ran, Signals};

/// Every `released.refresh_secs`: the released tables for BI tools.
pub async fn publish_loop(serve: Arc<crate::serve::Serve>, mut stop: watch::Receiver<bool>) {
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
pub async fn purge_loop(dsr: Arc<crate::dsr::Dsr>, anchor: Arc<crate::audit::checkpoint::Anchor>, mut stop: watch::Receiver<bool>) {
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

/// Every `interval_secs` inside `serve`: evaluate today (and yesterday, whose
/// last events may have landed since), drain the runs, purge decided items past their TTL.
pub async fn signals_loop(sg: Arc<Signals>, mut stop: watch::Receiver<bool>) {
    let every = sg.config().policy.interval_secs;
    if every == 0 {
        return;
    }
    loop {
        let today = chrono::Utc::now().date_naive();
        let pass = async {
            sg.enqueue(today - chrono::Duration::days(1)).await?;
            sg.enqueue(today).await?;
            while !matches!(sg.try_run_one().await?, Ran::Empty) {}
            sg.purge().await
        };
        if let Err(e) = pass.await {
            tracing::warn!(error = %e, "signals pass failed; retrying at the next interval");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
