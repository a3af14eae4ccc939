//! `learnvault bench signals`: the detectors on simulated cohorts with ground
//! truth (`signals::sim`). A planted run (disengaging learners, a defective
//! segment per course, colluding pairs, study partners as the trap) and a clean
//! run (nothing planted), both loaded straight into the base table of a
//! private embedded warehouse (the rollups fill as in production), then every
//! day after the first baseline evaluated with the production detectors.
//! Prints per detector precision, recall, the false-positive rate on the
//! clean run and the precision at the stated base rate. Figures, not assertions.

use chrono::{Duration, NaiveDate};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::config::Settings;
use crate::signals::sim::{Plan, Sim, Truth};
use crate::signals::{Data, Finding, Kind, Window};
use crate::warehouse::{migrate, Warehouse};

#[derive(clap::Args)]
pub struct SignalsArgs {
    /// Learners per run (planted and clean).
    #[arg(long, default_value_t = 5_000)]
    learners: usize,
    /// Weeks of activity per run.
    #[arg(long, default_value_t = 8)]
    weeks: u32,
    #[arg(long, default_value_t = 15)]
    seed: u64,
}

pub async fn run(mut settings: Settings, args: SignalsArgs) -> anyhow::Result<ExitCode> {
    let id = &Uuid::new_v4().simple().to_string()[..8];
    let data = std::env::temp_dir().join(format!("lv-bench-signals-{id}"));
    settings.warehouse.url = format!("chdb://{}", data.display());
    let wh = Warehouse::open(&settings)?;
    let result = phases(&settings, &wh, &args).await;
    wh.close();
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn load(wh: &Warehouse, plan: Plan) -> anyhow::Result<(Truth, u64)> {
    let mut sim = Sim::new(plan);
    let mut bytes = 0u64;
    while let Some(chunk) = sim.chunk(200) {
        bytes += chunk.len() as u64;
        wh.insert("events.learning_events", "JSONEachRow", Arc::new(chunk), &[]).await?;
    }
    Ok((sim.truth.clone(), bytes))
}

async fn phases(settings: &Settings, wh: &Warehouse, args: &SignalsArgs) -> anyhow::Result<ExitCode> {
    migrate::run(wh, &settings.warehouse.migrations_dir).await?;
    let config = crate::signals::Config::load(&settings.policy_dir)?;
    let days = args.weeks * 7;
    let start = chrono::Utc::now().date_naive() - Duration::days(days as i64);
    println!("learnvault bench signals  engine={}  learners={} per run  weeks={}  seed={}", wh.version().await?, args.learners, args.weeks, args.seed);
    let t = Instant::now();
    let planted = Plan::new(args.learners, days, start, args.seed, true, "p");
    let clean = Plan::new(args.learners, days, start, args.seed + 1, false, "c");
    let (pt, pb) = load(wh, planted.clone()).await?;
    let (_, cb) = load(wh, clean.clone()).await?;
    let rows = wh.query("SELECT count() AS n FROM events.learning_events", &[]).await?;
    println!(
        "loaded {} base rows ({:.0} MB JSON) in {:.1}s; planted: {} disengaging learners, {} defects, {} colluding pairs, {} study-partner pairs; holiday days {:?}",
        rows[0]["n"], (pb + cb) as f64 / 1e6, t.elapsed().as_secs_f64(), pt.disengaged.len(), pt.defects.len(), pt.colluders.len(), pt.partners.len(), planted.holiday
    );
    let end = start + Duration::days(days as i64 - 1);
    let t = Instant::now();
    let data = Data::load(wh, start, end, start).await?;
    println!("loaded the detectors' data once: {} activity rows, {} replay rows, {} submissions in {:.1}s", data.activity.len(), data.replays.len(), data.submits.len(), t.elapsed().as_secs_f64());
    let first = start + Duration::days(config.policy.baseline_days as i64);
    let t = Instant::now();
    // key -> (first day flagged, finding)
    let mut found: BTreeMap<String, (NaiveDate, Finding)> = BTreeMap::new();
    let mut d = first;
    let mut evaluated = 0;
    while d <= end {
        for f in crate::signals::evaluate(&Window { day: d, data: &data }, &config) {
            found.entry(f.key.clone()).or_insert((d, f));
        }
        evaluated += 1;
        d += Duration::days(1);
    }
    let per_day = t.elapsed().as_secs_f64() / evaluated as f64;
    println!("evaluated {evaluated} days ({first}..={end}) in {:.1}s ({:.2}s per day, all three detectors)", t.elapsed().as_secs_f64(), per_day);
    let t = Instant::now();
    let (f, s) = (end - Duration::days(2 * config.policy.baseline_days as i64), end - Duration::days(config.policy.integrity.window_days as i64 - 1));
    let one = Data::load(wh, f, end, s).await?;
    let _ = crate::signals::evaluate(&Window { day: end, data: &one }, &config);
    println!("one day as `serve` runs it (load its window + detect): {:.2}s; a planted defect reaches its queue within interval_secs ({}) + this", t.elapsed().as_secs_f64(), config.policy.interval_secs);
    let of = |prefix: &str, kind: Kind| -> Vec<(NaiveDate, Finding)> {
        found.values().filter(|(_, f)| f.kind == kind && f.course.starts_with(prefix)).cloned().collect()
    };
    let eval_days = evaluated as f64;
    println!();
    println!("{:<15} {:>9} {:>9} {:>7} {:>7} {:>10} {:>11} {:>10}  notes", "detector", "precision", "recall", "flags", "clean", "clean_fpr", "base_rate", "prec@base");

    // Content defects: a finding is right when it overlaps a planted segment of that video on or after its day.
    let cd = of("p-", Kind::ContentDefect);
    let hit = |f: &Finding, day: NaiveDate| {
        pt.defects.iter().any(|d| {
            let seg = &f.evidence["segment"];
            let (a, b) = (seg["from_sec"].as_u64().unwrap_or(0) as u32, seg["to_sec"].as_u64().unwrap_or(0) as u32);
            Some(&d.content) == f.content.as_ref() && d.course == f.course && a < d.to_sec && b > d.from_sec && day >= d.day
        })
    };
    let tp = cd.iter().filter(|(d, f)| hit(f, *d)).count();
    let detected = pt.defects.iter().filter(|d| cd.iter().any(|(day, f)| hit(f, *day) && f.content.as_ref() == Some(&d.content) && f.course == d.course)).count();
    let clean_cd = of("c-", Kind::ContentDefect).len();
    let content_days = 2.0 * crate::signals::sim::VIDEOS as f64 * eval_days;
    let (sens, fpr, base) = (ratio(detected, pt.defects.len()), clean_cd as f64 / content_days, pt.defects.len() as f64 / content_days);
    row("content_defect", ratio(tp, cd.len()), sens, cd.len(), clean_cd, fpr, base, &format!("units: video-days; false alarms on the clean run: {clean_cd}"));

    // Disengagement: a flagged learner is right when planted and flagged on or after their disengagement day.
    let de = of("p-", Kind::Disengagement);
    let mut delays = Vec::new();
    let mut early = 0;
    let tp = de
        .iter()
        .filter(|(day, f)| match pt.disengaged.get(&f.subjects[0]) {
            Some(d) if day >= d => {
                delays.push((*day - *d).num_days());
                true
            }
            Some(_) => {
                early += 1;
                false
            }
            None => false,
        })
        .count();
    let clean_de: BTreeSet<Uuid> = of("c-", Kind::Disengagement).iter().map(|(_, f)| f.subjects[0]).collect();
    delays.sort_unstable();
    let median = delays.get(delays.len() / 2).copied().unwrap_or(0);
    let (sens, fpr) = (ratio(tp, pt.disengaged.len()), clean_de.len() as f64 / clean.learners as f64);
    row("disengagement", ratio(tp, de.len()), sens, de.len(), clean_de.len(), fpr, planted.disengage_share, &format!("units: learners; median delay {median} days; flagged before their day: {early}"));

    // Integrity: a flagged pair is right when it is a planted colluding pair; study partners must never be flagged.
    let ig = of("p-", Kind::Integrity);
    let pair = |f: &Finding| (f.subjects[0].min(f.subjects[1]), f.subjects[0].max(f.subjects[1]));
    let norm = |v: &[(Uuid, Uuid)]| v.iter().map(|(a, b)| ((*a).min(*b), (*a).max(*b))).collect::<BTreeSet<_>>();
    let (colluders, partners) = (norm(&pt.colluders), norm(&pt.partners));
    let tp = ig.iter().filter(|(_, f)| colluders.contains(&pair(f))).count();
    let partners_flagged = ig.iter().filter(|(_, f)| partners.contains(&pair(f))).count();
    let clean_ig: BTreeSet<Uuid> = of("c-", Kind::Integrity).iter().flat_map(|(_, f)| f.subjects.clone()).collect();
    let (sens, fpr) = (ratio(tp, colluders.len()), clean_ig.len() as f64 / clean.learners as f64);
    row("integrity", ratio(tp, ig.len()), sens, ig.len(), clean_ig.len(), fpr, planted.collude_share, &format!("units: pairs (clean: learners); study partners flagged: {partners_flagged} of {}", partners.len()));
    let by_kind: HashMap<Kind, usize> = found.values().fold(HashMap::new(), |mut m, (_, f)| {
        *m.entry(f.kind).or_default() += 1;
        m
    });
    println!("\nfindings (distinct keys) by kind, both runs: {by_kind:?}");
    println!("precision at the base rate = recall x rate / (recall x rate + clean_fpr x (1 - rate)): what a reviewer should expect of a flag when that share of units is truly affected.");
    Ok(ExitCode::SUCCESS)
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

#[allow(clippy::too_many_arguments)]
fn row(name: &str, precision: f64, recall: f64, flags: usize, clean: usize, fpr: f64, base: f64, notes: &str) {
    let at_base = recall * base / (recall * base + fpr * (1.0 - base));
    println!("{name:<15} {precision:>9.3} {recall:>9.3} {flags:>7} {clean:>7} {fpr:>10.5} {base:>11.5} {at_base:>10.3}  {notes}");
}
