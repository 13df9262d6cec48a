//! The worker's configuration, read once from the environment and validated; an error names the
//! variable and what was expected.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_service::config::{Env, ProcessEnv, Source};
use mesh_service::{ConfigError, ServiceConfig};
use mesh_types::{Identity, PeerId};

use crate::transport::{DEFAULT_RECEIVE_WINDOW, IceServer};

pub const PEER_ID: &str = "PEER_ID";
pub const MESH_SIGNING_KEY: &str = "MESH_SIGNING_KEY";
pub const MESH_SIGNING_KEY_FILE: &str = "MESH_SIGNING_KEY_FILE";
pub const ICE_SERVERS: &str = "ICE_SERVERS";
pub const MESH_ICE_POLICY: &str = "MESH_ICE_POLICY";
pub const QOS_INTERVAL_SECS: &str = "QOS_INTERVAL_SECS";
pub const MESH_PROBE_INTERVAL_MS: &str = "MESH_PROBE_INTERVAL_MS";
pub const MESH_UDP_ADDRS: &str = "MESH_UDP_ADDRS";
pub const MESH_DIAL_TIMEOUT_SECS: &str = "MESH_DIAL_TIMEOUT_SECS";
pub const MESH_GATHER_TIMEOUT_MS: &str = "MESH_GATHER_TIMEOUT_MS";
pub const MESH_PUBLIC_URL: &str = "MESH_PUBLIC_URL";
pub const MESH_REGION: &str = "MESH_REGION";
pub const MESH_PROMPT_DRIVER: &str = "MESH_PROMPT_DRIVER";
pub const MESH_SEND_BUFFER_BYTES: &str = "MESH_SEND_BUFFER_BYTES";
pub const MESH_RECEIVE_WINDOW_BYTES: &str = "MESH_RECEIVE_WINDOW_BYTES";
pub const MESH_SIGNALING_URL: &str = "MESH_SIGNALING_URL";
pub const MESH_GOSSIP_TTL: &str = "MESH_GOSSIP_TTL";
pub const MESH_SUSPECT_AFTER_MS: &str = "MESH_SUSPECT_AFTER_MS";
pub const MESH_REJOIN: &str = "MESH_REJOIN";
pub const MESH_SPOOL_CAPACITY: &str = "MESH_SPOOL_CAPACITY";
pub const MESH_REJOIN_MAX_DELAY_MS: &str = "MESH_REJOIN_MAX_DELAY_MS";
pub const MESH_PROXY_URL: &str = "MESH_PROXY_URL";
pub const MESH_PROXY_TOKEN: &str = "MESH_PROXY_TOKEN";
pub const MESH_DEAD_AFTER_MS: &str = "MESH_DEAD_AFTER_MS";
pub const MESH_FILES_DIR: &str = "MESH_FILES_DIR";
pub const MESH_SEND_ROOT: &str = "MESH_SEND_ROOT";
pub const MESH_FILES_MAX_BYTES: &str = "MESH_FILES_MAX_BYTES";
pub const MESH_FILES_ACCEPT_FROM: &str = "MESH_FILES_ACCEPT_FROM";
pub const MESH_FILES_WINDOW: &str = "MESH_FILES_WINDOW";
pub const MESH_FILES_KEEP_SECS: &str = "MESH_FILES_KEEP_SECS";
pub const MESH_FAULT_FLIP_CHUNK: &str = "MESH_FAULT_FLIP_CHUNK";
pub const MESH_QUEUE_CAPACITY: &str = "MESH_QUEUE_CAPACITY";

#[derive(Debug)]
pub struct WorkerConfig {
    pub service: ServiceConfig,
    pub identity: Identity,
    pub ice_servers: Vec<IceServer>,
    pub relay_only: bool,
    /// How often a link's QoS is sampled and written to the store.
    pub qos_interval: Duration,
    /// How often a probe ping is sent on each link.
    pub probe_interval: Duration,
    /// Probe silence that makes a peer suspect, then dead (the link is written `down` and
    /// closed); see `liveness`.
    pub liveness: crate::liveness::DetectorConfig,
    pub udp_addrs: Vec<SocketAddr>,
    /// A dialled connection with no answer by then is closed and dropped.
    pub dial_timeout: Duration,
    pub gather_timeout: Duration,
    /// The worker's base URL as other peers reach it; defaults to `http://127.0.0.1:<port>`.
    pub public_url: Option<String>,
    pub region: Option<String>,
    /// Drive connections with the prompt runtime (default on; see `prompt_runtime`).
    pub prompt_driver: bool,
    /// Unsent bytes a channel may hold before senders wait (default 1 MiB).
    pub send_buffer_limit: usize,
    /// The SCTP receive window each link advertises (default 256 KiB; see `transport`).
    pub receive_window: u32,
    /// The proxy's WebSocket signaling (`ws://…/ws` or `wss://…/ws`) to join as a native peer.
    pub signaling_url: Option<String>,
    /// Gossip: hops an envelope this peer originates may take beyond the first (default 1).
    pub gossip: crate::gossip::GossipSettings,
    /// Rejoining lost peers (on by default; through the proxy when `MESH_PROXY_URL` is set).
    pub rejoin: crate::rejoin::RejoinSettings,
    /// Store writes held while the store is away (oldest dropped, and counted, beyond this).
    pub spool_capacity: usize,
    /// File transfers: directories, limits, who may send us files.
    pub files: crate::files::FilesConfig,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut service = ServiceConfig::from_source("webrtc-worker", source)?;
        let env = Env::new(source);
        let id = env.required(PEER_ID, "this peer's id (letters, digits, '-', '_', '.')")?;
        let id = PeerId::new(id).map_err(|e| env.invalid(PEER_ID, e.to_string()))?;
        let seed = match (
            env.optional(MESH_SIGNING_KEY),
            env.optional(MESH_SIGNING_KEY_FILE),
        ) {
            (Some(_), Some(_)) => {
                return Err(env.invalid(
                    MESH_SIGNING_KEY_FILE,
                    "only one of MESH_SIGNING_KEY and MESH_SIGNING_KEY_FILE",
                ));
            }
            (Some(seed), None) => seed,
            (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
                env.invalid(MESH_SIGNING_KEY_FILE, format!("a readable key file ({e})"))
            })?,
            (None, None) => {
                return Err(ConfigError::Missing {
                    key: MESH_SIGNING_KEY,
                    expected:
                        "a base64 Ed25519 seed (or MESH_SIGNING_KEY_FILE naming a file holding one)"
                            .into(),
                });
            }
        };
        let key_var = if env.optional(MESH_SIGNING_KEY).is_some() {
            MESH_SIGNING_KEY
        } else {
            MESH_SIGNING_KEY_FILE
        };
        let identity = Identity::from_seed_base64(id, &seed).map_err(|e| ConfigError::Invalid {
            key: key_var,
            got: "(secret)".into(),
            expected: format!("a base64 32-byte Ed25519 seed: {e}"),
        })?;
        let ice_servers: Vec<IceServer> = match env.optional(ICE_SERVERS) {
            None => Vec::new(),
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                env.invalid(ICE_SERVERS, format!(r#"a JSON list like [{{"urls": ["turn:host:3478"], "username": "u", "credential": "p"}}] ({e})"#))
            })?,
        };
        let relay_only = match env.optional(MESH_ICE_POLICY).as_deref() {
            None | Some("all") => false,
            Some("relay") => true,
            Some(_) => return Err(env.invalid(MESH_ICE_POLICY, "all or relay")),
        };
        if relay_only
            && ice_servers
                .iter()
                .all(|s| s.urls.iter().all(|u| !u.starts_with("turn")))
        {
            return Err(env.invalid(
                MESH_ICE_POLICY,
                "relay only with a TURN server in ICE_SERVERS",
            ));
        }
        let udp_addrs = match env.optional(MESH_UDP_ADDRS) {
            None => vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            Some(list) => list
                .split(',')
                .map(|a| a.trim().parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    env.invalid(
                        MESH_UDP_ADDRS,
                        "comma-separated ip:port addresses, e.g. 0.0.0.0:0",
                    )
                })?,
        };
        // The liveness defaults live in one place, `DetectorConfig::default`.
        let defaults = crate::liveness::DetectorConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let probe_ms = env.parse_or(
            MESH_PROBE_INTERVAL_MS,
            ms(defaults.tick),
            "milliseconds from 10 to 60000",
        )?;
        if !(10..=60_000).contains(&probe_ms) {
            return Err(env.invalid(MESH_PROBE_INTERVAL_MS, "milliseconds from 10 to 60000"));
        }
        let gather_ms = env.parse_or(
            MESH_GATHER_TIMEOUT_MS,
            5_000u64,
            "milliseconds from 1 to 60000",
        )?;
        if !(1..=60_000).contains(&gather_ms) {
            return Err(env.invalid(MESH_GATHER_TIMEOUT_MS, "milliseconds from 1 to 60000"));
        }
        // Defaults: a dead peer's link is down within 4.5 s (the dead bound plus at most one
        // probe interval), inside the 5 s the mesh promises.
        let suspect_ms: u64 = env.parse_or(
            MESH_SUSPECT_AFTER_MS,
            ms(defaults.suspect_after),
            "milliseconds",
        )?;
        let dead_ms: u64 =
            env.parse_or(MESH_DEAD_AFTER_MS, ms(defaults.dead_after), "milliseconds")?;
        // A suspicion needs several missed probes, or one lost packet would raise it.
        if suspect_ms < 3 * probe_ms {
            return Err(env.invalid(
                MESH_SUSPECT_AFTER_MS,
                format!("at least three probe intervals ({} ms)", 3 * probe_ms),
            ));
        }
        if dead_ms <= suspect_ms || dead_ms > 600_000 {
            return Err(env.invalid(
                MESH_DEAD_AFTER_MS,
                format!("more than {MESH_SUSPECT_AFTER_MS} ({suspect_ms} ms), at most 600000"),
            ));
        }
        let rejoin_cap: u64 = env.parse_or(
            MESH_REJOIN_MAX_DELAY_MS,
            4_000,
            "milliseconds from 500 to 300000",
        )?;
        if !(500..=300_000).contains(&rejoin_cap) {
            return Err(env.invalid(MESH_REJOIN_MAX_DELAY_MS, "milliseconds from 500 to 300000"));
        }
        let proxy = match (
            env.http_url(MESH_PROXY_URL)?,
            env.optional(MESH_PROXY_TOKEN),
        ) {
            (Some(url), Some(token)) => Some((url.trim_end_matches('/').to_string(), token)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: MESH_PROXY_TOKEN,
                    expected: format!("a `peer` API token of the proxy named by {MESH_PROXY_URL}"),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: MESH_PROXY_URL,
                    expected: format!("the proxy's base URL for {MESH_PROXY_TOKEN}"),
                });
            }
        };
        let rejoin = crate::rejoin::RejoinSettings {
            enabled: env.parse_or(MESH_REJOIN, true, "true or false")?,
            cap: Duration::from_millis(rejoin_cap),
            proxy,
            ..crate::rejoin::RejoinSettings::default()
        };
        let public_url = env.http_url(MESH_PUBLIC_URL)?;
        // Every worker is a `webrtc-worker`; its peer id tells the instances apart.
        service.telemetry.instance = Some(identity.id().to_string());
        let spool_capacity: usize =
            env.parse_or(MESH_SPOOL_CAPACITY, 10_000, "a number of writes, 1 or more")?;
        if spool_capacity == 0 {
            return Err(env.invalid(MESH_SPOOL_CAPACITY, "a number of writes, 1 or more"));
        }
        let files = files_config(&env, identity.id(), &service.store)?;
        Ok(WorkerConfig {
            files,
            spool_capacity,
            rejoin,
            identity,
            ice_servers,
            relay_only,
            qos_interval: env.secs_or(QOS_INTERVAL_SECS, 15, 1, 3600)?,
            probe_interval: Duration::from_millis(probe_ms),
            liveness: crate::liveness::DetectorConfig {
                suspect_after: Duration::from_millis(suspect_ms),
                dead_after: Duration::from_millis(dead_ms),
                tick: Duration::from_millis(probe_ms),
            },
            udp_addrs,
            dial_timeout: env.secs_or(MESH_DIAL_TIMEOUT_SECS, 30, 1, 600)?,
            gather_timeout: Duration::from_millis(gather_ms),
            public_url,
            region: env.optional(MESH_REGION),
            prompt_driver: env.parse_or(MESH_PROMPT_DRIVER, true, "true or false")?,
            send_buffer_limit: match env.parse_or(
                MESH_SEND_BUFFER_BYTES,
                1usize << 20,
                "bytes from 65536 up",
            )? {
                n if n >= 65_536 => n,
                _ => return Err(env.invalid(MESH_SEND_BUFFER_BYTES, "bytes from 65536 up")),
            },
            // At least one whole message (64 KiB), or a full-size message could never be
            // reassembled.
            receive_window: match env.parse_or(
                MESH_RECEIVE_WINDOW_BYTES,
                DEFAULT_RECEIVE_WINDOW,
                "bytes from 65536 to 4294967295",
            )? {
                n if n >= 65_536 => n,
                _ => {
                    return Err(
                        env.invalid(MESH_RECEIVE_WINDOW_BYTES, "bytes from 65536 to 4294967295")
                    );
                }
            },
            signaling_url: match env.optional(MESH_SIGNALING_URL) {
                // The worker answers whatever the server relays, so the server must be the real
                // one: TLS, except to this machine.
                Some(url) if !(url.starts_with("wss://") || is_loopback_ws(&url)) => {
                    return Err(env.invalid(
                        MESH_SIGNALING_URL,
                        "a wss:// URL (the proxy's /ws; ws:// only to 127.0.0.1, [::1] or localhost)",
                    ));
                }
                url => url,
            },
            gossip: {
                let mut g = crate::gossip::GossipSettings::default();
                g.node.ttl = match env.parse_or(MESH_GOSSIP_TTL, 1u8, "hops from 0 to 4")? {
                    n if n <= 4 => n,
                    _ => return Err(env.invalid(MESH_GOSSIP_TTL, "hops from 0 to 4")),
                };
                g
            },
            service,
        })
    }
}

/// `MESH_FILES_*`. The files directory defaults to `files/<peer>` in the embedded store's
/// directory, or with Firestore to `mesh-files/<peer>` in the temporary directory (on Cloud Run
/// the only writable place); the send root to the files directory's `outbox`.
fn files_config(
    env: &Env<'_>,
    me: &PeerId,
    store: &mesh_store::StoreConfig,
) -> Result<crate::files::FilesConfig, ConfigError> {
    let dir = match (env.optional(MESH_FILES_DIR), store) {
        (Some(dir), _) => std::path::PathBuf::from(dir),
        (None, mesh_store::StoreConfig::Embedded { dir }) => dir.join("files").join(me.as_str()),
        #[allow(unreachable_patterns)]
        (None, _) => std::env::temp_dir().join("mesh-files").join(me.as_str()),
    };
    let mut files = crate::files::FilesConfig::new(dir);
    if let Some(root) = env.optional(MESH_SEND_ROOT) {
        files.send_root = root.into();
    }
    files.max_bytes = env.parse_or(MESH_FILES_MAX_BYTES, files.max_bytes, "a number of bytes")?;
    files.accept_from = match env
        .optional(MESH_FILES_ACCEPT_FROM)
        .as_deref()
        .map(str::trim)
    {
        None | Some("*") => None,
        Some("") => Some(Default::default()),
        Some(list) => Some(
            list.split(',')
                .map(|p| PeerId::new(p.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    env.invalid(
                        MESH_FILES_ACCEPT_FROM,
                        format!("`*` or comma-separated peer ids ({e})"),
                    )
                })?,
        ),
    };
    files.window = match env.parse_or(MESH_FILES_WINDOW, files.window, "chunks from 1 to 64")? {
        n @ 1..=64 => n,
        _ => return Err(env.invalid(MESH_FILES_WINDOW, "chunks from 1 to 64")),
    };
    files.keep = match env.parse_or(MESH_FILES_KEEP_SECS, files.keep.as_secs(), "seconds from 1")? {
        0 => return Err(env.invalid(MESH_FILES_KEEP_SECS, "seconds from 1")),
        n => Duration::from_secs(n),
    };
    files.queue_capacity = match env.parse_or(
        MESH_QUEUE_CAPACITY,
        files.queue_capacity,
        "messages from 1 to 1000000",
    )? {
        n @ 1..=1_000_000 => n,
        _ => return Err(env.invalid(MESH_QUEUE_CAPACITY, "messages from 1 to 1000000")),
    };
    files.flip_chunk = match env.optional(MESH_FAULT_FLIP_CHUNK) {
        None => None,
        Some(n) => Some(
            n.trim()
                .parse()
                .map_err(|_| env.invalid(MESH_FAULT_FLIP_CHUNK, "a chunk index"))?,
        ),
    };
    Ok(files)
}

/// `ws://` to this machine.
fn is_loopback_ws(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("ws://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SEED: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<WorkerConfig, ConfigError> {
        let mut map: HashMap<&str, &str> =
            HashMap::from([(PEER_ID, "w1"), (MESH_SIGNING_KEY, SEED)]);
        for (k, v) in pairs {
            if v.is_empty() {
                map.remove(k);
            } else {
                map.insert(k, v);
            }
        }
        WorkerConfig::from_source(&map)
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.identity.id().as_str(), "w1");
        assert_eq!(c.qos_interval, Duration::from_secs(15));
        assert_eq!(c.dial_timeout, Duration::from_secs(30));
        assert_eq!(c.udp_addrs, vec![SocketAddr::from(([0, 0, 0, 0], 0))]);
        assert!(!c.relay_only && c.ice_servers.is_empty());
    }

    #[test]
    fn reads_ice_servers_and_relay_policy() {
        let c = config(&[
            (
                ICE_SERVERS,
                r#"[{"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"p"}]"#,
            ),
            (MESH_ICE_POLICY, "relay"),
            (MESH_UDP_ADDRS, "127.0.0.1:0, 127.0.0.1:0"),
        ])
        .unwrap();
        assert!(c.relay_only);
        assert_eq!(c.ice_servers[0].username.as_deref(), Some("u"));
        assert_eq!(c.udp_addrs.len(), 2);
    }

    #[test]
    fn errors_name_the_variable() {
        let check = |pairs: &[(&'static str, &'static str)], key: &str| {
            let err = config(pairs).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        };
        check(&[(PEER_ID, "")], PEER_ID);
        check(&[(PEER_ID, "a/b")], PEER_ID);
        check(&[(MESH_SIGNING_KEY, "")], MESH_SIGNING_KEY);
        check(&[(MESH_SIGNING_KEY, "short")], MESH_SIGNING_KEY);
        check(
            &[(MESH_SIGNING_KEY_FILE, "/nonexistent")],
            MESH_SIGNING_KEY_FILE,
        );
        check(&[(ICE_SERVERS, "{")], ICE_SERVERS);
        check(&[(MESH_ICE_POLICY, "relay")], MESH_ICE_POLICY);
        check(&[(MESH_UDP_ADDRS, "localhost")], MESH_UDP_ADDRS);
        check(&[(QOS_INTERVAL_SECS, "0")], QOS_INTERVAL_SECS);
        check(&[(MESH_PROBE_INTERVAL_MS, "5")], MESH_PROBE_INTERVAL_MS);
        check(&[(MESH_PUBLIC_URL, "ftp://x")], MESH_PUBLIC_URL);
        check(
            &[(MESH_RECEIVE_WINDOW_BYTES, "1000")],
            MESH_RECEIVE_WINDOW_BYTES,
        );
        check(&[(MESH_FILES_KEEP_SECS, "0")], MESH_FILES_KEEP_SECS);
        check(&[(MESH_FILES_KEEP_SECS, "a week")], MESH_FILES_KEEP_SECS);
        for plain in [
            "ws://proxy.example.com/ws",
            "ws://10.0.0.1:8080/ws",
            "https://x/ws",
        ] {
            check(&[(MESH_SIGNALING_URL, plain)], MESH_SIGNALING_URL);
        }
    }

    #[test]
    fn signaling_needs_tls_except_to_this_machine() {
        for ok in [
            "wss://proxy.example.com/ws",
            "ws://127.0.0.1:8080/ws",
            "ws://localhost:9/ws",
            "ws://[::1]:9/ws",
        ] {
            let c = config(&[(MESH_SIGNALING_URL, ok)]).unwrap();
            assert_eq!(c.signaling_url.as_deref(), Some(ok));
        }
    }

    #[test]
    fn the_secret_never_appears_in_errors() {
        let err = config(&[(MESH_SIGNING_KEY, "c2VjcmV0")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
