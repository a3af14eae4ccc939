//! Authentication: JWT verification (and development token minting).
//!
//! Invariant: algorithms are allow-listed per mode; `exp`, `nbf`, `iss`, `aud`
//! are always checked. Development mode accepts HS256 tokens signed with a key
//! derived from the master key; production mode (a JWKS file) accepts only
//! RS256/EdDSA tokens whose `kid` is in the JWKS, and refuses to mint.
//! Authorisation (roles -> permissions) is `policy`; the HTTP extractor is `api`.

pub mod session;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use crate::config::Settings;
use crate::vault::keys::MasterKey;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer or audience is not accepted")]
    WrongIssuerOrAudience,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token is malformed or its signature does not verify")]
    Invalid,
    #[error("the token's claims are invalid: {0}")]
    Claims(&'static str),
    #[error("tokens can only be minted with the development key; a production key set is configured")]
    MintRefused,
    #[error("cannot load the JWKS file: {0}")]
    Jwks(String),
}

impl AuthError {
    /// Stable code for clients and audit details.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuerOrAudience => "token_wrong_issuer_or_audience",
            AuthError::Algorithm => "token_algorithm_refused",
            AuthError::Invalid => "invalid_token",
            AuthError::Claims(_) => "invalid_token_claims",
            AuthError::MintRefused => "mint_refused",
            AuthError::Jwks(_) => "jwks_unavailable",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub institutions: Vec<String>,
    /// Courses a course-scoped role (instructor, content author, advisor) acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub courses: Vec<String>,
    pub exp: i64,
    pub nbf: i64,
    #[serde(default)]
    pub iat: i64,
    pub iss: String,
    pub aud: String,
    #[serde(default)]
    pub jti: Option<String>,
}

enum Mode {
    Development { decoding: DecodingKey, encoding: EncodingKey },
    Production { keys: HashMap<String, (DecodingKey, Algorithm)> },
}

pub struct Authenticator {
    mode: Mode,
    issuer: String,
    audience: String,
}

impl Authenticator {
    pub fn from_settings(settings: &Settings, master: &MasterKey) -> Result<Self, AuthError> {
        let mode = match &settings.auth.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| AuthError::Jwks(e.to_string()))?;
                let set: JwkSet = serde_json::from_str(&text).map_err(|e| AuthError::Jwks(e.to_string()))?;
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let kid = jwk.common.key_id.clone().ok_or_else(|| AuthError::Jwks("every key needs a kid".into()))?;
                    let alg = match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        _ => return Err(AuthError::Jwks(format!("key {kid}: only RSA (RS256) and OKP (EdDSA) keys are accepted"))),
                    };
                    let dk = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Jwks(e.to_string()))?;
                    keys.insert(kid, (dk, alg));
                }
                if keys.is_empty() {
                    return Err(AuthError::Jwks("the key set is empty".into()));
                }
                Mode::Production { keys }
            }
            None => {
                let k = master.service_key("jwt-dev-hs256");
                Mode::Development { decoding: DecodingKey::from_secret(k.as_ref()), encoding: EncodingKey::from_secret(k.as_ref()) }
            }
        };
        Ok(Authenticator { mode, issuer: settings.auth.jwt_issuer.clone(), audience: settings.auth.jwt_audience.clone() })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = 30;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (key, alg) = match &self.mode {
            Mode::Development { decoding, .. } => (decoding, Algorithm::HS256),
            Mode::Production { keys } => {
                let kid = header.kid.as_deref().ok_or(AuthError::Invalid)?;
                let (k, a) = keys.get(kid).ok_or(AuthError::Invalid)?;
                (k, *a)
            }
        };
        if header.alg != alg {
            return Err(AuthError::Algorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation(alg)).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer | K::InvalidAudience => AuthError::WrongIssuerOrAudience,
                K::InvalidAlgorithm => AuthError::Algorithm,
                _ => AuthError::Invalid,
            }
        })?;
        let c = data.claims;
        if c.sub.trim().is_empty() || c.sub.len() > 128 {
            return Err(AuthError::Claims("sub must be 1-128 characters"));
        }
        if c.roles.len() > 16 || c.institutions.len() > 1024 || c.courses.len() > 1024 {
            return Err(AuthError::Claims("too many roles or institutions"));
        }
        Ok(c)
    }

    /// Mint a development token. Refused when a production key set is configured.
    pub fn mint(&self, sub: &str, roles: &[String], institutions: &[String], ttl: Duration) -> Result<String, AuthError> {
        self.mint_scoped(sub, roles, institutions, &[], ttl)
    }

    /// Mint a development token with a `courses` claim (course-scoped roles).
    pub fn mint_scoped(&self, sub: &str, roles: &[String], institutions: &[String], courses: &[String], ttl: Duration) -> Result<String, AuthError> {
        let Mode::Development { encoding, .. } = &self.mode else {
            return Err(AuthError::MintRefused);
        };
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            institutions: institutions.to_vec(),
            courses: courses.to_vec(),
            exp: now + ttl.as_secs() as i64,
            nbf: now,
            iat: now,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Some(Uuid::new_v4().to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding).map_err(|_| AuthError::Invalid)
    }

    pub fn is_development(&self) -> bool {
        matches!(self.mode, Mode::Development { .. })
    }
}

/// Parse a TTL such as `90s`, `15m`, `1h`, `7d`.
pub fn parse_ttl(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    };
    (secs > 0 && secs <= 366 * 86400).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Authenticator {
        Authenticator::from_settings(&Settings::default(), &MasterKey::generate()).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let a = dev();
        let t = a.mint("lms-1", &["lms".into()], &["uni".into()], Duration::from_secs(60)).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.sub, "lms-1");
        assert_eq!(c.roles, vec!["lms"]);
        assert!(c.courses.is_empty());
        let t = a.mint_scoped("i-1", &["instructor".into()], &["uni".into()], &["cs101".into()], Duration::from_secs(60)).unwrap();
        assert_eq!(a.verify(&t).unwrap().courses, vec!["cs101"]);
    }

    #[test]
    fn other_key_and_garbage_are_refused() {
        let t = dev().mint("x", &[], &[], Duration::from_secs(60)).unwrap();
        assert_eq!(dev().verify(&t).unwrap_err().code(), "invalid_token");
        assert_eq!(dev().verify("not.a.jwt").unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_ttl("0s"), None);
        assert_eq!(parse_ttl("h"), None);
        assert_eq!(parse_ttl("5y"), None);
    }
}
