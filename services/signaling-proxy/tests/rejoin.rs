//! Healing through the proxy's signaling: two workers linked by `connect`; one is killed
//! (SIGKILL: no goodbye), the survivor's failure detector declares it dead and starts
//! rejoining with backoff; the dead one is restarted (same id and key, a new address) and the
//! link comes back by itself, the offer relayed by the proxy's `/api/mesh-rtc/offer` with the
//! workers' `peer` token. An operator's hang-up is not undone.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, OPERATOR, PEER, Worker};
use mesh_store::Store;
use mesh_store::embedded::EmbeddedStore;
use mesh_testkit::process::eventually;
use mesh_types::{Health, LinkId};
use serde_json::{Value, json};

fn worker(mesh: &Mesh, name: &str, seed: u64) -> Worker {
    let proxy = mesh.proxy.url.clone();
    mesh.worker_with(
        name,
        seed,
        &[
            ("MESH_PROXY_URL", proxy.as_str()),
            ("MESH_PROXY_TOKEN", PEER),
            ("MESH_SUSPECT_AFTER_MS", "300"),
            ("MESH_DEAD_AFTER_MS", "1500"),
        ],
    )
}

/// `GET path` on worker `w`.
async fn worker_get(mesh: &Mesh, w: &Worker, path: &str) -> Value {
    mesh.http
        .get(format!("{}{path}", w.proc.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn links_of(mesh: &Mesh, w: &Worker) -> Vec<Value> {
    worker_get(mesh, w, "/links").await["links"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits for `w` to see `peer` up; on time-out, fails with every log, which is what explains it.
async fn wait_up(mesh: &Mesh, w: &Worker, peer: &str, within: Duration, others: &[&Worker]) {
    let up = async {
        loop {
            let seen = links_of(mesh, w)
                .await
                .iter()
                .any(|l| l["peer"] == peer && l["state"] == "connected" && l["health"] == "up");
            if seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(within, up).await.is_err() {
        let logs: Vec<String> = std::iter::once(w)
            .chain(others.iter().copied())
            .map(|x| x.proc.log())
            .collect();
        panic!(
            "no link up with {peer} within {within:?}\nlinks: {:?}\nworker logs:\n{}\nproxy log:\n{}",
            links_of(mesh, w).await,
            logs.join("\n----\n"),
            mesh.proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_that_comes_back_is_rejoined_through_the_proxy() {
    let mesh = Mesh::new(&[]);
    let a = worker(&mesh, "rj-a", 41);
    let b = worker(&mesh, "rj-b", 42);
    let (status, link) = mesh
        .post(
            "/api/mesh-rtc/connect",
            Some(OPERATOR),
            &json!({ "a": "rj-a", "b": "rj-b" }),
        )
        .await;
    assert_eq!(status, 200, "{link}");

    drop(b); // SIGKILL
    let store = EmbeddedStore::open(mesh.dir.path().join("store"))
        .await
        .unwrap();
    let id: LinkId = "rj-a<->rj-b".parse().unwrap();
    eventually(
        Duration::from_secs(20),
        "the lost link written down",
        || {
            let (store, id) = (store.clone(), id.clone());
            async move { (store.get_link(&id).await.ok()?.health == Health::Down).then_some(()) }
        },
    )
    .await;
    // The survivor is rejoining the lost peer (and keeps at it while the peer is away).
    eventually(Duration::from_secs(10), "rj-a rejoining rj-b", || async {
        let status = worker_get(&mesh, &a, "/status").await;
        (status["rejoining"] == json!(["rj-b"])).then_some(())
    })
    .await;

    // Back, at a new address: it registers it, and the survivor's next attempt (or its own
    // redial of its recent links) brings the link back.
    let b = worker(&mesh, "rj-b", 42);
    let back = Instant::now();
    wait_up(&mesh, &a, "rj-b", Duration::from_secs(30), &[&b]).await;
    let rejoined = back.elapsed();
    wait_up(&mesh, &b, "rj-a", Duration::from_secs(30), &[&a]).await;
    eventually(Duration::from_secs(20), "the link up in the store", || {
        let (store, id) = (store.clone(), id.clone());
        async move { (store.get_link(&id).await.ok()?.health == Health::Up).then_some(()) }
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the proxy to log the relayed offer",
        || {
            let relayed = mesh.proxy.log().contains("offer relayed");
            async move { relayed.then_some(()) }
        },
    )
    .await;
    eprintln!(
        "rejoin: link up {} ms after the restarted peer was serving",
        rejoined.as_millis()
    );

    // An operator's hang-up is final: neither side redials.
    let res = mesh
        .http
        .delete(format!("{}/links/rj-b", a.proc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    eventually(
        Duration::from_secs(10),
        "both sides to drop the link",
        || async {
            (links_of(&mesh, &a).await.is_empty() && links_of(&mesh, &b).await.is_empty())
                .then_some(())
        },
    )
    .await;
    // No rejoin loop runs on either side (the hang-up cancelled a's, the close b's), so
    // nothing will redial.
    for w in [&a, &b] {
        let status = worker_get(&mesh, w, "/status").await;
        assert_eq!(status["rejoining"], json!([]), "{status}\n{}", w.proc.log());
        assert_eq!(status["links"], 0, "{status}");
    }
}
