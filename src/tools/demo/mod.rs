//! `learnvault demo`: starts the API in-process on the local PostgreSQL and walks
//! through what each user does, printing every request and answer (`--live`:
//! the whole service on a simulated cohort, `live.rs`).

mod console;
mod live;
mod signals;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::app::{Application, Parts};
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::vault::keys::MasterKey;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Also show tamper detection: alter one audit row as the database owner
    /// (bypassing the append-only trigger) and verify again. Leaves the chain broken.
    #[arg(long)]
    tamper: bool,
    /// Also run the event spine: produce a cohort's events to Kafka, land them
    /// with the lander into the embedded ClickHouse engine, show the rollups and
    /// the dead letters (needs the broker of ops/kafka.sh and ops/install-chdb.sh).
    #[arg(long)]
    spine: bool,
    /// Instead: the live demo. API, gateway, lander and engine in this process, a simulated
    /// cohort sent in real time (events and xAPI), a refreshing terminal dashboard.
    #[arg(long)]
    live: bool,
    /// Live demo: events per second.
    #[arg(long, default_value_t = 400)]
    rate: u64,
    /// Live demo: simulated learners.
    #[arg(long, default_value_t = 600)]
    learners: usize,
    /// Live demo: how long it runs, e.g. 60s (default: until Ctrl-C, the console
    /// serving the demo's data and the simulated cohort flowing).
    #[arg(long)]
    duration: Option<String>,
}

struct Demo {
    client: reqwest::Client,
    base: String,
}

impl Demo {
    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.client.get(url),
            "PUT" => self.client.put(url),
            _ => self.client.post(url),
        }
        .bearer_auth(token);
        let req = if let Some(b) = body { req.json(&b) } else { req };
        let resp = req.send().await?;
        let status = resp.status();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }
}

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(label: &str, status: StatusCode, v: &Value) {
    let text = serde_json::to_string(v).unwrap_or_default();
    let text = if text.len() > 300 { format!("{}...", &text[..300]) } else { text };
    println!("  {label:<58} -> {} {text}", status.as_u16());
}

pub async fn run(settings: Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.live {
        let live = self::live::LiveArgs { rate: args.rate, learners: args.learners, duration: args.duration };
        return self::live::run(settings, live).await;
    }
    crate::db::migrate(&settings).await.context("migrating (is PostgreSQL running? ops/postgres.sh starts it)")?;
    let app = Application::build_with(settings.clone(), Parts::api_only()).await?;
    let pool = app.state().context("the API's state")?.pool.clone();
    let addr = app.addr().context("the API is bound")?;
    let stop = app.stopper();
    let server = tokio::spawn(app.run_until(std::future::pending()));
    let d = Demo { client: reqwest::Client::new(), base: format!("http://{addr}") };
    println!("learnvault demo: API at {} on PostgreSQL {}", d.base, redact_url(&settings));

    let master = MasterKey::load(&settings)?;
    let auth = Authenticator::from_settings(&settings, &master)?;
    let hour = Duration::from_secs(3600);
    let lms = auth.mint("lms-north", &["lms".into()], &["uni-north".into()], hour)?;
    let lms_south = auth.mint("lms-south", &["lms".into()], &["uni-south".into()], hour)?;
    let dpo = auth.mint("dpo-alice", &["dpo".into()], &["uni-north".into()], hour)?;
    let auditor = auth.mint("auditor-bob", &["auditor".into()], &["*".into()], hour)?;

    step("An LMS gets pseudonyms (the event stream will only ever carry these)");
    let ext = format!("S-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let body = json!({"institution": "uni-north", "external_id": ext, "identity": {"name": "Ada Example", "email": "ada@example.edu"}});
    let (s, v) = d.call(&lms, "POST", "/v1/pseudonyms", Some(body.clone())).await?;
    show("POST /v1/pseudonyms (new learner)", s, &v);
    let pseudonym = v["pseudonym"].as_str().context("no pseudonym")?.to_owned();
    let (s, v) = d.call(&lms, "POST", "/v1/pseudonyms", Some(body)).await?;
    show("POST /v1/pseudonyms (same learner again: idempotent)", s, &v);
    let (s, v) = d
        .call(&lms_south, "POST", "/v1/pseudonyms", Some(json!({"institution": "uni-south", "external_id": ext})))
        .await?;
    show("POST /v1/pseudonyms (same LMS id, other institution)", s, &v);

    let items: Vec<Value> = (0..5000).map(|i| json!({"institution": "uni-north", "external_id": format!("{ext}-{i}")})).collect();
    let t0 = Instant::now();
    let (s, v) = d.call(&lms, "POST", "/v1/pseudonyms/batch", Some(json!({"items": items}))).await?;
    println!(
        "  {:<58} -> {} created={} existing={} rejected={} in {:.0} ms",
        "POST /v1/pseudonyms/batch (5,000 learners)",
        s.as_u16(),
        v["created"],
        v["existing"],
        v["rejected"],
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let cohort: Vec<String> = v["results"]
        .as_array()
        .map(|r| r.iter().take(40).filter_map(|x| x["pseudonym"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();

    step("Consent, per purpose, with append-only history");
    let (s, v) = d
        .call(&lms, "PUT", &format!("/v1/pseudonyms/{pseudonym}/consent"), Some(json!({"consents": {"analytics": true, "recommendations": false}})))
        .await?;
    show("PUT  .../consent {analytics: true, recommendations: false}", s, &v["current"]);
    let (s, v) = d
        .call(&lms, "PUT", &format!("/v1/pseudonyms/{pseudonym}/consent"), Some(json!({"consents": {"analytics": false}})))
        .await?;
    show("PUT  .../consent {analytics: false} (the learner objects)", s, &json!({"history_len": v["history"].as_array().map(Vec::len)}));

    step("Re-identification is for DPOs only, with a declared purpose");
    let resolve = format!("/v1/pseudonyms/{pseudonym}/resolve");
    let (s, v) = d.call(&lms, "POST", &resolve, Some(json!({"purpose": "safeguarding", "justification": "x"}))).await?;
    show("LMS tries to resolve", s, &v);
    let (s, v) = d.call(&dpo, "POST", &resolve, Some(json!({"justification": "no purpose given"}))).await?;
    show("DPO resolves without a purpose", s, &v);
    let (s, v) = d.call(&dpo, "POST", &resolve, Some(json!({"purpose": "marketing", "justification": "newsletter"}))).await?;
    show("DPO resolves for an undeclared purpose", s, &v);
    let (s, v) = d
        .call(&dpo, "POST", &resolve, Some(json!({"purpose": "subject_access_request", "justification": "SAR #2026-117 from the learner"})))
        .await?;
    show("DPO resolves for subject_access_request (audited)", s, &v);
    let (s, v) = d.call("not-a-token", "GET", "/v1/audit", None).await?;
    show("a caller without a valid token", s, &v);

    if args.spine {
        anyhow::ensure!(cohort.len() >= 2, "the batch issued no pseudonyms");
        spine(&settings, &cohort, &pseudonym).await?;
    }

    step("An auditor reviews who touched this learner, and why");
    let (s, v) = d.call(&auditor, "GET", &format!("/v1/audit?target={pseudonym}"), None).await?;
    println!("  GET /v1/audit?target=<pseudonym> -> {}", s.as_u16());
    for e in v["entries"].as_array().into_iter().flatten() {
        println!(
            "    seq={:<5} actor={:<12} action={:<20} outcome={:<9} purpose={}",
            e["seq"],
            e["actor"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["outcome"].as_str().unwrap_or(""),
            e["purpose"].as_str().unwrap_or("-")
        );
    }
    let (s, v) = d.call(&auditor, "GET", "/v1/audit/verify", None).await?;
    show("GET /v1/audit/verify", s, &v);

    if args.tamper {
        step("Tampering: the database owner rewrites one audit row behind the trigger's back");
        let admin = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.admin_url)).await?;
        let seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_log WHERE action = 'pseudonym.resolve' AND outcome = 'success'")
            .fetch_one(&admin)
            .await?;
        let mut tx = admin.begin().await?;
        sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await?;
        sqlx::query("UPDATE audit_log SET purpose = 'learner_support' WHERE seq = $1").bind(seq).execute(&mut *tx).await?;
        tx.commit().await?;
        println!("  UPDATE audit_log SET purpose = 'learner_support' WHERE seq = {seq}   (as superuser)");
        let (s, v) = d.call(&auditor, "GET", "/v1/audit/verify", None).await?;
        show("GET /v1/audit/verify", s, &v);
    }

    stop.stop();
    server.await??;
    pool.close().await;
    step("Explore further");
    println!("  cargo run -- serve                                  # the API on {}", settings.listen);
    println!("  TOKEN=$(cargo run -q -- token mint --sub me --role dpo --institution uni-north)");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{}/v1/audit | jq", settings.listen);
    println!("  curl -s http://{}/openapi.json | jq '.paths | keys'", settings.listen);
    println!("  cargo run -- audit verify                           # exit 0 when the chain is intact");
    println!("  cargo run -- taxonomy check                         # breaking taxonomy changes, found in the views' SQL");
    println!("  cargo run --release -- bench pseudonyms             # the figures in BENCHMARKS.md (also: bench lander)");
    Ok(ExitCode::SUCCESS)
}

/// A released count as the demo prints it: its value, or why it is withheld (`<n` a small cell
/// under the institution's `min_cell`, `(x)` everyone of a small group (`extreme_share`), `(c)`
/// complementary, `(d)` derived from a withheld cell, `(s)` withheld earlier in a live stream).
pub(super) fn released(c: &crate::serve::disclosure::Cell<u64>, min_cell: u64) -> String {
    use crate::serve::disclosure::Reason;
    match (c.value(), c.suppressed()) {
        (Some(v), _) => v.to_string(),
        (None, Some(Reason::ExtremeShare)) => "(x)".into(),
        (None, Some(Reason::Complementary)) => "(c)".into(),
        (None, Some(Reason::DerivedFromWithheld)) => "(d)".into(),
        (None, Some(Reason::Sticky)) => "(s)".into(),
        // `small_group` withholds statistics, not counts: a group under `min_cell` all the same.
        (None, Some(Reason::SmallCell | Reason::SmallGroup) | None) => format!("<{min_cell}"),
    }
}

/// The most replayed released buckets of `course` over `range` (at most `n`), through the read
/// path (`Serve::replays`, disclosure control included), most replays first; a bucket whose
/// replays are withheld is not ranked.
pub(super) async fn top_segments(
    serve: &crate::serve::Serve,
    course: &crate::serve::Ident,
    range: &crate::serve::DateRange,
    t: &crate::serve::Thresholds,
    n: usize,
) -> Vec<(String, crate::serve::replays::ReplayBucket)> {
    let mut out = Vec::new();
    for content in serve.contents(course).await.unwrap_or_default() {
        let Ok(id) = crate::serve::Ident::parse("content_id", &content) else { continue };
        let Ok(r) = serve.replays(course, &id, range, t).await else { continue };
        out.extend(r.body().buckets.iter().filter(|b| b.replays.value().is_some()).map(|b| (content.clone(), b.clone())));
    }
    out.sort_by_key(|(_, b)| std::cmp::Reverse(b.replays.value()));
    out.truncate(n);
    out
}

fn redact_url(settings: &Settings) -> String {
    let url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();
    match url.rsplit_once('/') {
        Some((_, db)) => format!(".../{db}"),
        None => "(configured)".into(),
    }
}

/// The event spine on real Apache Kafka and chDB: a cohort's events through the lander.
async fn spine(settings: &Settings, cohort: &[String], withdrawn: &str) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    step("Events through Kafka, governed by the lander, into ClickHouse");
    let wh = crate::warehouse::Warehouse::open(settings)?;
    let result = async {
        let applied = crate::warehouse::migrate::run(&wh, &settings.warehouse.migrations_dir).await?;
        println!("  clickhouse: {}  migrations applied now: {applied:?}", wh.version().await?);
        let lander = crate::app::lander::build(settings, wh.clone()).await?;
        let stats = lander.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(lander.run(async move {
            let _ = stopped.await;
        }));
        let producer: FutureProducer = crate::envelope::producer_config(&settings.kafka.brokers, &settings.kafka.produce_compression).create()?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut events = Vec::new();
        for (i, l) in cohort.iter().enumerate() {
            let cohort_id = if i % 2 == 0 { "cohort-a" } else { "cohort-b" };
            let ev = |t: &str, pos: Option<u32>, k: i64| {
                json!({"event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": t, "learner_id": l,
                       "session_id": format!("s-{i}"), "course_id": "cs101", "content_id": "lecture-3", "cohort_id": cohort_id,
                       "institution_id": "uni-north", "position_sec": pos, "client_ts": now - 600_000 + k * 30_000, "props": {"player": "web"}})
            };
            events.push(ev("session.start", None, 0));
            events.push(ev("content.start", Some(0), 1));
            for k in 0..(4 + i % 6) as i64 {
                events.push(ev("session.heartbeat", None, 2 + k));
            }
            // The confusing segment: pauses and replays around 1:35.
            if i % 3 != 0 {
                events.push(ev("interact.pause", Some(93 + (i % 5) as u32), 8));
                events.push(ev("interact.replay", Some(95), 9));
            }
            if i % 4 != 3 {
                events.push(ev("content.complete", Some(600), 10));
            }
            if i % 5 == 0 {
                events.push(ev("assess.submit", None, 11));
            }
        }
        // What the gate must refuse: a withdrawn learner, an unknown pseudonym, a protected attribute, a bad version.
        let mut bad = vec![
            json!({"event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "content.view", "learner_id": withdrawn,
                   "course_id": "cs101", "cohort_id": "cohort-a", "institution_id": "uni-north", "client_ts": now}),
            json!({"event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "content.view", "learner_id": uuid::Uuid::new_v4(),
                   "course_id": "cs101", "cohort_id": "cohort-a", "institution_id": "uni-north", "client_ts": now}),
            json!({"event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": "content.view", "learner_id": cohort[0],
                   "course_id": "cs101", "cohort_id": "cohort-a", "institution_id": "uni-north", "client_ts": now, "props": {"gender": "f"}}),
            json!({"event_id": uuid::Uuid::new_v4(), "event_version": "1.0", "event_type": "content.view", "learner_id": cohort[1],
                   "course_id": "cs101", "cohort_id": "cohort-a", "institution_id": "uni-north", "client_ts": now}),
        ];
        let good = events.len();
        events.append(&mut bad);
        let t0 = Instant::now();
        for e in &events {
            let key = e["learner_id"].as_str().unwrap_or_default().to_owned();
            let payload = serde_json::to_vec(e)?;
            producer
                .send(FutureRecord::to(&settings.kafka.events_topic).key(&key).payload(&payload), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)?;
        }
        println!("  produced {} events for {} learners to {} ({} valid, 4 the gate must refuse)", events.len(), cohort.len(), settings.kafka.events_topic, good);
        while stats.landed.load(std::sync::atomic::Ordering::Relaxed) + stats.rejected.load(std::sync::atomic::Ordering::Relaxed) < events.len() as u64 {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "the lander did not land the demo events");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  landed {} and dead-lettered {} in {:.1}s (freshness of the last batch {} ms)",
            stats.landed.load(std::sync::atomic::Ordering::Relaxed),
            stats.rejected.load(std::sync::atomic::Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
            stats.last_freshness_ms.load(std::sync::atomic::Ordering::Relaxed)
        );
        let _ = stop.send(());
        handle.await??;
        // What an instructor is shown: the rollups through the read path (disclosure control).
        let serve = crate::serve::Serve::new(wh.clone(), crate::serve::Config::load(&settings.policy_dir)?)?;
        let course = crate::serve::Ident::parse("course_id", "cs101")?;
        let t = serve.thresholds(&["uni-north".to_owned()]);
        let today = chrono::Utc::now().date_naive();
        let range = crate::serve::DateRange { from: today - chrono::Duration::days(27), to: today };
        let f = serve.funnel(&course, &range, &t).await?;
        let legend = format!("withheld: <{} small cell, (x) everyone of a small group", t.min_cell);
        println!("  funnel of cs101 as released (GET /v1/courses/cs101/funnel; {legend}):");
        for r in &f.body().cohorts {
            let (k, m) = (&r.values, t.min_cell);
            let [e, s, c, a] = [&k.enrolled, &k.steps.started, &k.steps.completed, &k.steps.assessed].map(|x| released(x, m));
            println!("    {:<9} enrolled={e} started={s} completed={c} assessed={a}", r.cohort_id);
        }
        if let Some((content, b)) = top_segments(&serve, &course, &range, &t, 1).await.first() {
            println!(
                "  most replayed segment (GET /v1/content/{content}/replays): {}s..{}s: {} replays, {} pauses by {} learners",
                b.position_sec,
                b.position_sec + 10,
                released(&b.replays, t.min_cell),
                released(&b.pauses, t.min_cell),
                released(&b.learners, t.min_cell)
            );
        }
        println!("  dead letters go to {} with a typed reason (no_consent, unknown_pseudonym, protected_attribute, unknown_version)", settings.kafka.dlq_topic);
        anyhow::Ok(())
    }
    .await;
    wh.close();
    result
}
