//! gossip-push: the scheduled gossip job (Cloud Scheduler every 2 minutes in production). Each
//! run recomputes trust, picks up to `fanout` peers for every live origin by trust-weighted
//! roulette, has the origin's worker push them a signed envelope, and audits what happened
//! (docs/ARCHITECTURE.md#gossip-push). Two ways to run: `run-once` (exit code says how it went)
//! and `serve` (`POST /run`, authenticated by an operator token or an OIDC ID token, which is
//! what Cloud Scheduler sends).

pub mod config;
pub mod job;

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use mesh_auth::{Caller, Credentials, Role};
use mesh_service::http::{health_routes, serve, with_layers};
use mesh_service::{ApiError, ApiJson, HttpLimits};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;

pub use config::JobConfig;
pub use job::{Job, JobError, RunReport};

/// What the HTTP mode shares between requests.
#[derive(Debug)]
pub struct Runner {
    pub job: Job,
    /// One run at a time: a second trigger while one runs is refused (409), not queued.
    running: Arc<tokio::sync::Mutex<()>>,
    rng: Mutex<StdRng>,
}

impl Runner {
    // The driver seeds its RNG from the OS.
    #[allow(clippy::disallowed_methods)]
    pub fn new(job: Job) -> Self {
        Runner {
            job,
            running: Arc::new(tokio::sync::Mutex::new(())),
            rng: Mutex::new(StdRng::from_rng(&mut rand::rng())),
        }
    }

    /// One run now, unless one is under way. The run is a task of its own: a request that
    /// times out or a caller that goes away does not cut it short (its audit records are
    /// written either way).
    pub async fn run(&self) -> Result<RunReport, ApiError> {
        let Ok(running) = self.running.clone().try_lock_owned() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "run_in_progress",
                "a gossip run is under way; this trigger is not queued",
            ));
        };
        let mut rng = StdRng::from_rng(&mut *mesh_service::lock(&self.rng));
        let job = self.job.clone();
        let run = tokio::spawn(async move {
            let _running = running;
            job.run_once(job::now_ms(), &mut rng).await
        });
        match run.await {
            Ok(report) => report.map_err(|JobError::Store(e)| e.into()),
            Err(e) => Err(ApiError::internal(format!("the gossip run failed: {e}"))),
        }
    }
}

async fn run_now(
    State(runner): State<Arc<Runner>>,
    caller: Caller,
) -> Result<ApiJson<RunReport>, ApiError> {
    let who = caller.require(Role::Operator)?;
    tracing::info!(by = %who.name, "gossip run triggered");
    Ok(ApiJson(runner.run().await?))
}

/// The HTTP surface: `POST /run` behind authentication, and the health checks.
pub fn app(runner: Arc<Runner>, credentials: Arc<Credentials>, limits: &HttpLimits) -> Router {
    let store = runner.job.store.clone();
    let routes = Router::new()
        .route("/run", post(run_now))
        .with_state(runner)
        .layer(from_fn_with_state(credentials, mesh_auth::authenticate));
    with_layers(routes.merge(health_routes(store)), limits)
}

/// `serve`: opens the store and answers `POST /run` on `listener` until `shutdown`.
pub async fn run(
    config: JobConfig,
    auth: mesh_auth::AuthConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = mesh_store::open(&config.service.store).await?;
    let credentials = Arc::new(auth.credentials(config.worker_timeout)?);
    let runner = Arc::new(Runner::new(Job::new(&config, store)?));
    tracing::info!(local = %listener.local_addr()?, "gossip-push serving");
    serve(
        listener,
        app(runner, credentials, &config.service.http),
        shutdown,
        config.service.shutdown_grace,
    )
    .await?;
    Ok(())
}

/// `run-once`: one run against the configured store.
pub async fn run_once(config: &JobConfig) -> anyhow::Result<RunReport> {
    let store = mesh_store::open(&config.service.store).await?;
    let runner = Runner::new(Job::new(config, store)?);
    runner
        .run()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))
}

pub use mesh_service::http::{bind, shutdown_signal};
pub use mesh_service::telemetry;
