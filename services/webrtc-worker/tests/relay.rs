//! Relay-only links through a real TURN server (coturn on loopback): the link comes up over
//! relay candidates only, its probe RTT is measured over the relay (the figures are printed; how
//! they compare with the direct link's is for benchmarks, since on a loaded machine timings
//! swap), and messages cross it.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::Mesh;
use mesh_testkit::process::eventually;
use mesh_testkit::turn::Coturn;
use serde_json::{Value, json};

/// Waits for `samples` QoS samples on `a`'s link to `peer` and returns their probe RTTs (ms).
async fn probe_rtts(
    mesh: &Mesh,
    a: &common::Peer,
    peer: &str,
    samples: usize,
) -> (Vec<f64>, Value) {
    let mut rtts = Vec::new();
    let mut last_ts = 0;
    let mut view = Value::Null;
    while rtts.len() < samples {
        view = eventually(Duration::from_secs(10), "a new QoS sample", || async {
            let links = mesh.get(a, "/links").await;
            links["links"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| {
                    l["peer"] == peer
                        && l["qos"]["probeRttMs"].is_number()
                        && l["qos"]["lastTs"].as_u64().unwrap() > last_ts
                })
                .cloned()
        })
        .await;
        last_ts = view["qos"]["lastTs"].as_u64().unwrap();
        rtts.push(view["qos"]["probeRttMs"].as_f64().unwrap());
    }
    (rtts, view)
}

/// The best window: scheduling noise on a loaded machine only adds delay, while quantising to a
/// driver timer (what this test guards against) would put every window tens of ms up.
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_link_comes_up_through_coturn_with_the_paths_real_rtt() {
    let turn = Coturn::start();
    let ice = turn.ice_servers_json();
    let relay = [("ICE_SERVERS", ice.as_str()), ("MESH_ICE_POLICY", "relay")];
    let mesh = Mesh::new();
    let a = mesh.worker("relay-a", 21, &relay);
    let b = mesh.worker("relay-b", 22, &relay);
    let c = mesh.worker("direct-c", 23, &[]);
    let d = mesh.worker("direct-d", 24, &[]);

    // The relayed offer carries relay candidates only.
    let (s, offer) = mesh.post(&a, "/dial", &json!({"peerTo": "relay-b"})).await;
    assert_eq!(s, 200, "{offer}\n{}", a.proc.log());
    let sdp = offer["sdp"].as_str().unwrap();
    assert!(sdp.contains("typ relay"), "{sdp}");
    assert!(
        !sdp.contains("typ host"),
        "relay-only must not offer host candidates: {sdp}"
    );
    let (s, answer) = mesh.post(&b, "/offer", &offer).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(mesh.post(&a, "/answer", &answer).await.0, 200);
    mesh.wait_up(&a, &b).await;
    mesh.connect(&c, &d).await;
    mesh.wait_up(&c, &d).await;

    let (relayed, view) = probe_rtts(&mesh, &a, "relay-b", 5).await;
    assert_eq!(view["candidate"], "relay", "{view}");
    let (direct, view) = probe_rtts(&mesh, &c, "direct-d", 5).await;
    assert_eq!(view["candidate"], "host", "{view}");
    let (relayed, direct) = (best(relayed), best(direct));
    println!("probe RTT: relayed {relayed:.3} ms, direct {direct:.3} ms");
    // Measured on both paths (how they compare is a benchmark's business, not a test's: on a
    // loaded machine any two timings can swap).
    assert!(
        relayed.is_finite() && relayed > 0.0 && direct.is_finite() && direct > 0.0,
        "relayed {relayed:.3} ms, direct {direct:.3} ms"
    );

    // Messages cross the relay too.
    assert_eq!(
        mesh.post(&a, "/links/relay-b/messages", &json!({"text": "via turn"}))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(10), "the relayed message", || async {
        (mesh.get(&b, "/messages").await["messages"][0]["text"] == "via turn").then_some(())
    })
    .await;
}
