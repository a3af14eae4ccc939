//! `learnvault signals run --from --to`: evaluate every detector for each day
//! of a range (durable runs, drained here) and print what was found per kind.
//! With the embedded engine, run it while `serve` is stopped (one process per
//! data path); against a ClickHouse server, any time.

use anyhow::Context;
use chrono::NaiveDate;
use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::signals::{Ran, Signals};
use crate::warehouse::{migrate, Warehouse};

#[derive(Subcommand)]
pub enum SignalsCommand {
    /// Evaluate the detectors for every day of `--from..=--to` (UTC dates) and record new review items.
    Run {
        #[arg(long)]
        from: NaiveDate,
        #[arg(long)]
        to: NaiveDate,
    },
}

/// The signals context over `warehouse` (as `serve` builds it).
pub fn build(settings: &Settings, warehouse: Warehouse) -> anyhow::Result<Signals> {
    let dir = &settings.policy_dir;
    let config = crate::signals::Config::load(dir).context("loading the signals policy")?;
    let disclosure = crate::serve::Config::load(dir).context("loading the disclosure policy")?;
    let pool = crate::db::connect(settings)?;
    Ok(Signals::new(warehouse, pool, config, disclosure)?)
}

pub async fn run(settings: Settings, cmd: SignalsCommand) -> anyhow::Result<ExitCode> {
    let SignalsCommand::Run { from, to } = cmd;
    crate::db::migrate(&settings).await.context("applying migrations")?;
    let wh = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&wh, &settings.warehouse.migrations_dir).await?;
        let sg = build(&settings, wh.clone())?;
        let ran = sg.run_range(from, to).await?;
        let mut failed = 0;
        for r in &ran {
            match r {
                Ran::Ran { day, findings, new_items } => {
                    let f: Vec<String> = findings.iter().map(|(k, n)| format!("{}={n}", k.as_str())).collect();
                    println!("{day}  {}  new_items={new_items}", f.join(" "));
                }
                Ran::Failed { day, error } => {
                    failed += 1;
                    println!("{day}  FAILED: {error}");
                }
                Ran::Empty => {}
            }
        }
        anyhow::Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
    .await;
    wh.close();
    result
}
