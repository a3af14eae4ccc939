//! PostgreSQL connections and migrations.
//!
//! Invariant: migrations run over the owner connection (`admin_database_url`);
//! the service runs as `learnvault_app`, which owns nothing.

use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use std::time::Duration;

use crate::config::Settings;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Create the database if missing, then apply pending migrations.
pub async fn migrate(settings: &Settings) -> Result<(), sqlx::Error> {
    let url = settings.database.admin_url.expose_secret();
    if !Postgres::database_exists(url).await? {
        match Postgres::create_database(url).await {
            Ok(()) => {}
            // Another process created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// A pooled connection idle at most this long is handed out without a ping (HikariCP's
/// `aliveBypassWindowMs`): a busy service does not pay a round trip per acquire, and a
/// connection that broke while in use is closed by the error it returns.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The runtime pool (role `learnvault_app`). Lazy: connections open on first
/// use, so configuration errors surface before any database work.
pub fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy(settings.database.url.expose_secret())
}
