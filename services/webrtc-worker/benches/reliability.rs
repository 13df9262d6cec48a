//! Failure detection and rejoin, measured over many runs with real worker processes on
//! loopback (`scripts/bench.sh reliability`). Each run: two workers linked; one is killed
//! (SIGKILL) and the time until the survivor's link is `down` in the store is its detection
//! time; it is then restarted (same id and key, a new address) and the time from its "serving"
//! to the survivor's link `up` again is its rejoin time. The baseline, measured in the same run
//! on the same machine, is detection by ICE alone (the heartbeat detector set out of reach): what
//! a WebRTC stack without heartbeats on the data path notices. Settings are the defaults
//! (probes every 500 ms, suspect after 1.5 s, dead after 4 s, rejoin waits up to 4 s).
//!
//! Messages: in each rejoin run the survivor sends 5 queued messages just before the kill (in
//! flight when it happens) and 20 while the peer is down; once rejoined, the restarted peer's
//! count of messages delivered and lost is read from its `GET /status`.
//!
//! MESH_BENCH_RUNS (default 20) sets the runs per scenario. Prints a JSON report.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stdout)]

use std::time::{Duration, Instant};

use mesh_store::Store;
use mesh_store::embedded::EmbeddedStore;
use mesh_testkit::stats::percentile;
use mesh_testkit::workers::{Mesh, Peer};
use mesh_types::{Health, LinkId};
use serde_json::json;

const DEFAULTS: &[(&str, &str)] = &[
    ("MESH_PROBE_INTERVAL_MS", "500"),
    ("QOS_INTERVAL_SECS", "15"),
];
const ICE_ONLY: &[(&str, &str)] = &[
    ("MESH_PROBE_INTERVAL_MS", "500"),
    ("QOS_INTERVAL_SECS", "15"),
    ("MESH_SUSPECT_AFTER_MS", "590000"),
    ("MESH_DEAD_AFTER_MS", "600000"),
    ("MESH_REJOIN", "false"),
];

async fn wait<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(within, poll)
        .await
        .unwrap_or_else(|_| panic!("timed out after {within:?} waiting for {what}"))
}

async fn link_health(store: &EmbeddedStore, id: &LinkId) -> Option<Health> {
    store.get_link(id).await.ok().map(|l| l.health)
}

async fn is_up(mesh: &Mesh, a: &Peer, peer: &str) -> bool {
    mesh.get(a, "/links").await["links"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["peer"] == peer && l["state"] == "connected" && l["health"] == "up")
}

/// Messages sent, delivered and lost in one run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    sent: u64,
    delivered: u64,
    lost: u64,
}

async fn send(mesh: &Mesh, from: &Peer, to: &str, n: u64) {
    let (status, body) = mesh
        .post(
            from,
            &format!("/links/{to}/messages"),
            &json!({"text": format!("m{n}")}),
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
}

/// `p`'s inlet for `from` (delivered, lost), from `GET /status`.
async fn inlet(mesh: &Mesh, p: &Peer, from: &str) -> (u64, u64) {
    let status = mesh.get(p, "/status").await;
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["peer"] == from)
        .map_or((0, 0), |q| {
            (
                q["in"]["delivered"].as_u64().unwrap_or(0),
                q["in"]["lost"].as_u64().unwrap_or(0),
            )
        })
}

/// One run: (detection, rejoin) in ms and the message counts; rejoin and messages only with the
/// detector's defaults.
async fn run(n: usize, env: &[(&str, &str)], rejoin: bool) -> (f64, Option<f64>, Counts) {
    let mesh = Mesh::new();
    let (an, bn) = (format!("ra{n}"), format!("rb{n}"));
    let a = mesh.worker(&an, 1000 + n as u64, env);
    let b = mesh.worker(&bn, 2000 + n as u64, env);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    let id = LinkId::between(a.identity.id(), b.identity.id()).unwrap();
    wait(Duration::from_secs(10), "the link stored up", || async {
        (link_health(&store, &id).await == Some(Health::Up)).then_some(())
    })
    .await;

    let mut sent = 0;
    if rejoin {
        for _ in 0..5 {
            sent += 1;
            send(&mesh, &a, &bn, sent).await;
        }
    }
    let killed = Instant::now();
    drop(b);
    wait(Duration::from_secs(60), "the link down", || async {
        (link_health(&store, &id).await == Some(Health::Down)).then_some(())
    })
    .await;
    let detection = killed.elapsed().as_secs_f64() * 1000.0;
    if !rejoin {
        return (detection, None, Counts::default());
    }
    for _ in 0..20 {
        sent += 1;
        send(&mesh, &a, &bn, sent).await;
    }
    let b = mesh.worker(&bn, 2000 + n as u64, env);
    let back = Instant::now();
    wait(Duration::from_secs(60), "the link rejoined", || async {
        is_up(&mesh, &a, &bn).await.then_some(())
    })
    .await;
    let rejoined = back.elapsed().as_secs_f64() * 1000.0;
    let (delivered_upto, lost) = wait(Duration::from_secs(60), "the queued messages", || async {
        let (d, l) = inlet(&mesh, &b, &an).await;
        (d >= sent).then_some((d, l))
    })
    .await;
    drop(b);
    let counts = Counts {
        sent,
        delivered: delivered_upto - lost,
        lost,
    };
    (detection, Some(rejoined), counts)
}

fn summary(mut xs: Vec<f64>) -> serde_json::Value {
    xs.sort_by(f64::total_cmp);
    json!({
        "runs": xs.len(),
        "p50_ms": percentile(&xs, 0.5).round(),
        "p99_ms": percentile(&xs, 0.99).round(),
        "max_ms": xs.last().copied().unwrap_or(0.0).round(),
        "min_ms": xs.first().copied().unwrap_or(0.0).round(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` builds and runs benches without `--bench`: nothing to measure.
        return;
    }
    let runs: usize = std::env::var("MESH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut detection = Vec::new();
    let mut rejoin = Vec::new();
    let mut ice_only = Vec::new();
    let mut messages = Counts::default();
    for n in 0..runs {
        let (d, r, c) = run(n, DEFAULTS, true).await;
        eprintln!(
            "run {n}: detection {d:.0} ms, rejoin {:.0} ms, messages {c:?}",
            r.unwrap_or(0.0)
        );
        detection.push(d);
        rejoin.extend(r);
        messages.sent += c.sent;
        messages.delivered += c.delivered;
        messages.lost += c.lost;
        let (d, _, _) = run(1000 + n, ICE_ONLY, false).await;
        eprintln!("run {n}: ICE-only detection {d:.0} ms");
        ice_only.push(d);
    }
    let p99 = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.99)
    };
    let report = json!({
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "detection": summary(detection.clone()),
        "rejoin": summary(rejoin.clone()),
        "ice_only_detection": summary(ice_only.clone()),
        "detection_vs_ice_only_p99": (p99(&detection) / p99(&ice_only) * 100.0).round() / 100.0,
        "messages": {"sent": messages.sent, "delivered": messages.delivered, "lost": messages.lost},
        "targets": {
            "detection_p99_le_5000_ms": p99(&detection) <= 5000.0,
            "rejoin_p99_le_10000_ms": p99(&rejoin) <= 10000.0,
            "no_message_lost": messages.lost == 0 && messages.delivered == messages.sent,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
