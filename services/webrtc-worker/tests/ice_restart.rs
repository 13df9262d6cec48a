//! ICE restart on a live link: when ICE reports a link's path disconnected and the failure
//! detector has not given up on the peer (it is set more patient than ICE's 5 s), the dialler
//! restarts ICE on the same
//! connection through signed signalling; the answerer recognises the re-offer (same DTLS
//! fingerprint) and answers it on that connection. The link keeps its connection and channels:
//! no new link, the same `establishedAt`, messages go on.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::{Mesh, Peer};
use mesh_testkit::process::eventually;
use serde_json::json;

/// The detector set more patient than ICE (whose disconnected state, after 5 s of silence, is
/// what starts a restart), rejoining off: only an ICE restart can be what brings the link back.
const PATIENT: &[(&str, &str)] = &[
    ("MESH_SUSPECT_AFTER_MS", "30000"),
    ("MESH_DEAD_AFTER_MS", "60000"),
    ("MESH_REJOIN", "false"),
];

async fn logged(p: &Peer, message: &str, within: Duration) {
    eventually(within, &format!("{message:?} in the log"), || {
        let found = p.proc.log().contains(message);
        async move { found.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_path_is_repaired_by_an_ice_restart_on_the_same_connection() {
    let mesh = Mesh::new();
    let a = mesh.worker("ice-a", 111, PATIENT);
    let b = mesh.worker("ice-b", 112, PATIENT);
    mesh.connect(&a, &b).await;
    let before = mesh.wait_up(&a, &b).await;
    let theirs_before = mesh.wait_up(&b, &a).await;

    // b stops answering anything, ICE checks included: a's ICE reports the path disconnected
    // and a restarts ICE.
    b.proc.signal("-STOP");
    logged(
        &a,
        "restarting ICE on the live connection",
        Duration::from_secs(20),
    )
    .await;
    // Meanwhile a shows the link as it is: still there, `disconnected` (connected, but down).
    eventually(
        Duration::from_secs(10),
        "ice-a to show the link disconnected",
        || async {
            let l = mesh.link(&a, "ice-b").await?;
            (l["state"] == "disconnected" && l["health"] == "down").then_some(())
        },
    )
    .await;
    // a is offering the restart (its request waits on the paused b).
    b.proc.signal("-CONT");
    logged(
        &b,
        "ICE restart answered on the live connection",
        Duration::from_secs(30),
    )
    .await;
    logged(
        &a,
        "ICE restarted on the live connection",
        Duration::from_secs(30),
    )
    .await;
    // No link ended on either side: each still holds the connection it had before the break (a
    // new one would carry a later `establishedAt`; with rejoining off, an ended link would not be
    // back at all), up again, and nothing else.
    let after = mesh.wait_up(&a, &b).await;
    assert_eq!(
        after["establishedAt"], before["establishedAt"],
        "the same connection, not a new one: {before} / {after}"
    );
    let theirs_after = mesh.wait_up(&b, &a).await;
    assert_eq!(
        theirs_after["establishedAt"], theirs_before["establishedAt"],
        "the same connection at ice-b: {theirs_before} / {theirs_after}"
    );
    for (p, role) in [(&a, "dialer"), (&b, "answerer")] {
        let links = mesh.get(p, "/links").await;
        assert_eq!(links["count"], 1, "{links}");
        assert_eq!(links["links"][0]["role"], role, "{links}");
    }
    // The channels carried on: a message crosses.
    let (s, body) = mesh
        .post(
            &a,
            "/links/ice-b/messages",
            &json!({"text": "after the restart"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    eventually(Duration::from_secs(10), "the message at ice-b", || async {
        let m = mesh.get(&b, "/messages?from=ice-a").await;
        m["messages"]
            .as_array()?
            .iter()
            .any(|m| m["text"] == "after the restart")
            .then_some(())
    })
    .await;
}
