//! The console's settings (`LEARNVAULT_CONSOLE_*`), validated.

use std::time::Duration;

use crate::config::Settings;

#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of sign-in links (no trailing slash).
    pub base_url: String,
    /// `base_url` was configured (`LEARNVAULT_CONSOLE_URL`); otherwise the
    /// OpenID Connect redirect goes back to the host the browser used.
    pub base_url_configured: bool,
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// A session ends this long after sign-in.
    pub lifetime: Duration,
    /// A one-time sign-in code is valid this long.
    pub code_ttl: Duration,
    /// Cookies carry `Secure` (anything but plain HTTP on loopback).
    pub secure_cookie: bool,
    /// One-time codes (`console login`) sign in: development only (no
    /// production key set), like `token mint`.
    pub dev_login: bool,
    /// OpenID Connect sign-in, when an issuer is configured.
    pub oidc: Option<Oidc>,
}

/// The identity provider of the console's OpenID Connect sign-in.
#[derive(Debug, Clone)]
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<secrecy::SecretString>,
}

#[derive(Debug, thiserror::Error)]
#[error("console configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let base_url = s.console_base_url();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| base_url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('/')));
        let c = Config {
            secure_cookie: !loopback,
            base_url_configured: s.console_url.is_some(),
            dev_login: !s.is_production() && s.jwks_file.is_none(),
            oidc: s.oidc_issuer.as_ref().map(|i| Oidc {
                issuer: i.trim_end_matches('/').to_owned(),
                client_id: s.oidc_client_id.clone(),
                client_secret: s.oidc_client_secret.clone(),
            }),
            base_url,
            idle: Duration::from_secs(s.console_idle_minutes.saturating_mul(60)),
            lifetime: Duration::from_secs(s.console_session_hours.saturating_mul(3600)),
            code_ttl: Duration::from_secs(s.console_code_ttl_secs),
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(ConfigError(format!("LEARNVAULT_CONSOLE_URL must be an http(s) URL, not {:?}", self.base_url)));
        }
        if self.idle < Duration::from_secs(60) || self.idle > Duration::from_secs(24 * 3600) {
            return Err(ConfigError("LEARNVAULT_CONSOLE_IDLE_MINUTES must be 1-1440".into()));
        }
        if self.lifetime < self.idle || self.lifetime > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError("LEARNVAULT_CONSOLE_SESSION_HOURS must be at least the idle timeout and at most 168".into()));
        }
        if self.code_ttl < Duration::from_secs(10) || self.code_ttl > Duration::from_secs(24 * 3600) {
            return Err(ConfigError("LEARNVAULT_CONSOLE_CODE_TTL_SECS must be 10-86400".into()));
        }
        if let Some(o) = &self.oidc {
            if !(o.issuer.starts_with("https://") || o.issuer.starts_with("http://127.0.0.1") || o.issuer.starts_with("http://localhost")) {
                return Err(ConfigError("LEARNVAULT_OIDC_ISSUER must be https (plain http only on loopback)".into()));
            }
            if o.client_id.is_empty() {
                return Err(ConfigError("LEARNVAULT_OIDC_CLIENT_ID must not be empty".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(url: Option<&str>, listen: &str) -> Config {
        let s = Settings { console_url: url.map(str::to_owned), listen: listen.into(), ..Settings::default() };
        Config::from_settings(&s).unwrap()
    }

    #[test]
    fn secure_cookies_outside_loopback() {
        assert!(!with(None, "127.0.0.1:8080").secure_cookie);
        assert!(!with(Some("http://localhost:8080/"), "0.0.0.0:8080").secure_cookie);
        assert!(with(Some("https://console.example.edu"), "0.0.0.0:8080").secure_cookie);
        assert!(with(Some("http://10.0.0.5:8080"), "0.0.0.0:8080").secure_cookie);
        assert!(with(Some("http://127.0.0.1.evil.example"), "0.0.0.0:8080").secure_cookie);
        assert_eq!(with(None, "0.0.0.0:9000").base_url, "http://127.0.0.1:9000");
    }

    #[test]
    fn refuses_nonsense() {
        let s = Settings { console_idle_minutes: 0, ..Settings::default() };
        assert!(Config::from_settings(&s).is_err());
        let s = Settings { console_url: Some("ftp://x".into()), ..Settings::default() };
        assert!(Config::from_settings(&s).is_err());
    }

    #[test]
    fn one_time_codes_are_for_development_only() {
        assert!(with(None, "127.0.0.1:8080").dev_login);
        let s = Settings { jwks_file: Some("/etc/jwks.json".into()), ..Settings::default() };
        assert!(!Config::from_settings(&s).unwrap().dev_login);
    }
}
