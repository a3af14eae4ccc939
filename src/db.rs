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

/// Create the database if missing, then apply pending migrations. Refused when the runtime
/// connection names another database than the owner connection: the migrations would go
/// to one and the service would use the other (its tables missing, or another's).
pub async fn migrate(settings: &Settings) -> Result<(), sqlx::Error> {
    let url = settings.database.admin_url.expose_secret();
    if let (Some(db), Some(admin)) = (database_name(settings.database.url.expose_secret()), database_name(url)) {
        if db != admin {
            return Err(sqlx::Error::Configuration(
                format!("LEARNVAULT_DATABASE_URL names database {db:?} but LEARNVAULT_ADMIN_DATABASE_URL (migrations) names {admin:?}: set both to the same database").into(),
            ));
        }
    }
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

/// The database a postgres:// URL names (its path), if it names one.
fn database_name(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let path = rest.split_once('/')?.1;
    let name = path.split(['?', '#']).next().unwrap_or_default();
    (!name.is_empty()).then_some(name)
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_names_its_database_without_its_options() {
        assert_eq!(super::database_name("postgres://app:pw@db.example:5432/learnvault?sslmode=require"), Some("learnvault"));
        assert_eq!(super::database_name("postgresql://u@h/other#x"), Some("other"));
        assert_eq!(super::database_name("postgres://u@h"), None);
        assert_eq!(super::database_name("mysql://u@h/db"), None);
    }
}
