//! `learnvault bench serve`: the governed read path over a large base table.
//! A temporary embedded warehouse is loaded with `--base-rows` events (20
//! courses, 8 cohorts each plus a tiny one, 28 days, some in the last hour);
//! then `--viewers` concurrent viewers call each cohort view in a closed loop
//! (query, primary and complementary suppression and the attacker's audit
//! included; no HTTP), then the drill-down timeline, then `--live-streams`
//! live streams. With `--land-rate`, the real lander lands events from Kafka
//! at that rate through every phase (learners in this run's own database,
//! topics and group), and the live phase measures event-to-screen freshness:
//! for each landed batch and each stream, from the batch's oldest event to the
//! end of the stream's first refresh whose query started after the batch
//! landed. Prints latency percentiles and the information loss of
//! complementary suppression.

use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use super::closed_loop;
use crate::auth::parse_ttl;
use crate::config::Settings;
use crate::serve::{Config, Ident, Serve, Thresholds};
use crate::warehouse::{migrate, Warehouse};

#[derive(Args)]
pub struct ServeArgs {
    /// Base rows to load (the rollups fill as they land).
    #[arg(long, default_value_t = 5_000_000)]
    base_rows: u64,
    /// Distinct learners.
    #[arg(long, default_value_t = 20_000)]
    learners: u64,
    /// Concurrent viewers per phase.
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Concurrent advisors drilling down in the closed-loop phase (each its learner-in-course check and timeline),
    /// while the lander lands. A drill-down is a rare, rate-limited act: a handful at once.
    #[arg(long, default_value_t = 5)]
    advisors: usize,
    /// Drill-downs per second in the open-loop drill-down phase.
    #[arg(long, default_value_t = 2.0)]
    drilldown_rate: f64,
    /// Duration of each phase.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Events per second the lander lands from Kafka during the phases (0: none).
    #[arg(long, default_value_t = 15_000)]
    land_rate: u64,
    /// Concurrent live streams in the live phase (0: skip it).
    #[arg(long, default_value_t = 200)]
    live_streams: usize,
    /// Refresh interval of each live stream (default: the policy's `live.interval_ms`).
    #[arg(long)]
    live_interval_ms: Option<u64>,
    /// Streams share their queries within this window (default: the policy's `live.coalesce_ms`; 0: each queries).
    #[arg(long)]
    live_coalesce_ms: Option<u64>,
    /// Keep the engine's data here between runs (the load is the slow part): rows already
    /// there count towards `--base-rows`. Their timestamps are relative to the first load.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Phases to run, comma-separated, from: views, drilldown, live.
    #[arg(long, value_delimiter = ',', default_value = "views,drilldown,live")]
    phases: Vec<String>,
}

pub async fn run(mut settings: Settings, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = args.phases.iter().find(|p| !["views", "drilldown", "live"].contains(&p.as_str())) {
        anyhow::bail!("--phases: unknown phase {p:?} (views, drilldown, live)");
    }
    let (_, data) = super::own_run(&mut settings, "bench-serve", "serve");
    if let Some(kept) = &args.data {
        settings.warehouse.url = format!("chdb://{}", kept.display());
        let wh = Warehouse::open(&settings)?;
        let result = phases(&settings, &wh, &args).await;
        wh.close();
        super::drop_own_database(&settings).await;
        return result;
    }
    let (s, a) = (&settings, &args);
    super::on_engine(s, &data, |wh| async move { phases(s, &wh, a).await }).await
}

async fn phases(settings: &Settings, wh: &Warehouse, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    migrate::run(wh, &settings.warehouse.migrations_dir).await?;
    let duration = parse_ttl(&args.duration).ok_or_else(|| anyhow::anyhow!("--duration like 10s"))?;
    let t0 = Instant::now();
    let step = 5_000_000u64;
    let have = wh.query("SELECT count() AS n FROM events.learning_events", &[]).await?;
    let have = have.first().and_then(|r| r["n"].as_str().and_then(|n| n.parse().ok()).or_else(|| r["n"].as_u64())).unwrap_or(0);
    let mut done: u64 = have;
    while done < args.base_rows {
        let n = step.min(args.base_rows - done);
        // Learner k: course k % 20, cohort (k / 20) % 8, or the tiny cohort for one learner in 400.
        wh.execute(
            "INSERT INTO events.learning_events (server_ts, client_ts, event_id, event_version, event_type, learner_id, session_id,
                 course_id, content_id, cohort_id, institution_id, position_sec, props)
             SELECT if(number % 50 = 0, now64(3) - toIntervalSecond(number % 3600), now64(3) - toIntervalSecond(number % 2419200)) AS ts,
                    ts, generateUUIDv4(), '2.3',
                    ['session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat','session.heartbeat',
                     'content.start','interact.pause','content.complete','assess.submit','interact.replay'][(number % 11) + 1],
                    toUUID(concat(substring(h, 1, 8), '-', substring(h, 9, 4), '-', substring(h, 13, 4), '-', substring(h, 17, 4), '-', substring(h, 21, 12))), 's',
                    concat('course-', toString(k % 20)), concat('video-', toString(number % 5)),
                    if(k % 400 = 7, 'cohort-tiny', concat('cohort-', toString(intDiv(k, 20) % 8))), 'bench-uni', toUInt32(number % 600), map()
             FROM (SELECT number, number % {learners:UInt64} AS k,
                          concat(leftPad(hex(cityHash64(k)), 16, '0'), leftPad(hex(cityHash64(k, 1)), 16, '0')) AS h
                   FROM numbers({offset:UInt64}, {n:UInt64}))",
            &[("learners", args.learners.to_string()), ("offset", done.to_string()), ("n", n.to_string())],
        )
        .await?;
        done += n;
    }
    if done > have {
        println!("loaded {} base rows ({} learners, 20 courses x 9 cohorts) in {:.1}s", done - have, args.learners, t0.elapsed().as_secs_f64());
        wh.execute("OPTIMIZE TABLE agg.learner_day_by_cohort FINAL", &[]).await?;
        wh.execute("OPTIMIZE TABLE agg.funnel_by_cohort FINAL", &[]).await?;
    } else {
        println!("kept data: {have} base rows");
    }
    let run = |p: &str| args.phases.iter().any(|q| q == p);

    let mut config = Config::load(&settings.policy_dir)?;
    if let Some(ms) = args.live_interval_ms {
        config.policy.live.interval_ms = ms;
    }
    if let Some(ms) = args.live_coalesce_ms {
        config.policy.live.coalesce_ms = ms;
    }
    config.policy.live.coalesce_ms = config.policy.live.coalesce_ms.min(config.policy.live.interval_ms);
    let sv = Arc::new(Serve::new(wh.clone(), config)?);
    let t = sv.thresholds(&["bench-uni".to_string()]);
    let range = sv.range(None, None)?;
    let course = |i: u64| Ident::parse("course_id", &format!("course-{}", i % 20)).expect("valid");

    // Information loss over every course's funnel, engagement, time on task and replays.
    let (mut cells, mut primary, mut complementary) = (0usize, 0usize, 0usize);
    for c in (0..20).filter(|_| run("views")) {
        let c = course(c);
        let summaries = [
            sv.funnel(&c, &range, &t).await?.summary().clone(),
            sv.engagement(&c, 60, &t).await?.summary().clone(),
            sv.time_on_task(&c, &range, &t).await?.summary().clone(),
            sv.replays(&c, &Ident::parse("content_id", "video-1")?, &range, &t).await?.summary().clone(),
        ];
        for s in summaries {
            cells += s.cells;
            primary += s.primary;
            complementary += s.complementary;
        }
    }
    if run("views") {
        println!(
            "information loss: {cells} cells, {primary} withheld by primary suppression, {complementary} complementary ({:.1}% of cells beyond primary)",
            100.0 * complementary as f64 / cells.max(1) as f64
        );
    }

    let landing = match args.land_rate {
        0 => None,
        rate => Some(super::serve_live::Landing::start(settings, wh, rate).await?),
    };
    if let Some(l) = &landing {
        l.wait_first().await?;
    }

    type View = fn(Arc<Serve>, Ident, crate::serve::DateRange, Thresholds) -> futures::future::BoxFuture<'static, bool>;
    let views: [(&str, View); 4] = [
        ("funnel", |s, c, r, t| Box::pin(async move { s.funnel(&c, &r, &t).await.is_ok() })),
        ("engagement", |s, c, _, t| Box::pin(async move { s.engagement(&c, 60, &t).await.is_ok() })),
        ("time-on-task", |s, c, r, t| Box::pin(async move { s.time_on_task(&c, &r, &t).await.is_ok() })),
        ("replays", |s, c, r, t| {
            Box::pin(async move { s.replays(&c, &Ident::parse("content_id", "video-1").expect("valid"), &r, &t).await.is_ok() })
        }),
    ];
    for (name, view) in views.into_iter().filter(|_| run("views")) {
        let sv = sv.clone();
        let phase = closed_loop(name, args.viewers, duration, move |task, i| view(sv.clone(), course(task as u64 * 7 + i), range, t)).await;
        phase.print("views", 1);
    }
    // The drill-down's engine reads, as the API makes them (authorisation and the audit entry
    // are PostgreSQL's): the learner-in-course check, then the timeline. Advisors at a rate
    // (open loop; the policy admits `drilldown.max_per_hour` per advisor, so 2/s is 720
    // advisors at their limit at once), then in a closed loop (saturation, for comparison).
    if run("drilldown") {
        let learners: Vec<uuid::Uuid> = wh
            .query("SELECT DISTINCT learner_id FROM agg.learner_day_by_cohort WHERE course_id = 'course-3' LIMIT 1000", &[])
            .await?
            .iter()
            .filter_map(|r| r["learner_id"].as_str().and_then(|s| s.parse().ok()))
            .collect();
        let learners = Arc::new(learners);
        let drill = |sv: Arc<Serve>, l: uuid::Uuid| async move {
            let course = Ident::parse("course_id", "course-3").expect("valid");
            matches!(sv.is_learner_of(&course, l).await, Ok(true)) && sv.timeline(&course, l).await.is_ok()
        };
        let (sv2, l2) = (sv.clone(), learners.clone());
        let phase = super::open_loop(&format!("drill-down {}/s", args.drilldown_rate), args.drilldown_rate, duration, move |i| {
            drill(sv2.clone(), l2[(i as usize * 31) % l2.len().max(1)])
        })
        .await;
        phase.print("drill-downs", 1);
        let (sv2, l2) = (sv.clone(), learners.clone());
        let phase = closed_loop(&format!("drill-down x{}", args.advisors), args.advisors, duration, move |task, i| {
            drill(sv2.clone(), l2[(task * 31 + i as usize) % l2.len().max(1)])
        })
        .await;
        phase.print("drill-downs", 1);
    }
    if args.live_streams > 0 && run("live") {
        super::serve_live::live_phase(&sv, landing.as_ref(), args.live_streams, duration, range, t).await?;
    }
    if let Some(l) = landing {
        l.stop().await?;
    }
    Ok(ExitCode::SUCCESS)
}
