//! Configuration read once, at start-up, from an injected source (the process environment in
//! production, a map in tests) into validated structs. Errors name the variable, what was
//! expected and what was found.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mesh_store::StoreConfig;

pub const PORT: &str = "PORT";
pub const MESH_DATA_DIR: &str = "MESH_DATA_DIR";
pub const MESH_STORE: &str = "MESH_STORE";
pub const GOOGLE_CLOUD_PROJECT: &str = "GOOGLE_CLOUD_PROJECT";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const MESH_LOG_FORMAT: &str = "MESH_LOG_FORMAT";
pub const RUST_LOG: &str = "RUST_LOG";
pub const MESH_MAX_BODY_BYTES: &str = "MESH_MAX_BODY_BYTES";
pub const MESH_REQUEST_TIMEOUT_SECS: &str = "MESH_REQUEST_TIMEOUT_SECS";
pub const MESH_SHUTDOWN_GRACE_SECS: &str = "MESH_SHUTDOWN_GRACE_SECS";

/// Where configuration values come from.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| v.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} is required: {expected}")]
    Missing { key: &'static str, expected: String },
    #[error("{key}={got:?} is invalid: expected {expected}")]
    Invalid {
        key: &'static str,
        got: String,
        expected: String,
    },
}

/// Typed reads from a [`Source`]; empty values count as unset.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    source: &'a dyn Source,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Env")
    }
}

impl<'a> Env<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Env { source }
    }

    pub fn optional(&self, key: &str) -> Option<String> {
        self.source
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, key: &'static str, expected: &str) -> Result<String, ConfigError> {
        self.optional(key).ok_or_else(|| ConfigError::Missing {
            key,
            expected: expected.into(),
        })
    }

    /// Parses `key` as `T`, or `default` when unset.
    pub fn parse_or<T: FromStr>(
        &self,
        key: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.optional(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                key,
                got: v,
                expected: expected.into(),
            }),
        }
    }

    /// A whole number of seconds in `min..=max`.
    pub fn secs_or(
        &self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        let expected = format!("whole seconds from {min} to {max}");
        let secs = self.parse_or(key, default, &expected)?;
        if !(min..=max).contains(&secs) {
            return Err(ConfigError::Invalid {
                key,
                got: secs.to_string(),
                expected,
            });
        }
        Ok(Duration::from_secs(secs))
    }

    /// An optional `http://` or `https://` URL.
    pub fn http_url(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.optional(key) {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err(self.invalid(key, "an http:// or https:// URL"))
            }
            url => Ok(url),
        }
    }

    /// Reports `e` as a problem with `key`'s value.
    pub fn invalid(&self, key: &'static str, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            got: self.optional(key).unwrap_or_default(),
            expected: expected.into(),
        }
    }
}

/// Limits the HTTP layer enforces on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body accepted; larger ones get 413 `body_too_large`.
    pub max_body_bytes: usize,
    /// A request still running after this gets 503 `timeout`, so no client waits forever.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, as Cloud Logging reads it (the default).
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub service_name: String,
    /// OTLP/HTTP collector base URL; traces are exported only when set.
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    /// A tracing-subscriber filter, e.g. `info,mesh_store=debug`.
    pub log_filter: String,
    /// Names traces in logs (`projects/<p>/traces/<id>`) so Cloud Logging links them.
    pub gcp_project: Option<String>,
    /// Logs go to stderr instead of stdout: for a command whose stdout is its result.
    pub log_to_stderr: bool,
    /// `service.instance.id` on exported traces and metrics (a worker's peer id), so that the
    /// instances of one service can be told apart.
    pub instance: Option<String>,
}

/// What every service reads at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Bound on 0.0.0.0, as Cloud Run expects.
    pub port: u16,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub http: HttpLimits,
    /// How long in-flight requests may finish after SIGTERM (Cloud Run allows 10 s).
    pub shutdown_grace: Duration,
    pub telemetry: TelemetryConfig,
}

impl ServiceConfig {
    pub fn from_env(service_name: &str) -> Result<Self, ConfigError> {
        Self::from_source(service_name, &ProcessEnv)
    }

    pub fn from_source(service_name: &str, source: &dyn Source) -> Result<Self, ConfigError> {
        let env = Env::new(source);
        let port = env.parse_or(PORT, 8080u16, "a TCP port number from 0 to 65535")?;
        let data_dir = PathBuf::from(
            env.optional(MESH_DATA_DIR)
                .unwrap_or_else(|| ".meshrtc".into()),
        );
        let gcp_project = env.optional(GOOGLE_CLOUD_PROJECT);
        let store = StoreConfig::parse(
            env.optional(MESH_STORE).as_deref(),
            data_dir.clone(),
            gcp_project.as_deref(),
        )
        .map_err(|why| env.invalid(MESH_STORE, why))?;
        let max_body_bytes = env.parse_or(
            MESH_MAX_BODY_BYTES,
            HttpLimits::default().max_body_bytes,
            "a size in bytes",
        )?;
        if max_body_bytes == 0 {
            return Err(env.invalid(MESH_MAX_BODY_BYTES, "a size in bytes above 0"));
        }
        let request_timeout = env.secs_or(MESH_REQUEST_TIMEOUT_SECS, 30, 1, 3600)?;
        let shutdown_grace = env.secs_or(MESH_SHUTDOWN_GRACE_SECS, 10, 0, 300)?;
        let log_format = match env.optional(MESH_LOG_FORMAT).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(_) => return Err(env.invalid(MESH_LOG_FORMAT, "json or text")),
        };
        let otlp_endpoint = env.http_url(OTEL_EXPORTER_OTLP_ENDPOINT)?;
        Ok(ServiceConfig {
            port,
            data_dir,
            store,
            http: HttpLimits {
                max_body_bytes,
                request_timeout,
            },
            shutdown_grace,
            telemetry: TelemetryConfig {
                service_name: service_name.to_string(),
                otlp_endpoint,
                log_format,
                log_filter: env.optional(RUST_LOG).unwrap_or_else(|| "info".into()),
                gcp_project,
                log_to_stderr: false,
                instance: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<ServiceConfig, ConfigError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        ServiceConfig::from_source("svc", &map)
    }

    #[test]
    fn defaults_suit_cloud_run_and_local_use() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(
            c.store,
            StoreConfig::Embedded {
                dir: PathBuf::from(".meshrtc")
            }
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.telemetry.log_format, LogFormat::Json);
        assert_eq!(c.telemetry.otlp_endpoint, None);
    }

    #[test]
    fn reads_every_variable() {
        let c = config(&[
            (PORT, "9000"),
            (MESH_DATA_DIR, "/var/lib/mesh"),
            (MESH_STORE, "firestore"),
            (GOOGLE_CLOUD_PROJECT, "proj"),
            (MESH_MAX_BODY_BYTES, "1024"),
            (MESH_REQUEST_TIMEOUT_SECS, "5"),
            (MESH_LOG_FORMAT, "text"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
        ])
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(
            c.store,
            StoreConfig::Firestore {
                project_id: "proj".into(),
                database_id: None
            }
        );
        assert_eq!(
            c.http,
            HttpLimits {
                max_body_bytes: 1024,
                request_timeout: Duration::from_secs(5)
            }
        );
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(c.telemetry.log_format, LogFormat::Text);
    }

    #[test]
    fn errors_name_the_variable_and_what_was_expected() {
        let check = |pairs: &[(&'static str, &'static str)], key: &str| {
            let err = config(pairs).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
            assert!(err.contains("expected"), "{err}");
        };
        check(&[(PORT, "http")], PORT);
        check(&[(PORT, "70000")], PORT);
        check(&[(MESH_STORE, "firestore")], MESH_STORE);
        check(&[(MESH_STORE, "redis")], MESH_STORE);
        check(&[(MESH_MAX_BODY_BYTES, "0")], MESH_MAX_BODY_BYTES);
        check(
            &[(MESH_REQUEST_TIMEOUT_SECS, "0")],
            MESH_REQUEST_TIMEOUT_SECS,
        );
        check(&[(MESH_LOG_FORMAT, "xml")], MESH_LOG_FORMAT);
        check(
            &[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")],
            OTEL_EXPORTER_OTLP_ENDPOINT,
        );
    }
}
