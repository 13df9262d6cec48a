//! webrtc-worker binary: read config, start telemetry, bind, run.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_service::install_crypto_provider();
    let config = webrtc_worker::WorkerConfig::from_env().context("configuration")?;
    let _telemetry = webrtc_worker::telemetry::init(&config.service.telemetry)?;
    let listener = webrtc_worker::bind(config.service.port)
        .await
        .with_context(|| format!("binding port {}", config.service.port))?;
    webrtc_worker::run(config, listener, webrtc_worker::shutdown_signal()).await
}
