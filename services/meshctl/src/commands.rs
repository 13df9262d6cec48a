//! The commands that speak to a proxy: `peers`, `links`, `connect`, `gossip`, `send`,
//! `transfers` and `keygen --register`. Each prints a table, or with `--json` the proxy's answer as it is.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use mesh_types::signing::Signed as _;
use mesh_types::transfer::{TransferRecord, TransferState};
use mesh_types::{Endpoints, Link, PeerId, PeerRegistration};
use serde_json::{Value, json};

use crate::client::{Client, Remote};

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// `12 s ago`, `4 min ago`, … relative to `now` (both ms since the epoch).
pub fn ago(ts: u64, now: u64) -> String {
    let s = now.saturating_sub(ts) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

/// The links table, shared by `meshctl links` and `meshctl up`'s live view.
pub fn links_table(links: &[Link], now: u64) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<28} {:<9} {:>8} {:>10} {:>7} {:>13}  UPDATED",
        "LINK", "HEALTH", "RTT ms", "JITTER ms", "LOSS %", "BITRATE kb/s"
    );
    for l in links {
        let _ = writeln!(
            t,
            "{:<28} {:<9} {:>8} {:>10} {:>7} {:>13}  {}",
            format!("{} ↔ {}", l.a, l.b),
            l.health.as_str(),
            num(l.qos.rtt_ms.or(l.qos.probe_rtt_ms), 1),
            num(l.qos.jitter_ms, 1),
            num(l.qos.loss_pct, 1),
            num(l.qos.bitrate_kbps, 0),
            ago(l.qos.last_ts, now),
        );
    }
    if links.is_empty() {
        t.push_str("(no links)\n");
    }
    t
}

pub async fn peers(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let v = Client::new(remote)?.get("/api/mesh/peers").await?;
    if json {
        return print_json(&v);
    }
    let peers: Vec<mesh_types::Peer> = serde_json::from_value(v["peers"].clone())?;
    let now = mesh_service::now_ms();
    let mut t = format!(
        "{:<16} {:<10} {:>6}  {:<28} {}\n",
        "PEER", "REGION", "TRUST", "ENDPOINT", "LAST SEEN"
    );
    for p in &peers {
        let _ = writeln!(
            t,
            "{:<16} {:<10} {:>6.3}  {:<28} {}",
            p.id.as_str(),
            p.region.as_deref().unwrap_or("–"),
            p.trust,
            p.endpoints.https.as_deref().unwrap_or("–"),
            ago(p.last_seen_at, now)
        );
    }
    if peers.is_empty() {
        t.push_str("(no peers registered)\n");
    }
    print(&t)
}

pub async fn links(
    remote: &Remote,
    peer: Option<&str>,
    health: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let limit = limit.map(|n| n.to_string());
    let query: Vec<(&str, &str)> = [
        ("peer", peer),
        ("health", health),
        ("limit", limit.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    let v = Client::new(remote)?
        .get_with("/api/mesh-rtc/links", &query)
        .await?;
    if json {
        return print_json(&v);
    }
    let links: Vec<Link> = serde_json::from_value(v["links"].clone())?;
    print(&links_table(&links, mesh_service::now_ms()))
}

pub async fn connect(remote: &Remote, a: &str, b: &str, json: bool) -> anyhow::Result<()> {
    let v = Client::new(remote)?
        .post("/api/mesh-rtc/connect", &json!({ "a": a, "b": b }))
        .await?;
    if json {
        return print_json(&v);
    }
    let link: Link = serde_json::from_value(v)?;
    print(&format!(
        "{} ↔ {}: {}{}\n",
        link.a,
        link.b,
        link.health.as_str(),
        link.qos
            .rtt_ms
            .map(|r| format!(", RTT {r:.1} ms"))
            .unwrap_or_default()
    ))
}

pub async fn gossip(remote: &Remote, limit: usize, json: bool) -> anyhow::Result<()> {
    let v = Client::new(remote)?
        .get(&format!("/api/mesh-rtc/gossip?limit={limit}"))
        .await?;
    if json {
        return print_json(&v);
    }
    let records: Vec<mesh_types::AuditRecord> = serde_json::from_value(v["records"].clone())?;
    let now = mesh_service::now_ms();
    let mut t = format!(
        "{:<12} {:<7} {:<14} {:>9} {:>6}  {}\n",
        "WHEN", "KIND", "FROM", "DELIVERED", "FAILED", "TARGETS / NOTE"
    );
    for r in &records {
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|x| {
                format!(
                    "{} ({}{})",
                    x.peer,
                    x.transport.as_str(),
                    if x.ok { "" } else { ", failed" }
                )
            })
            .collect();
        let mut note = targets.join(", ");
        if let Some(by) = &r.recorded_by {
            note = format!("refused by {by}");
        }
        if let Some(reason) = &r.reason {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(reason);
        }
        let _ = writeln!(
            t,
            "{:<12} {:<7} {:<14} {:>9} {:>6}  {}",
            ago(r.ts, now),
            r.kind,
            r.from.as_str(),
            r.succeeded,
            r.failed,
            note
        );
    }
    if records.is_empty() {
        t.push_str("(no gossip recorded yet)\n");
    }
    print(&t)
}

/// `keygen --register`: a registration signed by the new key, sent to the proxy.
pub async fn register(
    remote: &Remote,
    identity: &mesh_types::Identity,
    region: Option<String>,
    endpoint: Option<String>,
    json: bool,
    seed_file: &Path,
) -> anyhow::Result<()> {
    let mut registration = PeerRegistration::new(
        identity.id().clone(),
        identity.public_key(),
        region,
        Endpoints {
            https: endpoint,
            ..Endpoints::default()
        },
        mesh_service::now_ms(),
    );
    registration.sign(identity)?;
    let v = Client::new(remote)?
        .post("/api/mesh/peers", &serde_json::to_value(&registration)?)
        .await?;
    if json {
        return print_json(&json!({ "peer": v, "seedFile": seed_file }));
    }
    let key = identity.public_key();
    print(&format!(
        "peer     {}\npubKey   {key}\nkid      {}\nseed in  {} (set MESH_SIGNING_KEY_FILE to it)\nregistered with the proxy (trust {})\n",
        identity.id(),
        key.key_id(),
        seed_file.display(),
        v["trust"]
    ))
}

/// Validates a peer id given on the command line before anything is sent.
pub fn peer_id(s: &str) -> Result<String, String> {
    PeerId::new(s)
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

/// `1.5 MiB`, `256 MiB`, … (binary units, as file sizes go).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn eta(ms: Option<u64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 60_000 => format!("{} s", ms.div_ceil(1000)),
        Some(ms) => format!("{} min", ms / 60_000),
    }
}

fn percent(t: &TransferRecord) -> f64 {
    if t.size == 0 {
        100.0
    } else {
        t.bytes as f64 * 100.0 / t.size as f64
    }
}

fn state_name(s: TransferState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One transfer's progress on one line.
pub fn progress_line(t: &TransferRecord) -> String {
    let mut line = format!(
        "{} → {}  {}  {} / {} ({:.0} %)  {}/s  ETA {}  {}",
        t.from,
        t.to,
        t.name,
        bytes(t.bytes),
        bytes(t.size),
        percent(t),
        bytes(t.rate_bps),
        eta(t.eta_ms),
        state_name(t.state),
    );
    if let Some(code) = &t.error_code {
        let _ = write!(line, ": {code}");
        if let Some(e) = &t.error {
            let _ = write!(line, " ({e})");
        }
    }
    line
}

/// The transfers table.
pub fn transfers_table(all: &[TransferRecord], now: u64) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:<24} {:<20} {:>10} {:>6} {:>11} {:>7} {:<9}  UPDATED",
        "ID", "FROM → TO", "NAME", "SIZE", "DONE", "RATE", "ETA", "STATE"
    );
    for x in all {
        let _ = writeln!(
            t,
            "{:<8} {:<24} {:<20} {:>10} {:>5.0}% {:>11} {:>7} {:<9}  {}{}",
            &x.id.to_string()[..8],
            format!("{} → {}", x.from, x.to),
            x.name,
            bytes(x.size),
            percent(x),
            format!("{}/s", bytes(x.rate_bps)),
            eta(x.eta_ms),
            state_name(x.state),
            ago(x.updated_at, now),
            x.error_code
                .as_deref()
                .map(|c| format!("  {c}"))
                .unwrap_or_default(),
        );
    }
    if all.is_empty() {
        t.push_str("(no transfers)\n");
    }
    t
}

pub async fn transfers(remote: &Remote, limit: usize, json: bool) -> anyhow::Result<()> {
    let v = Client::new(remote)?
        .get(&format!("/api/mesh-rtc/transfers?limit={limit}"))
        .await?;
    if json {
        return print_json(&v);
    }
    let all: Vec<TransferRecord> = serde_json::from_value(v["transfers"].clone())?;
    print(&transfers_table(&all, mesh_service::now_ms()))
}

/// `meshctl send`: starts the transfer, then follows its record until it ends.
pub async fn send(
    remote: &Remote,
    from: &str,
    to: &str,
    path: &Path,
    detach: bool,
    json: bool,
) -> anyhow::Result<()> {
    // A path that exists here is made absolute, so that with `meshctl up` (whose workers run on
    // this machine) it names the same file from any directory; otherwise it is the sending
    // machine's, as given.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let client = Client::new(remote)?;
    let started = client
        .post(
            "/api/mesh-rtc/transfers",
            &json!({ "from": from, "to": to, "path": path.display().to_string() }),
        )
        .await?;
    let id = started["id"].as_str().unwrap_or_default().to_string();
    if detach {
        if json {
            return print_json(&started);
        }
        return print(&format!(
            "transfer {id} started; `meshctl transfers` shows it\n"
        ));
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    loop {
        let v = client.get("/api/mesh-rtc/transfers?limit=500").await?;
        let all: Vec<TransferRecord> = serde_json::from_value(v["transfers"].clone())?;
        if let Some(t) = all.into_iter().find(|t| t.id.to_string() == id) {
            let line = progress_line(&t);
            if line != last && !json {
                if tty {
                    print(&format!("\r\x1b[2K{line}"))?;
                } else {
                    print(&format!("{line}\n"))?;
                }
                last = line;
            }
            if t.state.is_final() {
                if tty && !json {
                    print("\n")?;
                }
                if json {
                    print_json(&serde_json::to_value(&t)?)?;
                }
                return match t.state {
                    TransferState::Complete => Ok(()),
                    _ => Err(anyhow::anyhow!(
                        "transfer {id} {}: {}",
                        state_name(t.state),
                        t.error.unwrap_or_default()
                    )),
                };
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
