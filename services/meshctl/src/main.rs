//! `meshctl`: the operator's command line. Today it provisions a local mesh (identities and
//! signed peer registrations in the embedded store) and generates keys; the commands that drive
//! running workers and the proxy build on the same data directory.

mod init;
mod keys;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Operate a meshrtc WebRTC mesh", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare a local mesh: an Ed25519 identity per peer (kept in the data directory) and a
    /// signed, verified registration of each in the embedded store. Re-running resumes the same
    /// peers and keeps their trust.
    Init {
        /// How many peers.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=500))]
        peers: u16,
        /// Where keys and the embedded store live.
        #[arg(long, env = "MESH_DATA_DIR", default_value = ".meshrtc")]
        data_dir: PathBuf,
        /// Region recorded for the local peers.
        #[arg(long, default_value = "local")]
        region: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate an Ed25519 identity for a peer: writes the seed to a file only you can read and
    /// prints the public key to register.
    Keygen {
        /// The peer's id.
        #[arg(long)]
        id: String,
        /// Where to write the base64 seed (for MESH_SIGNING_KEY_FILE); refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make an API token for the signaling proxy: prints the token (give it to the client) and
    /// the `MESH_API_TOKENS` entry (give it to the proxy; it holds only the token's SHA-256).
    Token {
        /// A name for the credential (logs and rate limits use it).
        #[arg(long)]
        name: String,
        /// What it may do: read, peer or operator.
        #[arg(long, value_parser = ["read", "peer", "operator"])]
        role: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            peers,
            data_dir,
            region,
            json,
        } => init::run(peers, &data_dir, &region, json).await,
        Command::Keygen { id, out, json } => keys::keygen(&id, &out, json),
        Command::Token { name, role, json } => token::run(&name, &role, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
