//! WebSocket signaling benchmark: the proxy's `/ws` against a minimal Node.js relay on the npm
//! `ws` package (benches/node-relay/relay.mjs), each in its own process, measured in the same run
//! by the same load generator (this process):
//! - relay latency p50/p99 at a fixed message rate (2,000 registered clients, 1,000 pairs);
//! - relay throughput, closed loop (pairs bouncing messages with a fixed number in flight);
//! - memory per idle connection with 10,000 connections open.
//!
//! Run with `scripts/bench.sh` (or `cargo bench -p signaling-proxy --bench signaling -- --bench`);
//! the JSON report goes to stdout. Numbers belong in docs/BENCHMARKS.md, never in tests.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mesh_testkit::stats::percentile;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

const IDLE_CONNECTIONS: usize = 10_000;
const LATENCY_PAIRS: usize = 1_000;
/// Messages per second over all latency senders.
const LATENCY_RATE: u64 = 10_000;
const LATENCY_SECS: u64 = 10;
const THROUGHPUT_PAIRS: usize = 200;
const IN_FLIGHT: usize = 8;
const THROUGHPUT_SECS: u64 = 10;
/// An SDP-sized payload beside the timestamp.
const PADDING: usize = 400;

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Stream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

struct Server {
    name: &'static str,
    child: Child,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

fn proxy() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let token = signaling_proxy::auth::sha256_hex("bench");
    let mut child = Command::new(env!("CARGO_BIN_EXE_signaling-proxy"))
        .env("PORT", "0")
        .env("MESH_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,signaling_proxy=info")
        .env("MESH_STORE", format!("embedded:{}", dir.path().display()))
        .env("MESH_API_TOKENS", format!("bench:operator:{token}"))
        .env("MESH_WS_ANONYMOUS", "true")
        .env("MESH_WS_MESSAGES_PER_SEC", "1000000")
        .env("MESH_WS_MAX_CONNECTIONS", "20000")
        // Every bench client comes from 127.0.0.1: lift the per-address request limit.
        .env("MESH_RATE_PER_IP", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = read_port(&mut child, |v| {
        (v["message"] == "signaling-proxy serving").then(|| {
            v["fields"]["local"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
    });
    Server {
        name: "meshrtc",
        child,
        url: format!("ws://127.0.0.1:{port}/ws"),
        _dir: Some(dir),
    }
}

fn node() -> Server {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/node-relay");
    if !std::path::Path::new(dir).join("node_modules/ws").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "npm ci in {dir} failed");
    }
    let mut child = Command::new("node")
        .arg("relay.mjs")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node (Node.js 20) is needed for the reference relay");
    let port = read_port(&mut child, |v| v["port"].as_u64().map(|p| p as u16));
    Server {
        name: "node-ws",
        child,
        url: format!("ws://127.0.0.1:{port}/"),
        _dir: None,
    }
}

/// Reads the child's stdout until `port` finds the port in a JSON line; drains the rest.
fn read_port(child: &mut Child, port: impl Fn(&Value) -> Option<u16>) -> u16 {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = loop {
        let line = lines.next().expect("the server printed its port").unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && let Some(p) = port(&v)
        {
            break p;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    found
}

async fn open(url: &str) -> (Sink, Stream) {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (sink, mut stream) = ws.split();
    let hello = next_json(&mut stream).await;
    assert_eq!(hello["type"], "hello");
    (sink, stream)
}

async fn next_json(stream: &mut Stream) -> Value {
    loop {
        match stream.next().await.expect("connection open").unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("server closed the connection: {c:?}"),
            _ => {}
        }
    }
}

/// Opens a client and registers it; returns its id.
async fn registered(url: &str) -> (String, Sink, Stream) {
    let (mut sink, mut stream) = open(url).await;
    sink.send(Message::text(r#"{"type":"register"}"#))
        .await
        .unwrap();
    loop {
        let v = next_json(&mut stream).await;
        if v["type"] == "registered" {
            return (v["id"].as_str().unwrap().to_string(), sink, stream);
        }
    }
}

/// Waits until every client has received everything queued for it so far (the registration
/// news): a ping answered means all before it was delivered, since each connection is ordered.
async fn quiesce(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.1.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    }
    for c in clients.iter_mut() {
        while next_json(&mut c.2).await["type"] != "pong" {}
    }
}

type Client = (String, Sink, Stream);

/// `n` pairs of registered clients, once all registration news has been delivered.
async fn registered_pairs(url: &str, n: usize) -> Vec<(Client, Client)> {
    let mut pairs = Vec::new();
    for _ in 0..n {
        pairs.push((registered(url).await, registered(url).await));
    }
    quiesce(
        &mut pairs
            .iter_mut()
            .flat_map(|(a, b)| [a, b])
            .collect::<Vec<_>>(),
    )
    .await;
    pairs
}

/// Micros since the bench started: the timestamp carried in each message.
fn micros(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn offer(to: &str, ts: u64) -> Message {
    let sdp = format!("{ts}:{}", "x".repeat(PADDING));
    Message::text(json!({"type": "offer", "to": to, "sdp": sdp}).to_string())
}

fn stamp(v: &Value) -> Option<u64> {
    v["sdp"].as_str()?.split(':').next()?.parse().ok()
}

/// Latency at a fixed rate: each of `LATENCY_PAIRS` senders sends to its partner at
/// `LATENCY_RATE / LATENCY_PAIRS` per second; receivers record send → receive times.
async fn latency(url: &str, base: Instant) -> Value {
    let pairs = registered_pairs(url, LATENCY_PAIRS).await;
    let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
    let expected = LATENCY_RATE * LATENCY_SECS;
    let mut tasks = Vec::new();
    let period = Duration::from_micros(1_000_000 * LATENCY_PAIRS as u64 / LATENCY_RATE);
    for ((_, mut a_sink, _a_stream), (b_id, _b_sink, mut b_stream)) in pairs {
        let n = LATENCY_RATE * LATENCY_SECS / LATENCY_PAIRS as u64;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for _ in 0..n {
                tick.tick().await;
                a_sink.send(offer(&b_id, micros(base))).await.unwrap();
            }
            (a_sink, _a_stream)
        }));
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(n as usize);
            while (mine.len() as u64) < n {
                let Ok(v) =
                    tokio::time::timeout(Duration::from_secs(30), next_json(&mut b_stream)).await
                else {
                    break;
                };
                if v["type"] == "offer"
                    && let Some(ts) = stamp(&v)
                {
                    mine.push((micros(base) - ts) as f64 / 1000.0);
                }
            }
            samples.lock().await.extend(mine);
            (_b_sink, b_stream)
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    let mut s = samples.lock().await.clone();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "clients": LATENCY_PAIRS * 2,
        "ratePerSec": LATENCY_RATE,
        "delivered": s.len(),
        "expected": expected,
        "p50Ms": percentile(&s, 0.5),
        "p99Ms": percentile(&s, 0.99),
        "maxMs": s.last().copied().unwrap_or(f64::NAN),
    })
}

/// Closed loop: each pair keeps `IN_FLIGHT` messages bouncing; relayed messages per second.
async fn throughput(url: &str, base: Instant) -> Value {
    let relayed = Arc::new(AtomicU64::new(0));
    let pairs = registered_pairs(url, THROUGHPUT_PAIRS).await;
    // One second to reach a steady state, then the counted window.
    let counting_from = Instant::now() + Duration::from_secs(1);
    let stop_at = counting_from + Duration::from_secs(THROUGHPUT_SECS);
    let mut tasks = Vec::new();
    for ((a_id, mut a_sink, a_stream), (b_id, b_sink, b_stream)) in pairs {
        for _ in 0..IN_FLIGHT {
            a_sink.send(offer(&b_id, micros(base))).await.unwrap();
        }
        for (mut stream, mut sink, peer) in [(a_stream, a_sink, b_id), (b_stream, b_sink, a_id)] {
            let relayed = relayed.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let Ok(v) =
                        tokio::time::timeout(Duration::from_secs(5), next_json(&mut stream)).await
                    else {
                        break;
                    };
                    if v["type"] != "offer" {
                        continue;
                    }
                    let now = Instant::now();
                    if now >= counting_from && now < stop_at {
                        relayed.fetch_add(1, Ordering::Relaxed);
                    }
                    if sink.send(offer(&peer, micros(base))).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    json!({
        "pairs": THROUGHPUT_PAIRS,
        "inFlightPerPair": IN_FLIGHT,
        "messagesPerSec": relayed.load(Ordering::Relaxed) as f64 / THROUGHPUT_SECS as f64,
    })
}

/// RSS of the server with `IDLE_CONNECTIONS` open (each has had its hello).
async fn idle(server: &Server) -> Value {
    let before = server.rss_kb();
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    let url = Arc::new(server.url.clone());
    for chunk in 0..IDLE_CONNECTIONS / 250 {
        let _ = chunk;
        let batch: Vec<_> = (0..250)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { open(&url).await })
            })
            .collect();
        for b in batch {
            conns.push(b.await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let allocations settle
    let after = server.rss_kb();
    drop(conns);
    json!({
        "connections": IDLE_CONNECTIONS,
        "rssBeforeKB": before,
        "rssAfterKB": after,
        "perConnectionKB": (after as f64 - before as f64) / IDLE_CONNECTIONS as f64,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    mesh_service::install_crypto_provider();
    let base = Instant::now();
    let mut report = serde_json::Map::new();
    for make in [proxy as fn() -> Server, node] {
        let server = make();
        eprintln!("[{}] idle connections...", server.name);
        let idle = idle(&server).await;
        drop(server);
        let server = make();
        eprintln!("[{}] latency at a fixed rate...", server.name);
        let latency = latency(&server.url, base).await;
        drop(server);
        let server = make();
        eprintln!("[{}] closed-loop throughput...", server.name);
        let throughput = throughput(&server.url, base).await;
        report.insert(
            server.name.into(),
            json!({"idle": idle, "latency": latency, "throughput": throughput}),
        );
    }
    let ours = &report["meshrtc"];
    let node = &report["node-ws"];
    let ratio = |path: &[&str]| {
        let get = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap();
        get(ours) / get(node)
    };
    let ratios = json!({
        "throughputVsNode": ratio(&["throughput", "messagesPerSec"]),
        "p99VsNode": ratio(&["latency", "p99Ms"]),
        "p50VsNode": ratio(&["latency", "p50Ms"]),
    });
    report.insert("ratios".into(), ratios);
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).unwrap()
    );
}
