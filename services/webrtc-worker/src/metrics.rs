//! The worker's metrics (OpenTelemetry, exported over OTLP with the traces when an endpoint is
//! configured; see `mesh_service::telemetry`). Attributes are low-cardinality on purpose: no peer
//! ids, which would make one time series per link.
//!
//! - `mesh.links` (gauge): this worker's links by `health` (`up`, `degraded`, `down`, `pending`).
//! - `mesh.link.rtt` (histogram, ms): each QoS sample's RTT.
//! - `mesh.gossip.sent` (counter): deliveries by `outcome` (`ok`, `failed`) and `transport`.
//! - `mesh.gossip.received` (counter): envelopes by `outcome` (`accepted`, `duplicate`, or the
//!   refusal's code).

use std::sync::LazyLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};

pub(crate) struct Instruments {
    pub rtt: Histogram<f64>,
    pub gossip_sent: Counter<u64>,
    pub gossip_received: Counter<u64>,
}

/// Made on first use, which is after `telemetry::init` has installed the meter provider.
pub(crate) static METRICS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("webrtc-worker");
    Instruments {
        rtt: meter
            .f64_histogram("mesh.link.rtt")
            .with_unit("ms")
            .with_description("Round-trip time of each link quality sample")
            .with_boundaries(vec![
                1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
            ])
            .build(),
        gossip_sent: meter
            .u64_counter("mesh.gossip.sent")
            .with_description("Gossip envelope deliveries this worker attempted")
            .build(),
        gossip_received: meter
            .u64_counter("mesh.gossip.received")
            .with_description("Gossip envelopes this worker received, by outcome")
            .build(),
    }
});

/// Registers `mesh.links`, read at each export from `healths` (each live link's health; `None`
/// once the worker is gone); keep the returned gauge for as long as the worker runs.
pub(crate) fn observe_links(
    healths: impl Fn() -> Option<Vec<Option<mesh_types::Health>>> + Send + Sync + 'static,
) -> ObservableGauge<u64> {
    opentelemetry::global::meter("webrtc-worker")
        .u64_observable_gauge("mesh.links")
        .with_description("This worker's links by health")
        .with_callback(move |observer| {
            let Some(healths) = healths() else {
                return;
            };
            let mut counts = [0u64; 4];
            for health in healths {
                let i = match health.map(mesh_types::Health::as_str) {
                    Some("up") => 0,
                    Some("degraded") => 1,
                    Some(_) => 2,
                    None => 3,
                };
                counts[i] += 1;
            }
            for (health, n) in ["up", "degraded", "down", "pending"].iter().zip(counts) {
                observer.observe(n, &[KeyValue::new("health", *health)]);
            }
        })
        .build()
}
