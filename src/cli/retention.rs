use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::retention::{verify, Policy};
use crate::warehouse::Warehouse;

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Check every ClickHouse table's TTL against policies/retention.yaml and look for rows
    /// older than the policy plus its grace. Prints JSON; exit 1 on any violation.
    Verify,
}

pub async fn run(settings: Settings, cmd: RetentionCommand) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Verify = cmd;
    let policy = Policy::load(&settings.policy_dir.join("retention.yaml"))?;
    let wh = Warehouse::open(&settings)?;
    let report = verify(&wh, &policy).await;
    wh.close();
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
