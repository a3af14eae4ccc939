//! Test harness: each test gets its own PostgreSQL database (migrated), its own
//! master key, and an app on 127.0.0.1:0, so tests run in parallel.
#![allow(dead_code)]

pub mod browser;
pub mod erb;
pub mod spine;

use learnvault::app::{Application, Parts};
use learnvault::config::Settings;
use learnvault::vault::keys::MasterKey;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The port of the PostgreSQL server tests make their databases on: 5432 (`ops/postgres.sh`),
/// or `LEARNVAULT_TEST_PG_PORT` (a server of one's own, as `LEARNVAULT_TEST_KAFKA` for Kafka).
pub fn pg_port() -> u16 {
    std::env::var("LEARNVAULT_TEST_PG_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5432)
}

pub struct TestApp {
    pub base: String,
    pub db_name: String,
    pub settings: Settings,
    pub master: MasterKey,
    /// Superuser connection to this test's database (to inspect and to tamper).
    pub admin: PgPool,
    pub client: reqwest::Client,
    pub state: learnvault::api::AppState,
    /// Stops this app (as SIGTERM stops `serve`); [`TestApp::shutdown`] also waits for the drain.
    pub stop: learnvault::app::Stop,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn settings_for(db_name: &str, master: &MasterKey) -> Settings {
    settings_on(pg_port(), db_name, master)
}

/// Settings for a database on the PostgreSQL server at 127.0.0.1:`port`.
pub fn settings_on(port: u16, db_name: &str, master: &MasterKey) -> Settings {
    use learnvault::config::{AuditSettings, DatabaseSettings, VaultSettings};
    Settings {
        database: DatabaseSettings {
            url: format!("postgres://learnvault_app@127.0.0.1:{port}/{db_name}").into(),
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/{db_name}").into(),
            max_connections: 8,
        },
        vault: VaultSettings { master_key: Some(master.to_base64().expose_secret().to_owned().into()), ..Default::default() },
        policy_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(),
        listen: "127.0.0.1:0".into(),
        // Each test its own checkpoint store (beside its own database).
        audit: AuditSettings { checkpoint_dir: Some(std::env::temp_dir().join(format!("lv-audit-cp-{db_name}"))), ..Default::default() },
        ..Settings::default()
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        Self::spawn_on(pg_port(), tweak).await
    }

    /// An app whose database lives on the PostgreSQL server at 127.0.0.1:`port`.
    pub async fn spawn_on(port: u16, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        if std::env::var_os("LV_DEBUG").is_some() {
            learnvault::telemetry::init(learnvault::config::LogFormat::Pretty);
        }
        let db_name = format!("lv_test_{}", uuid::Uuid::new_v4().simple());
        let master = MasterKey::generate();
        let mut settings = settings_on(port, &db_name, &master);
        tweak(&mut settings);
        Self::start(settings, master, Parts::api_only()).await
    }

    /// A second app (another "process") on the same database and key.
    pub async fn sibling(&self) -> TestApp {
        Self::start(self.settings.clone(), self.master.clone(), Parts::api_only()).await
    }

    /// An app that owns an embedded warehouse (its own data path: nextest runs
    /// each test in its own process) and runs the subject-request worker.
    pub async fn spawn_with_warehouse() -> TestApp {
        Self::spawn_with_warehouse_tweaked(|_| {}).await
    }

    /// [`TestApp::spawn_with_warehouse`] with settings changed by `tweak`.
    pub async fn spawn_with_warehouse_tweaked(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let db_name = format!("lv_test_{}", uuid::Uuid::new_v4().simple());
        let master = MasterKey::generate();
        let mut settings = settings_for(&db_name, &master);
        let dir = std::env::temp_dir().join(format!("lv-ch-{}", uuid::Uuid::new_v4().simple()));
        settings.warehouse.url = format!("chdb://{}", dir.join("chdb").display());
        settings.warehouse.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/clickhouse").into();
        settings.dsr.archive_dir = Some(dir.join("archives"));
        settings.governance.cache_ms = 200;
        // Its own topics, created as `serve` creates them (the retention report reads them back).
        let id = uuid::Uuid::new_v4().simple().to_string();
        settings.kafka.brokers = spine::brokers();
        settings.kafka.events_topic = format!("le-{id}");
        settings.kafka.dlq_topic = format!("le-{id}.dlq");
        settings.kafka.topic_partitions = 2;
        let topics = learnvault::topics::specs(&settings).expect("topic specs");
        learnvault::topics::ensure(&settings.kafka.brokers, &topics).await.expect("topics (is Kafka running? ops/kafka.sh)");
        tweak(&mut settings);
        Self::start(settings, master, Parts { warehouse: true, jobs: true, ..Parts::api_only() }).await
    }

    /// A sibling app (same database and key) running the ingest gateway with
    /// `settings` (its brokers and topics); it does not open the warehouse.
    pub async fn gateway(&self, settings: Settings) -> TestApp {
        Self::start(settings, self.master.clone(), Parts { gateway: true, ..Parts::api_only() }).await
    }

    pub fn warehouse(&self) -> &learnvault::warehouse::Warehouse {
        self.state.warehouse.as_ref().expect("spawned with a warehouse")
    }

    /// The app as `serve` builds it ([`Application::build_with`]: migrations included), with `parts`.
    async fn start(settings: Settings, master: MasterKey, parts: Parts) -> TestApp {
        let db_name = settings.database.admin_url.expose_secret().rsplit('/').next().unwrap().to_owned();
        let app = Application::build_with(settings.clone(), parts).await.expect("the application");
        let addr = app.addr().expect("the API is bound");
        let state = app.state().expect("the API's state").clone();
        let stop = app.stopper();
        let running = tokio::spawn(app.run_until(std::future::pending()));
        let admin = PgPool::connect(settings.database.admin_url.expose_secret()).await.unwrap();
        TestApp {
            base: format!("http://{addr}"),
            db_name,
            settings,
            master,
            admin,
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            state,
            stop,
            running,
        }
    }

    /// Stop the app (as SIGTERM stops `serve`) and wait until it has drained.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.stop();
        self.running.await?
    }

    pub fn token(&self, sub: &str, roles: &[&str], institutions: &[&str]) -> String {
        let auth = learnvault::auth::Authenticator::from_settings(&self.settings, &self.master).unwrap();
        let roles: Vec<String> = roles.iter().map(|s| s.to_string()).collect();
        let insts: Vec<String> = institutions.iter().map(|s| s.to_string()).collect();
        auth.mint(sub, &roles, &insts, Duration::from_secs(600)).unwrap()
    }

    pub fn lms(&self, institution: &str) -> String {
        self.token("lms-test", &["lms"], &[institution])
    }

    pub fn dpo(&self, institution: &str) -> String {
        self.token("dpo-test", &["dpo"], &[institution])
    }

    pub fn recommender(&self, institution: &str) -> String {
        self.token("recommender-test", &["recommender"], &[institution])
    }

    pub fn auditor(&self) -> String {
        self.token("auditor-test", &["auditor"], &["*"])
    }

    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.client.get(url),
            "PUT" => self.client.put(url),
            _ => self.client.post(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send("POST", path, Some(token), Some(body)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send("GET", path, Some(token), None).await
    }

    /// Issue one pseudonym through the API.
    pub async fn issue(&self, institution: &str, external_id: &str, identity: Value) -> String {
        let (s, v) = self
            .post("/v1/pseudonyms", &self.lms(institution), serde_json::json!({"institution": institution, "external_id": external_id, "identity": identity}))
            .await;
        assert!(s.is_success(), "issue failed: {s} {v}");
        v["pseudonym"].as_str().unwrap().to_owned()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.admin).await.unwrap()
    }

    /// Audit rows with `outcome = 'denied'` and the given reason code in `detail`.
    pub async fn denials(&self, reason: &str) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log WHERE outcome = 'denied' AND detail->>'reason' = $1")
            .bind(reason)
            .fetch_one(&self.admin)
            .await
            .unwrap()
    }

    pub async fn verify(&self) -> Value {
        let (s, v) = self.get("/v1/audit/verify", &self.auditor()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }
}

/// A private PostgreSQL server (Debian's binaries, its own data directory and port), for tests
/// that stop or restart the database without disturbing the shared one. Run as the `postgres`
/// system user when the tests run as root (PostgreSQL refuses root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
}

impl PrivatePostgres {
    pub fn start_new() -> PrivatePostgres {
        let port = spine::free_port();
        let dir = std::env::temp_dir().join(format!("lv-pg-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PrivatePostgres { port, dir };
        if is_root() {
            assert!(std::process::Command::new("chown").arg("postgres:postgres").arg(&pg.dir).status().unwrap().success());
        }
        let data = pg.dir.join("data");
        pg.run("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        pg.start();
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let bin = pg_bin(tool);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        let out = cmd.args(args).output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Start the server; returns once it accepts connections.
    pub fn start(&self) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", self.port, self.dir.display());
        let log = self.dir.join("postgres.log");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
    }

    /// Stop the server as a crash would (`immediate`: no checkpoint, clients cut off).
    pub fn crash(&self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A PostgreSQL server binary of the newest installed version (Debian's layout).
fn pg_bin(tool: &str) -> std::path::PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL packages (ops/postgres.sh)")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    std::path::PathBuf::from(format!("/usr/lib/postgresql/{}/bin/{tool}", versions.last().expect("a PostgreSQL version")))
}
