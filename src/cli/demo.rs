//! `learnvault demo`: starts the API in-process on the local PostgreSQL and walks
//! through what each user does, printing every request and answer.

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::vault::keys::MasterKey;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Also show tamper detection: alter one audit row as the database owner
    /// (bypassing the append-only trigger) and verify again. Leaves the chain broken.
    #[arg(long)]
    tamper: bool,
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
    crate::db::migrate(&settings).await.context("migrating (is PostgreSQL running? ops/postgres.sh starts it)")?;
    let state = crate::app::build_state(&settings).await?;
    let pool = state.pool.clone();
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::app::serve(state, listener, async move {
        let _ = stopped.await;
    }));
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

    step("Consent, per purpose, with append-only history");
    let (s, v) = d
        .call(&lms, "PUT", &format!("/v1/pseudonyms/{pseudonym}/consent"), Some(json!({"consents": {"analytics": true, "recommendations": false}})))
        .await?;
    show("PUT  .../consent {analytics: true, recommendations: false}", s, &v["current"]);
    let (s, v) = d
        .call(&lms, "PUT", &format!("/v1/pseudonyms/{pseudonym}/consent"), Some(json!({"consents": {"recommendations": true}})))
        .await?;
    show("PUT  .../consent {recommendations: true}", s, &json!({"history_len": v["history"].as_array().map(Vec::len)}));

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
        let admin = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.admin_database_url)).await?;
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

    let _ = stop.send(());
    server.await??;
    pool.close().await;
    step("Explore further");
    println!("  cargo run -- serve                                  # the API on {}", settings.listen);
    println!("  TOKEN=$(cargo run -q -- token mint --sub me --role dpo --institution uni-north)");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{}/v1/audit | jq", settings.listen);
    println!("  curl -s http://{}/openapi.json | jq '.paths | keys'", settings.listen);
    println!("  cargo run -- audit verify                           # exit 0 when the chain is intact");
    println!("  cargo run --release -- bench pseudonyms             # the figures in BENCHMARKS.md");
    Ok(ExitCode::SUCCESS)
}

fn redact_url(settings: &Settings) -> String {
    let url = secrecy::ExposeSecret::expose_secret(&settings.database_url).to_owned();
    match url.rsplit_once('/') {
        Some((_, db)) => format!(".../{db}"),
        None => "(configured)".into(),
    }
}
