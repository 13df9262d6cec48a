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

/// The issuer's keys as last fetched: a sans-IO cache that decides, given `now`, whether a key
/// id is answered from it or worth a fetch.
#[derive(Debug)]
struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
    /// Why the last fetch failed, if it did.
    failure: Option<String>,
}

impl Keys {
    fn new() -> Self {
        Keys {
            set: JwkSet { keys: Vec::new() },
            fetched: None,
            failure: None,
        }
    }

    /// The answer for `kid` at `now`, or `None` when only a fetch can tell.
    fn lookup(&self, kid: &str, now: Instant) -> Option<Result<DecodingKey, OidcError>> {
        if let Some(jwk) = self.set.find(kid) {
            return Some(DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Keys(e.to_string())));
        }
        // Fetched recently: a failure is reported as such (503) until the next try; a success
        // that lacks this key means the key is unknown (401). Saturating: another request may
        // have read the clock after ours and fetched before us.
        let recent = self
            .fetched
            .is_some_and(|at| now.saturating_duration_since(at) < REFETCH_AFTER);
        recent.then(|| match &self.failure {
            Some(e) => Err(OidcError::Keys(e.clone())),
            None => Err(OidcError::Invalid(format!("unknown signing key {kid}"))),
        })
    }

    /// Takes in a fetch's outcome, as of `now` (when the request that needed it came). A failed
    /// fetch keeps the keys we had: they are still the issuer's until it says otherwise.
    fn record(&mut self, fetched: Result<JwkSet, OidcError>, now: Instant) {
        self.fetched = Some(now);
        match fetched {
            Ok(set) => {
                self.set = set;
                self.failure = None;
            }
            Err(e) => self.failure = Some(e.to_string()),
        }
    }
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
            keys: RwLock::new(Keys::new()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The principal a valid ID token speaks for. `now` paces the fetches of the issuer's keys.
    pub async fn verify(&self, token: &str, now: Instant) -> Result<Principal, OidcError> {
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
        let key = self.key(&kid, now).await?;
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

    async fn key(&self, kid: &str, now: Instant) -> Result<DecodingKey, OidcError> {
        if let Some(answer) = self.keys.read().await.lookup(kid, now) {
            return answer;
        }
        // One fetch at a time; requests for keys we hold are not held up by it (the set is
        // only write-locked to swap in the result).
        let _fetching = self.fetching.lock().await;
        if let Some(answer) = self.keys.read().await.lookup(kid, now) {
            return answer;
        }
        let fetched = self.fetch().await;
        let mut keys = self.keys.write().await;
        keys.record(fetched, now);
        keys.lookup(kid, now)
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

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "k1";

    /// Any instant will do: every case steps from it by an explicit amount.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    /// A set holding one Ed25519 key named `kid`.
    fn set_with(kid: &str) -> JwkSet {
        serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        }]}))
        .unwrap()
    }

    /// What a lookup came to, without the key itself (`DecodingKey` has no `PartialEq`).
    #[derive(Debug, PartialEq)]
    enum Answer {
        Key,
        Fetch,
        Unknown,
        KeysFailing,
    }

    fn answer(keys: &Keys, now: Instant) -> Answer {
        match keys.lookup(KID, now) {
            None => Answer::Fetch,
            Some(Ok(_)) => Answer::Key,
            Some(Err(OidcError::Invalid(m))) => {
                assert_eq!(m, format!("unknown signing key {KID}"));
                Answer::Unknown
            }
            Some(Err(OidcError::Keys(_))) => Answer::KeysFailing,
            Some(Err(e)) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn fetches_are_paced_by_the_time_passed_in() {
        let t0 = t0();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        #[track_caller]
        fn check(
            fetch: Option<(Result<JwkSet, OidcError>, Instant)>,
            now: Instant,
            expect: Answer,
        ) {
            let mut keys = Keys::new();
            if let Some((fetched, at)) = fetch {
                keys.record(fetched, at);
            }
            assert_eq!(answer(&keys, now), expect);
        }
        let other = || Ok(set_with("other"));
        let failed = || Err(OidcError::Keys("connection refused".into()));
        // Never fetched: only a fetch can tell.
        check(None, at(0), Answer::Fetch);
        // A key we hold is answered however long ago it came.
        check(Some((Ok(set_with(KID)), at(0))), at(3600), Answer::Key);
        // Fetched without this key: unknown for a minute, then worth another fetch.
        check(Some((other(), at(0))), at(0), Answer::Unknown);
        check(Some((other(), at(0))), at(59), Answer::Unknown);
        check(Some((other(), at(0))), at(60), Answer::Fetch);
        // A failed fetch is reported as such for a minute, then tried again.
        check(Some((failed(), at(0))), at(10), Answer::KeysFailing);
        check(Some((failed(), at(0))), at(61), Answer::Fetch);
        // Another request read the clock after this one and fetched first: still recent.
        check(Some((other(), at(5))), at(0), Answer::Unknown);
    }

    #[test]
    fn a_failed_fetch_keeps_the_keys_we_had() {
        let t0 = t0();
        let later = t0 + 2 * REFETCH_AFTER;
        let mut keys = Keys::new();
        keys.record(Ok(set_with(KID)), t0);
        keys.record(Err(OidcError::Keys("timed out".into())), later);
        assert_eq!(answer(&keys, later), Answer::Key);
        assert!(matches!(
            keys.lookup("other", later),
            Some(Err(OidcError::Keys(_)))
        ));
    }
}
