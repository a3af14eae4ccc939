//! Command line: one module per subcommand (`bench`, `loadgen` and `demo` call
//! into `tools`). `anyhow` lives here, in `app` (the wiring the subcommands
//! share) and in `tools`; the contexts return their own error
//! enums (except `Gateway::new`, which still returns `anyhow::Result`).

mod audit;
mod console;
mod datamap;
mod disclosure;
mod dlq;
mod dsr;
mod land;
mod policy;
mod retention;
mod serve;
mod signals;
mod taxonomy;
mod token;
mod warehouse;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use crate::config::Settings;

#[derive(Parser)]
#[command(name = "learnvault", version, about = "Identity vault, pseudonym API and tamper-evident audit log for learner telemetry")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run migrations, then serve the HTTP API until SIGINT/SIGTERM.
    Serve,
    /// Run the Kafka -> ClickHouse lander alone until SIGINT/SIGTERM.
    Land,
    /// Apply PostgreSQL migrations (creating the database if needed) and ClickHouse migrations.
    Migrate,
    /// The web console: one-time sign-in links.
    Console {
        #[command(subcommand)]
        command: console::ConsoleCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// The data map of every store holding learner data.
    Datamap {
        #[command(subcommand)]
        command: datamap::DataMapCommand,
    },
    /// Dead letters: replay a reason's dead letters after a fix.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Subject access and erasure requests, erasure certificates.
    Dsr {
        #[command(subcommand)]
        command: dsr::DsrCommand,
    },
    /// Disclosure control: audit every cohort view released from the live rollups.
    Disclosure {
        #[command(subcommand)]
        command: disclosure::DisclosureCommand,
    },
    /// Warehouse tools: the BI user's grants.
    Warehouse {
        #[command(subcommand)]
        command: warehouse::WarehouseCommand,
    },
    /// Policy checks for CI.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Retention proof: TTLs equal the policy, no row older than policy plus grace.
    Retention {
        #[command(subcommand)]
        command: retention::RetentionCommand,
    },
    /// Signals that inform humans: run the detectors over a date range.
    Signals {
        #[command(subcommand)]
        command: signals::SignalsCommand,
    },
    /// Event taxonomy tools.
    Taxonomy {
        #[command(subcommand)]
        command: taxonomy::TaxonomyCommand,
    },
    /// Send a simulated cohort at a fixed rate (through the gateway, as xAPI, or straight to Kafka).
    Loadgen(crate::tools::loadgen::LoadgenArgs),
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: crate::tools::bench::BenchCommand,
    },
    /// Walk through the vault end to end on the local PostgreSQL, printing what happens.
    Demo(crate::tools::demo::DemoArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    settings.validate()?;
    crate::telemetry::init(settings.log_format);
    match cli.command {
        Command::Serve => serve::run(settings).await,
        Command::Land => land::run(settings).await,
        Command::Migrate => {
            crate::db::migrate(&settings).await?;
            println!("postgresql migrations applied");
            let wh = crate::warehouse::Warehouse::open(&settings)?;
            let result = crate::warehouse::migrate::run(&wh, &settings.warehouse.migrations_dir).await;
            wh.close();
            println!("clickhouse migrations applied: {:?}", result?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Taxonomy { command } => taxonomy::run(settings, command),
        Command::Policy { command } => policy::run(settings, command),
        Command::Disclosure { command } => disclosure::run(settings, command).await,
        Command::Warehouse { command } => warehouse::run(command),
        Command::Retention { command } => retention::run(settings, command).await,
        Command::Datamap { command } => datamap::run(settings, command).await,
        Command::Dsr { command } => dsr::run(settings, command).await,
        Command::Dlq { command } => dlq::run(settings, command).await,
        Command::Signals { command } => signals::run(settings, command).await,
        Command::Token { command } => token::run(settings, command),
        Command::Console { command } => console::run(settings, command).await,
        Command::Audit { command } => audit::run(settings, command).await,
        Command::Bench { command } => crate::tools::bench::run(settings, command).await,
        Command::Loadgen(args) => crate::tools::loadgen::run(settings, args).await,
        Command::Demo(args) => crate::tools::demo::run(settings, args).await,
    }
}

/// A check's verdict: `ok` when it found no problem (exit 0); otherwise a `FAIL` line per
/// problem, then `advice` if any (exit 1).
fn verdict(problems: &[impl std::fmt::Display], ok: &str, advice: Option<&str>) -> ExitCode {
    if problems.is_empty() {
        println!("{ok}");
        return ExitCode::SUCCESS;
    }
    for p in problems {
        println!("FAIL {p}");
    }
    if let Some(advice) = advice {
        println!("{advice}");
    }
    ExitCode::from(1)
}
