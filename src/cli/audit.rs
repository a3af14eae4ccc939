use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain. Exit 0 when intact; 2 naming the first broken sequence number.
    Verify {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { json } = cmd;
    let pool = crate::db::connect(&settings)?;
    let v = crate::audit::verify(&pool).await?;
    pool.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.intact {
        println!("audit chain intact: {} entries, head seq {}", v.entries, v.head_seq);
    } else {
        println!(
            "AUDIT CHAIN BROKEN at seq {} ({}); {} entries before it verify",
            v.first_broken_seq.unwrap_or_default(),
            v.reason.as_deref().unwrap_or("unknown"),
            v.entries
        );
    }
    Ok(if v.intact { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
