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
}

pub async fn run(mut settings: Settings, args: DsrArgs) -> anyhow::Result<ExitCode> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let data = args.data.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("lv-bench-dsr-{id}")));
    settings.clickhouse_url = format!("chdb://{}", data.join("chdb").display());
    settings.archive_dir = Some(data.join("archives"));
    let db = format!("learnvault_bench_dsr_{id}");
    settings.database_url = format!("postgres://learnvault_app@127.0.0.1:5432/{db}").into();
    settings.admin_database_url = format!("postgres://postgres@127.0.0.1:5432/{db}").into();
    crate::db::migrate(&settings).await?;
    let state = crate::app::build_state(&settings).await?;
    let wh = Warehouse::open(&settings)?;
    let result = async {
        migrate::run(&wh, &settings.clickhouse_migrations_dir).await?;
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
        let mut done = 0;
        while done < need {
            let n = (5_000_000u64).min(need - done);
            // 100k learners over 20 courses x 8 cohorts, 28 days, heartbeat-heavy.
            wh.execute(
                "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                     course_id, content_id, cohort_id, institution_id, position_sec, props)
                 SELECT now64(3) - toIntervalSecond(number % 2419200) AS ts, ts, generateUUIDv4(), '2.3',
                        ['session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat',
                         'content.start','interact.pause','content.complete','assess.submit'][(number % 10) + 1],
                        reinterpretAsUUID(reverse(unhex(concat(leftPad(hex(cityHash64(number % 100000)), 16, '0'),
                                                               leftPad(hex(cityHash64(number % 100000, 1)), 16, '0'))))),
                        's', concat('course-', toString((number % 100000) % 20)), concat('video-', toString(number % 50)),
                        concat('cohort-', toString((number % 100000) % 8)), 'bench-uni', toUInt32(number % 600), map()
                 FROM numbers({offset:UInt64}, {n:UInt64})",
                &[("offset", (have + done).to_string()), ("n", n.to_string())],
            )
            .await?;
            done += n;
            eprint!("\rloading base rows: {done}/{need}");
        }
        eprintln!();
        println!("loaded {need} base rows in {:.1}s (every view updating)", t0.elapsed().as_secs_f64());
    }

    // The measured learner, in the vault and with events in one course/cohort over 28 days.
    let inst = InstitutionId::parse("bench-uni")?;
    let ext = ExternalId::parse(&format!("bench-{}", uuid::Uuid::new_v4().simple()))?;
    let identity = Identity::parse(serde_json::json!({"name": "Bench Learner", "email": "bench@example.edu"}).as_object().cloned().unwrap_or_default())?;
    let entry = NewEntry {
        request_id: uuid::Uuid::new_v4(),
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
    let issued = state.vault.issue_batch(vec![(inst, NewLearner { external_id: ext, identity })], entry).await?;
    let p = issued[0].pseudonym.as_uuid();
    wh.execute(
        "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
             course_id, content_id, cohort_id, institution_id, position_sec, props)
         SELECT now64(3) - toIntervalSecond(number * 240) AS ts, ts, generateUUIDv4(), '2.3',
                ['session.heartbeat','session.heartbeat','session.heartbeat','content.start','interact.pause','content.complete'][(number % 6) + 1],
                {p:UUID}, 's', 'course-3', concat('video-', toString(number % 50)), 'cohort-3', 'bench-uni', toUInt32(number % 600), map('player', 'web')
         FROM numbers({n:UInt64})",
        &[("p", p.to_string()), ("n", args.learner_events.to_string())],
    )
    .await?;
    let total = count(wh, "SELECT count() AS n FROM events.learning_events").await?;
    println!("base rows={total}  measured learner events={}", args.learner_events);

    let request = |kind| Request {
        kind,
        pseudonym: p,
        institution: "bench-uni".into(),
        requested_by: "bench".into(),
        roles: vec![],
        request_id: uuid::Uuid::new_v4(),
        reference: Some("BENCH".into()),
        subjects: Vec::new(),
    };
    let steps: Mutex<Vec<(f64, String)>> = Mutex::new(Vec::new());
    for run in 1..=args.runs {
        let (job, _) = d.submit(&request(Kind::Access)).await?;
        let t = Instant::now();
        let job = d.run_job(job.id, &|_| {}).await?;
        anyhow::ensure!(job.state == "done", "access job {}: {:?}", job.state, job.error);
        let r = job.result.unwrap_or_default();
        println!(
            "subject access    run {run}: complete archive in {:.0} ms ({} bytes, {} stores)",
            t.elapsed().as_secs_f64() * 1000.0,
            r["bytes"],
            r["stores"].as_array().map(Vec::len).unwrap_or(0)
        );
    }
    for run in 1..=args.runs {
        let t = Instant::now();
        let mut report = crate::retention::verify(wh, &d.retention).await?;
        crate::retention::verify_postgres(&mut report, &d.pool, &d.retention, &d.archive_dir).await?;
        println!("retention verify  run {run}: {:.0} ms (ok={}, {} tables)", t.elapsed().as_secs_f64() * 1000.0, report.ok, report.tables.len());
    }
    let (job, _) = d.submit(&request(Kind::Erasure)).await?;
    let t = Instant::now();
    let show = |m: &str| steps.lock().expect("not poisoned").push((t.elapsed().as_secs_f64(), m.to_owned()));
    let job = d.run_job(job.id, &show).await?;
    anyhow::ensure!(job.state == "done", "erasure job {}: {:?}", job.state, job.error);
    println!("erasure           one learner incl. recompute and verification: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    let steps = steps.into_inner().expect("not poisoned");
    for (i, (at, m)) in steps.iter().enumerate() {
        let next = steps.get(i + 1).map(|s| s.0).unwrap_or(t.elapsed().as_secs_f64());
        println!("    {:>7.0} ms  {m}", (next - at) * 1000.0);
    }
    let left = count(wh, &format!("SELECT count() AS n FROM events.learning_events WHERE learner_id = '{p}'")).await?;
    println!("rows left for the learner: {left}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(ExitCode::SUCCESS)
}

async fn count(wh: &Warehouse, sql: &str) -> anyhow::Result<u64> {
    let rows = wh.query(sql, &[]).await?;
    let v = &rows[0]["n"];
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).context("count")
}
