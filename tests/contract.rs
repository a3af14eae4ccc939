//! The OpenAPI contract, checked by schemathesis (issue 13): the document at
//! `/openapi.json` lists every status each route answers, and its request schemas
//! state the constraints the server enforces. `st run --checks all` runs against a
//! real server (PostgreSQL, the embedded engine, Kafka: the API, the ingest gateway,
//! the subject-request worker) on this test's own database, engine path and topics,
//! with a token holding every role (`ops/schemathesis/schemathesis.toml`), and the
//! test fails with schemathesis's report on any failure. schemathesis comes from
//! PyPI, pinned with hashes, installed by `ops/schemathesis.sh` (`ops/test.sh` runs it).
mod common;

use common::TestApp;
use std::path::PathBuf;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The `st` that `ops/schemathesis.sh` installs (its pinned `VERSION`, under the cache dir).
fn schemathesis() -> PathBuf {
    let script = std::fs::read_to_string(format!("{ROOT}/ops/schemathesis.sh")).expect("ops/schemathesis.sh");
    let version = script.lines().find_map(|l| l.strip_prefix("VERSION=")).expect("VERSION= in ops/schemathesis.sh").trim();
    let cache = std::env::var_os("LEARNVAULT_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
            .join("learnvault")
    });
    let st = cache.join(format!("schemathesis-{version}/bin/st"));
    assert!(st.is_file(), "schemathesis {version} is not installed at {}: run ops/schemathesis.sh (ops/test.sh does)", st.display());
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_failure() {
    let st = schemathesis();
    let app = TestApp::spawn_with_warehouse().await;
    // One process with everything the routes need: the warehouse (read side, subject
    // requests, signals) and the gateway (ingest), as `serve` runs them.
    let state = learnvault::app::with_gateway(app.state.clone(), &app.settings).await.expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(learnvault::app::serve(state, listener, std::future::pending()));

    let auth = learnvault::auth::Authenticator::from_settings(&app.settings, &app.master).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ttl = Duration::from_secs(3600);
    // One principal holding every role of policies/roles.yaml (see ops/schemathesis/schemathesis.toml).
    let roles = ["lms", "dpo", "auditor", "instructor", "advisor", "content_author", "integrity_panel", "recommender", "admin"];
    let token = auth.mint_scoped("contract", &s(&roles), &s(&["uni-a"]), &s(&["cs101"]), ttl).unwrap();
    // Something to find: a learner with a pseudonym (schemathesis also issues its own).
    app.issue("uni-a", "S-1", serde_json::json!({"name": "Contract Learner"})).await;

    let reports = PathBuf::from(format!("{ROOT}/target/test-output/contract"));
    let _ = std::fs::remove_dir_all(&reports);
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::write(reports.join("openapi.json"), serde_json::to_vec_pretty(&learnvault::api::openapi_document()).unwrap()).unwrap();
    // Bounded (~1 minute); LV_CONTRACT_EXAMPLES and LV_CONTRACT_SEED explore further.
    let examples = std::env::var("LV_CONTRACT_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("LV_CONTRACT_SEED").unwrap_or_else(|_| "13".into());
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new(&st);
    cmd.args(["--no-color", "--config-file", &format!("{ROOT}/ops/schemathesis/schemathesis.toml"), "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed, "--workers", "2", "--request-timeout", "30"])
        .args(["--suppress-health-check", "too_slow", "--report", "junit"])
        .arg("--report-dir")
        .arg(&reports)
        .env("LV_CONTRACT_TOKEN", &token)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&reports);
    // Blocking, off the runtime's workers: the server under test keeps answering.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis ran {:.0?} (exit {:?}); junit report under {}", started.elapsed(), out.status.code(), reports.display());
    assert!(out.status.success(), "schemathesis found contract failures (exit {:?}):\n{stdout}\n{stderr}", out.status.code());
    // It ran the operations (a run that tested nothing must not pass).
    assert!(stdout.contains("passed") && !stdout.contains("No operations"), "schemathesis tested nothing:\n{stdout}\n{stderr}");
}
