//! OIDC ID tokens as credentials: what Cloud Scheduler and Cloud Run service-to-service calls
//! send. A token is accepted when a key from the issuer's JWKS signed it, its issuer and
//! audience are the configured ones, it has not expired, and its subject (email or `sub`) is
//! mapped to a role. The JWKS is fetched on first use and again when a token names a key we do
//! not have (keys rotate), at most once a minute.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;
use tokio::time::Instant;

use crate::principal::{Principal, Role};

/// Google's issuer and keys: the defaults.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Algorithms accepted; `none` and HMAC never are (a public key must not double as a secret).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Least time between two JWKS fetches triggered by unknown key ids.
const REFETCH_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    /// Email (or `sub`) → role.
    pub principals: HashMap<String, Role>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    /// Not a valid token for us; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but its subject has no role here.
    #[error("{0} has no role on this service")]
    Unmapped(String),
    /// The keys could not be fetched.
    #[error("fetching the issuer's keys: {0}")]
    Keys(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

#[derive(Debug)]
struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
    /// Why the last fetch failed, if it did.
    failure: Option<String>,
}

#[derive(Debug)]
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    fetching: tokio::sync::Mutex<()>,
}

/// Whether `token` looks like a JWT (three base64url parts), so it is worth verifying as one.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Oidc {
    pub fn new(config: OidcConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Oidc {
            config,
            http: reqwest::Client::builder().timeout(timeout).build()?,
            keys: RwLock::new(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
                failure: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The principal a valid ID token speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| OidcError::Invalid(format!("not a JWT: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| OidcError::Invalid("the token names no key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(format!("ID token refused: {e}")))?
            .claims;
        // An unverified email could be anyone's; fall back to the subject id then.
        let email = claims
            .email
            .filter(|_| claims.email_verified != Some(false));
        let role = email
            .as_ref()
            .and_then(|e| self.config.principals.get(e))
            .or_else(|| self.config.principals.get(&claims.sub))
            .copied();
        let name = email.unwrap_or(claims.sub);
        match role {
            Some(role) => Ok(Principal { name, role }),
            None => Err(OidcError::Unmapped(name)),
        }
    }

    // Reads the clock to pace JWKS fetches: this is the credential driver's own timer.
    #[allow(clippy::disallowed_methods)]
    async fn key(&self, kid: &str) -> Result<DecodingKey, OidcError> {
        let lookup = |keys: &Keys| -> Option<Result<DecodingKey, OidcError>> {
            if let Some(jwk) = keys.set.find(kid) {
                return Some(
                    DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Keys(e.to_string())),
                );
            }
            // Fetched recently: a failure is reported as such (503) until the next try; a
            // success that lacks this key means the key is unknown (401).
            let recent = keys.fetched.is_some_and(|at| at.elapsed() < REFETCH_AFTER);
            recent.then(|| match &keys.failure {
                Some(e) => Err(OidcError::Keys(e.clone())),
                None => Err(OidcError::Invalid(format!("unknown signing key {kid}"))),
            })
        };
        if let Some(answer) = lookup(&*self.keys.read().await) {
            return answer;
        }
        // One fetch at a time; requests for keys we hold are not held up by it (the set is
        // only write-locked to swap in the result).
        let _fetching = self.fetching.lock().await;
        if let Some(answer) = lookup(&*self.keys.read().await) {
            return answer;
        }
        let fetched = self.fetch().await;
        let mut keys = self.keys.write().await;
        keys.fetched = Some(Instant::now());
        match fetched {
            Ok(set) => {
                keys.set = set;
                keys.failure = None;
            }
            Err(e) => keys.failure = Some(e.to_string()),
        }
        lookup(&keys)
            .unwrap_or_else(|| Err(OidcError::Invalid(format!("unknown signing key {kid}"))))
    }

    async fn fetch(&self) -> Result<JwkSet, OidcError> {
        let res = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OidcError::Keys(e.to_string()))?;
        res.json::<JwkSet>()
            .await
            .map_err(|e| OidcError::Keys(e.to_string()))
    }
}
