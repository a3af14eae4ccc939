//! Console sign-in state in PostgreSQL: one-time sign-in codes and server-side
//! sessions (`migrations/postgres/0010_console_sessions.sql`).
//!
//! Invariant: only hashes of codes and session ids are stored; a code is
//! exchanged once, before it expires; a session lives while it is used (idle
//! timeout) and never past its absolute lifetime. A session carries the claims
//! a token would (sub, roles, institutions, courses): the console turns them
//! into the same `Principal` the API authorises.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use std::time::Duration;

/// Who a code or a session signs in: a token's claims.
#[derive(Debug, Clone)]
pub struct SessionClaims {
    pub sub: String,
    pub roles: Vec<String>,
    /// `["*"]`: every institution.
    pub institutions: Vec<String>,
    pub courses: Vec<String>,
}

/// A live session, as loaded for a request.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: SessionClaims,
    pub csrf: String,
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time equality of two strings (CSRF tokens).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Store a one-time sign-in code for `claims`, valid for `ttl`; returns the code
/// (shown once, never stored).
pub async fn issue_code(pool: &PgPool, claims: &SessionClaims, ttl: Duration) -> Result<String, sqlx::Error> {
    let code = random_token();
    sqlx::query(
        "INSERT INTO console_login_codes (code_hash, sub, roles, institutions, courses, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(hash(&code))
    .bind(&claims.sub)
    .bind(&claims.roles)
    .bind(&claims.institutions)
    .bind(&claims.courses)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(code)
}

/// Exchange a code (once, before it expires) for a new session; returns the
/// session id (for the cookie, never stored) and the session.
pub async fn exchange(pool: &PgPool, code: &str, lifetime: Duration) -> Result<Option<(String, Session)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE console_login_codes SET used_at = now()
         WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING sub, roles, institutions, courses",
    )
    .bind(hash(code))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let claims = SessionClaims {
        sub: row.try_get("sub")?,
        roles: row.try_get("roles")?,
        institutions: row.try_get("institutions")?,
        courses: row.try_get("courses")?,
    };
    let (id, session) = insert(&mut tx, claims, lifetime).await?;
    tx.commit().await?;
    Ok(Some((id, session)))
}

/// Start a session for `claims` directly (a verified sign-in by another means).
pub async fn start(pool: &PgPool, claims: SessionClaims, lifetime: Duration) -> Result<(String, Session), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let out = insert(&mut tx, claims, lifetime).await?;
    tx.commit().await?;
    Ok(out)
}

async fn insert(tx: &mut sqlx::PgConnection, claims: SessionClaims, lifetime: Duration) -> Result<(String, Session), sqlx::Error> {
    let id = random_token();
    let csrf = random_token();
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, sub, roles, institutions, courses, csrf, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
    )
    .bind(hash(&id))
    .bind(&claims.sub)
    .bind(&claims.roles)
    .bind(&claims.institutions)
    .bind(&claims.courses)
    .bind(&csrf)
    .bind(lifetime.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok((id, Session { claims, csrf }))
}

/// The session of `id` if it is live (used within `idle`, before its end),
/// marking it used now.
pub async fn touch(pool: &PgPool, id: &str, idle: Duration) -> Result<Option<Session>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE console_sessions SET last_seen = now()
         WHERE id_hash = $1 AND expires_at > now() AND last_seen + make_interval(secs => $2) > now()
         RETURNING sub, roles, institutions, courses, csrf",
    )
    .bind(hash(id))
    .bind(idle.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(Session {
            claims: SessionClaims {
                sub: r.try_get("sub")?,
                roles: r.try_get("roles")?,
                institutions: r.try_get("institutions")?,
                courses: r.try_get("courses")?,
            },
            csrf: r.try_get("csrf")?,
        })
    })
    .transpose()
}

/// End a session (sign out).
pub async fn end(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(hash(id)).execute(pool).await?;
    Ok(())
}

/// Remember an OpenID Connect sign-in in flight: `state` -> (PKCE verifier, nonce), for `ttl`.
pub async fn begin_oidc(pool: &PgPool, state: &str, verifier: &str, nonce: &str, ttl: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO console_oidc_logins (state_hash, verifier, nonce, expires_at) VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(hash(state))
    .bind(verifier)
    .bind(nonce)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Take (once) the sign-in of `state` if it has not expired: (PKCE verifier, nonce).
pub async fn take_oidc(pool: &PgPool, state: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("DELETE FROM console_oidc_logins WHERE state_hash = $1 AND expires_at > now() RETURNING verifier, nonce")
        .bind(hash(state))
        .fetch_optional(pool)
        .await
}

/// Delete expired codes and sessions (idle past `idle`, or past their end).
pub async fn purge(pool: &PgPool, idle: Duration) -> Result<u64, sqlx::Error> {
    let a = sqlx::query("DELETE FROM console_login_codes WHERE expires_at < now() - interval '1 day'").execute(pool).await?.rows_affected();
    let b = sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() OR last_seen + make_interval(secs => $1) < now()")
        .bind(idle.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    let c = sqlx::query("DELETE FROM console_oidc_logins WHERE expires_at < now()").execute(pool).await?.rows_affected();
    Ok(a + b + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_url_safe() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn csrf_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
