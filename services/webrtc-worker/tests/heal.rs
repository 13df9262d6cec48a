//! After a split heals: a peer cut off from another (links hung up) knows it is in the minority
//! (`GET /status`), misses state the other side gossiped meanwhile, and holds it again as soon
//! as the link is back, from the state both sides exchange when a link comes up.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, Peer};
use mesh_testkit::process::eventually;
use serde_json::{Value, json};

/// No redials (the hang-ups are the split) and no forwarding: on loopback every worker reaches
/// every other over HTTPS, so a forwarded envelope would cross the "split" through a third peer.
const SPLIT: &[(&str, &str)] = &[("MESH_REJOIN", "false"), ("MESH_GOSSIP_TTL", "0")];

/// The HLC of `origin`'s telemetry entry as `holder` has it, `(wall, counter)`.
async fn entry_hlc(mesh: &Mesh, holder: &Peer, origin: &str) -> Option<(u64, u64)> {
    let state = mesh.get(holder, "/gossip/state").await;
    let key = format!("telemetry/{origin}");
    state["entries"].as_array()?.iter().find_map(|e| {
        (e["key"] == key.as_str()).then(|| {
            (
                e["hlc"]["wallMs"].as_u64().unwrap(),
                e["hlc"]["counter"].as_u64().unwrap(),
            )
        })
    })
}

async fn quorum(mesh: &Mesh, p: &Peer) -> Value {
    mesh.get(p, "/status").await["quorum"].clone()
}

async fn gossip_open(mesh: &Mesh, a: &Peer, peer: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("the gossip channel to {peer}"),
        || async {
            let links = mesh.get(a, "/links").await;
            links["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["peer"] == peer && l["gossip"] == true)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_link_brings_back_the_state_gossiped_while_it_was_down() {
    let mesh = Mesh::new();
    let a = mesh.worker("heal-a", 61, SPLIT);
    let b = mesh.worker("heal-b", 62, SPLIT);
    let c = mesh.worker("heal-c", 63, SPLIT);
    for x in [&b, &c] {
        mesh.connect(&a, x).await;
        mesh.wait_up(&a, x).await;
    }
    gossip_open(&mesh, &a, "heal-b").await;

    // A link coming up exchanges state: b holds a's entry without any gossip run.
    eventually(Duration::from_secs(10), "b to hold a's entry", || async {
        entry_hlc(&mesh, &b, "heal-a").await
    })
    .await;
    let q = eventually(
        Duration::from_secs(10),
        "a to count three peers",
        || async {
            let q = quorum(&mesh, &a).await;
            (q["known"] == 3).then_some(q)
        },
    )
    .await;
    assert_eq!(q, json!({"known": 3, "reachable": 3, "majority": true}));

    // The split: a is cut off from both (operator hang-ups, so nobody redials).
    for peer in ["heal-b", "heal-c"] {
        mesh.hang_up(&a, peer).await;
    }
    eventually(Duration::from_secs(10), "a alone", || async {
        (mesh.link_count(&a).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        quorum(&mesh, &a).await,
        json!({"known": 3, "reachable": 1, "majority": false})
    );
    let old = entry_hlc(&mesh, &b, "heal-a").await.unwrap();

    // a's state moves on, reaching c (over HTTPS, its link being down) but not b.
    let (s, report) = mesh
        .post(&a, "/gossip/push", &json!({"targets": ["heal-c"]}))
        .await;
    assert_eq!(s, 200, "{report}");
    let new = entry_hlc(&mesh, &a, "heal-a").await.unwrap();
    assert!(new > old);
    assert_eq!(entry_hlc(&mesh, &b, "heal-a").await, Some(old));

    // Healed: one exchange on link up and b is current.
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let healed = Instant::now();
    eventually(Duration::from_secs(10), "b to catch up with a", || async {
        (entry_hlc(&mesh, &b, "heal-a").await >= Some(new)).then_some(())
    })
    .await;
    eprintln!(
        "heal: b current {} ms after the link was up",
        healed.elapsed().as_millis()
    );
    assert_eq!(quorum(&mesh, &a).await["majority"], true);
}
