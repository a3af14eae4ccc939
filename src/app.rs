//! Wiring: settings -> keys, policies, pools, writers -> `AppState` -> one
//! [`Application`] (the API, the gateway, the lander, the jobs and the periodic
//! detectors), which `serve`, `land` and the test harness all build.

pub mod lander;
pub mod periodic;

use anyhow::Context;
use futures::future::OptionFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState, Limits};
use crate::audit::Recorder;
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::datamap::DataMap;
use crate::dsr::Dsr;
use crate::policy::Policies;
use crate::vault::keys::MasterKey;
use crate::vault::Vault;
use crate::warehouse::Warehouse;

/// What one process runs. `serve` runs every part ([`Parts::serve`]: the lander and the
/// jobs unless turned off), `land` the lander alone ([`Parts::land`]); the test harness
/// picks the parts a test needs from the same list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The HTTP API and the console, bound on `listen` (needs the master key and the policies).
    pub api: bool,
    /// Open the warehouse (and apply its migrations): subject requests, features, the read path, signals.
    pub warehouse: bool,
    /// The ingest gateway (a Kafka producer; the topics are created when the broker answers).
    pub gateway: bool,
    /// The supervised lander (opens the warehouse).
    pub lander: bool,
    /// The subject-request worker and the hourly retention purge (need the warehouse).
    pub jobs: bool,
    /// The periodic work: audit checkpoints, console session purge, and with the warehouse
    /// the released tables and the detectors.
    pub periodic: bool,
}

impl Parts {
    /// `learnvault serve`: everything the embedded engine's one process must run, the lander
    /// and the jobs unless `LEARNVAULT_LANDER_ENABLED` / `LEARNVAULT_JOBS_ENABLED` say otherwise.
    pub fn serve(settings: &Settings) -> Parts {
        Parts { api: true, warehouse: true, gateway: true, lander: settings.lander.enabled, jobs: settings.dsr.jobs_enabled, periodic: true }
    }

    /// `learnvault land`: the lander alone (no master key, no HTTP).
    pub fn land() -> Parts {
        Parts { api: false, warehouse: true, gateway: false, lander: true, jobs: false, periodic: false }
    }

    /// The HTTP API alone (no warehouse, no broker, nothing periodic).
    pub fn api_only() -> Parts {
        Parts { api: true, warehouse: false, gateway: false, lander: false, jobs: false, periodic: false }
    }
}

/// Asks a running [`Application`] to stop (in-flight requests and batches drain).
#[derive(Clone)]
pub struct Stop(Arc<watch::Sender<bool>>);

impl Stop {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// The application, assembled and bound but not yet running (zero-to-production's
/// `Application`): [`Application::build`], then [`Application::run_until`].
pub struct Application {
    settings: Settings,
    parts: Parts,
    listener: Option<TcpListener>,
    state: Option<AppState>,
    warehouse: Option<Warehouse>,
    stop: Arc<watch::Sender<bool>>,
}

impl Application {
    /// What `learnvault serve` runs ([`Parts::serve`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let parts = Parts::serve(&settings);
        Self::build_with(settings, parts).await
    }

    /// Configuration first ([`Settings::validate`]: every section, each error naming its
    /// `LEARNVAULT_*` variable; then keys, policies, token verification: all before any database
    /// work, so an invalid lander section fails start-up instead of being restarted by the
    /// supervisor), then the PostgreSQL migrations, the listener, the warehouse and its
    /// migrations, and the contexts over them.
    pub async fn build_with(settings: Settings, parts: Parts) -> anyhow::Result<Application> {
        settings.validate()?;
        let state = if parts.api { Some(build_state(&settings).await?) } else { None };
        crate::db::migrate(&settings).await.context("applying postgresql migrations")?;
        let listener = match parts.api {
            true => Some(TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?),
            false => None,
        };
        let warehouse = match parts.warehouse || parts.lander {
            true => Some(Warehouse::open(&settings)?),
            false => None,
        };
        let assembled = async {
            let Some(wh) = &warehouse else { return anyhow::Ok(state) };
            crate::warehouse::migrate::run(wh, &settings.warehouse.migrations_dir).await?;
            let Some(mut state) = state else { return Ok(None) };
            if parts.warehouse {
                state = with_warehouse(state, &settings, wh.clone())?;
            }
            Ok(Some(state))
        }
        .await;
        let state = match assembled {
            Ok(Some(state)) if parts.gateway => with_gateway(state, &settings).await.map(Some),
            other => other,
        };
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                if let Some(wh) = &warehouse {
                    wh.close();
                }
                return Err(e);
            }
        };
        let (stop, _) = watch::channel(false);
        Ok(Application { settings, parts, listener, state, warehouse, stop: Arc::new(stop) })
    }

    /// The address the API is bound to (`None` without the API).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The API's state (`None` without the API): what the handlers see.
    pub fn state(&self) -> Option<&AppState> {
        self.state.as_ref()
    }

    /// The warehouse this process owns, if it opened one.
    pub fn warehouse(&self) -> Option<&Warehouse> {
        self.warehouse.as_ref()
    }

    /// A handle that stops the application once it runs.
    pub fn stopper(&self) -> Stop {
        Stop(self.stop.clone())
    }

    /// Run every part until `shutdown` resolves (or [`Stop::stop`]), then drain: in-flight
    /// requests finish, the lander commits, the jobs and loops return; the warehouse is closed.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { settings, parts, listener, state, warehouse, stop } = self;
        let rx = stop.subscribe();
        let trigger = {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.send_replace(true);
            })
        };
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(l) = &listener {
            tracing::info!(addr = %l.local_addr()?, env = ?settings.env, lander = parts.lander, jobs = parts.jobs, "learnvault serving");
        }
        // Each part is a task of its own: a part busy between two awaits (a release's audit, a
        // detector's arithmetic) holds one worker thread, never the others' progress (in one
        // task, the API's accept loop waited for the periodic loops' CPU work: seconds).
        let api = part("the API", &stop, {
            let (state, rx) = (state.clone(), rx.clone());
            async move {
                match (state, listener) {
                    (Some(state), Some(listener)) => serve(state, listener, stopped(rx)).await,
                    _ => Ok(()),
                }
            }
        });
        let land = part("the lander", &stop, {
            let (settings, warehouse, rx) = (settings.clone(), warehouse.clone(), rx.clone());
            async move {
                match (warehouse, parts.lander) {
                    (Some(wh), true) => lander::supervise(&settings, wh, rx).await,
                    _ => Ok(()),
                }
            }
        });
        let jobs = part("the jobs", &stop, {
            let (state, rx) = (state.clone(), rx.clone());
            async move {
                if let (Some(state), true) = (state, parts.jobs) {
                    if let Some(dsr) = state.dsr.clone() {
                        tokio::join!(dsr.clone().work(rx.clone()), periodic::purge_loop(dsr, state.anchor.clone(), rx.clone()));
                    }
                }
                Ok(())
            }
        });
        let loops = part("the periodic loops", &stop, {
            let (state, settings, rx, stop) = (state.clone(), settings.clone(), rx.clone(), stop.clone());
            async move {
                let Some(state) = state.filter(|_| parts.periodic) else { return Ok(()) };
                let every = settings.audit.checkpoint_interval();
                let anchoring = quiet_part(
                    "audit anchoring",
                    &stop,
                    crate::audit::anchor_loop(state.pool.clone(), state.anchor.clone(), every, rx.clone()),
                );
                let publish = quiet_part(
                    "the released tables' refresh",
                    &stop,
                    OptionFuture::from(state.serve.clone().map(|serve| periodic::publish_loop(serve, rx.clone()))),
                );
                let signals = quiet_part(
                    "the detectors",
                    &stop,
                    OptionFuture::from(state.signals.clone().map(|sg| periodic::signals_loop(sg, rx.clone()))),
                );
                let sessions = quiet_part("the console sessions' purge", &stop, crate::console::purge_loop(state.clone(), rx.clone()));
                let (a, b, c, d) = tokio::join!(anchoring, publish, signals, sessions);
                [a, b, c, d].into_iter().try_for_each(|ended| ended.context("a periodic loop's task")?)
            }
        });
        let (a, l, j, p) = tokio::join!(api, land, jobs, loops);
        trigger.abort();
        if let Some(wh) = &warehouse {
            wh.close();
        }
        j.context("the jobs task")??;
        p.context("the periodic loops' task")??;
        a.context("the API task")??;
        l.context("the lander task")?
    }
}

/// A [`part`] that cannot fail but by panicking (a loop that logs its errors and goes on).
fn quiet_part<T: Send + 'static>(
    name: &'static str,
    stop: &Arc<watch::Sender<bool>>,
    work: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    part(name, stop, async move {
        work.await;
        Ok(())
    })
}

/// One part of the application as a task of its own. A part that panics stops the whole
/// application (the other parts drain as on a signal) and [`Application::run_until`] returns
/// the panic as its error, so the process exits non-zero and its supervisor restarts it: a
/// loop the law needs (audit anchoring, the retention purge, subject requests) never stops
/// silently while the API goes on serving.
fn part<T: Send + 'static>(
    name: &'static str,
    stop: &Arc<watch::Sender<bool>>,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<T>> {
    use futures::FutureExt;
    let stop = stop.clone();
    tokio::spawn(async move {
        match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(ended) => ended,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                tracing::error!(part = name, panic = %what, "a part of the application panicked: stopping the application");
                stop.send_replace(true);
                Err(anyhow::anyhow!("{name} panicked: {what}"))
            }
        }
    })
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let builder = PrometheusBuilder::new().set_buckets(&buckets).expect("non-empty buckets");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // In tests several apps share a process: only the first install wins.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub async fn build_state(settings: &Settings) -> anyhow::Result<AppState> {
    let master = MasterKey::load(settings).context("loading the master key")?;
    let policies = Policies::load(&settings.policy_dir).context("loading policies")?;
    let auth = Authenticator::from_settings(settings, &master).context("configuring authentication")?;
    if settings.is_production() && auth.is_development() {
        anyhow::bail!("production mode requires LEARNVAULT_JWKS_FILE (RS256/EdDSA keys); HS256 development tokens are refused");
    }
    let pool = crate::db::connect(settings).context("connecting to PostgreSQL as the runtime role")?;
    let anchor = crate::audit::checkpoint::Anchor::derive(&master, settings.audit_checkpoint_path());
    std::fs::create_dir_all(anchor.dir()).with_context(|| format!("creating the audit checkpoint store {}", anchor.dir().display()))?;
    Ok(AppState {
        anchor: Arc::new(anchor),
        vault: Vault::new(pool.clone(), master, settings.vault.issue_writers),
        audit: Recorder::spawn(pool.clone()),
        pool,
        auth: Arc::new(auth),
        policies: Arc::new(policies),
        metrics: metrics_handle(),
        limits: Limits {
            body_bytes: settings.api.body_limit_bytes,
            batch_body_bytes: settings.api.batch_body_limit_bytes,
            batch_items: settings.api.batch_max_items,
            ingest_events: settings.gateway.ingest_max_events,
        },
        warehouse: None,
        dsr: None,
        gateway: None,
        serve: None,
        signals: None,
        console: Arc::new(crate::console::Config::from_settings(settings)?),
    })
}

/// Give the API the ingest gateway (a Kafka producer; the topics are created
/// if the broker is reachable, otherwise ingest answers 503 until it is).
pub async fn with_gateway(mut state: AppState, settings: &Settings) -> anyhow::Result<AppState> {
    let topics = crate::topics::specs(settings)?;
    if let Err(e) = crate::topics::ensure(&settings.kafka.brokers, &topics).await {
        tracing::warn!(error = %e, "cannot create the topics now; ingest answers 503 until the broker is reachable");
    }
    let analytics = state.policies.consent_default("analytics");
    state.gateway = Some(Arc::new(crate::gateway::Gateway::new(settings, state.vault.clone(), analytics)?));
    Ok(state)
}

/// Give the API the warehouse (the process owns it): subject requests,
/// features, the retention report and the read path (`serve`) need it.
pub fn with_warehouse(mut state: AppState, settings: &Settings, warehouse: Warehouse) -> anyhow::Result<AppState> {
    let master = MasterKey::load(settings).context("loading the master key")?;
    let dir = &settings.policy_dir;
    let retention = crate::retention::Policy::load(&dir.join("retention.yaml")).context("loading the retention policy")?;
    let dsr = Dsr {
        pool: state.pool.clone(),
        warehouse: warehouse.clone(),
        vault: state.vault.clone(),
        map: DataMap::load(&dir.join("data-map.yaml")).context("loading the data map")?,
        kafka_brokers: settings.kafka.brokers.clone(),
        topics: crate::topics::specs_with(settings, &retention),
        retention,
        archive_dir: settings.archive_path(),
        archive_keys: crate::dsr::seal::ArchiveKeys::new(master.clone()),
        export_page_rows: settings.dsr.export_page_rows,
        erasure_policy: crate::dsr::policy::ErasurePolicy::load(dir).context("loading the erasure policy")?,
        signer: crate::dsr::certificate::Signer::derive(&master),
        settle: settings.governance.cache_ttl() + settings.lander.batch_wait(),
    };
    crate::dsr::seal::create_private_dir(&dsr.archive_dir).with_context(|| format!("creating {}", dsr.archive_dir.display()))?;
    let serve_config = crate::serve::Config::load(dir).context("loading the disclosure policy")?;
    let signals_config = crate::signals::Config::load(dir).context("loading the signals policy")?;
    state.signals =
        Some(Arc::new(crate::signals::Signals::new(warehouse.clone(), state.pool.clone(), signals_config, serve_config.clone())?));
    state.serve = Some(Arc::new(crate::serve::Serve::new(warehouse.clone(), serve_config)?));
    state.warehouse = Some(warehouse);
    state.dsr = Some(Arc::new(dsr));
    Ok(state)
}

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests drain.
pub async fn serve(state: AppState, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let router = crate::console::router(state.clone(), api::router(state));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.context("HTTP server")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested; draining");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking part stops the others (they see the stop as on a signal and return) and
    /// its panic is the error the application ends with.
    #[tokio::test]
    async fn a_part_that_panics_stops_the_application_and_says_so() {
        let (tx, mut watched) = watch::channel(false);
        let stop = Arc::new(tx);
        let calm = part("calm", &stop, {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
                anyhow::Ok("drained")
            }
        });
        let broken = part("broken", &stop, async {
            let n: u32 = "not a number".parse().expect("boom");
            anyhow::Ok(n)
        });
        let err = broken.await.expect("joined").expect_err("a panic is an error");
        assert!(err.to_string().starts_with("broken panicked: boom"), "{err}");
        assert!(*watched.borrow_and_update(), "the application was told to stop");
        assert_eq!(calm.await.expect("joined").expect("calm part"), "drained");
    }
}
