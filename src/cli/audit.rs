use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and check it against the signed checkpoints
    /// (`LEARNVAULT_AUDIT_CHECKPOINT_DIR`). Exit 0 when intact (a new checkpoint
    /// is signed); 2 naming the first broken sequence number and what is missing.
    Verify {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { json } = cmd;
    let master = crate::vault::keys::MasterKey::load(&settings)?;
    let anchor = crate::audit::checkpoint::Anchor::derive(&master, settings.audit_checkpoint_path());
    let pool = crate::db::connect(&settings)?;
    let v = crate::audit::verify_anchored(&pool, &anchor).await?;
    pool.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.intact {
        println!(
            "audit chain intact: {} entries, head seq {}{}",
            v.entries,
            v.head_seq,
            v.checkpoint.as_ref().map(|c| format!(", checkpoint signed at seq {}", c.seq)).unwrap_or_default()
        );
    } else {
        println!(
            "AUDIT CHAIN BROKEN at seq {} ({}); {} entries before it verify{}",
            v.first_broken_seq.unwrap_or_default(),
            v.reason.as_deref().unwrap_or("unknown"),
            v.entries,
            v.detail.as_deref().map(|d| format!("; {d}")).unwrap_or_default()
        );
    }
    Ok(if v.intact { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
