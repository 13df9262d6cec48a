//! The transport benchmark, run by `scripts/bench.sh`: connection setup, DataChannel throughput,
//! idle memory and CPU, connect/close cycles and one worker holding 200 links, with Chromium's
//! libwebrtc measured in the same run as the reference. Chromium runs first and alone, so the two
//! never share the machine's cores. Results go to stdout as JSON (and a summary table on stderr).
//!
//! Both sides measure "dial → both channels open" from creating the connections to the `mesh`
//! and `probe` channels being open on both ends, and throughput as ordered, reliable messages
//! from one end to the other with the sender held back by a bounded send buffer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)] // A driver that reports.

mod common;

use std::time::{Duration, Instant};

use mesh_store::embedded::EmbeddedStore;
use mesh_store::{PeerUpsert, Store};
use mesh_testkit::process::ServiceProcess;
use mesh_testkit::stats::percentile;
use mesh_types::signing::Signed;
use mesh_types::{Answer, Endpoints, Offer};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use webrtc_worker::qos::{Probe, QosMeter};
use webrtc_worker::transport::{
    Channel, ConnEvent, Connection, DEFAULT_RECEIVE_WINDOW, Transport, TransportConfig,
};

const SETUPS: usize = 30;
const BYTES: usize = 32 << 20;
/// Fresh-process idle measurements per runtime.
const IDLE_ROUNDS: usize = 5;

fn transport(prompt_driver: bool) -> Transport {
    Transport::new(TransportConfig {
        ice_servers: vec![],
        relay_only: false,
        udp_addrs: vec!["127.0.0.1:0".parse().unwrap()],
        gather_timeout: Duration::from_secs(5),
        prompt_driver,
        send_buffer_limit: 4 << 20,
        receive_window: DEFAULT_RECEIVE_WINDOW,
    })
}

struct Pair {
    a: Connection,
    b: Connection,
    a_rx: mpsc::Receiver<ConnEvent>,
    b_rx: mpsc::Receiver<ConnEvent>,
}

async fn until_open(rx: &mut mpsc::Receiver<ConnEvent>) {
    let (mut mesh, mut probe) = (false, false);
    while !(mesh && probe) {
        match rx
            .recv()
            .await
            .expect("connection events ended before the channels opened")
        {
            ConnEvent::Open(Channel::Mesh) => mesh = true,
            ConnEvent::Open(Channel::Probe) => probe = true,
            _ => {}
        }
    }
}

/// Dial → both sides' two channels open.
async fn connect(t: &Transport) -> (Duration, Pair) {
    let t0 = Instant::now();
    let (a, mut a_rx) = t.connect().await.unwrap();
    let (b, mut b_rx) = t.connect().await.unwrap();
    let offer = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    a.accept_answer(&answer).await.unwrap();
    tokio::join!(until_open(&mut a_rx), until_open(&mut b_rx));
    (t0.elapsed(), Pair { a, b, a_rx, b_rx })
}

async fn close(p: Pair) {
    p.a.close().await;
    p.b.close().await;
}

/// `samples` in ascending order, as `percentile` takes them; a NaN is a broken measurement and
/// stops the bench.
fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

async fn setups(t: &Transport) -> Vec<f64> {
    close(connect(t).await.1).await; // warm-up
    let mut out = Vec::new();
    for _ in 0..SETUPS {
        let (d, p) = connect(t).await;
        out.push(d.as_secs_f64() * 1000.0);
        close(p).await;
    }
    out
}

/// MB/s of `total` bytes in `size`-byte messages, sent as fast as the send buffer allows.
async fn throughput(t: &Transport, size: usize, total: usize) -> f64 {
    let (_, mut p) = connect(t).await;
    let mut b_rx = std::mem::replace(&mut p.b_rx, mpsc::channel(1).1);
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            match b_rx.recv().await {
                Some(ConnEvent::Message {
                    channel: Channel::Mesh,
                    data,
                    ..
                }) => got += data.len(),
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    let chunk = vec![7u8; size];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        p.a.send(Channel::Mesh, &chunk, false).await.unwrap();
        sent += size;
    }
    let got = receiver.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got, total, "every byte arrives");
    close(p).await;
    total as f64 / secs / 1e6
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// CPU seconds the live threads of process `pid` have run, from the scheduler's nanosecond
/// accounting (`/proc/<pid>/task/*/schedstat`): clock-tick counters are too coarse for the
/// fractions of a millisecond an idle link costs.
fn cpu_secs(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Keeps a pair's event queues drained while it idles.
fn drain(p: &mut Pair) -> Vec<tokio::task::JoinHandle<()>> {
    let mut a_rx = std::mem::replace(&mut p.a_rx, mpsc::channel(1).1);
    let mut b_rx = std::mem::replace(&mut p.b_rx, mpsc::channel(1).1);
    vec![
        tokio::spawn(async move { while a_rx.recv().await.is_some() {} }),
        tokio::spawn(async move { while b_rx.recv().await.is_some() {} }),
    ]
}

/// `links` idle pairs in this process: memory per connection (KB) and CPU per link (% of a core).
async fn idle(t: &Transport, links: usize) -> (f64, f64) {
    let me = std::process::id();
    let rss0 = proc_status_kb(me, "VmRSS:");
    let mut pairs = Vec::new();
    let mut drains = Vec::new();
    for _ in 0..links {
        let (_, mut p) = connect(t).await;
        drains.extend(drain(&mut p));
        pairs.push(p);
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let set-up traffic settle
    let rss1 = proc_status_kb(me, "VmRSS:");
    let cpu0 = cpu_secs(me);
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let cpu = cpu_secs(me) - cpu0;
    for p in pairs {
        close(p).await;
    }
    drains.iter().for_each(|d| d.abort());
    let per_connection_kb = (rss1 as f64 - rss0 as f64) / (2 * links) as f64;
    let per_link_pct = cpu / window.as_secs_f64() / links as f64 * 100.0;
    (per_connection_kb, per_link_pct)
}

/// Memory per idle connection (KB) and CPU per idle link (% of a core) of one runtime, measured
/// in a fresh process: in a long-lived one, memory freed by earlier phases is reused (hiding
/// what connections cost) and CPU drifts with what earlier rounds left behind.
fn idle_in_fresh_process(runtime: &str) -> (f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bench")
        .env("MESH_BENCH_IDLE_OF", runtime)
        .env_remove("MESH_BENCH_PHASE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["perConnectionKB"].as_f64().unwrap(),
        v["cpuPerLinkPct"].as_f64().unwrap(),
    )
}

/// Both runtimes' idle cost, alternating which goes first over `IDLE_ROUNDS` rounds; each
/// runtime's medians, and its runs.
fn idle_both() -> (Value, Value) {
    let mut runs: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..IDLE_ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (kb, cpu) = idle_in_fresh_process(["meshrtc", "library-default"][i]);
            runs[i].0.push(kb);
            runs[i].1.push(cpu);
        }
    }
    let [ours, library] = runs.map(|(kb, cpu)| {
        json!({
            "perConnectionKB": percentile(&sorted(&kb), 0.5),
            "cpuPerLinkPct": percentile(&sorted(&cpu), 0.5),
            "runs": {"perConnectionKB": kb, "cpuPerLinkPct": cpu},
        })
    });
    (ours, library)
}

/// RSS after 50 and after 200 connect/close cycles.
async fn cycles(t: &Transport) -> (u64, u64) {
    let me = std::process::id();
    let mut at50 = 0;
    for i in 1..=200 {
        close(connect(t).await.1).await;
        if i == 50 {
            at50 = proc_status_kb(me, "VmRSS:");
        }
    }
    (at50, proc_status_kb(me, "VmRSS:"))
}

/// The worker's links (`GET /links`) that `keep` selects.
async fn count_links(http: &reqwest::Client, url: &str, keep: impl Fn(&Value) -> bool) -> usize {
    let links: Value = http
        .get(format!("{url}/links"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    links["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| keep(l))
        .count()
}

/// A real worker process accepting `links` links: its RSS (KB) and CPU per link while idle.
async fn worker_with_links(links: usize) -> Value {
    let dir = mesh_testkit::data_dir();
    let store_dir = dir.path().join("store");
    let worker_id = mesh_testkit::identity("bench-worker", 1);
    let env = vec![
        ("PEER_ID", "bench-worker".to_string()),
        ("MESH_SIGNING_KEY", worker_id.seed_base64()),
        ("MESH_STORE", format!("embedded:{}", store_dir.display())),
        ("MESH_UDP_ADDRS", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "warn,webrtc_worker=info".to_string()),
    ];
    let worker = ServiceProcess::start(
        env!("CARGO_BIN_EXE_webrtc-worker"),
        &env,
        "webrtc-worker serving",
    );
    let store = EmbeddedStore::open(&store_dir).await.unwrap();
    let http = reqwest::Client::new();
    let t = transport(true);
    let rss_empty = proc_status_kb(worker.pid(), "VmRSS:");
    let mut conns = Vec::new();
    for i in 0..links {
        let id = mesh_testkit::identity(&format!("remote-{i}"), 1000 + i as u64);
        store
            .upsert_peer(&PeerUpsert {
                id: id.id().clone(),
                pub_key: id.public_key(),
                region: None,
                endpoints: Endpoints::default(),
                seen_at: 1,
                initial_trust: 0.1,
            })
            .await
            .unwrap();
        let (c, mut rx) = t.connect().await.unwrap();
        let sdp = c.offer().await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut offer = Offer::new(id.id().clone(), worker_id.id().clone(), sdp, now);
        offer.sign(&id).unwrap();
        let res = http
            .post(format!("{}/offer", worker.url))
            .json(&offer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let answer: Answer = res.json().await.unwrap();
        c.accept_answer(&answer.sdp).await.unwrap();
        until_open(&mut rx).await;
        // The far end answers the worker's pings, as a peer does: a link whose pings went
        // unanswered would be declared dead within 4 s, and the window would measure closed links.
        let c = std::sync::Arc::new(c);
        let answer = {
            let c = c.clone();
            // The worker's own probe rules make the pong.
            let mut meter = QosMeter::new();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if let ConnEvent::Message {
                        channel: Channel::Probe,
                        data,
                        ..
                    } = event
                        && let Some(probe) = Probe::decode(&data)
                        && let Some(pong) = meter.on_probe(probe, 0)
                    {
                        let _ = c.send(Channel::Probe, &pong.encode(), false).await;
                    }
                }
            })
        };
        conns.push((c, answer));
    }
    let connected = loop {
        let up = count_links(&http, &worker.url, |l| l["state"] == "connected").await;
        if up == links {
            break up;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = proc_status_kb(worker.pid(), "VmRSS:");
    let cpu0 = cpu_secs(worker.pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = cpu_secs(worker.pid()) - cpu0;
    // Still up: connected, and the last sample healthy.
    let up_at_end = count_links(&http, &worker.url, |l| {
        l["state"] == "connected" && l["health"] == "up"
    })
    .await;
    for (c, d) in conns {
        c.close().await;
        d.abort();
    }
    json!({
        "links": connected,
        "linksUpAtEnd": up_at_end,
        "rssMB": rss as f64 / 1024.0,
        "rssEmptyMB": rss_empty as f64 / 1024.0,
        "perLinkKB": (rss as f64 - rss_empty as f64) / links as f64,
        "cpuPerLinkPct": cpu / 10.0 / links as f64 * 100.0,
        "note": "the worker pings every link every 500 ms (the harness answers) and samples QoS every 15 s; CPU per link = per link end of the worker",
    })
}

/// Throughput on loopback swings with scheduling; three runs, the median.
async fn median_of_3<F, Fut>(run: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let runs = [run().await, run().await, run().await];
    percentile(&sorted(&runs), 0.5)
}

fn summary(setups: &[f64]) -> Value {
    let setups = sorted(setups);
    json!({"p50": percentile(&setups, 0.5), "p95": percentile(&setups, 0.95)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing else: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    mesh_service::install_crypto_provider();
    // A child run (see `idle_in_fresh_process`): one runtime, one measurement, JSON out.
    if let Ok(runtime) = std::env::var("MESH_BENCH_IDLE_OF") {
        let (kb, cpu) = idle(&transport(runtime == "meshrtc"), 100).await;
        println!("{}", json!({"perConnectionKB": kb, "cpuPerLinkPct": cpu}));
        return;
    }
    // `MESH_BENCH_PHASE=throughput`: our transport's throughput runs only (for quick checks).
    if std::env::var("MESH_BENCH_PHASE").as_deref() == Ok("throughput") {
        let t = transport(true);
        for size in [65536usize, 1024] {
            let total = if size == 1024 { BYTES / 4 } else { BYTES };
            let runs = [
                throughput(&t, size, total).await,
                throughput(&t, size, total).await,
                throughput(&t, size, total).await,
            ];
            println!("{}", json!({"size": size, "MBps": runs}));
        }
        return;
    }
    // `MESH_BENCH_PHASE=worker`: the worker with 200 links only (the idle-cost benchmark's
    // reference per link end).
    if std::env::var("MESH_BENCH_PHASE").as_deref() == Ok("worker") {
        println!("{}", worker_with_links(200).await);
        return;
    }
    // `MESH_BENCH_PHASE=idle`: the idle measurements of both runtimes only.
    if std::env::var("MESH_BENCH_PHASE").as_deref() == Ok("idle") {
        let (ours, library) = idle_both();
        println!("{}", json!({"meshrtc": ours, "library-default": library}));
        return;
    }
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });

    eprintln!("[1/5] chromium (libwebrtc) reference...");
    let chrome = common::chromium(&format!("setups={SETUPS}&bytes={BYTES}")).await;
    let chrome_setups: Vec<f64> = chrome["setupMs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();

    let mut modes = serde_json::Map::new();
    for (name, prompt) in [("meshrtc", true), ("library-default", false)] {
        eprintln!("[2/5] {name}: setup and throughput...");
        let t = transport(prompt);
        let s = setups(&t).await;
        let mbps64k = median_of_3(|| throughput(&t, 65536, BYTES)).await;
        let mbps1k = median_of_3(|| throughput(&t, 1024, BYTES / 4)).await;
        modes.insert(
            name.into(),
            json!({
                "setupMs": summary(&s),
                "throughputMBps": {"65536": mbps64k, "1024": mbps1k},
            }),
        );
    }
    eprintln!("[3/5] 100 idle links, each runtime in fresh processes, alternating...");
    let (ours_idle, library_idle) = idle_both();
    modes["meshrtc"]["idle100"] = ours_idle;
    modes["library-default"]["idle100"] = library_idle;
    eprintln!("[4/5] 200 connect/close cycles...");
    let (at50, at200) = cycles(&transport(true)).await;
    eprintln!("[5/5] one worker process with 200 links...");
    let worker = worker_with_links(200).await;

    let ours = &modes["meshrtc"];
    let ratio = |a: f64, b: f64| a / b;
    let report = json!({
        "machine": machine,
        "chromium": {
            "userAgent": chrome["userAgent"],
            "setupMs": summary(&chrome_setups),
            "throughputMBps": chrome["throughputMBps"],
            "throughputRunsMBps": chrome["throughputRunsMBps"],
        },
        "modes": modes,
        "cycles": {"rssAfter50KB": at50, "rssAfter200KB": at200, "growthKB": at200 as i64 - at50 as i64},
        "worker200": worker,
        "ratios": {
            "setupP50VsChromium": ratio(ours["setupMs"]["p50"].as_f64().unwrap(), percentile(&sorted(&chrome_setups), 0.5)),
            "throughput64kVsChromium": ratio(ours["throughputMBps"]["65536"].as_f64().unwrap(), chrome["throughputMBps"]["65536"].as_f64().unwrap()),
            "throughput1kVsChromium": ratio(ours["throughputMBps"]["1024"].as_f64().unwrap(), chrome["throughputMBps"]["1024"].as_f64().unwrap()),
            "idleCpuVsLibraryDefault": ratio(ours["idle100"]["cpuPerLinkPct"].as_f64().unwrap(), modes["library-default"]["idle100"]["cpuPerLinkPct"].as_f64().unwrap()),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
