use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::policy::lineage::{check, Catalog};
use crate::policy::ProtectedAttributes;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Fail when a recommendation feature view's lineage reaches a protected attribute.
    CheckFeatures,
}

pub fn run(settings: Settings, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::CheckFeatures = cmd;
    let protected = ProtectedAttributes::load(&settings.policy_dir)?;
    let catalog = Catalog::from_migrations(&settings.warehouse.migrations_dir).map_err(anyhow::Error::msg)?;
    let (features, found) = check(&catalog, &protected);
    let ok = format!("features ok: {} feature view(s) {features:?}, lineage free of protected attributes", features.len());
    Ok(super::verdict(&found, &ok, None))
}
