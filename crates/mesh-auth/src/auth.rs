//! Who is calling: bearer API tokens, kept only as SHA-256 hashes, each with a role. A request
//! with no credential may reach only the public routes; a bad credential is refused outright.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mesh_service::ApiError;

use crate::oidc::{Oidc, OidcError, looks_like_jwt};
// Re-exported: `Principal` and `Role` lived here before they got a module of their own.
pub use crate::principal::{Principal, Role};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// One configured API token: its name (for logs and rate limits), role and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

/// The hashes of every configured token, and the OIDC verifier if configured.
#[derive(Debug, Default)]
pub struct Credentials {
    by_hash: HashMap<[u8; 32], Principal>,
    oidc: Option<Oidc>,
}

impl Credentials {
    pub fn with_oidc(tokens: &[TokenEntry], oidc: Option<Oidc>) -> Self {
        Credentials {
            oidc,
            ..Self::new(tokens)
        }
    }

    pub fn new(tokens: &[TokenEntry]) -> Self {
        Credentials {
            oidc: None,
            by_hash: tokens
                .iter()
                .map(|t| {
                    let who = Principal {
                        name: t.name.clone(),
                        role: t.role,
                    };
                    (t.sha256, who)
                })
                .collect(),
        }
    }

    /// The principal a presented token belongs to. Looking up its hash (not the token) keeps
    /// no secret in memory and leaks nothing through timing about stored tokens.
    pub fn check(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&sha256(token))
    }
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The hash as configuration holds it (`name:role:<this>`).
pub fn sha256_hex(token: &str) -> String {
    hex::encode(sha256(token))
}

/// Resolves the `Authorization` header into a [`Principal`] extension; refuses a malformed or
/// unknown credential with 401, and lets a request without one through to the routes that
/// decide.
pub async fn authenticate(
    State(credentials): State<Arc<Credentials>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return next.run(req).await;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let Some(token) = token else {
        return unauthenticated("the Authorization header must be `Bearer <token>`");
    };
    if let Some(who) = credentials.check(token) {
        req.extensions_mut().insert(who.clone());
        return next.run(req).await;
    }
    let Some(oidc) = credentials.oidc.as_ref().filter(|_| looks_like_jwt(token)) else {
        return unauthenticated("unknown API token");
    };
    // This layer drives the OIDC verifier, so it reads the clock that paces key fetches; the
    // verifier's cache takes it as a value.
    #[allow(clippy::disallowed_methods)]
    let now = tokio::time::Instant::now();
    match oidc.verify(token, now).await {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e @ OidcError::Invalid(_)) => unauthenticated(&e.to_string()),
        Err(e @ OidcError::Unmapped(_)) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()).into_response()
        }
        Err(e @ OidcError::Keys(_)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

fn unauthenticated(message: &str) -> Response {
    let mut res =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
    res.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    res
}

/// A handler argument: the authenticated caller, or 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                unauthenticated("this needs an API token: `Authorization: Bearer <token>`")
            })
    }
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<&Principal, ApiError> {
        self.0.require(role)?;
        Ok(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_hash() {
        let creds = Credentials::new(&[TokenEntry {
            name: "ops".into(),
            role: Role::Operator,
            sha256: sha256("s3cret"),
        }]);
        assert_eq!(creds.check("s3cret").map(|p| p.name.as_str()), Some("ops"));
        assert!(creds.check("s3cret ").is_none());
        assert!(creds.check("").is_none());
    }
}
