//! The job's configuration, read once from the environment and validated: trust seeds, which
//! origins push, the fanout, the time-out for each worker, and (for `serve`) the credentials
//! that may trigger a run.

use std::time::Duration;

use mesh_auth::AuthConfig;
use mesh_service::config::{Env, ProcessEnv, Source};
use mesh_service::{ConfigError, ServiceConfig};
use mesh_types::PeerId;

pub const MESH_TRUST_SEEDS: &str = "MESH_TRUST_SEEDS";
pub const MESH_GOSSIP_FROM: &str = "MESH_GOSSIP_FROM";
pub const MESH_GOSSIP_FANOUT: &str = "MESH_GOSSIP_FANOUT";
pub const MESH_WORKER_TIMEOUT_SECS: &str = "MESH_WORKER_TIMEOUT_SECS";

#[derive(Debug)]
pub struct JobConfig {
    pub service: ServiceConfig,
    /// Operator-chosen peers trust restarts from (docs/TRUST.md). Empty: trust is not
    /// recomputed and the stored scores are used as they are.
    pub seeds: Vec<PeerId>,
    /// Only these peers push. Empty: every live peer with a worker endpoint.
    pub from: Vec<PeerId>,
    pub fanout: usize,
    /// One origin's push (its worker waits up to 5 s per ack and 5 s per HTTPS delivery).
    pub worker_timeout: Duration,
}

/// Credentials for `serve` (`POST /run`): required there, unused by `run-once`.
pub fn auth_from_env() -> Result<AuthConfig, ConfigError> {
    AuthConfig::from_env(&Env::new(&ProcessEnv))
}

fn peer_list(env: &Env<'_>, key: &'static str) -> Result<Vec<PeerId>, ConfigError> {
    env.optional(key)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| PeerId::new(p).map_err(|_| env.invalid(key, "peer ids, comma-separated")))
                .collect()
        })
        .unwrap_or(Ok(Vec::new()))
}

impl JobConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_source("gossip-push", source)?;
        let env = Env::new(source);
        let fanout: usize = env.parse_or(MESH_GOSSIP_FANOUT, 3, "peers per origin, 1 to 16")?;
        if !(1..=16).contains(&fanout) {
            return Err(env.invalid(MESH_GOSSIP_FANOUT, "peers per origin, 1 to 16"));
        }
        let worker_timeout = env.secs_or(MESH_WORKER_TIMEOUT_SECS, 20, 1, 300)?;
        if worker_timeout >= service.http.request_timeout {
            return Err(env.invalid(
                MESH_WORKER_TIMEOUT_SECS,
                format!(
                    "fewer seconds than the request time-out ({} s, MESH_REQUEST_TIMEOUT_SECS), or \
                     one slow worker makes POST /run answer with a time-out",
                    service.http.request_timeout.as_secs()
                ),
            ));
        }
        Ok(JobConfig {
            seeds: peer_list(&env, MESH_TRUST_SEEDS)?,
            from: peer_list(&env, MESH_GOSSIP_FROM)?,
            fanout,
            worker_timeout,
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_and_bad_values() {
        let map: HashMap<&str, &str> = HashMap::new();
        let c = JobConfig::from_source(&map).unwrap();
        assert_eq!((c.fanout, c.seeds.len()), (3, 0));
        for (key, value) in [
            (MESH_GOSSIP_FANOUT, "0"),
            (MESH_TRUST_SEEDS, "a, b/c"),
            (MESH_WORKER_TIMEOUT_SECS, "0"),
            (MESH_WORKER_TIMEOUT_SECS, "30"),
        ] {
            let map: HashMap<&str, &str> = [(key, value)].into_iter().collect();
            let err = JobConfig::from_source(&map).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let map: HashMap<&str, &str> = [(MESH_TRUST_SEEDS, "a, b")].into_iter().collect();
        assert_eq!(JobConfig::from_source(&map).unwrap().seeds.len(), 2);
    }
}
