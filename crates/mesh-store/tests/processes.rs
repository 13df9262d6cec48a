//! The embedded store shared by several processes, as workers, the proxy and the gossip job
//! share one data directory: concurrent writers lose nothing, and what one process wrote is read
//! by another and survives a restart.
//!
//! The test re-runs its own binary as the writer processes (selected by `CHILD_DIR`), so the
//! writers are real, separate processes with their own SQLite connections.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::Command;

use mesh_store::embedded::EmbeddedStore;
use mesh_store::{LinkQuery, LinkWrite, PeerUpsert, Store};
use mesh_testkit::{identity, peer_id};
use mesh_types::{Endpoints, Health, Link, LinkQos};

const CHILD_DIR: &str = "MESH_STORE_TEST_CHILD_DIR";
const CHILD_NAME: &str = "MESH_STORE_TEST_CHILD_NAME";
const LINKS_PER_WRITER: u64 = 40;

/// Writer `name` registers itself and writes links to `LINKS_PER_WRITER` peers.
async fn write_as(store: &EmbeddedStore, name: &str) {
    let me = identity(name, name.len() as u64);
    store
        .upsert_peer(&PeerUpsert {
            id: me.id().clone(),
            pub_key: me.public_key(),
            region: None,
            endpoints: Endpoints::default(),
            seen_at: 1,
            initial_trust: 0.1,
        })
        .await
        .unwrap();
    for i in 0..LINKS_PER_WRITER {
        let other = peer_id(&format!("far-{i}"));
        let qos = LinkQos {
            rtt_ms: Some(i as f64),
            last_ts: 100 + i,
            ..Default::default()
        };
        let link = Link::new(me.id(), &other, Health::Up, qos, 1).unwrap();
        assert_eq!(store.upsert_link(&link).await.unwrap(), LinkWrite::Applied);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_three_processes_share_one_store() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // Child mode: one writer process.
        let store = EmbeddedStore::open(&dir).await.unwrap();
        write_as(&store, &std::env::var(CHILD_NAME).unwrap()).await;
        return;
    }

    let dir = mesh_testkit::data_dir();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["writer-one", "writer-two"]
        .iter()
        .map(|name| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "writers_in_three_processes_share_one_store",
                    "--nocapture",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_NAME, name)
                .spawn()
                .unwrap()
        })
        .collect();
    {
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        write_as(&store, "parent").await;
    }
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a writer process failed");
    }

    // A fresh open is a restart: everything every process wrote is there.
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    let peers = store.list_peers().await.unwrap();
    let ids: Vec<&str> = peers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["parent", "writer-one", "writer-two"]);
    let links = store
        .list_links(&LinkQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(links.len() as u64, 3 * LINKS_PER_WRITER);
    for name in ids {
        let q = LinkQuery {
            peer: Some(peer_id(name)),
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(
            store.list_links(&q).await.unwrap().len() as u64,
            LINKS_PER_WRITER,
            "{name}"
        );
    }
}
