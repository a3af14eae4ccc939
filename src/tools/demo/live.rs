//! `learnvault demo --live`: the whole system in one process on fresh state:
//! the API with the ingest gateway, the lander and the embedded engine, fed by
//! a simulated cohort in real time (mostly through `/v1/events`, some as xAPI),
//! with a refreshing terminal view: events/s, lander lag, freshness, the live
//! funnel per cohort and the most-replayed video segment, and the signals'
//! review queues filling (one planted case of each kind, `demo_signals`), and the
//! console's URL with a one-time sign-in link per role (`demo_console`). Runs until
//! Ctrl-C (or `--duration`), then prints a summary and commands to explore further.

use anyhow::Context;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::tools::loadgen::{self, LoadStats, LoadgenArgs, Via};
use crate::warehouse::{migrate, Warehouse};

pub struct LiveArgs {
    pub rate: u64,
    pub learners: usize,
    /// `None`: until Ctrl-C.
    pub duration: Option<String>,
}

pub async fn run(settings: Settings, args: LiveArgs) -> anyhow::Result<ExitCode> {
    crate::db::migrate(&settings).await.context("migrating (is PostgreSQL running? ops/postgres.sh starts it)")?;
    let state = crate::app::build_state(&settings).await?;
    let wh = Warehouse::open(&settings)?;
    let result = live(&settings, state, &wh, &args).await;
    wh.close();
    result
}

async fn live(settings: &Settings, state: crate::api::AppState, wh: &Warehouse, args: &LiveArgs) -> anyhow::Result<ExitCode> {
    migrate::run(wh, &settings.warehouse.migrations_dir).await?;
    let state = crate::app::with_warehouse(state, settings, wh.clone())?;
    let state = crate::app::with_gateway(state, settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serve = state.serve.clone().context("the read path (set by with_warehouse)")?;
    // Signals: simulated history with one case of each kind, the detectors' loop as in `serve`.
    let truth = super::signals::plant(wh).await?;
    let signals_loop = tokio::spawn(crate::app::periodic::signals_loop(state.signals.clone().context("signals (set by with_warehouse)")?, stop_rx.clone()));
    let pool = state.pool.clone();
    let server = tokio::spawn(crate::app::serve(state.clone(), listener, stopped(stop_rx.clone())));
    let lander = crate::app::lander::build(settings, wh.clone()).await?;
    let lstats = lander.stats();
    let lander = tokio::spawn(lander.run(stopped(stop_rx.clone())));
    // The console serves the demo's data; one sign-in link per role, shown on every refresh.
    let console = super::console::links(&state, &base).await.context("console sign-in links")?;

    // 90% of the traffic through /v1/events, 10% as xAPI statements.
    let http_args = LoadgenArgs {
        rate: args.rate * 9 / 10,
        learners: args.learners,
        // Until Ctrl-C: the cohort keeps flowing (the loader's longest run).
        duration: args.duration.clone().unwrap_or_else(|| "366d".into()),
        via: Via::Http,
        url: base.clone(),
        batch: 100,
        concurrency: 4,
        seed: 1,
        progress: false,
    };
    let xapi_args = LoadgenArgs { rate: (args.rate / 10).max(1), via: Via::Xapi, batch: 20, seed: 2, ..http_args.clone() };
    let (hs, xs) = (Arc::new(LoadStats::default()), Arc::new(LoadStats::default()));
    let (load_stop_tx, load_stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let (settings, hs, xs, rx) = (settings.clone(), hs.clone(), xs.clone(), load_stop_rx.clone());
        let (ha, xa) = (http_args.clone(), xapi_args.clone());
        tokio::spawn(async move {
            let a = loadgen::generate(&settings, &ha, hs, stopped(rx.clone()));
            let b = loadgen::generate(&settings, &xa, xs, stopped(rx));
            let (a, b) = tokio::join!(a, b);
            a.and(b)
        })
    };

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_acc, mut last_landed, mut last_t) = (0u64, 0u64, Instant::now());
    let mut interrupted = false;
    // The most-replayed segments: a replays view per course and content, refreshed every 5 s
    // (the funnel's one view per course refreshes every second).
    let mut segments = Segments::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => { interrupted = true; break; }
        }
        if load.is_finished() {
            break;
        }
        let accepted = hs.accepted.load(Ordering::Relaxed) + xs.accepted.load(Ordering::Relaxed);
        let landed = lstats.landed.load(Ordering::Relaxed);
        let dt = last_t.elapsed().as_secs_f64().max(0.001);
        let rates = ((accepted - last_acc) as f64 / dt, (landed - last_landed) as f64 / dt);
        let screen = render(&serve, &hs, &xs, &lstats, started.elapsed(), rates, &base, &mut segments).await;
        let queues = super::signals::screen(&pool, &truth).await;
        print!("\x1b[H\x1b[2J{screen}{queues}{console}");
        (last_acc, last_landed, last_t) = (accepted, landed, Instant::now());
    }
    let _ = load_stop_tx.send(true);
    let load_result = load.await?;
    // Let the lander land what was accepted (bounded wait), then stop everything we started.
    let deadline = Instant::now() + Duration::from_secs(if interrupted { 3 } else { 20 });
    let accepted = || hs.accepted.load(Ordering::Relaxed) + xs.accepted.load(Ordering::Relaxed);
    while lstats.landed.load(Ordering::Relaxed) + lstats.rejected.load(Ordering::Relaxed) < accepted() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    segments.at = None;
    let screen = render(&serve, &hs, &xs, &lstats, started.elapsed(), (0.0, 0.0), &base, &mut segments).await;
    let queues = super::signals::screen(&pool, &truth).await;
    print!("\x1b[H\x1b[2J{screen}{queues}");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = signals_loop.await;
    if let Ok(Err(e)) = lander.await {
        eprintln!("lander: {e}");
    }
    load_result?;
    summary(settings, &hs, &xs, &lstats);
    Ok(ExitCode::SUCCESS)
}

/// The rendered most-replayed segments, and when they were computed.
#[derive(Default)]
struct Segments {
    at: Option<Instant>,
    text: String,
}

#[allow(clippy::too_many_arguments)]
async fn render(
    serve: &crate::serve::Serve,
    hs: &LoadStats,
    xs: &LoadStats,
    ls: &crate::lander::LanderStats,
    elapsed: Duration,
    (in_rate, land_rate): (f64, f64),
    base: &str,
    segments: &mut Segments,
) -> String {
    let accepted = hs.accepted.load(Ordering::Relaxed) + xs.accepted.load(Ordering::Relaxed);
    let landed = ls.landed.load(Ordering::Relaxed);
    let refused_lander = ls.rejected.load(Ordering::Relaxed);
    let (p50, p99) = {
        let h = ls.freshness_ms.lock().expect("stats lock");
        if h.is_empty() {
            (0, 0)
        } else {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
        }
    };
    let mut s = String::new();
    let _ = writeln!(s, "\x1b[1mlearnvault live demo\x1b[0m  {base}  t={:.0}s   (Ctrl-C ends)\n", elapsed.as_secs_f64());
    let _ = writeln!(
        s,
        "gateway   {in_rate:>7.0} events/s accepted   total {accepted}  (http {} / xAPI {})  refused at the gate {}  errors {}",
        hs.accepted.load(Ordering::Relaxed),
        xs.accepted.load(Ordering::Relaxed),
        hs.rejected.load(Ordering::Relaxed) + xs.rejected.load(Ordering::Relaxed),
        hs.errors.load(Ordering::Relaxed) + xs.errors.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        s,
        "lander    {land_rate:>7.0} rows/s landed      total {landed}  dead-lettered {refused_lander}  lag {} events",
        accepted.saturating_sub(landed + refused_lander)
    );
    let _ = writeln!(
        s,
        "freshness last batch {} ms   p50 {p50} ms   p99 {p99} ms   (broker timestamp -> visible in the rollups)\n",
        ls.last_freshness_ms.load(Ordering::Relaxed)
    );
    // The funnel as an instructor sees it: released through disclosure control.
    let _ = writeln!(
        s,
        "\x1b[1mlive funnel per cohort\x1b[0m (GET /v1/courses/{{course}}/funnel, today; withheld: <n small cell, \
         (x) everyone of a small group, (c) complementary, (d) derived, (s) sticky)"
    );
    let _ = writeln!(s, "  {:<32} {:>9} {:>9} {:>10} {:>9}", "cohort", "enrolled", "started", "completed", "assessed");
    let today = chrono::Utc::now().date_naive();
    let range = crate::serve::DateRange { from: today - chrono::Duration::days(1), to: today };
    let refresh = segments.at.is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
    let mut top = Vec::new();
    for (course, institutions) in serve.courses().await.unwrap_or_default() {
        let Ok(c) = crate::serve::Ident::parse("course_id", &course) else { continue };
        let t = serve.thresholds(&institutions);
        let Ok(f) = serve.funnel(&c, &range, &t).await else { continue };
        let rows = f.body().cohorts.iter().map(|r| (r.cohort_id.clone(), &r.values)).chain([(format!("{course} total"), &f.body().total)]);
        for (name, k) in rows {
            let cells = [&k.enrolled, &k.steps.started, &k.steps.completed, &k.steps.assessed];
            let [e, st, co, a] = cells.map(|c| super::released(c, t.min_cell));
            let _ = writeln!(s, "  {:<32} {e:>9} {st:>9} {co:>10} {a:>9}", name);
        }
        if refresh {
            let found = super::top_segments(serve, &c, &range, &t, 3).await;
            top.extend(found.into_iter().map(|(content, b)| (format!("{course} {content}"), b, t.min_cell)));
        }
    }
    if refresh {
        top.sort_by_key(|(_, b, _)| std::cmp::Reverse(b.replays.value()));
        let mut text = String::new();
        for (segment, b, m) in top.iter().take(3) {
            let p = b.position_sec;
            let [r, pa, l] = [&b.replays, &b.pauses, &b.learners].map(|c| super::released(c, *m));
            let _ = writeln!(
                text,
                "  {segment:<32} {:>2}:{:02}-{:>2}:{:02}  replays {r:>6}  pauses {pa:>6}  learners {l:>5}",
                p / 60,
                p % 60,
                (p + 10) / 60,
                (p + 10) % 60
            );
        }
        *segments = Segments { at: Some(Instant::now()), text };
    }
    let _ = writeln!(s, "\n\x1b[1mmost-replayed segments\x1b[0m (GET /v1/content/{{content}}/replays, released: a content-defect signal)");
    s.push_str(&segments.text);
    s
}

fn summary(settings: &Settings, hs: &LoadStats, xs: &LoadStats, ls: &crate::lander::LanderStats) {
    use secrecy::ExposeSecret;
    let h = ls.freshness_ms.lock().expect("stats lock");
    let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
    println!("\n\x1b[1msummary\x1b[0m");
    println!(
        "  sent {} events ({} through /v1/events, {} as xAPI); accepted {}; refused at the gate {}; gateway errors {}",
        hs.sent.load(Ordering::Relaxed) + xs.sent.load(Ordering::Relaxed),
        hs.sent.load(Ordering::Relaxed),
        xs.sent.load(Ordering::Relaxed),
        hs.accepted.load(Ordering::Relaxed) + xs.accepted.load(Ordering::Relaxed),
        hs.rejected.load(Ordering::Relaxed) + xs.rejected.load(Ordering::Relaxed),
        hs.errors.load(Ordering::Relaxed) + xs.errors.load(Ordering::Relaxed),
    );
    println!(
        "  landed {} rows in {} batches; dead-lettered by the lander {}; freshness p50 {} ms, p99 {} ms",
        ls.landed.load(Ordering::Relaxed),
        ls.batches.load(Ordering::Relaxed),
        ls.rejected.load(Ordering::Relaxed),
        q(0.5),
        q(0.99)
    );
    println!("  no identity reached Kafka or ClickHouse: learners were named by LMS ids and xAPI accounts, pseudonymised at the gate.");
    let env = format!(
        "LEARNVAULT_DATABASE_URL={} LEARNVAULT_ADMIN_DATABASE_URL={} LEARNVAULT_CLICKHOUSE_URL={} LEARNVAULT_EVENTS_TOPIC={} LEARNVAULT_DLQ_TOPIC={} LEARNVAULT_ARCHIVE_DIR={} LEARNVAULT_LANDER_ENABLED=true",
        settings.database.url.expose_secret(),
        settings.database.admin_url.expose_secret(),
        settings.warehouse.url,
        settings.kafka.events_topic,
        settings.kafka.dlq_topic,
        settings.archive_path().display()
    );
    println!("\n\x1b[1mexplore further\x1b[0m (everything started by the demo is stopped; its data stays):");
    println!("  export {env}");
    println!("  ops/kafka.sh                             # the broker again (its topics and their retention stay)");
    println!("  cargo run -- serve &                     # API, gateway, jobs on http://{}", settings.listen);
    println!("  AUD=$(cargo run -q -- token mint --sub me --role auditor --institution '*')");
    let at = &settings.listen;
    println!("  curl -s '{at}/v1/audit?limit=5' -H \"Authorization: Bearer $AUD\"");
    println!("  curl -s {at}/v1/retention/report -H \"Authorization: Bearer $AUD\"");
    println!("  DPO=$(cargo run -q -- token mint --sub dpo --role dpo --institution uni-north)");
    println!("  curl -s -XPOST {at}/v1/dsr/access -H \"Authorization: Bearer $DPO\" -H 'content-type: application/json' \\");
    println!("       -d '{{\"institution\":\"uni-north\",\"external_id\":\"uni-north-000000\"}}'");
    println!("  cargo run -- loadgen --url http://{at} --rate 2000 --duration 20s --via xapi      # more traffic (with serve running)");
    println!("  (stop serve first:) cargo run -- datamap check; cargo run -- retention verify; cargo run -- dsr erase --institution uni-north --external-id uni-north-000000");
    println!("  OpenAPI: http://{}/openapi.json   metrics: http://{}/metrics", settings.listen, settings.listen);
}
