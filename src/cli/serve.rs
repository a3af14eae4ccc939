use anyhow::Context;
use std::process::ExitCode;

use crate::config::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    // Configuration (keys, policies, token verification) fails fast, before any database work.
    let state = crate::app::build_state(&settings).await?;
    crate::db::migrate(&settings).await.context("applying migrations")?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, env = ?settings.env, "learnvault serving");
    crate::app::serve(state, listener, crate::app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
