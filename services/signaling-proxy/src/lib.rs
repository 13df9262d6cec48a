//! signaling-proxy: the one address operators and clients talk to. It keeps the peer registry,
//! brokers signed offers and answers between workers (`/api/mesh-rtc/...`), and relays
//! signaling over WebSockets (`/ws`) for peers that cannot expose HTTP.
//!
//! `app` builds the router (tests call it without a socket); `run` is what `main` calls.

pub mod api;
pub use mesh_auth as auth;
pub mod config;
pub mod dashboard;
pub mod limits;
mod metrics;
pub mod peers;
mod query;
pub mod upstream;
pub mod ws;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use mesh_service::http::{health_routes, serve, with_layers};
use mesh_service::{ApiError, HttpLimits};
use mesh_store::SharedStore;
use mesh_types::signing::Signed;
use mesh_types::{PublicKey, Verifier, VerifierConfig};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::ProxyConfig;

use crate::limits::RateLimits;
use crate::peers::Allowlist;
use crate::upstream::Upstream;
use crate::ws::Hub;
use mesh_auth::Credentials;

pub use mesh_service::now_ms;

/// What every handler shares.
#[derive(Debug)]
pub struct Proxy {
    pub store: SharedStore,
    pub upstream: Upstream,
    pub allowlist: Allowlist,
    pub connect_timeout: Duration,
    pub hub: Arc<Hub>,
    /// The dashboard's live feed.
    pub live: dashboard::Live,
    verifier: Mutex<Verifier>,
}

impl Proxy {
    pub fn new(config: &ProxyConfig, store: SharedStore) -> anyhow::Result<Self> {
        Ok(Proxy {
            store,
            upstream: Upstream::new(config.upstream_timeout)?,
            allowlist: config.allowlist.clone(),
            connect_timeout: config.connect_timeout,
            hub: Arc::new(Hub::new(config.ws)),
            live: dashboard::Live::new(config.live_interval),
            verifier: Mutex::new(Verifier::new(VerifierConfig::default())),
        })
    }

    /// Signature by `key`, freshness and no replay.
    pub fn verify<T: Signed>(&self, msg: &T, key: &PublicKey) -> Result<(), ApiError> {
        let mut verifier = mesh_service::lock(&self.verifier);
        Ok(verifier.verify(msg, key, now_ms())?)
    }
}

/// Everything `app` needs beyond the handlers' shared state.
#[derive(Debug, Clone)]
pub struct Gate {
    pub credentials: Arc<Credentials>,
    pub limits: Arc<RateLimits>,
    pub cors_origins: Vec<HeaderValue>,
    pub http: HttpLimits,
}

impl Gate {
    pub fn new(config: &ProxyConfig) -> anyhow::Result<Self> {
        Ok(Gate {
            credentials: Arc::new(config.auth.credentials(config.upstream_timeout)?),
            limits: Arc::new(RateLimits::new(
                config.rate_per_ip,
                config.rate_per_credential,
                config.client_ip_header.clone(),
            )),
            cors_origins: config.cors_origins.clone(),
            http: config.service.http,
        })
    }
}

/// The proxy's whole HTTP surface. The API and `/ws` sit behind rate limits and authentication
/// (outermost first: CORS, the client address's limit, authenticate, the credential's limit);
/// health checks and the dashboard's page and assets do not (its data does).
pub fn app(proxy: Arc<Proxy>, gate: &Gate) -> Router {
    let store = proxy.store.clone();
    let mut routes = api::routes(proxy.clone())
        .merge(dashboard::routes(proxy.clone()))
        .merge(
            Router::new()
                .route("/ws", get(ws::upgrade))
                .with_state(proxy),
        )
        .layer(from_fn_with_state(gate.limits.clone(), limits::rate_limit))
        .layer(from_fn_with_state(
            gate.credentials.clone(),
            mesh_auth::authenticate,
        ));
    if !gate.cors_origins.is_empty() {
        routes = routes.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(gate.cors_origins.clone()))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        );
    }
    with_layers(
        routes.merge(health_routes(store)).merge(dashboard::pages()),
        &gate.http,
    )
}

/// Opens the store and serves on `listener` until `shutdown`.
pub async fn run(
    config: ProxyConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = mesh_store::open(&config.service.store).await?;
    let proxy = Arc::new(Proxy::new(&config, store)?);
    let gate = Gate::new(&config)?;
    let local = listener.local_addr()?;
    tracing::info!(%local, credentials = config.auth.tokens.len(), "signaling-proxy serving");
    // Weak: the gauge, which lives in the global meter provider, must not keep the hub alive.
    let hub = Arc::downgrade(&proxy.hub);
    let _connections_gauge =
        metrics::observe_connections(move || hub.upgrade().map(|hub| hub.connection_count()));
    let router = app(proxy.clone(), &gate);
    let stopping = async move {
        shutdown.await;
        // Live feeds never end by themselves; close them so the graceful stop does not wait
        // out its whole grace period for them.
        proxy.live.close();
    };
    serve(listener, router, stopping, config.service.shutdown_grace).await?;
    Ok(())
}

/// Re-exported for `main`.
pub use mesh_service::http::{bind, shutdown_signal};
pub use mesh_service::telemetry;
