//! Real workers, real peer connections: two and three `webrtc-worker` processes on loopback
//! sharing an embedded store connect over HTTP signaling, report their links up, carry mesh
//! messages, and write one canonical link per pair with measured QoS.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::Mesh;
use mesh_store::embedded::EmbeddedStore;
use mesh_store::{LinkQuery, Store};
use mesh_testkit::process::eventually;
use mesh_types::{Health, LinkId};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_connect_exchange_messages_and_store_one_measured_link() {
    let mesh = Mesh::new();
    let a = mesh.worker("alpha", 1, &[]);
    let b = mesh.worker("bravo", 2, &[]);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    mesh.wait_up(&b, &a).await;

    // Both directions of the mesh channel, text and binary.
    let (s, r) = mesh
        .post(&a, "/links/bravo/messages", &json!({"text": "hello bravo"}))
        .await;
    assert_eq!((s, r["bytes"].as_u64()), (200, Some(11)), "{r}");
    let (s, _) = mesh
        .post(&b, "/links/alpha/messages", &json!({"base64": "AAEC/w=="}))
        .await;
    assert_eq!(s, 200);
    let got = eventually(
        Duration::from_secs(10),
        "bravo to receive the message",
        || async {
            let m = mesh.get(&b, "/messages?from=alpha").await;
            (m["count"] == 1).then_some(m)
        },
    )
    .await;
    assert_eq!(got["messages"][0]["text"], "hello bravo");
    let got = eventually(
        Duration::from_secs(10),
        "alpha to receive the binary message",
        || async {
            let m = mesh.get(&a, "/messages").await;
            (m["count"] == 1).then_some(m)
        },
    )
    .await;
    assert_eq!(got["messages"][0]["base64"], "AAEC/w==");

    // The store holds one canonical link, measured: RTT present, no loss on loopback.
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    let id: LinkId = "alpha<->bravo".parse().unwrap();
    let link = eventually(
        Duration::from_secs(20),
        "a measured link in the store",
        || async {
            let l = store.get_link(&id).await.ok()?;
            (l.qos.rtt_ms.is_some() && l.qos.loss_pct.is_some()).then_some(l)
        },
    )
    .await;
    assert_eq!(link.health, Health::Up);
    assert_eq!(link.qos.loss_pct, Some(0.0), "{link:?}");
    assert!(link.qos.rtt_ms.unwrap() < 100.0, "{link:?}");
    assert!(
        link.qos.probe_rtt_ms.is_some() && link.qos.jitter_ms.is_some(),
        "{link:?}"
    );
    assert_eq!(
        store.list_links(&LinkQuery::default()).await.unwrap().len(),
        1
    );

    // Hanging up writes the link down at once, on both sides' registries.
    assert_eq!(mesh.hang_up(&a, "bravo").await, 200);
    eventually(
        Duration::from_secs(10),
        "the link down in the store",
        || async { (store.get_link(&id).await.ok()?.health == Health::Down).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "bravo to drop the link",
        || async { (mesh.link_count(&b).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(mesh.link_count(&a).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_form_a_full_mesh() {
    let mesh = Mesh::new();
    let peers = [
        mesh.worker("p1", 11, &[]),
        mesh.worker("p2", 12, &[]),
        mesh.worker("p3", 13, &[]),
    ];
    for (i, j) in [(0, 1), (0, 2), (2, 1)] {
        mesh.connect(&peers[i], &peers[j]).await;
    }
    for (i, j) in [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)] {
        mesh.wait_up(&peers[i], &peers[j]).await;
    }
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    let links = eventually(Duration::from_secs(20), "three measured links", || async {
        let links = store.list_links(&LinkQuery::default()).await.ok()?;
        (links.len() == 3
            && links
                .iter()
                .all(|l| l.health == Health::Up && l.qos.rtt_ms.is_some()))
        .then_some(links)
    })
    .await;
    let mut ids: Vec<String> = links.iter().map(|l| l.id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["p1<->p2", "p1<->p3", "p2<->p3"]);
    for p in &peers {
        assert_eq!(mesh.link_count(p).await, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hangs_up_writes_the_link_down_and_exits_cleanly() {
    let mesh = Mesh::new();
    let a = mesh.worker("alpha", 1, &[]);
    let mut b = mesh.worker("bravo", 2, &[]);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    let id: LinkId = "alpha<->bravo".parse().unwrap();
    eventually(
        Duration::from_secs(10),
        "the link up in the store",
        || async { (store.get_link(&id).await.ok()?.health == Health::Up).then_some(()) },
    )
    .await;

    let status = b
        .proc
        .terminate(Duration::from_secs(10))
        .expect("bravo exits within the grace period");
    assert!(status.success(), "{status:?}\n{}", b.proc.log());
    assert_eq!(
        store.get_link(&id).await.unwrap().health,
        Health::Down,
        "written down before exit"
    );
    eventually(
        Duration::from_secs(30),
        "alpha to notice the hang-up",
        || async { (mesh.link_count(&a).await == 0).then_some(()) },
    )
    .await;
}
