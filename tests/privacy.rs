//! No plaintext identity at rest; ciphertexts are bound to their row.
mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn no_table_holds_the_external_id_email_or_name_in_plaintext() {
    let app = TestApp::spawn().await;
    let secrets = ["EXT-Zq81-unique", "zelda.quartz@example.edu", "Zelda Quartzington"];
    let p = app
        .issue("uni-a", secrets[0], json!({"name": secrets[2], "email": secrets[1]}))
        .await;
    // Exercise every path that writes: batch, consent, lookup, resolve, denials.
    app.post("/v1/pseudonyms/batch", &app.lms("uni-a"), json!({"items": [{"institution": "uni-a", "external_id": secrets[0], "identity": {"email": secrets[1]}}]}))
        .await;
    app.send("PUT", &format!("/v1/pseudonyms/{p}/consent"), Some(&app.lms("uni-a")), Some(json!({"consents": {"analytics": true}})))
        .await;
    app.post("/v1/pseudonyms/lookup", &app.dpo("uni-a"), json!({"institution": "uni-a", "external_id": secrets[0]})).await;
    let (s, _) = app
        .post(&format!("/v1/pseudonyms/{p}/resolve"), &app.dpo("uni-a"), json!({"purpose": "safeguarding", "justification": "check"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    app.post("/v1/pseudonyms/lookup", &app.lms("uni-a"), json!({"institution": "uni-a", "external_id": secrets[0]})).await;

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.admin)
    .await
    .unwrap();
    for t in ["learners", "institutions", "tombstones", "consent_events", "audit_log"] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    for t in &tables {
        // Every column of every row, as text (bytea as hex and as escaped text).
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(x)::text FROM \"{t}\" x"))
            .fetch_all(&app.admin)
            .await
            .unwrap();
        for row in rows {
            for s in secrets {
                assert!(!row.contains(s), "table {t} holds a plaintext identity field");
                assert!(!row.contains(&hex::encode(s)), "table {t} holds a hex-encoded identity field");
            }
        }
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let app = TestApp::spawn().await;
    let a = app.issue("uni-a", "A", json!({"name": "Alice Secretname"})).await;
    let b = app.issue("uni-a", "B", json!({"name": "Bob"})).await;
    // Copy A's wrapped key and ciphertext onto B's row (same institution, same keys).
    sqlx::query(
        "UPDATE learners SET wrapped_dek = src.wrapped_dek, identity_ct = src.identity_ct
         FROM learners src WHERE src.pseudonym = $1::uuid AND learners.pseudonym = $2::uuid",
    )
    .bind(&a)
    .bind(&b)
    .execute(&app.admin)
    .await
    .unwrap();
    let (s, v) = app
        .post(&format!("/v1/pseudonyms/{b}/resolve"), &app.dpo("uni-a"), json!({"purpose": "safeguarding", "justification": "x"}))
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!v.to_string().contains("Alice"), "{v}");
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM audit_log WHERE target_pseudonym = $1::uuid AND action = 'pseudonym.resolve'")
        .bind(&b)
        .fetch_one(&app.admin)
        .await
        .unwrap();
    assert_eq!(outcome, "error", "the failed re-identification is audited");
    // A itself still resolves.
    let (s, v) = app
        .post(&format!("/v1/pseudonyms/{a}/resolve"), &app.dpo("uni-a"), json!({"purpose": "safeguarding", "justification": "x"}))
        .await;
    assert_eq!((s, v["identity"]["name"].as_str()), (StatusCode::OK, Some("Alice Secretname")));
}

#[tokio::test]
async fn erased_pseudonyms_are_never_reissued_and_resolve_says_gone() {
    let app = TestApp::spawn().await;
    let p = app.issue("uni-a", "E-1", json!({"name": "Eve"})).await;
    // Erasure as the schema plans it (the DSR job of a later issue does this):
    // crypto-shred the row, keep a tombstone.
    let mut tx = app.admin.begin().await.unwrap();
    sqlx::query("INSERT INTO tombstones (pseudonym, institution_id, request_id) SELECT pseudonym, institution_id, gen_random_uuid() FROM learners WHERE pseudonym = $1::uuid")
        .bind(&p)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM learners WHERE pseudonym = $1::uuid").bind(&p).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let (s, v) = app
        .post(&format!("/v1/pseudonyms/{p}/resolve"), &app.dpo("uni-a"), json!({"purpose": "safeguarding", "justification": "x"}))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::GONE, Some("erased")));
    // The same pseudonym cannot come back, even by a direct insert.
    let err = sqlx::query(
        "INSERT INTO learners (pseudonym, institution_id, blind_index, index_key_version, wrapped_dek, wrap_key_version, identity_ct)
         VALUES ($1::uuid, 'uni-a', decode(repeat('ab', 32), 'hex'), 1, '\\x00', 1, '\\x00')",
    )
    .bind(&p)
    .execute(&app.admin)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("erased"), "{err}");
    // The learner re-enrolling gets a fresh pseudonym.
    assert_ne!(app.issue("uni-a", "E-1", json!({})).await, p);
}
