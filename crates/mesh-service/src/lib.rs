//! Plumbing every meshrtc service shares, so that each service's `main` stays thin: config read
//! once from the environment and validated, JSON logs Cloud Logging understands with optional
//! OTLP traces, the tower-http layer stack, one JSON error shape, health and readiness routes,
//! and graceful shutdown.
//!
//! Invariant: nothing here knows about WebRTC or gossip; services add their routes on top.

pub mod config;
pub mod error;
pub mod http;
pub mod telemetry;

pub use config::{ConfigError, HttpLimits, ServiceConfig, Source};
pub use error::{ApiError, ApiJson};

/// Installs the process-wide rustls crypto provider (aws-lc-rs), once. Every TLS client in the
/// tree (reqwest, tonic for Firestore) then uses the same one; see docs/adr/0002-one-tls-stack.md.
/// Wall-clock milliseconds since the epoch: for the drivers (services), never for sans-IO code,
/// which takes the time as an argument.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> mesh_types::UnixMillis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Locks a mutex, ignoring poisoning. For the short critical sections services keep (a map
/// insert, a counter update) that leave the data consistent even if a panic interrupted the
/// holder; refusing every later request over one panic would be worse.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
