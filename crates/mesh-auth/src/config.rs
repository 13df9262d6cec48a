//! The credentials a service accepts, read from the environment: API tokens
//! (`MESH_API_TOKENS`, `MESH_API_TOKENS_FILE`) and OIDC (`MESH_OIDC_*`).

use std::collections::HashMap;
use std::time::Duration;

use mesh_service::ConfigError;
use mesh_service::config::Env;

use crate::auth::{Credentials, TokenEntry};
use crate::oidc::{GOOGLE_ISSUER, GOOGLE_JWKS_URL, Oidc, OidcConfig};
use crate::principal::Role;

pub const MESH_API_TOKENS: &str = "MESH_API_TOKENS";
pub const MESH_API_TOKENS_FILE: &str = "MESH_API_TOKENS_FILE";
pub const MESH_OIDC_AUDIENCE: &str = "MESH_OIDC_AUDIENCE";
pub const MESH_OIDC_ISSUER: &str = "MESH_OIDC_ISSUER";
pub const MESH_OIDC_JWKS_URL: &str = "MESH_OIDC_JWKS_URL";
pub const MESH_OIDC_PRINCIPALS: &str = "MESH_OIDC_PRINCIPALS";

pub const TOKEN_FORMAT: &str =
    "entries `name:role:sha256-hex` (role read, peer or operator), comma- or newline-separated";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
    /// OIDC ID tokens as credentials (on when `MESH_OIDC_AUDIENCE` is set).
    pub oidc: Option<OidcConfig>,
}

impl AuthConfig {
    /// Reads the credentials; at least one must be configured (a service that accepts no
    /// credential would refuse everything, which is a configuration mistake, not a policy).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let mut tokens = Vec::new();
        if let Some(list) = env.optional(MESH_API_TOKENS) {
            tokens.extend(
                parse_tokens(&list).map_err(|_| env.invalid(MESH_API_TOKENS, TOKEN_FORMAT))?,
            );
        }
        if let Some(path) = env.optional(MESH_API_TOKENS_FILE) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                env.invalid(
                    MESH_API_TOKENS_FILE,
                    format!("a readable file ({path}: {e})"),
                )
            })?;
            tokens.extend(
                parse_tokens(&text).map_err(|_| env.invalid(MESH_API_TOKENS_FILE, TOKEN_FORMAT))?,
            );
        }
        let mut names = std::collections::HashSet::new();
        for t in &tokens {
            if !names.insert(t.name.clone()) {
                return Err(
                    env.invalid(MESH_API_TOKENS, format!("unique names ({} twice)", t.name))
                );
            }
        }
        let oidc = match env.optional(MESH_OIDC_AUDIENCE) {
            None => None,
            Some(audience) => Some(oidc_config(env, audience)?),
        };
        if tokens.is_empty() && oidc.is_none() {
            return Err(ConfigError::Missing {
                key: MESH_API_TOKENS,
                expected: format!(
                    "at least one API credential ({TOKEN_FORMAT}), here or in \
                     {MESH_API_TOKENS_FILE}, or OIDC ({MESH_OIDC_AUDIENCE} and \
                     {MESH_OIDC_PRINCIPALS})"
                ),
            });
        }
        Ok(AuthConfig { tokens, oidc })
    }

    /// The credentials to check requests against; `timeout` bounds each JWKS fetch.
    pub fn credentials(&self, timeout: Duration) -> Result<Credentials, reqwest::Error> {
        let oidc = match &self.oidc {
            Some(c) => Some(Oidc::new(c.clone(), timeout)?),
            None => None,
        };
        Ok(Credentials::with_oidc(&self.tokens, oidc))
    }
}

fn oidc_config(env: &Env<'_>, audience: String) -> Result<OidcConfig, ConfigError> {
    const PRINCIPALS: &str = "`email=role` entries (role read, peer or operator), comma-separated";
    let list = env.required(MESH_OIDC_PRINCIPALS, PRINCIPALS)?;
    let mut principals = HashMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (who, role) = entry
            .split_once('=')
            .ok_or_else(|| env.invalid(MESH_OIDC_PRINCIPALS, PRINCIPALS))?;
        let role: Role = role
            .parse()
            .map_err(|_| env.invalid(MESH_OIDC_PRINCIPALS, PRINCIPALS))?;
        principals.insert(who.to_string(), role);
    }
    Ok(OidcConfig {
        issuer: env
            .optional(MESH_OIDC_ISSUER)
            .unwrap_or_else(|| GOOGLE_ISSUER.into()),
        audience,
        jwks_url: env
            .http_url(MESH_OIDC_JWKS_URL)?
            .unwrap_or_else(|| GOOGLE_JWKS_URL.into()),
        principals,
    })
}

/// Parses `name:role:sha256-hex` entries; `#` starts a comment line.
fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>, ()> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(());
            };
            let role: Role = role.parse().map_err(|_| ())?;
            let hash = hex::decode(hash.strip_prefix("sha256-").unwrap_or(hash)).map_err(|_| ())?;
            let sha256: [u8; 32] = hash.try_into().map_err(|_| ())?;
            if name.is_empty() {
                return Err(());
            }
            Ok(TokenEntry {
                name: name.to_string(),
                role,
                sha256,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_service::config::Source;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn read(vars: &[(&str, &str)]) -> Result<AuthConfig, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        let source: &dyn Source = &map;
        AuthConfig::from_env(&Env::new(source))
    }

    #[test]
    fn token_lists_parse_with_comments_and_prefixes() {
        let t = parse_tokens(&format!(
            "# ops\nops:operator:{HASH}\n, dash:read:sha256-{HASH}"
        ))
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].role, Role::Read);
        assert!(parse_tokens("ops:admin:00").is_err());
        assert!(parse_tokens("just-a-token").is_err());
    }

    #[test]
    fn a_credential_is_required_and_names_must_be_unique() {
        assert!(read(&[]).unwrap_err().to_string().contains(MESH_API_TOKENS));
        let twice = format!("ops:operator:{HASH},ops:read:{HASH}");
        assert!(read(&[(MESH_API_TOKENS, &twice)]).is_err());
        let oidc = read(&[
            (MESH_OIDC_AUDIENCE, "https://gossip.example"),
            (
                MESH_OIDC_PRINCIPALS,
                "sched@p.iam.gserviceaccount.com=operator",
            ),
        ])
        .unwrap();
        let oidc = oidc.oidc.unwrap();
        assert_eq!(oidc.issuer, GOOGLE_ISSUER);
        assert_eq!(
            oidc.principals.get("sched@p.iam.gserviceaccount.com"),
            Some(&Role::Operator)
        );
        let err = read(&[(MESH_OIDC_AUDIENCE, "x")]).unwrap_err().to_string();
        assert!(err.contains(MESH_OIDC_PRINCIPALS), "{err}");
    }
}
