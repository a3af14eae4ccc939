//! The console's settings (`LEARNVAULT_CONSOLE_*`, `LEARNVAULT_OIDC_*`: `settings.console`), validated.

use std::time::Duration;

use crate::config::{Section, Settings};

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
    /// The console's section, checked ([`crate::config::ConsoleSettings`]'s `validate`), as the
    /// console runs with it.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let c = &s.console;
        c.validate().map_err(|e| ConfigError(e.0.join("; ")))?;
        let base_url = s.console_base_url();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| base_url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('/')));
        Ok(Config {
            secure_cookie: !loopback,
            base_url_configured: c.url.is_some(),
            dev_login: !s.is_production() && s.auth.jwks_file.is_none(),
            oidc: c.oidc_issuer.as_ref().map(|i| Oidc {
                issuer: i.trim_end_matches('/').to_owned(),
                client_id: c.oidc_client_id.clone(),
                client_secret: c.oidc_client_secret.clone(),
            }),
            base_url,
            idle: c.idle(),
            lifetime: c.lifetime(),
            code_ttl: c.code_ttl(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(url: Option<&str>, listen: &str) -> Config {
        let s = {
            let mut s = Settings { listen: listen.into(), ..Settings::default() };
            s.console.url = url.map(str::to_owned);
            s
        };
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
        let mut s = Settings::default();
        s.console.idle_minutes = 0;
        assert!(Config::from_settings(&s).unwrap_err().to_string().contains("LEARNVAULT_CONSOLE_IDLE_MINUTES"));
        let mut s = Settings::default();
        s.console.url = Some("ftp://x".into());
        assert!(Config::from_settings(&s).unwrap_err().to_string().contains("LEARNVAULT_CONSOLE_URL"));
    }

    #[test]
    fn one_time_codes_are_for_development_only() {
        assert!(with(None, "127.0.0.1:8080").dev_login);
        let mut s = Settings::default();
        s.auth.jwks_file = Some("/etc/jwks.json".into());
        assert!(!Config::from_settings(&s).unwrap().dev_login);
    }
}
