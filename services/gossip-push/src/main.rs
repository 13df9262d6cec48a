//! gossip-push binary: `run-once` (exit 0: every target reached; 1: some failed, the report says
//! which; 2: the run could not happen) or `serve` (HTTP `POST /run` for Cloud Scheduler).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gossip-push",
    version,
    about = "meshrtc's gossip job: one run now, or serve POST /run for a scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one gossip round for every live origin, print the report (JSON) and exit.
    RunOnce,
    /// Serve `POST /run` (an operator API token or an OIDC ID token) and health checks on $PORT.
    Serve,
}

#[tokio::main]
async fn main() -> ExitCode {
    mesh_service::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gossip-push: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut config = gossip_push::JobConfig::from_env().context("configuration")?;
    // run-once prints its report on stdout; its logs go beside it, not into it.
    config.service.telemetry.log_to_stderr = matches!(command, Command::RunOnce);
    let _telemetry = gossip_push::telemetry::init(&config.service.telemetry)?;
    match command {
        Command::RunOnce => {
            let report = gossip_push::run_once(&config).await?;
            #[allow(clippy::print_stdout)] // The command's output.
            {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Serve => {
            let auth = gossip_push::config::auth_from_env().context("configuration")?;
            let listener = gossip_push::bind(config.service.port)
                .await
                .with_context(|| format!("binding port {}", config.service.port))?;
            gossip_push::run(config, auth, listener, gossip_push::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
