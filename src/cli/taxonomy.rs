use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Settings;
use crate::taxonomy::{check, Taxonomy};

#[derive(Subcommand)]
pub enum TaxonomyCommand {
    /// Fail when a newer taxonomy version removes, renames or retypes a field
    /// (or drops an event type) that a view, rollup or API reads.
    Check {
        /// Source tree whose SQL strings are readers too.
        #[arg(long, default_value = "src")]
        src: PathBuf,
    },
}

pub fn run(settings: Settings, cmd: TaxonomyCommand) -> anyhow::Result<ExitCode> {
    let TaxonomyCommand::Check { src } = cmd;
    let tax = Taxonomy::load(&settings.policy_dir.join("taxonomy"))?;
    let readers = check::readers(&settings.warehouse.migrations_dir, &src).map_err(anyhow::Error::msg)?;
    let problems = check::check(&tax, &readers);
    let versions: Vec<&str> = tax.versions.keys().map(String::as_str).collect();
    let ok = format!("taxonomy ok: versions {versions:?}, {} readers of the base table checked", readers.len());
    let advice = format!("{} breaking change(s); add a new field instead, or migrate the readers first", problems.len());
    Ok(super::verdict(&problems, &ok, Some(&advice)))
}
