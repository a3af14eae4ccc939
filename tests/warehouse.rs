//! The embedded engine behind the warehouse port: migrations, views and their backfill.
mod common;

use learnvault::config::Settings;
use learnvault::warehouse::{migrate, Warehouse};
use serde_json::json;

fn settings(dir: &std::path::Path) -> Settings {
    Settings { warehouse: learnvault::config::WarehouseSettings { url: format!("chdb://{}", dir.display()), ..Default::default() }, ..Settings::default() }
}

fn events(n: usize, course: &str, day: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let types = ["content.start", "content.complete", "assess.submit", "session.heartbeat", "interact.replay"];
    for i in 0..n {
        let learner = uuid::Uuid::from_u128((i % 7) as u128 + 1);
        let row = json!({
            "server_ts": format!("{day} 10:{:02}:00.000", i % 60), "client_ts": format!("{day} 10:{:02}:00.000", i % 60),
            "event_id": uuid::Uuid::new_v4(), "event_version": "2.3", "event_type": types[i % types.len()],
            "learner_id": learner, "session_id": "s", "course_id": course, "content_id": "video-1",
            "cohort_id": if i % 2 == 0 { "c1" } else { "c2" }, "institution_id": "uni-a",
            "position_sec": 95, "props": {}
        });
        serde_json::to_writer(&mut out, &row).unwrap();
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn migrations_apply_once_and_views_backfill_history() {
    let dir = tempdir();
    let s = settings(&dir);
    let wh = Warehouse::open(&s).expect("embedded engine (run ops/install-chdb.sh)");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse");

    // Base table only first, with history in it; then the views arrive.
    let all = migrate::load(&migrations).unwrap();
    let base_only = dir.join("base-only");
    std::fs::create_dir_all(&base_only).unwrap();
    std::fs::write(base_only.join("0001_learning_events.sql"), &all[0].sql).unwrap();
    migrate::run(&wh, &base_only).await.unwrap();
    wh.insert("events.learning_events", "JSONEachRow", events(700, "cs101", "2026-11-20").into(), &[]).await.unwrap();

    let applied = migrate::run(&wh, &migrations).await.unwrap();
    assert_eq!(applied, all.iter().skip(1).map(|m| m.version).collect::<Vec<_>>());
    assert!(migrate::run(&wh, &migrations).await.unwrap().is_empty(), "idempotent");

    // New rows reach the views through the materialized views.
    wh.insert("events.learning_events", "JSONEachRow", events(70, "cs101", "2026-11-21").into(), &[]).await.unwrap();
    let funnel = wh
        .query(
            "SELECT event_date, uniqMerge(learners) AS enrolled, uniqMerge(started) AS started, uniqMerge(assessed) AS assessed
             FROM agg.funnel_by_cohort WHERE course_id = {course:String} GROUP BY event_date ORDER BY event_date",
            &[("course", "cs101".into())],
        )
        .await
        .unwrap();
    assert_eq!(funnel.len(), 2, "history (backfill) and new day (view): {funnel:?}");
    assert_eq!(funnel[0]["event_date"], "2026-11-20");
    assert_eq!(num(&funnel[0]["enrolled"]), 7);
    assert_eq!(num(&funnel[1]["enrolled"]), 7);
    assert_eq!(num(&funnel[0]["started"]), 7);
    let hb = wh
        .query("SELECT sum(heartbeat_seconds) AS s FROM agg.engagement_per_minute WHERE course_id = 'cs101'", &[])
        .await
        .unwrap();
    assert_eq!(num(&hb[0]["s"]), ((700 / 5 + 70 / 5) * 30) as u64);
    let activity = wh.query("SELECT sum(events) AS n FROM agg.learner_daily_activity", &[]).await.unwrap();
    assert_eq!(num(&activity[0]["n"]), 770);

    // A changed migration file is refused.
    let edited = dir.join("edited");
    std::fs::create_dir_all(&edited).unwrap();
    std::fs::write(edited.join("0001_learning_events.sql"), format!("{}\n-- edited", all[0].sql)).unwrap();
    let err = migrate::run(&wh, &edited).await.unwrap_err().to_string();
    assert!(err.contains("has changed"), "{err}");

    // User values are parameters, even hostile ones.
    let rows = wh.query("SELECT {v:String} AS v", &[("v", "x'); DROP TABLE events.learning_events; --".into())]).await.unwrap();
    assert_eq!(rows[0]["v"], "x'); DROP TABLE events.learning_events; --");
    assert_eq!(num(&wh.query("SELECT count() AS n FROM events.learning_events", &[]).await.unwrap()[0]["n"]), 770);
    wh.close();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lv-ch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// ClickHouse prints 64-bit integers as numbers or quoted strings depending on settings.
fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn taxonomy_check_passes_on_the_shipped_tree_and_names_the_view_a_rename_breaks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |policy_dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_learnvault"))
            .args(["taxonomy", "check", "--src", root.join("src").to_str().unwrap()])
            .env("LEARNVAULT_POLICY_DIR", policy_dir)
            .env("LEARNVAULT_CLICKHOUSE_MIGRATIONS_DIR", root.join("migrations/clickhouse"))
            .output()
            .unwrap()
    };
    let ok = run(&root.join("policies"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));

    // A client release renames cohort_id -> cohort and drops assess.submit.
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("taxonomy")).unwrap();
    let v23 = std::fs::read_to_string(root.join("policies/taxonomy/2.3.yaml")).unwrap();
    std::fs::write(dir.join("taxonomy/2.3.yaml"), &v23).unwrap();
    let v24 = v23
        .replace("version: \"2.3\"", "version: \"2.4\"")
        .replace("  cohort_id:", "  cohort:")
        .replace("  - assess.submit\n", "");
    std::fs::write(dir.join("taxonomy/2.4.yaml"), v24).unwrap();
    let bad = run(&dir);
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains("removes (or renames) field `cohort_id`, read by agg.funnel_by_cohort_mv"), "{out}");
    assert!(out.contains("drops event type `assess.submit`, read by agg.funnel_by_cohort_mv"), "{out}");
}
