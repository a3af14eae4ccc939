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

/// `url` naming database `name` instead of its own (its query string kept).
pub fn with_database(url: &str, name: &str) -> Option<String> {
    let old = database_name(url)?;
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let at = url[..end].rfind('/')? + 1;
    debug_assert_eq!(&url[at..at + old.len()], old);
    Some(format!("{}{name}{}", &url[..at], &url[at + old.len()..]))
}

/// Drop the database `admin_url` names, closing its other sessions (a benchmark's scratch
/// database, once the benchmark is done).
pub async fn drop_database(admin_url: &str) -> Result<(), sqlx::Error> {
    let name = database_name(admin_url).ok_or_else(|| sqlx::Error::Configuration("the URL names no database".into()))?;
    let maintenance = with_database(admin_url, "postgres").expect("it names one");
    let pool = PgPoolOptions::new().max_connections(1).connect(&maintenance).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', "\"\""))).execute(&pool).await?;
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
        assert_eq!(
            super::with_database("postgres://app:pw@db.example:5432/learnvault?sslmode=require", "lv_bench_x").as_deref(),
            Some("postgres://app:pw@db.example:5432/lv_bench_x?sslmode=require")
        );
        assert_eq!(
            super::with_database("postgres://learnvault_app@127.0.0.1:5432/learnvault", "x").as_deref(),
            Some("postgres://learnvault_app@127.0.0.1:5432/x")
        );
        assert_eq!(super::database_name("postgres://u@h"), None);
        assert_eq!(super::database_name("mysql://u@h/db"), None);
    }
}
