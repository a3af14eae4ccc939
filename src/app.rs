//! Wiring: settings -> keys, policies, pools, writers -> `AppState` -> HTTP server.

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

use crate::api::{self, AppState, Limits};
use crate::audit::Recorder;
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::datamap::DataMap;
use crate::dsr::Dsr;
use crate::warehouse::Warehouse;
use crate::policy::Policies;
use crate::vault::keys::MasterKey;
use crate::vault::Vault;

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
        vault: Vault::new(pool.clone(), master, settings.issue_writers),
        audit: Recorder::spawn(pool.clone()),
        pool,
        auth: Arc::new(auth),
        policies: Arc::new(policies),
        metrics: metrics_handle(),
        limits: Limits {
            body_bytes: settings.body_limit_bytes,
            batch_body_bytes: settings.batch_body_limit_bytes,
            batch_items: settings.batch_max_items,
            ingest_events: settings.ingest_max_events,
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
    if let Err(e) = crate::topics::ensure(&settings.kafka_brokers, &topics).await {
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
        kafka_brokers: settings.kafka_brokers.clone(),
        topics: crate::topics::specs_with(settings, &retention),
        retention,
        archive_dir: settings.archive_path(),
        archive_keys: crate::dsr::seal::ArchiveKeys::new(master.clone()),
        export_page_rows: settings.dsr_export_page_rows.max(1),
        erasure_policy: crate::dsr::policy::ErasurePolicy::load(dir).context("loading the erasure policy")?,
        signer: crate::dsr::certificate::Signer::derive(&master),
        settle: std::time::Duration::from_millis(settings.governance_cache_ms + settings.lander_batch_ms),
    };
    crate::dsr::seal::create_private_dir(&dsr.archive_dir).with_context(|| format!("creating {}", dsr.archive_dir.display()))?;
    let serve_config = crate::serve::Config::load(dir).context("loading the disclosure policy")?;
    let signals_config = crate::signals::Config::load(dir).context("loading the signals policy")?;
    state.signals = Some(Arc::new(crate::signals::Signals::new(warehouse.clone(), state.pool.clone(), signals_config, serve_config.clone())?));
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
