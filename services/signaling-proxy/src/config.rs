//! The proxy's configuration, read once from the environment and validated: credentials, the
//! peer allowlist, CORS, rate limits, upstream time-outs and WebSocket limits.

use std::time::Duration;

use axum::http::HeaderValue;
use mesh_service::config::{Env, ProcessEnv, Source};
use mesh_service::{ConfigError, ServiceConfig};
use mesh_types::{PeerId, PublicKey};

use mesh_auth::AuthConfig;

// The allowlist is a registry rule; configuration only reads it in.
pub use crate::peers::Allowlist;

pub const MESH_PEER_ALLOWLIST: &str = "MESH_PEER_ALLOWLIST";
pub const MESH_CORS_ORIGINS: &str = "MESH_CORS_ORIGINS";
pub const MESH_RATE_PER_IP: &str = "MESH_RATE_PER_IP";
pub const MESH_RATE_PER_CREDENTIAL: &str = "MESH_RATE_PER_CREDENTIAL";
pub const MESH_CLIENT_IP_HEADER: &str = "MESH_CLIENT_IP_HEADER";
pub const MESH_UPSTREAM_TIMEOUT_SECS: &str = "MESH_UPSTREAM_TIMEOUT_SECS";
pub const MESH_CONNECT_TIMEOUT_SECS: &str = "MESH_CONNECT_TIMEOUT_SECS";
pub const MESH_WS_MAX_CONNECTIONS: &str = "MESH_WS_MAX_CONNECTIONS";
pub const MESH_WS_MAX_MESSAGE_BYTES: &str = "MESH_WS_MAX_MESSAGE_BYTES";
pub const MESH_WS_MESSAGES_PER_SEC: &str = "MESH_WS_MESSAGES_PER_SEC";
pub const MESH_WS_IDLE_SECS: &str = "MESH_WS_IDLE_SECS";
pub const MESH_WS_ANONYMOUS: &str = "MESH_WS_ANONYMOUS";
pub const MESH_LIVE_INTERVAL_MS: &str = "MESH_LIVE_INTERVAL_MS";

/// WebSocket signaling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsConfig {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    /// A connection that sends nothing (not even a pong) for this long is closed; the server
    /// pings at a third of it.
    pub idle_timeout: Duration,
    /// Clients that register without a proof get a server-assigned id.
    pub anonymous: bool,
}

#[derive(Debug)]
pub struct ProxyConfig {
    pub service: ServiceConfig,
    /// API tokens and OIDC.
    pub auth: AuthConfig,
    pub allowlist: Allowlist,
    /// Origins allowed to call from a browser (exact `scheme://host[:port]`, as browsers send).
    pub cors_origins: Vec<HeaderValue>,
    /// Requests per second (burst twice that) from one client address.
    pub rate_per_ip: u32,
    /// Requests per second (burst twice that) on one credential.
    pub rate_per_credential: u32,
    /// Take the client's address from the last entry of this header (the one the platform's
    /// load balancer appended; e.g. `x-forwarded-for` on Cloud Run) instead of the socket.
    pub client_ip_header: Option<String>,
    /// One call to a worker.
    pub upstream_timeout: Duration,
    /// `connect`: the whole handshake and the wait for the link to come up.
    pub connect_timeout: Duration,
    pub ws: WsConfig,
    /// How often the dashboard's live feed re-reads the store while someone watches.
    pub live_interval: Duration,
}

impl ProxyConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_source("signaling-proxy", source)?;
        let env = Env::new(source);
        let auth = AuthConfig::from_env(&env)?;
        let allowlist = match env.optional(MESH_PEER_ALLOWLIST) {
            None => Allowlist::default(),
            Some(list) => parse_allowlist(&list).map_err(|_| {
                env.invalid(
                    MESH_PEER_ALLOWLIST,
                    "peer ids and/or `key:<base64 public key>`, comma-separated",
                )
            })?,
        };
        let cors_origins = match env.optional(MESH_CORS_ORIGINS) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|o| parse_origin(o.trim()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    env.invalid(
                        MESH_CORS_ORIGINS,
                        "origins like https://dash.example.com (scheme, host, optional port; no \
                         path), comma-separated",
                    )
                })?,
        };
        let rate = |key: &'static str, default: u32| -> Result<u32, ConfigError> {
            match env.parse_or(key, default, "requests per second, 1 or more")? {
                0 => Err(env.invalid(key, "requests per second, 1 or more")),
                n => Ok(n),
            }
        };
        let ws_bytes: usize = env.parse_or(
            MESH_WS_MAX_MESSAGE_BYTES,
            65_536,
            "bytes from 1024 to 1048576",
        )?;
        if !(1024..=1 << 20).contains(&ws_bytes) {
            return Err(env.invalid(MESH_WS_MAX_MESSAGE_BYTES, "bytes from 1024 to 1048576"));
        }
        let max_connections: usize = env.parse_or(
            MESH_WS_MAX_CONNECTIONS,
            20_000,
            "a number of connections, 1 or more",
        )?;
        if max_connections == 0 {
            return Err(env.invalid(
                MESH_WS_MAX_CONNECTIONS,
                "a number of connections, 1 or more",
            ));
        }
        let connect_timeout = env.secs_or(MESH_CONNECT_TIMEOUT_SECS, 20, 1, 300)?;
        if connect_timeout >= service.http.request_timeout {
            return Err(env.invalid(
                MESH_CONNECT_TIMEOUT_SECS,
                format!(
                    "fewer seconds than the request time-out ({} s, MESH_REQUEST_TIMEOUT_SECS), \
                     or the request ends before connect can report",
                    service.http.request_timeout.as_secs()
                ),
            ));
        }
        let live_ms: u64 = env.parse_or(
            MESH_LIVE_INTERVAL_MS,
            1000,
            "milliseconds from 250 to 60000",
        )?;
        if !(250..=60_000).contains(&live_ms) {
            return Err(env.invalid(MESH_LIVE_INTERVAL_MS, "milliseconds from 250 to 60000"));
        }
        Ok(ProxyConfig {
            live_interval: Duration::from_millis(live_ms),
            auth,
            allowlist,
            cors_origins,
            rate_per_ip: rate(MESH_RATE_PER_IP, 100)?,
            rate_per_credential: rate(MESH_RATE_PER_CREDENTIAL, 50)?,
            client_ip_header: env
                .optional(MESH_CLIENT_IP_HEADER)
                .map(|h| h.to_ascii_lowercase()),
            upstream_timeout: env.secs_or(MESH_UPSTREAM_TIMEOUT_SECS, 10, 1, 300)?,
            connect_timeout,
            ws: WsConfig {
                max_connections,
                max_message_bytes: ws_bytes,
                messages_per_second: rate(MESH_WS_MESSAGES_PER_SEC, 20)?,
                idle_timeout: env.secs_or(MESH_WS_IDLE_SECS, 60, 3, 3600)?,
                anonymous: env.parse_or(MESH_WS_ANONYMOUS, false, "true or false")?,
            },
            service,
        })
    }
}

/// An origin as a browser sends it: `http(s)://host[:port]`, nothing after.
fn parse_origin(origin: &str) -> Option<HeaderValue> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return None;
    }
    HeaderValue::from_str(origin).ok()
}

fn parse_allowlist(list: &str) -> Result<Allowlist, ()> {
    let mut allow = Allowlist::default();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.strip_prefix("key:") {
            Some(key) => allow
                .keys
                .push(PublicKey::from_base64(key).map_err(|_| ())?),
            None => allow.ids.push(PeerId::new(entry).map_err(|_| ())?),
        }
    }
    Ok(allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_auth::config::MESH_API_TOKENS;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<ProxyConfig, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        ProxyConfig::from_source(&map)
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_credential_is_required() {
        let err = config(&[]).unwrap_err().to_string();
        assert!(err.contains(MESH_API_TOKENS), "{err}");
        let ok = config(&[(MESH_API_TOKENS, &format!("ops:operator:{HASH}"))]).unwrap();
        assert_eq!(ok.auth.tokens[0].role, mesh_auth::Role::Operator);
        assert_eq!(ok.ws.max_message_bytes, 65_536);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let token = format!("ops:operator:{HASH}");
        for (key, value) in [
            (MESH_API_TOKENS, "ops:admin:00"),
            (MESH_API_TOKENS, "just-a-token"),
            (MESH_PEER_ALLOWLIST, "key:not-base64!"),
            (MESH_CORS_ORIGINS, "dash.example.com"),
            (MESH_CORS_ORIGINS, "https://dash.example.com/"),
            (MESH_WS_MAX_CONNECTIONS, "0"),
            (MESH_CONNECT_TIMEOUT_SECS, "30"),
            (MESH_RATE_PER_IP, "0"),
            (MESH_WS_MAX_MESSAGE_BYTES, "10"),
            (MESH_LIVE_INTERVAL_MS, "100"),
            (MESH_LIVE_INTERVAL_MS, "soon"),
        ] {
            let mut vars = vec![(MESH_API_TOKENS, token.as_str())];
            vars.retain(|(k, _)| *k != key);
            vars.push((key, value));
            let err = config(&vars).unwrap_err().to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn allowlists_parse() {
        let a = parse_allowlist("peer-1, peer-2").unwrap();
        assert_eq!(a.ids.len(), 2);
        assert!(!a.is_open());
    }
}
