use std::process::ExitCode;

use crate::app::Application;
use crate::config::Settings;

/// The API, the ingest gateway, the subject-request worker, the retention purge, the periodic
/// detectors and, unless `LEARNVAULT_LANDER_ENABLED=false`, the lander, in one process (the
/// embedded engine allows one process per data path), until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    Application::build(settings).await?.run_until(crate::app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
