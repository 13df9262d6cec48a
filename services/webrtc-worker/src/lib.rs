//! webrtc-worker: one per peer. It opens real RTCPeerConnections (DTLS/SCTP DataChannels through
//! the `webrtc` crate) to other peers on signed offers and answers, keeps a registry of live
//! connections, measures each link's QoS and writes link documents to the store.
//!
//! `app` builds the router (tests call it without a socket); `run` is what `main` calls.

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod file_channel;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod gossip;
pub mod inbox;
pub mod links;
pub mod liveness;
mod metrics;
pub mod prompt_runtime;
pub mod qos;
pub mod queue;
pub mod quorum;
pub mod rejoin;
pub mod signaling;
pub mod spool;
pub mod transport;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use mesh_service::HttpLimits;
use mesh_service::http::{health_routes, serve, with_layers};
use tokio::net::TcpListener;

pub use config::WorkerConfig;
pub use worker::Worker;

use crate::clock::Clock;
use crate::links::LinkTimings;
use crate::transport::{Transport, TransportConfig};
use crate::worker::Parts;

pub(crate) use mesh_service::lock;

/// Runs blocking file work on tokio's blocking pool; a panic there becomes an IO error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// How much nicer than the process the threads that do a transfer's bulk work are.
const BULK_NICE: i32 = 10;

/// Starts bulk file work (hashing a file, reading, checking and writing its chunks) on threads
/// of lower CPU priority than the runtime's, so that on a busy machine the links' drivers, probes
/// and the API go first and a transfer takes what they leave. (Measured: at normal priority the
/// receiver's hashing delayed the link's own driver, and the whole transfer with it; see
/// docs/BENCHMARKS.md.) Threads the work starts inherit the priority.
pub(crate) fn spawn_bulk<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<T>> {
    static POOL: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    // A runtime that is never run: only its blocking pool is used, from any runtime.
    let pool = POOL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("mesh-bulk")
            .on_thread_start(|| {
                // Linux keeps a nice value per thread, inherited from the thread that starts
                // it; raising one's own is always allowed.
                let tid = Some(rustix::thread::gettid());
                let lowered = rustix::process::getpriority_process(tid).and_then(|nice| {
                    rustix::process::setpriority_process(tid, (nice + BULK_NICE).min(19))
                });
                if let Err(e) = lowered {
                    tracing::debug!("bulk thread priority not lowered: {e}");
                }
            })
            .build()
            .inspect_err(|e| tracing::warn!("no bulk pool ({e}); bulk work at normal priority"))
            .ok()
    });
    match pool {
        Some(rt) => rt.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    }
}

/// [`spawn_bulk`], awaited; a panic there becomes an IO error.
pub(crate) async fn bulk<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    spawn_bulk(f).await.map_err(std::io::Error::other)?
}

/// The worker's whole HTTP surface with the shared layers.
pub fn app(worker: Arc<Worker>, limits: &HttpLimits) -> Router {
    let store = worker.store().clone();
    with_layers(api::routes(worker).merge(health_routes(store)), limits)
}

/// Opens the store, registers this peer, serves on `listener` until `shutdown`, then hangs up
/// every link (writing them `down`) before returning.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = mesh_store::open(&config.service.store).await?;
    let transport = Transport::new(TransportConfig {
        ice_servers: config.ice_servers.clone(),
        relay_only: config.relay_only,
        udp_addrs: config.udp_addrs.clone(),
        gather_timeout: config.gather_timeout,
        prompt_driver: config.prompt_driver,
        send_buffer_limit: config.send_buffer_limit,
        receive_window: config.receive_window,
    });
    let timings = LinkTimings {
        qos_interval: config.qos_interval,
        probe_interval: config.probe_interval,
        liveness: config.liveness,
        dial_timeout: config.dial_timeout,
    };
    let local = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", local.port()));
    let worker = Worker::new(Parts {
        identity: config.identity,
        region: config.region.clone(),
        store,
        transport,
        timings,
        clock: Clock::system(),
        gossip: config.gossip,
        rejoin: config.rejoin.clone(),
        spool_capacity: config.spool_capacity,
        files: config.files.clone(),
    });
    worker.register_self(public_url.clone()).await?;
    // From here on `run` reaches its end, which stops the writer.
    let spool_writer = tokio::spawn(worker.spool.clone().run(worker.store().clone()));
    match worker.gossip().restore().await {
        Ok(n) => tracing::debug!(entries = n, "gossiped state restored"),
        // Not fatal: the state comes back with the next envelopes.
        Err(e) => tracing::warn!("gossiped state not restored: {e}"),
    }
    // Transfers a previous run left resume; a files directory we cannot use is fatal, as any
    // other bad configuration.
    worker
        .files()
        .restore_transfers()
        .await
        .map_err(|e| anyhow::anyhow!("files directory {}: {e}", config.files.dir.display()))?;
    worker
        .queue()
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("message queues in {}: {e}", config.files.dir.display()))?;
    // The peers we were linked with may be waiting for us (we restarted); not fatal if the
    // store cannot say.
    match worker.rejoin().recent().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(peers = n, "rejoining the peers of recent links"),
        Err(e) => tracing::warn!("recent links not read; not rejoining them: {e}"),
    }
    tracing::info!(peer = %worker.id(), %local, %public_url, "webrtc-worker serving");
    let signaling = config
        .signaling_url
        .clone()
        .map(|url| tokio::spawn(signaling::run(worker.clone(), url)));
    // Registration doubles as the liveness beacon the gossip job reads (`lastSeenAt`): peers
    // not seen for 10 minutes are stale and skipped, so refresh well within that.
    let beacon = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = worker.register_self(public_url.clone()).await {
                    tracing::warn!("registration not refreshed: {e}");
                }
            }
        })
    };
    // Partial files and transfer records older than `MESH_FILES_KEEP_SECS` go; the first pass
    // now, for what a previous run left.
    let expiry = {
        let worker = worker.clone();
        let every = (config.files.keep / 4).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(3600),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let n = worker.files().expire_transfers().await;
                if n > 0 {
                    tracing::info!(transfers = n, "expired transfers removed");
                }
            }
        })
    };
    let links = Arc::downgrade(worker.links());
    let _links_gauge = metrics::observe_links(move || {
        let views = links.upgrade()?.views();
        Some(views.into_iter().map(|v| v.health).collect())
    });
    let router = app(worker.clone(), &config.service.http);
    let served = serve(listener, router, shutdown, config.service.shutdown_grace).await;
    if let Some(task) = signaling {
        task.abort();
    }
    beacon.abort();
    expiry.abort();
    // Links are written `down` as their drivers finish; bounded so shutdown is too. Also when
    // serving failed: the links and the spooled writes are still ours to settle.
    worker.hang_up_all(std::time::Duration::from_secs(2)).await;
    // The links just written down, and anything spooled while the store was away.
    if !worker.spool.flush(std::time::Duration::from_secs(5)).await {
        tracing::warn!(stats = ?worker.spool.stats(), "spooled store writes not all written at shutdown");
    }
    spool_writer.abort();
    served?;
    Ok(())
}

/// Re-exported for `main`.
pub use mesh_service::http::{bind, shutdown_signal};
pub use mesh_service::telemetry;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bulk_work_runs_at_lower_priority_and_its_panic_is_an_error() {
        let nice = |tid| rustix::process::getpriority_process(tid);
        let (bulk_nice, started) = bulk(move || {
            let here = nice(Some(rustix::thread::gettid()))?;
            // A thread the work starts inherits the priority.
            let started = std::thread::spawn(move || nice(Some(rustix::thread::gettid())))
                .join()
                .map_err(|_| std::io::Error::other("thread panicked"))??;
            Ok((here, started))
        })
        .await
        .expect("bulk work runs");
        let caller = nice(None).expect("this thread's priority");
        assert_eq!(bulk_nice, (caller + BULK_NICE).min(19));
        assert_eq!(started, bulk_nice);
        assert!(bulk::<()>(|| panic!("bulk work fails")).await.is_err());
    }
}
