use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

use crate::auth::{parse_ttl, Authenticator};
use crate::config::Settings;
use crate::policy::Policies;
use crate::vault::keys::MasterKey;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a development (HS256) token. Refused when a production key set is configured.
    Mint {
        /// Subject (the actor recorded in the audit log).
        #[arg(long)]
        sub: String,
        /// Role (repeatable): lms, dpo, auditor, instructor, admin.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Institution the principal may act in (repeatable; `*` for all).
        #[arg(long = "institution", required = true)]
        institutions: Vec<String>,
        /// Course a course-scoped role (instructor, content_author, advisor) may read (repeatable).
        #[arg(long = "course")]
        courses: Vec<String>,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub fn run(settings: Settings, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Mint { sub, roles, institutions, courses, ttl } = cmd;
    if settings.is_production() || settings.jwks_file.is_some() {
        anyhow::bail!("refusing to mint: a production key set is configured (tokens come from your identity provider)");
    }
    let ttl = parse_ttl(&ttl).context("--ttl must look like 90s, 15m, 1h or 7d (at most 366d)")?;
    let policies = Policies::load(&settings.policy_dir)?;
    if let Some(bad) = roles.iter().find(|r| !policies.is_role(r)) {
        anyhow::bail!("unknown role {bad:?} (see policies/roles.yaml)");
    }
    let master = MasterKey::load(&settings)?;
    let auth = Authenticator::from_settings(&settings, &master)?;
    println!("{}", auth.mint_scoped(&sub, &roles, &institutions, &courses, ttl)?);
    Ok(ExitCode::SUCCESS)
}
