//! The audit log: append-only for the runtime role, tamper-evident for everyone.
mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

async fn some_activity(app: &TestApp, n: usize) -> Vec<String> {
    let mut ps = Vec::new();
    for i in 0..n {
        ps.push(app.issue("uni-a", &format!("S-{i}"), json!({"name": format!("N{i}")})).await);
    }
    ps
}

fn cli_verify(app: &TestApp) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
        .args(["audit", "verify"])
        .env("LEARNVAULT_DATABASE_URL", secrecy::ExposeSecret::expose_secret(&app.settings.database.url))
        .env("LEARNVAULT_MASTER_KEY", secrecy::ExposeSecret::expose_secret(&app.master.to_base64()))
        .env("LEARNVAULT_AUDIT_CHECKPOINT_DIR", app.settings.audit_checkpoint_path())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `learnvault audit verify` exits 2 (a broken chain) and says each of `says`.
fn cli_reports_broken(app: &TestApp, says: &[&str]) {
    let (code, out) = cli_verify(app);
    assert_eq!(code, 2, "{out}");
    for s in says {
        assert!(out.contains(s), "{s}: {out}");
    }
}

#[tokio::test]
async fn an_altered_row_is_reported_with_its_sequence_number() {
    let app = TestApp::spawn().await;
    some_activity(&app, 6).await;
    assert_eq!(app.verify().await["intact"], true);
    assert_eq!(cli_verify(&app).0, 0);
    // A superuser bypasses the trigger and rewrites history.
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 4").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["first_broken_seq"].as_i64(), v["reason"].as_str()), (Some(false), Some(4), Some("hash_mismatch")));
    cli_reports_broken(&app, &["seq 4"]);
}

#[tokio::test]
async fn a_deleted_row_is_reported_with_its_sequence_number() {
    let app = TestApp::spawn().await;
    some_activity(&app, 5).await;
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let v = app.verify().await;
    assert_eq!((v["first_broken_seq"].as_i64(), v["reason"].as_str()), (Some(3), Some("missing_row")));
    // Deleting the tail and re-chaining a forged row is caught by prev_hash.
    cli_reports_broken(&app, &["seq 3"]);
}

#[tokio::test]
async fn the_runtime_role_cannot_rewrite_or_bypass_the_log() {
    let app = TestApp::spawn().await;
    some_activity(&app, 1).await;
    let url = secrecy::ExposeSecret::expose_secret(&app.settings.database.url).to_owned();
    let as_app = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete",
        "SET session_replication_role = replica",
        "UPDATE consent_events SET granted = true",
    ] {
        let r = sqlx::query(sql).execute(&as_app).await;
        assert!(r.is_err(), "runtime role could run: {sql}");
    }
    // Even the owner goes through the trigger unless it is explicitly bypassed.
    let e = sqlx::query("DELETE FROM audit_log").execute(&app.admin).await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = sqlx::query("TRUNCATE audit_log").execute(&app.admin).await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert_eq!(app.verify().await["intact"], true);
}

#[tokio::test]
async fn concurrent_writers_in_two_processes_keep_one_linear_chain() {
    let a = Arc::new(TestApp::spawn().await);
    let b = Arc::new(a.sibling().await);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 | 1 => {
                    let (s, _) = app
                        .post("/v1/pseudonyms", &app.lms("uni-a"), json!({"institution": "uni-a", "external_id": format!("c-{i}")}))
                        .await;
                    assert!(s.is_success());
                }
                2 => {
                    let (s, _) = app.post("/v1/pseudonyms", "bad-token", json!({})).await;
                    assert_eq!(s, StatusCode::UNAUTHORIZED);
                }
                _ => {
                    let items: Vec<Value> = (0..20).map(|j| json!({"institution": "uni-a", "external_id": format!("b-{i}-{j}")})).collect();
                    let (s, _) = app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": items})).await;
                    assert!(s.is_success());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.count("SELECT count(*) FROM audit_log").await, 400);
    assert_eq!(a.count("SELECT max(seq) FROM audit_log").await, 400, "gap-free");
    let v = b.verify().await;
    assert_eq!((v["intact"].as_bool(), v["entries"].as_i64()), (Some(true), Some(400)));
}

#[tokio::test]
async fn auditors_filter_and_page_within_their_institutions() {
    let app = TestApp::spawn().await;
    let ps = some_activity(&app, 3).await;
    app.issue("uni-b", "other", json!({})).await;
    let dpo = app.dpo("uni-a");
    app.post(&format!("/v1/pseudonyms/{}/resolve", ps[1]), &dpo, json!({"purpose": "safeguarding", "justification": "why"})).await;
    app.post(&format!("/v1/pseudonyms/{}/resolve", ps[1]), &dpo, json!({"purpose": "nope", "justification": "why"})).await;
    let auditor = app.auditor();

    let (s, v) = app.get(&format!("/v1/audit?target={}", ps[1]), &auditor).await;
    assert_eq!(s, StatusCode::OK);
    let actions: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["pseudonym.issue", "pseudonym.resolve", "pseudonym.resolve"]);
    let (_, v) = app.get("/v1/audit?actor=dpo-test&outcome=denied", &auditor).await;
    let e = &v["entries"].as_array().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["purpose"], "nope");
    let (_, v) = app.get("/v1/audit?action=pseudonym.resolve&outcome=success", &auditor).await;
    assert_eq!(v["entries"][0]["justification"], "why");
    assert_eq!(v["entries"][0]["purpose"], "safeguarding");

    // Keyset pagination covers everything exactly once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let (_, v) = app.get(&format!("/v1/audit?limit=2&after={after}&action=pseudonym.issue"), &auditor).await;
        for e in v["entries"].as_array().unwrap() {
            seen.push(e["seq"].as_i64().unwrap());
        }
        match v["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // Time range: nothing in the future.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, v) = app.get(&format!("/v1/audit?from={future}"), &auditor).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 0);
    let past = "2020-01-01T00:00:00Z";
    let (_, v) = app.get(&format!("/v1/audit?from={past}&to={future}&action=pseudonym.issue"), &auditor).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 4);

    // An auditor of uni-b sees only uni-b rows.
    let scoped = app.token("aud-b", &["auditor"], &["uni-b"]);
    let (_, v) = app.get("/v1/audit?action=pseudonym.issue", &scoped).await;
    let insts: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["institution"].as_str().unwrap()).collect();
    assert_eq!(insts, ["uni-b"]);

    // Bad filters are 400 with a code.
    for q in ["limit=0", "limit=5000", "outcome=maybe", "from=yesterday", "target=xyz", "bogus=1"] {
        let (s, v) = app.get(&format!("/v1/audit?{q}"), &auditor).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert!(v["error"]["code"].is_string());
    }
}

/// As a superuser behind the trigger: run `sql`.
async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// As a superuser behind the trigger: recompute every hash from `from_seq` on,
/// so the chain is self-consistent again (what a careful forger does).
async fn rehash_from(app: &TestApp, from_seq: i64) {
    use learnvault::audit::chain;
    let rows: Vec<(i64, chrono::DateTime<chrono::Utc>, uuid::Uuid, String, Vec<String>, Option<String>, String, Option<uuid::Uuid>, Option<String>, Option<String>, String, Value)> =
        sqlx::query_as(
            "SELECT seq, at, request_id, actor, roles, institution_id, action, target_pseudonym, purpose, justification, outcome, detail
             FROM audit_log ORDER BY seq",
        )
        .fetch_all(&app.admin)
        .await
        .unwrap();
    let mut prev: Vec<u8> = match rows.iter().position(|r| r.0 == from_seq) {
        Some(0) => chain::GENESIS.to_vec(),
        _ => sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1").bind(from_seq - 1).fetch_one(&app.admin).await.unwrap(),
    };
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    for r in rows.iter().filter(|r| r.0 >= from_seq) {
        let h = chain::hash(
            &prev,
            &chain::Row {
                seq: r.0,
                at: r.1,
                request_id: r.2,
                actor: &r.3,
                roles: &r.4,
                institution: r.5.as_deref(),
                action: &r.6,
                target: r.7,
                purpose: r.8.as_deref(),
                justification: r.9.as_deref(),
                outcome: &r.10,
                detail: &r.11,
            },
        );
        sqlx::query("UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1")
            .bind(r.0)
            .bind(&prev)
            .bind(h.to_vec())
            .execute(&mut *tx)
            .await
            .unwrap();
        prev = h.to_vec();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_truncated_tail_is_caught_by_the_signed_checkpoint() {
    let app = TestApp::spawn().await;
    some_activity(&app, 6).await;
    // A verification signs a checkpoint of the head (seq 6), outside PostgreSQL.
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["checkpoint"]["seq"].as_i64()), (Some(true), Some(6)), "{v}");
    assert_eq!(cli_verify(&app).0, 0);

    // A superuser deletes the last 3 rows behind the trigger: what remains is a perfect chain.
    tamper(&app, "DELETE FROM audit_log WHERE seq > 3").await;
    assert!(learnvault::audit::verify(&app.state.pool).await.unwrap().intact, "the chain alone cannot see it");
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["reason"].as_str(), v["first_broken_seq"].as_i64()), (Some(false), Some("truncated"), Some(4)), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("rows 4..=6 are missing"), "{v}");
    cli_reports_broken(&app, &["truncated", "rows 4..=6 are missing"]);

    // New rows appended after the truncation do not paper over it: seq 6 no longer has its signed hash.
    some_activity(&app, 0).await;
    app.issue("uni-a", "late-1", json!({})).await;
    app.issue("uni-a", "late-2", json!({})).await;
    app.issue("uni-a", "late-3", json!({})).await;
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["reason"].as_str()), (Some(false), Some("checkpoint_mismatch")), "{v}");
    // And the checkpoint endpoint refuses to sign a head that does not extend the signed one.
    let (s, e) = app.get("/v1/audit/checkpoint", &app.auditor()).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("audit_chain_broken")), "{e}");
}

#[tokio::test]
async fn a_rewritten_and_rehashed_chain_is_caught_by_the_signed_checkpoint() {
    let app = TestApp::spawn().await;
    some_activity(&app, 6).await;
    assert_eq!(app.verify().await["intact"], true);
    tamper(&app, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3").await;
    rehash_from(&app, 3).await;
    assert!(learnvault::audit::verify(&app.state.pool).await.unwrap().intact, "self-consistent after the rehash");
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["reason"].as_str(), v["first_broken_seq"].as_i64()), (Some(false), Some("checkpoint_mismatch"), Some(1)), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("rows 1..=6 were rewritten"), "{v}");
    cli_reports_broken(&app, &["checkpoint_mismatch"]);
}

#[tokio::test]
async fn checkpoints_are_served_signed_and_a_foreign_one_fails_verification() {
    let app = TestApp::spawn().await;
    some_activity(&app, 3).await;
    let (s, v) = app.get("/v1/audit/checkpoint", &app.auditor()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (head, _) = learnvault::audit::checkpoint::check(&v["checkpoint"], v["public_key"].as_str().unwrap()).expect("signed by the served key");
    assert_eq!(head.seq, 3);
    let h: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 3").fetch_one(&app.admin).await.unwrap();
    assert_eq!(head.hash, hex::encode(h));
    let (s, _) = app.get("/v1/audit/checkpoint", &app.lms("uni-a")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Someone drops a checkpoint signed by another key into the store: verification fails naming it.
    let other = learnvault::audit::checkpoint::Anchor::derive(&learnvault::vault::keys::MasterKey::generate(), app.settings.audit_checkpoint_path());
    other.store(&learnvault::audit::checkpoint::Head { seq: 2, hash: head.hash.clone(), at: head.at }).unwrap();
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["reason"].as_str()), (Some(false), Some("checkpoint_untrusted")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("00000000000000000002.json"), "{v}");
    assert_eq!(cli_verify(&app).0, 2);
}

#[tokio::test]
async fn pruning_below_a_signed_checkpoint_keeps_the_chain_verifiable() {
    let app = TestApp::spawn().await;
    some_activity(&app, 4).await;
    // The first four rows are seven years old (moved back, chain rehashed, as if written then).
    tamper(&app, "UPDATE audit_log SET at = at - interval '7 years' WHERE seq <= 4").await;
    rehash_from(&app, 1).await;
    let v = app.verify().await; // signs seq 4
    assert_eq!(v["checkpoint"]["seq"], json!(4), "{v}");
    some_activity(&app, 0).await;
    app.issue("uni-a", "recent-1", json!({})).await;
    app.issue("uni-a", "recent-2", json!({})).await;
    assert_eq!(app.verify().await["checkpoint"]["seq"], json!(6));

    // The runtime role cannot delete, nor prune rows within retention.
    let url = secrecy::ExposeSecret::expose_secret(&app.settings.database.url).to_owned();
    let as_app = sqlx::PgPool::connect(&url).await.unwrap();
    assert!(sqlx::query("DELETE FROM audit_log WHERE seq <= 4").execute(&as_app).await.is_err());
    assert!(sqlx::query("SELECT audit_log_prune(5)").execute(&as_app).await.is_err(), "seq 5 is within retention");
    assert!(sqlx::query("UPDATE audit_retention SET days = 1").execute(&as_app).await.is_err());

    let pruned = learnvault::audit::prune(&as_app, &app.state.anchor).await.unwrap();
    assert_eq!(pruned, Some((4, 4)));
    assert_eq!(app.count("SELECT min(seq) FROM audit_log").await, 5);
    let v = app.verify().await;
    assert_eq!((v["intact"].as_bool(), v["pruned_below"].as_i64(), v["entries"].as_i64()), (Some(true), Some(4), Some(2)), "{v}");
    assert_eq!(cli_verify(&app).0, 0);
    // Pruning again finds nothing more past retention.
    assert_eq!(learnvault::audit::prune(&as_app, &app.state.anchor).await.unwrap(), None);
}
