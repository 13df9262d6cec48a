//! `meshctl`: the operator's command line. `up` runs a whole mesh on this machine; `peers`,
//! `links`, `connect` and `gossip` ask a signaling proxy (the local one by default); `init`,
//! `keygen` and `token` provision peers and credentials.

mod client;
mod commands;
mod init;
mod keys;
mod token;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Remote;

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Run and operate a meshrtc WebRTC mesh",
    long_about = "Run and operate a meshrtc WebRTC mesh.\n\n\
        Start here: `meshctl up` runs a mesh of real WebRTC peers on this machine and prints the \
        dashboard's address. The other commands talk to a signaling proxy: the one `meshctl up` \
        runs in --data-dir unless --proxy (or MESH_PROXY_URL) names another.",
    after_help = "Examples:\n  \
        meshctl up --peers 5\n  \
        meshctl links --health up\n  \
        meshctl connect peer-1 peer-4\n  \
        meshctl gossip --limit 20\n  \
        meshctl peers --proxy https://proxy.example.run.app --token $MESH_TOKEN --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a mesh of real WebRTC peers on this machine, with the dashboard.
    ///
    /// Keeps a key per peer, starts one worker per peer, the signaling proxy and the gossip
    /// schedule on loopback against the embedded store, connects every pair through the proxy,
    /// prints the dashboard's address and shows the links live. Ctrl-C stops it cleanly; running
    /// it again on the same --data-dir resumes the same peers.
    Up {
        /// How many peers (1 to 32).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
        peers: u16,
        /// Where keys, the token, the store and the log live.
        #[arg(long, env = "MESH_DATA_DIR", default_value = ".meshrtc")]
        data_dir: PathBuf,
        /// The proxy's (and dashboard's) address; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Seconds between gossip runs.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        gossip_every: u64,
        /// Seconds between link quality samples.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        qos_every: u64,
        /// Region recorded for the peers.
        #[arg(long, default_value = "local")]
        region: String,
    },
    /// List the registered peers.
    Peers {
        #[command(flatten)]
        remote: Remote,
        /// Print the proxy's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List links, newest first, with their health and quality.
    Links {
        #[command(flatten)]
        remote: Remote,
        /// Only links of this peer.
        #[arg(long, value_parser = commands::peer_id)]
        peer: Option<String>,
        /// Only links in this health.
        #[arg(long, value_parser = ["up", "degraded", "down"])]
        health: Option<String>,
        /// At most this many (1 to 1000; the proxy's default is 100).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: Option<u64>,
        /// Print the proxy's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Connect two peers (needs an operator token).
    ///
    /// The proxy has A dial B, relays the signed offer and answer, and answers once the link is
    /// up, or names the step that failed.
    Connect {
        #[command(flatten)]
        remote: Remote,
        #[arg(value_parser = commands::peer_id)]
        a: String,
        #[arg(value_parser = commands::peer_id)]
        b: String,
        /// Print the proxy's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show recent gossip from the audit trail: pushes and the envelopes peers refused.
    Gossip {
        #[command(flatten)]
        remote: Remote,
        /// How many records, newest first.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print the proxy's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a file from one peer to another, straight over their link (needs an operator token).
    ///
    /// PATH is on the sending peer's machine, inside its worker's send root (with `meshctl up`:
    /// the directory `up` was started in). Follows the transfer until it ends, showing bytes,
    /// rate and time left; the receiver keeps the file under its files directory,
    /// `received/<from>/<name>`.
    Send {
        #[command(flatten)]
        remote: Remote,
        /// The sending peer.
        #[arg(long, value_parser = commands::peer_id)]
        from: String,
        /// The receiving peer.
        #[arg(long, value_parser = commands::peer_id)]
        to: String,
        path: PathBuf,
        /// Start it and return at once.
        #[arg(long)]
        detach: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show file transfers, most recently active first, with their progress.
    Transfers {
        #[command(flatten)]
        remote: Remote,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=500))]
        limit: u64,
        /// Print the proxy's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate a peer's Ed25519 key, and optionally register it with the proxy.
    ///
    /// Writes the seed to a file only you can read and prints the public key; with --register,
    /// also sends the proxy a registration signed by the new key.
    Keygen {
        /// The peer's id.
        #[arg(long, value_parser = commands::peer_id)]
        id: String,
        /// Where to write the base64 seed (for MESH_SIGNING_KEY_FILE); refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
        /// Register the new peer with the proxy (a registration signed by the new key; needs a
        /// peer or operator token).
        #[arg(long)]
        register: bool,
        /// The peer's region (with --register).
        #[arg(long, requires = "register")]
        region: Option<String>,
        /// The peer's worker URL, http(s)://host[:port] (with --register).
        #[arg(long, requires = "register")]
        endpoint: Option<String>,
        #[command(flatten)]
        remote: Remote,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register local peers in the embedded store without running them.
    ///
    /// An identity per peer and a signed, verified registration of each.
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
    /// Make an API token for a signaling proxy.
    ///
    /// Prints the token (give it to the client) and the `MESH_API_TOKENS` entry (give it to the
    /// proxy; it holds only the token's SHA-256).
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
    mesh_service::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            peers,
            data_dir,
            listen,
            gossip_every,
            qos_every,
            region,
        } => {
            up::run(up::Options {
                peers,
                data_dir,
                listen,
                gossip_every: Duration::from_secs(gossip_every),
                qos_every: Duration::from_secs(qos_every),
                region,
            })
            .await
        }
        Command::Peers { remote, json } => commands::peers(&remote, json).await,
        Command::Links {
            remote,
            peer,
            health,
            limit,
            json,
        } => {
            commands::links(
                &remote,
                peer.as_deref(),
                health.as_deref(),
                limit.map(|n| n as usize),
                json,
            )
            .await
        }
        Command::Connect { remote, a, b, json } => commands::connect(&remote, &a, &b, json).await,
        Command::Gossip {
            remote,
            limit,
            json,
        } => commands::gossip(&remote, limit as usize, json).await,
        Command::Send {
            remote,
            from,
            to,
            path,
            detach,
            json,
        } => commands::send(&remote, &from, &to, &path, detach, json).await,
        Command::Transfers {
            remote,
            limit,
            json,
        } => commands::transfers(&remote, limit as usize, json).await,
        Command::Keygen {
            id,
            out,
            register,
            region,
            endpoint,
            remote,
            json,
        } => {
            keys::keygen(
                &id,
                &out,
                register.then_some((&remote, region, endpoint)),
                json,
            )
            .await
        }
        Command::Init {
            peers,
            data_dir,
            region,
            json,
        } => init::run(peers, &data_dir, &region, json).await,
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
