//! `learnvault bench dsr`: subject access, erasure and `retention verify` over
//! a large base table (default 50M rows), on the embedded engine and the local
//! PostgreSQL. Figures, not assertions.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::{NewEntry, Outcome};
use crate::config::Settings;
use crate::domain::{ExternalId, InstitutionId};
use crate::dsr::{Kind, Request};
use crate::vault::{Identity, NewLearner};
use uuid::Uuid;
use crate::warehouse::{migrate, Warehouse};

#[derive(clap::Args)]
pub struct DsrArgs {
    /// Base-table rows to have before measuring (loaded once per data directory).
    #[arg(long, default_value_t = 50_000_000)]
    base_rows: u64,
    /// Events of the learner whose access and erasure are measured.
    #[arg(long, default_value_t = 10_000)]
    learner_events: u64,
    /// Keep the engine's data here between runs (the load is the slow part).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Repetitions of subject access and retention verify.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Days the base rows spread over, back from now (monthly partitions: 365 fills 12-13).
    #[arg(long, default_value_t = 28)]
    base_days: u64,
    /// Months the single measured learner's events spread over (one partition a month).
    #[arg(long, default_value_t = 12)]
    learner_months: u64,
    /// Learners of the batch erasure (0: skip it).
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Events of each learner of the batch.
    #[arg(long, default_value_t = 10_000)]
    batch_events: u64,
    /// Months the batch's events spread over.
    #[arg(long, default_value_t = 6)]
    batch_months: u64,
    /// Events of the learner whose subject access is measured for its size and
    /// peak memory (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    big_learner_events: u64,
}

pub async fn run(mut settings: Settings, args: DsrArgs) -> anyhow::Result<ExitCode> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let data = args.data.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("lv-bench-dsr-{id}")));
    settings.warehouse.url = format!("chdb://{}", data.join("chdb").display());
    settings.dsr.archive_dir = Some(data.join("archives"));
    let db = format!("learnvault_bench_dsr_{id}");
    settings.database.url = format!("postgres://learnvault_app@127.0.0.1:5432/{db}").into();
    settings.database.admin_url = format!("postgres://postgres@127.0.0.1:5432/{db}").into();
    crate::db::migrate(&settings).await?;
    let state = crate::app::build_state(&settings).await?;
    let wh = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&wh, &settings.warehouse.migrations_dir).await?;
        let state = crate::app::with_warehouse(state, &settings, wh.clone())?;
        measure(&state, &wh, &args).await
    }
    .await;
    wh.close();
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    result
}

async fn measure(state: &crate::api::AppState, wh: &Warehouse, args: &DsrArgs) -> anyhow::Result<ExitCode> {
    let d = state.dsr.as_ref().expect("with warehouse");
    println!("learnvault bench dsr  engine={}", wh.version().await?);
    let have = count(wh, "SELECT count() AS n FROM events.learning_events").await?;
    let need = args.base_rows.saturating_sub(have);
    if need > 0 {
        let t0 = Instant::now();
        // 100k learners over 20 courses x 8 cohorts, 28 days, heartbeat-heavy.
        insert_numbers(
            wh,
            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                     course_id, content_id, cohort_id, institution_id, position_sec, props)
                 SELECT now64(3) - toIntervalSecond(number % {span:UInt64}) AS ts, ts, generateUUIDv4(), '2.3',
                        ['session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat',
                         'content.start','interact.pause','content.complete','assess.submit'][(number % 10) + 1],
                        reinterpretAsUUID(reverse(unhex(concat(leftPad(hex(cityHash64(number % 100000)), 16, '0'),
                                                               leftPad(hex(cityHash64(number % 100000, 1)), 16, '0'))))),
                        's', concat('course-', toString((number % 100000) % 20)), concat('video-', toString(number % 50)),
                        concat('cohort-', toString((number % 100000) % 8)), 'bench-uni', toUInt32(number % 600), map()
                 FROM numbers({offset:UInt64}, {rows:UInt64})",
            (have, need),
            &[("span", (args.base_days * 86_400).to_string())],
            |done| eprint!("\rloading base rows: {done}/{need}"),
        )
        .await?;
        eprintln!();
        println!("loaded {need} base rows in {:.1}s (every view updating)", t0.elapsed().as_secs_f64());
    }

    let single = learners(state, wh, 1, args.learner_events, args.learner_months).await?[0];
    let total = count(wh, "SELECT count() AS n FROM events.learning_events").await?;
    println!(
        "base rows={total}  measured learner: {} events over {} monthly partitions",
        args.learner_events,
        partitions(wh, &[single]).await?
    );

    for run in 1..=args.runs {
        let (ms, r) = access(d, single).await?;
        println!("subject access    run {run}: complete archive in {ms:.0} ms ({} bytes, {} stores)", r["bytes"], stores(&r));
    }
    for run in 1..=args.runs {
        let t = Instant::now();
        let mut report = crate::retention::verify(wh, &d.retention).await?;
        crate::retention::verify_postgres(&mut report, &d.pool, &d.retention, &d.archive_dir).await?;
        println!("retention verify  run {run}: {:.0} ms (ok={}, {} tables)", t.elapsed().as_secs_f64() * 1000.0, report.ok, report.tables.len());
    }
    erase(d, wh, Kind::Erasure, single, vec![], "one learner").await?;

    if args.big_learner_events > 0 {
        let big = learners(state, wh, 1, args.big_learner_events, args.learner_months).await?[0];
        reset_peak_rss();
        let before = peak_rss_kib();
        let (ms, r) = access(d, big).await?;
        let after = peak_rss_kib();
        println!(
            "subject access    {} events: complete archive in {ms:.0} ms ({} bytes, {} stores); process peak RSS {} MiB (was {} MiB before; the engine runs in-process)",
            args.big_learner_events,
            r["bytes"],
            stores(&r),
            after / 1024,
            before / 1024
        );
    }

    if args.batch > 0 {
        let t = Instant::now();
        let subjects = learners(state, wh, args.batch, args.batch_events, args.batch_months).await?;
        println!(
            "batch: {} learners x {} events over {} monthly partitions loaded in {:.1}s",
            args.batch,
            args.batch_events,
            partitions(wh, &subjects).await?,
            t.elapsed().as_secs_f64()
        );
        erase(d, wh, Kind::ErasureBatch, Uuid::nil(), subjects.clone(), &format!("batch of {}", args.batch)).await?;
        let left = count_params(wh, "SELECT count() AS n FROM events.learning_events WHERE has({ps:Array(UUID)}, learner_id)", &subjects).await?;
        println!("rows left for the batch: {left}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(ExitCode::SUCCESS)
}

fn stores(r: &serde_json::Value) -> usize {
    r["stores"].as_array().map(Vec::len).unwrap_or(0)
}

/// `n` new learners in the vault, each with `events` events in course-3 spread
/// evenly over the last `months` months.
async fn learners(state: &crate::api::AppState, wh: &Warehouse, n: u64, events: u64, months: u64) -> anyhow::Result<Vec<Uuid>> {
    let inst = InstitutionId::parse("bench-uni")?;
    let mut items = Vec::new();
    for i in 0..n {
        let ext = ExternalId::parse(&format!("bench-{}", Uuid::new_v4().simple()))?;
        let identity = Identity::parse(
            serde_json::json!({"name": format!("Bench Learner {i}"), "email": format!("bench{i}@example.edu")}).as_object().cloned().unwrap_or_default(),
        )?;
        items.push((inst.clone(), NewLearner { external_id: ext, identity }));
    }
    let entry = NewEntry {
        request_id: Uuid::new_v4(),
        actor: "bench".into(),
        roles: vec![],
        institution: Some("bench-uni".into()),
        action: "pseudonym.issue".into(),
        target: None,
        purpose: None,
        justification: None,
        outcome: Outcome::Success,
        detail: serde_json::Value::Null,
    };
    let ps: Vec<Uuid> = state.vault.issue_batch(items, entry).await?.iter().map(|i| i.pseudonym.as_uuid()).collect();
    // Learner number % n; event number / n spreads its events over the months.
    let step = (months.max(1) * 30 * 86_400 / events.max(1)).max(1);
    insert_numbers(
        wh,
        "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                 course_id, content_id, cohort_id, institution_id, position_sec, props)
             SELECT now64(3) - toIntervalSecond(intDiv(number, {n:UInt64}) * {step:UInt64}) AS ts, ts, generateUUIDv4(), '2.3',
                    ['session.heartbeat','session.heartbeat','session.heartbeat','content.start','interact.pause','content.complete'][(number % 6) + 1],
                    {ps:Array(UUID)}[(number % {n:UInt64}) + 1], 's', 'course-3', concat('video-', toString(number % 50)), 'cohort-3', 'bench-uni',
                    toUInt32(number % 600), map('player', 'web')
             FROM numbers({offset:UInt64}, {rows:UInt64})",
        (0, n * events),
        &[("ps", uuid_array(&ps)), ("n", n.to_string()), ("step", step.to_string())],
        |_| {},
    )
    .await?;
    Ok(ps)
}

/// Run `sql` (an `INSERT ... SELECT ... FROM numbers({offset:UInt64}, {rows:UInt64})`) over
/// numbers `first..first + rows` in chunks of 5M (the engine's memory bound), with `params`
/// besides those two; `progress` gets the rows done after each chunk.
async fn insert_numbers(
    wh: &Warehouse,
    sql: &str,
    (first, rows): (u64, u64),
    params: &[(&str, String)],
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let mut done = 0;
    while done < rows {
        let chunk = 5_000_000u64.min(rows - done);
        let mut all = params.to_vec();
        all.extend([("offset", (first + done).to_string()), ("rows", chunk.to_string())]);
        wh.execute(sql, &all).await?;
        done += chunk;
        progress(done);
    }
    Ok(())
}

fn uuid_array(ps: &[Uuid]) -> String {
    format!("[{}]", ps.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(","))
}

async fn partitions(wh: &Warehouse, ps: &[Uuid]) -> anyhow::Result<u64> {
    count_params(wh, "SELECT uniqExact(toYYYYMM(event_date)) AS n FROM events.learning_events WHERE has({ps:Array(UUID)}, learner_id)", ps).await
}

async fn count_params(wh: &Warehouse, sql: &str, ps: &[Uuid]) -> anyhow::Result<u64> {
    let rows = wh.query(sql, &[("ps", uuid_array(ps))]).await?;
    let v = &rows[0]["n"];
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).context("count")
}

fn request(kind: Kind, pseudonym: Uuid, subjects: Vec<Uuid>) -> Request {
    Request {
        kind,
        pseudonym,
        institution: "bench-uni".into(),
        requested_by: "bench".into(),
        roles: vec![],
        request_id: Uuid::new_v4(),
        reference: Some("BENCH".into()),
        subjects,
    }
}

async fn access(d: &crate::dsr::Dsr, p: Uuid) -> anyhow::Result<(f64, serde_json::Value)> {
    let (job, _) = d.submit(&request(Kind::Access, p, vec![])).await?;
    let t = Instant::now();
    let job = d.run_job(job.id, &|_| {}).await?;
    anyhow::ensure!(job.state == "done", "access job {}: {:?}", job.state, job.error);
    Ok((t.elapsed().as_secs_f64() * 1000.0, job.result.unwrap_or_default()))
}

/// One erasure job, timed, with the time of each of its steps.
async fn erase(d: &crate::dsr::Dsr, wh: &Warehouse, kind: Kind, p: Uuid, subjects: Vec<Uuid>, what: &str) -> anyhow::Result<()> {
    let steps: Mutex<Vec<(f64, String)>> = Mutex::new(Vec::new());
    let (job, _) = d.submit(&request(kind, p, subjects.clone())).await?;
    let t = Instant::now();
    let show = |m: &str| steps.lock().expect("not poisoned").push((t.elapsed().as_secs_f64(), m.to_owned()));
    let job = d.run_job(job.id, &show).await?;
    anyhow::ensure!(job.state == "done", "erasure job {}: {:?}", job.state, job.error);
    let certificates = job.result.as_ref().and_then(|r| r["certificates"].as_object().map(|c| c.len())).unwrap_or(1);
    println!(
        "erasure           {what} incl. recompute, verification and {certificates} certificate(s): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let steps = steps.into_inner().expect("not poisoned");
    for (i, (at, m)) in steps.iter().enumerate() {
        let next = steps.get(i + 1).map(|s| s.0).unwrap_or(t.elapsed().as_secs_f64());
        println!("    {:>7.0} ms  {m}", (next - at) * 1000.0);
    }
    if kind == Kind::Erasure {
        println!("rows left for the learner: {}", count_params(wh, "SELECT count() AS n FROM events.learning_events WHERE has({ps:Array(UUID)}, learner_id)", &[p]).await?);
    }
    Ok(())
}

/// Reset this process's peak resident set (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn count(wh: &Warehouse, sql: &str) -> anyhow::Result<u64> {
    let rows = wh.query(sql, &[]).await?;
    let v = &rows[0]["n"];
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).context("count")
}
