//! `learnvault disclosure audit`: every cohort view of every course (or one),
//! released from the live rollups exactly as the API releases it, then the
//! attacker's audit run on the JSON an API client would receive.

use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

use crate::config::Settings;
use crate::serve::{audit_response, Config, Ident, Serve, View};
use crate::warehouse::Warehouse;

#[derive(Subcommand)]
pub enum DisclosureCommand {
    /// Release every view from the live rollups and audit each release (exit 1 on a violation).
    Audit {
        /// Only this course.
        #[arg(long)]
        course: Option<String>,
        /// First day (YYYY-MM-DD; default: 27 days before `--to`).
        #[arg(long)]
        from: Option<String>,
        /// Last day (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Engagement window in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
    },
}

pub async fn run(settings: Settings, cmd: DisclosureCommand) -> anyhow::Result<ExitCode> {
    let DisclosureCommand::Audit { course, from, to, minutes } = cmd;
    let wh = Warehouse::open(&settings)?;
    let result = audit_all(&settings, &wh, course, from, to, minutes).await;
    wh.close();
    result
}

async fn audit_all(settings: &Settings, wh: &Warehouse, only: Option<String>, from: Option<String>, to: Option<String>, minutes: u32) -> anyhow::Result<ExitCode> {
    let sv = Serve::new(wh.clone(), Config::load(&settings.policy_dir).context("loading policies/disclosure.yaml")?)?;
    let range = sv.range(from.as_deref(), to.as_deref())?;
    let mut failed = 0;
    let mut releases = 0;
    let (mut primary, mut complementary, mut cells) = (0usize, 0usize, 0usize);
    for (course, institutions) in sv.courses().await? {
        if only.as_ref().is_some_and(|o| *o != course) {
            continue;
        }
        let c = Ident::parse("course_id", &course)?;
        let t = sv.thresholds(&institutions);
        let mut responses = vec![
            (View::Funnel, "funnel".to_string(), serde_json::to_value(sv.funnel(&c, &range, &t).await?)?),
            (View::Engagement, "engagement".to_string(), serde_json::to_value(sv.engagement(&c, minutes, &t).await?)?),
            (View::TimeOnTask, "time-on-task".to_string(), serde_json::to_value(sv.time_on_task(&c, &range, &t).await?)?),
        ];
        for content in sv.contents(&c).await? {
            let id = Ident::parse("content_id", &content)?;
            responses.push((View::Replays, format!("replays {content}"), serde_json::to_value(sv.replays(&c, &id, &range, &t).await?)?));
        }
        for (view, name, json) in responses {
            releases += 1;
            let d = &json["disclosure"];
            cells += d["cells"].as_u64().unwrap_or(0) as usize;
            primary += d["primary"].as_u64().unwrap_or(0) as usize;
            complementary += d["complementary"].as_u64().unwrap_or(0) as usize;
            for (layer, report) in audit_response(view, &json)? {
                let min = report.min_width();
                let status = if report.ok() { "ok" } else { "FAIL" };
                println!(
                    "{status:4} {course} {name} [{layer}]: {} withheld, narrowest interval {}, protection width {}",
                    report.intervals.len(),
                    if min.is_finite() { format!("{min}") } else { "unbounded".into() },
                    report.protection_width
                );
                for v in &report.violations {
                    failed += 1;
                    println!("     {} {}: [{}, {:?}]", v.reason, v.label, v.lo, v.hi);
                }
            }
        }
    }
    println!(
        "{releases} releases, {cells} cells: {primary} withheld by primary suppression, {complementary} complementary (information loss {:.1}% of cells), {failed} violations",
        if cells > 0 { 100.0 * complementary as f64 / cells as f64 } else { 0.0 }
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
