//! The proxy's metrics (OpenTelemetry, exported over OTLP with the traces when an endpoint is
//! configured; see `mesh_service::telemetry`).
//!
//! - `mesh.signaling.connections` (gauge): open WebSocket signaling connections.
//! - `mesh.connect` (counter): `POST /api/mesh-rtc/connect` calls by `outcome` (`ok` or the
//!   error's code, e.g. `connect_timeout`, `link_exists`).
//!
//! A leaf: what it observes is handed in, so any module can record here without the metrics
//! depending on it.

use std::sync::LazyLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};

pub(crate) struct Instruments {
    pub connects: Counter<u64>,
}

/// Made on first use, which is after `telemetry::init` has installed the meter provider.
pub(crate) static METRICS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    connects: opentelemetry::global::meter("signaling-proxy")
        .u64_counter("mesh.connect")
        .with_description("Connect calls by outcome")
        .build(),
});

pub(crate) fn connect_outcome(outcome: &str) {
    METRICS
        .connects
        .add(1, &[KeyValue::new("outcome", outcome.to_string())]);
}

/// Registers `mesh.signaling.connections`, read from `count` at each export (`None`: nothing
/// to report); keep the gauge for as long as the proxy runs.
pub(crate) fn observe_connections(
    count: impl Fn() -> Option<usize> + Send + Sync + 'static,
) -> ObservableGauge<u64> {
    opentelemetry::global::meter("signaling-proxy")
        .u64_observable_gauge("mesh.signaling.connections")
        .with_description("Open WebSocket signaling connections")
        .with_callback(move |observer| {
            if let Some(n) = count() {
                observer.observe(n as u64, &[]);
            }
        })
        .build()
}
