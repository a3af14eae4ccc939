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
        #[command(flatten)]
        who: PrincipalArgs,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// Who a development token or console session is for (`token mint`, `console login`).
#[derive(clap::Args)]
pub struct PrincipalArgs {
    /// Role (repeatable): lms, dpo, auditor, instructor, content_author, advisor, ... (policies/roles.yaml).
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Institution the principal may act in (repeatable; `*` for all).
    #[arg(long = "institution", required = true)]
    pub institutions: Vec<String>,
    /// Course a course-scoped role (instructor, content_author, advisor) may read (repeatable).
    #[arg(long = "course")]
    pub courses: Vec<String>,
}

impl PrincipalArgs {
    /// Every role is one the policies define.
    pub fn check_roles(&self, policies: &Policies) -> anyhow::Result<()> {
        if let Some(bad) = self.roles.iter().find(|r| !policies.is_role(r)) {
            anyhow::bail!("unknown role {bad:?} (see policies/roles.yaml)");
        }
        Ok(())
    }
}

pub fn run(settings: Settings, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Mint { sub, who, ttl } = cmd;
    if settings.is_production() || settings.auth.jwks_file.is_some() {
        anyhow::bail!("refusing to mint: a production key set is configured (tokens come from your identity provider)");
    }
    let ttl = parse_ttl(&ttl).context("--ttl must look like 90s, 15m, 1h or 7d (at most 366d)")?;
    let policies = Policies::load(&settings.policy_dir)?;
    who.check_roles(&policies)?;
    let master = MasterKey::load(&settings)?;
    let auth = Authenticator::from_settings(&settings, &master)?;
    println!("{}", auth.mint_scoped(&sub, &who.roles, &who.institutions, &who.courses, ttl)?);
    Ok(ExitCode::SUCCESS)
}
