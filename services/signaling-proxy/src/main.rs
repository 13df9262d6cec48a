//! signaling-proxy binary: read config, start telemetry, bind, run.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_service::install_crypto_provider();
    let config = signaling_proxy::ProxyConfig::from_env().context("configuration")?;
    let _telemetry = signaling_proxy::telemetry::init(&config.service.telemetry)?;
    let listener = signaling_proxy::bind(config.service.port)
        .await
        .with_context(|| format!("binding port {}", config.service.port))?;
    signaling_proxy::run(config, listener, signaling_proxy::shutdown_signal()).await
}
