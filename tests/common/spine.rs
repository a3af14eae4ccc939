//! Event-spine harness: real Apache Kafka (127.0.0.1:9092, started by ops/test.sh),
//! real chDB (a data path per test process), real PostgreSQL (a database per
//! test), and topics and a consumer group per test.
#![allow(dead_code)]

use learnvault::config::Settings;
use learnvault::lander::LanderStats;
use learnvault::warehouse::{migrate, Warehouse};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TestApp;

pub fn brokers() -> String {
    std::env::var("LEARNVAULT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub struct Spine {
    pub app: TestApp,
    pub wh: Warehouse,
    pub settings: Settings,
    pub producer: FutureProducer,
    pub data_path: PathBuf,
}

pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), learnvault::lander::LanderError>>,
    pub stats: Arc<LanderStats>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }

    /// Stop and return how the lander ended (to explain a failure).
    pub async fn outcome(self) -> String {
        let _ = self.stop.send(());
        format!("{:?}", self.handle.await)
    }
}

impl Spine {
    /// `open_engine`: open the embedded engine in this process (false when a
    /// child process will own the data path).
    pub async fn new(open_engine: bool) -> Spine {
        Self::with_brokers(open_engine, brokers()).await
    }

    /// A spine (the engine opened when `open_engine`), the gateway on its topics and an
    /// `lms` token of uni-a: where most ingest tests start.
    pub async fn with_gateway(open_engine: bool) -> (Spine, TestApp, String) {
        let spine = Self::new(open_engine).await;
        let gw = spine.app.gateway(spine.settings.clone()).await;
        let lms = gw.lms("uni-a");
        (spine, gw, lms)
    }

    pub async fn with_brokers(open_engine: bool, brokers: String) -> Spine {
        Self::with(open_engine, brokers, super::pg_port()).await
    }

    /// A spine whose database lives on the PostgreSQL server at 127.0.0.1:`pg_port`.
    pub async fn with(open_engine: bool, brokers: String, pg_port: u16) -> Spine {
        let app = TestApp::spawn_on(pg_port, |_| {}).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let data_path = std::env::temp_dir().join(format!("lv-spine-{id}"));
        let mut settings = app.settings.clone();
        settings.kafka.brokers = brokers;
        settings.kafka.events_topic = format!("le-{id}");
        settings.kafka.dlq_topic = format!("le-{id}.dlq");
        settings.lander.consumer_group = format!("lander-{id}");
        settings.kafka.topic_partitions = 3;
        settings.lander.batch_ms = 100;
        settings.warehouse.url = format!("chdb://{}", data_path.display());
        settings.warehouse.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into();
        learnvault::topics::ensure(&settings.kafka.brokers, &learnvault::topics::specs(&settings).unwrap()).await.expect("topics (is Kafka running? ops/kafka.sh)");
        let wh = if open_engine {
            let wh = Warehouse::open(&settings).expect("embedded engine (ops/install-chdb.sh)");
            migrate::run(&wh, &settings.warehouse.migrations_dir).await.unwrap();
            wh
        } else {
            Warehouse::Http(learnvault::warehouse::http::Server::new("http://127.0.0.1:1").unwrap())
        };
        let producer: FutureProducer = learnvault::envelope::producer_config(&settings.kafka.brokers, "lz4")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Spine { app, wh, settings, producer, data_path }
    }

    pub async fn start_lander(&self) -> Running {
        let lander = learnvault::app::lander::build(&self.settings, self.wh.clone()).await.unwrap();
        let stats = lander.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(lander.run(async move {
            let _ = stopped.await;
        }));
        Running { stop, handle, stats }
    }

    pub async fn produce_raw(&self, key: &str, payload: &[u8]) {
        self.producer
            .send(FutureRecord::to(&self.settings.kafka.events_topic).key(key).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    pub async fn produce(&self, events: &[Value]) {
        let futs = events.iter().map(|e| {
            let key = e["learner_id"].as_str().unwrap_or("none").to_owned();
            let payload = serde_json::to_vec(e).unwrap();
            async move { self.produce_raw(&key, &payload).await }
        });
        futures::future::join_all(futs).await;
    }

    pub async fn count(&self, sql: &str) -> u64 {
        let rows = self.wh.query(sql, &[]).await.unwrap();
        num(&rows[0]["n"])
    }

    /// Wait until the base table holds `n` rows (or time out), returning the count.
    pub async fn wait_rows(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count("SELECT count() AS n FROM events.learning_events").await;
            if c >= n || Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message of `topic` as (key, value) bytes, reading until `idle` passes without one.
    pub async fn records(&self, topic: &str, idle: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
        records_of(&self.settings.kafka.brokers, topic, idle).await
    }

    /// Every message of `topic` as `key<TAB>value` text, a zstd-compressed value
    /// decompressed (as the lander reads it), reading until `idle` passes without one.
    pub async fn scan(&self, topic: &str, idle: Duration) -> Vec<String> {
        as_text(&self.records(topic, idle).await)
    }

    /// Messages in `topic` (sum of high watermarks).
    pub fn messages_in(&self, topic: &str) -> i64 {
        use rdkafka::consumer::BaseConsumer;
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.settings.kafka.brokers).create().unwrap();
        (0..self.settings.kafka.topic_partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap().1).sum()
    }

    /// Read `n` dead letters (or what arrives before the timeout).
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[&self.settings.kafka.dlq_topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n && Instant::now() < deadline {
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
                let mut v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                // The record key, for tests of how dead letters are keyed.
                v["_key"] = m.key().map(|k| Value::String(String::from_utf8_lossy(k).into_owned())).unwrap_or(Value::Null);
                out.push(v);
            }
        }
        out
    }
}

pub fn num(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a count: {v}"))
}

/// A taxonomy 2.3 event.
/// The events of `learning-events` records as `scan` prints them (key, tab, value):
/// one event or an envelope (array) each.
pub fn events_of(records: &[String]) -> Vec<Value> {
    records
        .iter()
        .flat_map(|r| match serde_json::from_str::<Value>(r.split_once('\t').map_or(r.as_str(), |(_, v)| v)).unwrap() {
            Value::Array(evs) => evs,
            ev => vec![ev],
        })
        .collect()
}

pub fn event(learner: &str, event_type: &str, course: &str, cohort: &str, institution: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4(),
        "event_version": "2.3",
        "event_type": event_type,
        "learner_id": learner,
        "session_id": "s-1",
        "course_id": course,
        "content_id": "video-7",
        "cohort_id": cohort,
        "institution_id": institution,
        "position_sec": 42,
        "client_ts": chrono::Utc::now().timestamp_millis(),
        "props": {"player": "web"}
    })
}

impl Spine {
    /// Environment for a child `learnvault land` process with this spine's settings.
    pub fn child_env(&self) -> Vec<(String, String)> {
        use secrecy::ExposeSecret;
        let s = &self.settings;
        vec![
            ("LEARNVAULT_DATABASE_URL".into(), s.database.url.expose_secret().to_owned()),
            ("LEARNVAULT_ADMIN_DATABASE_URL".into(), s.database.admin_url.expose_secret().to_owned()),
            ("LEARNVAULT_POLICY_DIR".into(), s.policy_dir.display().to_string()),
            ("LEARNVAULT_CLICKHOUSE_URL".into(), s.warehouse.url.clone()),
            ("LEARNVAULT_CLICKHOUSE_MIGRATIONS_DIR".into(), s.warehouse.migrations_dir.display().to_string()),
            ("LEARNVAULT_KAFKA_BROKERS".into(), s.kafka.brokers.clone()),
            ("LEARNVAULT_EVENTS_TOPIC".into(), s.kafka.events_topic.clone()),
            ("LEARNVAULT_DLQ_TOPIC".into(), s.kafka.dlq_topic.clone()),
            ("LEARNVAULT_CONSUMER_GROUP".into(), s.lander.consumer_group.clone()),
            ("LEARNVAULT_TOPIC_PARTITIONS".into(), s.kafka.topic_partitions.to_string()),
            ("LEARNVAULT_LANDER_BATCH_MS".into(), "100".into()),
            ("LEARNVAULT_LANDER_BATCH_ROWS".into(), "300".into()),
            ("LEARNVAULT_LOG".into(), "warn".into()),
        ]
    }

    /// Whether the lander's group has committed every produced offset.
    pub fn caught_up(&self) -> bool {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::{Offset, TopicPartitionList};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set("group.id", &self.settings.lander.consumer_group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let topic = &self.settings.kafka.events_topic;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.settings.kafka.topic_partitions {
            tpl.add_partition(topic, p);
        }
        let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else { return false };
        (0..self.settings.kafka.topic_partitions).all(|p| {
            let Ok((_, high)) = c.fetch_watermarks(topic, p, Duration::from_secs(5)) else { return false };
            let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            if std::env::var_os("LV_DEBUG").is_some() {
                eprintln!("partition {p}: committed {done} high {high}");
            }
            done >= high
        })
    }
}

/// A private Apache Kafka broker (ops/kafka.sh) on its own ports and storage, for tests that
/// stop, restart or kill the broker without disturbing the shared one.
pub struct Broker {
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    pid: Option<u32>,
}

impl Broker {
    pub fn start_new() -> Broker {
        let port = free_port();
        let controller_port = free_port();
        let dir = std::env::temp_dir().join(format!("lv-kafka-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Broker { port, controller_port, dir, pid: None };
        b.start();
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start (or restart, on the same storage) the broker; returns once it answers metadata.
    pub fn start(&mut self) {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/kafka.sh"))
            .env("LEARNVAULT_KAFKA_PORT", self.port.to_string())
            .env("LEARNVAULT_KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("LEARNVAULT_KAFKA_DATA", &self.dir)
            .env("LEARNVAULT_KAFKA_HEAP", "384m")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("ops/kafka.sh");
        assert!(out.status.success(), "ops/kafka.sh failed; see {}/kafka.log", self.dir.display());
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        self.pid = Some(pid.parse().unwrap_or_else(|_| panic!("ops/kafka.sh printed no pid ({pid:?}): port {} taken?", self.port)));
    }

    /// SIGKILL the broker (a crash: no controlled shutdown) and wait until it is gone.
    pub fn kill(&mut self) {
        self.signal("-KILL");
    }

    /// SIGTERM the broker (controlled shutdown) and wait until it is gone.
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    fn signal(&mut self, sig: &str) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill").arg(sig).arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now (bound and released by the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Records as `key<TAB>value` text, a zstd-compressed value decompressed (as the lander reads it).
pub fn as_text(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    records
        .iter()
        .map(|(k, v)| {
            let json = learnvault::envelope::decode_value(v).expect("a record value decodes");
            format!("{}\t{}", String::from_utf8_lossy(k), String::from_utf8_lossy(json.as_deref().unwrap_or(v)))
        })
        .collect()
}

/// Every message of `topic` on `brokers` as (key, value) bytes, read with an rdkafka
/// consumer until `idle` passes without one.
pub async fn records_of(brokers: &str, topic: &str, idle: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("scanner-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(idle, c.recv()).await {
        out.push((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
    }
    out
}

/// The account name the xAPI fixtures are sent with (an LMS's anonymous id).
pub const XAPI_EXT: &str = "edx-anon-4242";

/// An xAPI fixture of `tests/fixtures/xapi/`, its account named [`XAPI_EXT`].
pub fn xapi_fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/xapi/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if v["actor"]["account"].is_object() {
        v["actor"]["account"]["name"] = serde_json::json!(XAPI_EXT);
    }
    v
}
