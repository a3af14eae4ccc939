//! Issue 13, point 1, on real Apache Kafka, PostgreSQL and the embedded engine: the statements
//! Open edX's event-routing-backends emits are accepted (mapped, or acknowledged and
//! dead-lettered with their statement id), a statement unusable alone does not refuse its
//! neighbours, and `account.homePage` must be an LMS declared for the token's institution.
mod common;

use common::spine::{events_of, Spine};
use learnvault::gateway::xapi::{self, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The actor name every event-routing-backends fixture carries (an anonymous user id).
const ERB_ACTOR: &str = "32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb";

async fn post(app: &common::TestApp, token: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
    let resp = app
        .client
        .post(format!("{}/xapi/statements", app.base))
        .bearer_auth(token)
        .header("X-Experience-API-Version", "1.0.3")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let refused = resp.headers().get("x-learnvault-refused").map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (status, refused, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The fixtures copied from openedx/event-routing-backends, by file name. Each file's statement
/// ids are replaced by fresh ones (consistently, `context.statement` included): upstream reuses
/// one id across several fixtures, and an LRS stores an id once.
fn erb_fixtures() -> Vec<(String, Value)> {
    common::erb::erb_paths()
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut text = serde_json::to_string(&v).unwrap();
            let statements = if let Value::Array(a) = &v { a.clone() } else { vec![v.clone()] };
            for st in statements {
                if let Some(id) = st["id"].as_str() {
                    text = text.replace(id, &uuid::Uuid::new_v4().to_string());
                }
            }
            (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).unwrap())
        })
        .collect()
}


#[tokio::test]
async fn every_statement_shape_open_edx_emits_is_accepted_one_request_per_fixture() {
    let (spine, gw, lms) = Spine::with_gateway(false).await;
    let fixtures = erb_fixtures();
    assert_eq!(fixtures.len(), 77, "every expected-output fixture of event-routing-backends");
    let mut mapped: BTreeSet<String> = BTreeSet::new();
    let mut unmapped: BTreeMap<String, &'static str> = BTreeMap::new();
    for (name, body) in &fixtures {
        // What the mapping makes of each statement (the server must agree, below).
        for answer in xapi::map_body(body, None, chrono::Utc::now()).unwrap() {
            match answer.unwrap_or_else(|r| panic!("{name}: {}", r.error)) {
                Outcome::Mapped(m) => mapped.insert(m.statement_id.to_string()),
                Outcome::Unmapped { statement_id, reason, .. } => unmapped.insert(statement_id.to_string(), reason).is_none(),
            };
        }
        let (s, refused, ids) = post(&gw, &lms, body).await;
        assert_eq!(s, StatusCode::OK, "{name} refused: {ids}");
        assert_eq!(refused, None, "{name}: a statement refused alone");
        let sent: Vec<Value> = match body {
            Value::Array(a) => a.iter().map(|st| st["id"].clone()).collect(),
            st => vec![st["id"].clone()],
        };
        assert_eq!(ids, json!(sent), "{name}: every statement acknowledged, by its id");
    }
    // The shapes refused before (GroupActivity, a bare UUID in grouping, 0-point problems) are mapped.
    assert_eq!(mapped.len() + unmapped.len(), 90, "statements in the 77 files");
    assert_eq!(mapped.len(), 59, "events from the 90 statements");
    assert_eq!(unmapped.values().filter(|r| **r == "no_course").count(), 1, "{unmapped:?}");
    assert!(unmapped.values().all(|r| matches!(*r, "unmapped_verb" | "no_course")), "{unmapped:?}");
    assert!(unmapped.values().any(|r| *r == "no_course"), "the required-data-only statement without an object id");

    // Kafka: one event per mapped statement (event_id = statement id), one dead letter per
    // unmapped one with its reason and statement id; the actor nowhere.
    let records = spine.scan(&spine.settings.kafka.events_topic, Duration::from_secs(3)).await;
    let events = events_of(&records);
    let landed: BTreeSet<String> = events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(events.len(), mapped.len(), "{} events for {} mapped statements", events.len(), mapped.len());
    assert_eq!(landed, mapped);
    assert_eq!(events.iter().map(|e| e["learner_id"].to_string()).collect::<BTreeSet<_>>().len(), 1, "one learner");
    let dl = spine.dead_letters(unmapped.len(), Duration::from_secs(20)).await;
    assert_eq!(dl.len(), unmapped.len());
    let dead: BTreeMap<String, String> =
        dl.iter().map(|d| (d["payload"]["statement_id"].as_str().unwrap().to_owned(), d["reason"].as_str().unwrap().to_owned())).collect();
    assert_eq!(dead, unmapped.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>());
    let mut all = records;
    all.extend(spine.scan(&spine.settings.kafka.dlq_topic, Duration::from_secs(2)).await);
    for m in &all {
        assert!(!m.contains(ERB_ACTOR), "actor name in Kafka: {m}");
    }
}

fn statement(name: &str, home_page: &str, account: &str) -> Value {
    let path = format!("{}/tests/fixtures/xapi/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["id"] = json!(uuid::Uuid::new_v4());
    v["actor"] = json!({"objectType": "Agent", "account": {"homePage": home_page, "name": account}});
    v
}

#[tokio::test]
async fn an_unusable_statement_does_not_refuse_its_neighbours_which_land() {
    let (spine, gw, lms) = Spine::with_gateway(true).await;
    let lander = spine.start_lander().await;
    const NAME: &str = "edx-batch-7731";
    let lms_home = "https://lms.example.edu";
    let valid: Vec<Value> = ["openedx_video_played", "openedx_video_paused", "openedx_problem_check"].iter().map(|n| statement(n, lms_home, NAME)).collect();
    // Valid as a statement (actor, verb, object), unusable: a raw score above its max.
    let mut bad = statement("openedx_problem_check", lms_home, NAME);
    bad["result"]["score"] = json!({"raw": 5, "min": 0, "max": 1});
    let body = json!([valid[0], valid[1], bad, valid[2]]);
    let (s, refused, ids) = post(&gw, &lms, &body).await;
    assert_eq!(s, StatusCode::OK, "{ids}");
    assert_eq!(ids, json!([valid[0]["id"], valid[1]["id"], valid[2]["id"]]), "the ids of the statements acknowledged");
    assert_eq!(refused.as_deref(), Some("2:xapi_invalid"));

    // The three valid statements land, exactly.
    assert_eq!(spine.wait_rows(3, Duration::from_secs(30)).await, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = spine.wh.query("SELECT toString(event_id) AS id FROM events.learning_events ORDER BY id", &[]).await.unwrap();
    let mut want: Vec<&str> = valid.iter().map(|v| v["id"].as_str().unwrap()).collect();
    want.sort();
    assert_eq!(rows.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), want);

    // The unusable one is dead-lettered with its reason, path and statement id, never the actor.
    let dl = spine.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["reason"], "xapi_invalid");
    assert_eq!(dl[0]["payload"]["statement_id"], bad["id"]);
    assert_eq!(dl[0]["payload"]["path"], "[2].result.score.raw");
    for (k, v) in spine.records(&spine.settings.kafka.dlq_topic, Duration::from_secs(2)).await {
        let text = format!("{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
        assert!(!text.contains(NAME) && !text.contains("homePage"), "identity in a dead letter: {text}");
    }
    // Structurally unusable input still refuses the request, nothing produced.
    let mut no_actor = statement("openedx_video_played", lms_home, NAME);
    no_actor.as_object_mut().unwrap().remove("actor");
    let (s, _, v) = post(&gw, &lms, &json!([valid[0], no_actor])).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("xapi_invalid")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("[1].actor"), "{v}");
    // A request whose every statement is unusable alone is refused too, nothing produced.
    let (s, _, v) = post(&gw, &lms, &json!([bad])).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("xapi_invalid")), "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spine.messages_in(&spine.settings.kafka.dlq_topic), 1, "no dead letter for a request refused whole");
    assert_eq!(spine.count("SELECT count() AS n FROM events.learning_events").await, 3);
    lander.stop().await;
}

#[tokio::test]
async fn account_home_page_must_be_an_lms_declared_for_the_institution() {
    let (spine, gw, lms) = Spine::with_gateway(false).await;
    // Two LMSs of uni-a (policies/lms.yaml) send the same account name for two people.
    const SHARED: &str = "shared-name-5521";
    let openedx = statement("openedx_video_played", "https://lms.example.edu/", SHARED);
    let moodle = statement("openedx_video_paused", "https://moodle.example.edu", SHARED);
    let stranger = statement("openedx_video_seeked", "https://lms.other-university.example", SHARED);

    // Alone, an undeclared home page refuses the request: nothing produced, no pseudonym.
    let (s, _, v) = post(&gw, &lms, &stranger).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("xapi_home_page")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("actor.account.homePage"), "{v}");
    assert!(!v.to_string().contains(SHARED) && !v.to_string().contains("other-university"), "no value echoed: {v}");
    assert_eq!(gw.count("SELECT count(*) FROM learners").await, 0);
    // Another institution's token cannot use uni-a's LMS (uni-b declares none).
    let (s, _, v) = post(&gw, &gw.lms("uni-b"), &openedx).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("xapi_home_page")), "{v}");

    // In a batch: the declared two are accepted under two pseudonyms, the stranger refused alone.
    let (s, refused, ids) = post(&gw, &lms, &json!([openedx, moodle, stranger])).await;
    assert_eq!(s, StatusCode::OK, "{ids}");
    assert_eq!(ids, json!([openedx["id"], moodle["id"]]));
    assert_eq!(refused.as_deref(), Some("2:xapi_home_page"));
    let events = events_of(&spine.scan(&spine.settings.kafka.events_topic, Duration::from_secs(3)).await);
    assert_eq!(events.len(), 2, "{events:?}");
    let learner = |id: &Value| events.iter().find(|e| e["event_id"] == *id).unwrap()["learner_id"].as_str().unwrap().to_owned();
    let (a, b) = (learner(&openedx["id"]), learner(&moodle["id"]));
    assert_ne!(a, b, "two LMSs' equal names are two learners");
    // The un-prefixed LMS agrees with /v1/events; the other is namespaced by its prefix.
    assert_eq!(gw.issue("uni-a", SHARED, json!({})).await, a);
    assert_eq!(gw.issue("uni-a", &format!("moodle:{SHARED}"), json!({})).await, b);

    let dl = spine.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!((dl.len(), dl[0]["reason"].as_str()), (1, Some("xapi_home_page")), "{dl:?}");
    assert_eq!(dl[0]["payload"]["statement_id"], stranger["id"]);
    let text = serde_json::to_string(&dl).unwrap();
    assert!(!text.contains(SHARED) && !text.contains("other-university"), "{text}");
}
