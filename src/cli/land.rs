use std::process::ExitCode;

use crate::app::{Application, Parts};
use crate::config::Settings;

/// `learnvault land`: run the lander alone until SIGINT/SIGTERM (drains and commits), riding
/// out outages of PostgreSQL, the broker and the warehouse (`app::lander::supervise`).
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    Application::build_with(settings, Parts::land()).await?.run_until(crate::app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
