//! `learnvault dlq replay --reason R --since T`: dead letters re-injected after a fix,
//! through the normal gate, idempotently, audited (see [`crate::dlq`]).

use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::dlq::{replay, Replay};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Produce the dead letters of one reason since a time back to the events topic, for the
    /// lander to gate again (after a fix: consent recorded, the taxonomy or a table corrected).
    /// Only whole events named by pseudonym, with an event id and nothing redacted, are
    /// replayable; the others are counted by why. Replaying twice lands each event once.
    /// Prints a JSON report; audited as `dlq.replay`.
    Replay {
        /// The dead-letter reason code (`no_consent`, `unknown_event_type`, `warehouse_rejected`, ...).
        #[arg(long)]
        reason: String,
        /// Dead letters that failed at or after this time: RFC 3339 (`2026-12-03T09:00:00Z`) or a date (`2026-12-03`, UTC).
        #[arg(long, value_parser = parse_since)]
        since: DateTime<Utc>,
        /// Who replays, for the audit row (default: `$USER`).
        #[arg(long)]
        actor: Option<String>,
        /// Count what would be replayed; produce and audit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| "expected an RFC 3339 time (2026-12-03T09:00:00Z) or a date (2026-12-03)".into())
}

pub async fn run(settings: Settings, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let DlqCommand::Replay { reason, since, actor, dry_run } = cmd;
    let actor = actor.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "operator".into());
    let report = replay(&settings, &Replay { reason, since, dry_run, actor: format!("cli:{actor}") }).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_a_time_or_a_date() {
        assert_eq!(super::parse_since("2026-12-03").unwrap().to_rfc3339(), "2026-12-03T00:00:00+00:00");
        assert_eq!(super::parse_since("2026-12-03T10:00:00+01:00").unwrap().to_rfc3339(), "2026-12-03T09:00:00+00:00");
        assert!(super::parse_since("yesterday").is_err());
    }
}
