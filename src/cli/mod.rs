//! Command line: one module per subcommand. `anyhow` lives only here.

mod audit;
pub mod bench;
mod demo;
mod serve;
mod token;

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
    /// Create the database if needed and apply PostgreSQL migrations.
    Migrate,
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
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Walk through the vault end to end on the local PostgreSQL, printing what happens.
    Demo(demo::DemoArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    crate::telemetry::init(settings.log_format);
    match cli.command {
        Command::Serve => serve::run(settings).await,
        Command::Migrate => {
            crate::db::migrate(&settings).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => token::run(settings, command),
        Command::Audit { command } => audit::run(settings, command).await,
        Command::Bench { command } => bench::run(settings, command).await,
        Command::Demo(args) => demo::run(settings, args).await,
    }
}
