use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::retention::{verify, verify_postgres, verify_topics, Policy};
use crate::warehouse::Warehouse;

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Check every ClickHouse table's TTL against policies/retention.yaml, look for rows older
    /// than the policy plus its grace (ClickHouse and PostgreSQL) and for expired subject-access
    /// archives, and read each Kafka topic's live retention.ms, segment.ms and cleanup.policy
    /// through the admin API. Prints JSON; exit 1 on any violation.
    Verify,
}

pub async fn run(settings: Settings, cmd: RetentionCommand) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Verify = cmd;
    let policy = Policy::load(&settings.policy_dir.join("retention.yaml"))?;
    let pool = crate::db::connect(&settings)?;
    let wh = Warehouse::open(&settings)?;
    let report = async {
        let mut r = verify(&wh, &policy).await?;
        verify_postgres(&mut r, &pool, &policy, &settings.archive_path()).await?;
        verify_topics(&mut r, &settings.kafka.brokers, &crate::topics::specs_with(&settings, &policy)).await;
        anyhow::Ok(r)
    }
    .await;
    wh.close();
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
