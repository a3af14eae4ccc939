//! `learnvault console login`: a one-time sign-in link for the console
//! (development sign-in; refused when a production key set is configured).

use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

use crate::auth::session::SessionClaims;
use crate::config::Settings;
use super::token::PrincipalArgs;
use crate::policy::Policies;

#[derive(Subcommand)]
pub enum ConsoleCommand {
    /// Print a one-time sign-in link (valid `LEARNVAULT_CONSOLE_CODE_TTL_SECS`, usable once).
    Login {
        #[command(flatten)]
        who: PrincipalArgs,
        /// Subject recorded in the audit log (default: `console-<first role>`).
        #[arg(long)]
        sub: Option<String>,
    },
}

/// Check the claims against the policies (known roles, course-scoped roles have courses).
pub fn claims(policies: &Policies, sub: Option<String>, who: PrincipalArgs) -> anyhow::Result<SessionClaims> {
    who.check_roles(policies)?;
    let PrincipalArgs { roles, institutions, courses } = who;
    if courses.is_empty() && roles.iter().any(|r| policies.is_course_scoped(r)) {
        anyhow::bail!("a course-scoped role needs at least one --course");
    }
    let sub = sub.unwrap_or_else(|| format!("console-{}", roles[0]));
    Ok(SessionClaims { sub, roles, institutions, courses })
}

pub async fn run(settings: Settings, cmd: ConsoleCommand) -> anyhow::Result<ExitCode> {
    let ConsoleCommand::Login { who, sub } = cmd;
    if settings.is_production() || settings.auth.jwks_file.is_some() {
        anyhow::bail!("refusing: a production key set is configured (sign in through your identity provider)");
    }
    let policies = Policies::load(&settings.policy_dir)?;
    let claims = claims(&policies, sub, who)?;
    let config = crate::console::Config::from_settings(&settings)?;
    let pool = crate::db::connect(&settings).context("connecting to PostgreSQL as the runtime role")?;
    let link =
        crate::console::login_link(&pool, &config, &claims).await.context("storing the sign-in code (run `learnvault migrate` first?)")?;
    println!("{link}");
    eprintln!("(one use, valid {} s; opens a session as {} with roles {})", config.code_ttl.as_secs(), claims.sub, claims.roles.join(", "));
    Ok(ExitCode::SUCCESS)
}
