//! The proxy's metrics (OpenTelemetry, exported over OTLP with the traces when an endpoint is
//! configured; see `mesh_service::telemetry`).
//!
//! - `mesh.signaling.connections` (gauge): open WebSocket signaling connections.
//! - `mesh.connect` (counter): `POST /api/mesh-rtc/connect` calls by `outcome` (`ok` or the
//!   error's code, e.g. `connect_timeout`, `link_exists`).

use std::sync::{Arc, LazyLock, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};

use crate::ws::Hub;

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

/// Registers `mesh.signaling.connections`; keep the gauge for as long as the proxy runs.
pub(crate) fn observe_connections(hub: &Arc<Hub>) -> ObservableGauge<u64> {
    let hub: Weak<Hub> = Arc::downgrade(hub);
    opentelemetry::global::meter("signaling-proxy")
        .u64_observable_gauge("mesh.signaling.connections")
        .with_description("Open WebSocket signaling connections")
        .with_callback(move |observer| {
            if let Some(hub) = hub.upgrade() {
                observer.observe(hub.connection_count() as u64, &[]);
            }
        })
        .build()
}
