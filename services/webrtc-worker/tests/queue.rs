//! Queued messages between real worker processes: messages to a peer that is down wait in the
//! sender's outbox and arrive in order, once, when it is back; a receiver killed (SIGKILL)
//! mid-stream and restarted misses nothing and gets nothing twice; when the outbox's bound is
//! hit the oldest go and both sides count them.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::{Mesh, Peer};
use mesh_testkit::process::eventually;
use serde_json::{Value, json};

/// Fast failure detection and rejoining, so a restarted peer is back within a second or two.
const FAST: &[(&str, &str)] = &[
    ("MESH_SUSPECT_AFTER_MS", "300"),
    ("MESH_DEAD_AFTER_MS", "1500"),
    ("MESH_REJOIN_MAX_DELAY_MS", "500"),
];

async fn send(mesh: &Mesh, from: &Peer, to: &str, text: &str) -> (u16, Value) {
    mesh.post(
        from,
        &format!("/links/{to}/messages"),
        &json!({ "text": text }),
    )
    .await
}

/// `p`'s queue figures for `peer` from `GET /status`.
async fn queue_of(mesh: &Mesh, p: &Peer, peer: &str) -> Value {
    let status = mesh.get(p, "/status").await;
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["peer"] == peer)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The texts `p` has received from `from`, oldest first.
async fn texts(mesh: &Mesh, p: &Peer, from: &str) -> Vec<String> {
    let m = mesh
        .get(p, &format!("/messages?from={from}&limit=1000"))
        .await;
    m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_peer_that_is_down_arrive_in_order_once_it_is_back() {
    let mesh = Mesh::new();
    let a = mesh.worker("q-a", 91, FAST);
    let b = mesh.worker("q-b", 92, FAST);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let (status, first) = send(&mesh, &a, "q-b", "m1").await;
    assert_eq!(status, 200, "{first}");
    // Delivered before the kill, so the restarted q-b must not get it again.
    eventually(Duration::from_secs(10), "m1 at q-b", || async {
        (texts(&mesh, &b, "q-a").await == ["m1"]).then_some(())
    })
    .await;

    b.proc.signal("-KILL");
    drop(b);
    // Until a's detector says the link is gone, the courier may still hold it: give each
    // message its own number either way; those sent while no link exists are accepted (202).
    for n in 2..=20 {
        let (status, body) = send(&mesh, &a, "q-b", &format!("m{n}")).await;
        assert!(status == 200 || status == 202, "{status} {body}");
        assert_eq!(body["seq"], n, "{body}");
    }
    let queued = queue_of(&mesh, &a, "q-b").await;
    assert!(queued["out"]["pending"].as_u64().unwrap() > 0, "{queued}");

    let b = mesh.worker("q-b", 92, FAST);
    let all = async {
        loop {
            let t = texts(&mesh, &b, "q-a").await;
            // q-b restarted: its inbox is new, m1 was read into the old one.
            if t.len() >= 19 {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let Ok(got) = tokio::time::timeout(Duration::from_secs(30), all).await else {
        panic!(
            "not all at q-b within 30 s\nq-a: {}\nq-b: {}\nq-a log:\n{}\nq-b log:\n{}",
            mesh.get(&a, "/status").await,
            mesh.get(&b, "/status").await,
            a.proc.log(),
            b.proc.log()
        );
    };
    let want: Vec<String> = (2..=20).map(|n| format!("m{n}")).collect();
    assert_eq!(got, want, "in order, none twice");
    let theirs = queue_of(&mesh, &b, "q-a").await;
    assert_eq!(
        theirs["in"],
        json!({"delivered": 20, "lost": 0}),
        "{theirs}"
    );
    let ours = eventually(Duration::from_secs(10), "the acknowledgements", || async {
        let q = queue_of(&mesh, &a, "q-b").await;
        (q["out"]["pending"] == 0).then_some(q)
    })
    .await;
    assert_eq!(ours["out"]["delivered"], 20, "{ours}");
    assert_eq!(ours["out"]["dropped"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_stream_misses_nothing_and_gets_nothing_twice() {
    let mesh = Mesh::new();
    let a = mesh.worker("k-a", 93, FAST);
    let b = mesh.worker("k-b", 94, FAST);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    for n in 1..=150 {
        let (status, body) = send(&mesh, &a, "k-b", &format!("{n}")).await;
        assert!(status == 200 || status == 202, "{status} {body}");
    }
    // Killed once it has some, while the rest are on their way or still being sent.
    eventually(Duration::from_secs(30), "k-b part-way", || async {
        let d = queue_of(&mesh, &b, "k-a").await["in"]["delivered"]
            .as_u64()
            .unwrap_or(0);
        (d >= 1).then_some(())
    })
    .await;
    b.proc.signal("-KILL");
    drop(b);
    for n in 151..=300 {
        let (status, body) = send(&mesh, &a, "k-b", &format!("{n}")).await;
        assert!(status == 200 || status == 202, "{status} {body}");
    }
    let b = mesh.worker("k-b", 94, FAST);
    let all = async {
        loop {
            let q = queue_of(&mesh, &b, "k-a").await;
            if q["in"]["delivered"] == 300 {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let Ok(inlet) = tokio::time::timeout(Duration::from_secs(30), all).await else {
        panic!(
            "not all 300 delivered at k-b within 30 s\nk-a: {}\nk-b: {}\nk-a log:\n{}\nk-b log:\n{}",
            mesh.get(&a, "/status").await,
            mesh.get(&b, "/status").await,
            a.proc.log(),
            b.proc.log()
        );
    };
    assert_eq!(inlet["in"]["lost"], 0, "{inlet}");
    // What arrived after the restart continues where the killed process stopped: consecutive
    // numbers up to 300, none twice.
    let got: Vec<u64> = texts(&mesh, &b, "k-a")
        .await
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(got.last(), Some(&300), "{got:?}");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_both_sides_count_them() {
    let mesh = Mesh::new();
    let mut small: Vec<(&str, &str)> = FAST.to_vec();
    small.push(("MESH_QUEUE_CAPACITY", "5"));
    let a = mesh.worker("f-a", 95, &small);
    let b = mesh.worker("f-b", 96, FAST);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    b.proc.signal("-KILL");
    drop(b);
    // Wait until a knows the link is gone, so nothing of this goes out on it.
    eventually(Duration::from_secs(10), "f-a to drop the link", || async {
        (mesh.link_count(&a).await == 0).then_some(())
    })
    .await;
    // Each message past the bound drops one, as it is queued: the outbox holds five at most and
    // counts every drop.
    for n in 1..=12u64 {
        let (status, body) = send(&mesh, &a, "f-b", &format!("m{n}")).await;
        assert_eq!(status, 202, "{body}");
        let q = queue_of(&mesh, &a, "f-b").await;
        assert_eq!(
            q["out"],
            json!({"pending": n.min(5), "delivered": 0, "dropped": n.saturating_sub(5)}),
            "after m{n}: {q}"
        );
    }

    let b = mesh.worker("f-b", 96, FAST);
    let got = eventually(Duration::from_secs(30), "the five kept", || async {
        let t = texts(&mesh, &b, "f-a").await;
        (t.len() >= 5).then_some(t)
    })
    .await;
    // The oldest went: the five kept are the newest, in order.
    assert_eq!(got, ["m8", "m9", "m10", "m11", "m12"]);
    // The receiver counts the seven it will never get as lost.
    let theirs = queue_of(&mesh, &b, "f-a").await;
    assert_eq!(
        theirs["in"],
        json!({"delivered": 12, "lost": 7}),
        "{theirs}\n{}",
        b.proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_for_a_peer_that_is_down_is_queued_and_delivered_when_it_is_back() {
    let mesh = Mesh::new();
    let a = mesh.worker("g-a", 97, FAST);
    let b = mesh.worker("g-b", 98, FAST);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    b.proc.signal("-KILL");
    drop(b);
    eventually(Duration::from_secs(10), "g-a to drop the link", || async {
        (mesh.link_count(&a).await == 0).then_some(())
    })
    .await;

    // Neither the link nor HTTPS reaches g-b: the envelope waits in g-a's queue for it.
    let (status, report) = mesh
        .post(&a, "/gossip/push", &json!({"targets": ["g-b"]}))
        .await;
    assert_eq!(status, 200, "{report}");
    let target = &report["targets"][0];
    assert_eq!(target["ok"], false, "{report}");
    assert!(
        target["error"]
            .as_str()
            .unwrap()
            .contains("queued for the link's return"),
        "{report}"
    );
    let envelope = report["envelopeId"].as_str().unwrap().to_string();

    // Accepted envelopes are logged at debug (one line each would flood an operator's log).
    let verbose: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("RUST_LOG", "info,webrtc_worker::gossip=debug")])
        .collect();
    let b = mesh.worker("g-b", 98, &verbose);
    eventually(
        Duration::from_secs(30),
        "the queued envelope at g-b",
        || async {
            let q = queue_of(&mesh, &b, "g-a").await;
            (q["in"]["delivered"] == 1).then_some(())
        },
    )
    .await;
    // Checked and merged like any envelope (it is well within the age limit).
    eventually(Duration::from_secs(10), "g-b to accept it", || async {
        let log = b.proc.log();
        log.lines()
            .any(|l| l.contains("gossip envelope accepted") && l.contains(&envelope))
            .then_some(())
    })
    .await;
    let ours = eventually(Duration::from_secs(10), "the acknowledgement", || async {
        let q = queue_of(&mesh, &a, "g-b").await;
        (q["out"]["pending"] == 0).then_some(q)
    })
    .await;
    assert_eq!(ours["out"]["delivered"], 1, "{ours}");
}
