//! A store outage during a run: two workers on Firestore (an emulator of this test's own) with a
//! live link; the emulator is stopped (SIGSTOP) for 30 s and resumed. Meanwhile the link stays up
//! (store writes are spooled, so its driver keeps probing), and afterwards every spooled write,
//! the samples of the whole outage among them, has been acknowledged by the store: none dropped,
//! none refused.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::{Mesh, Peer};
use mesh_testkit::firestore::Emulator;
use mesh_testkit::process::eventually;
use serde_json::Value;

/// How long the store is away: the figure the reliability requirements name.
const OUTAGE: Duration = Duration::from_secs(30);

async fn status(mesh: &Mesh, p: &Peer) -> Value {
    mesh.get(p, "/status").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_loses_no_write_and_does_not_stall_the_links() {
    let emulator = Emulator::start().await;
    let mesh = Mesh::new();
    let project = mesh_testkit::unique_project("outage");
    let env = [
        ("MESH_STORE", format!("firestore:{project}")),
        ("FIRESTORE_EMULATOR_HOST", emulator.host.clone()),
        ("MESH_REJOIN", "false".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = mesh.worker("out-a", 51, &env);
    let b = mesh.worker("out-b", 52, &env);
    mesh.connect(&a, &b).await;
    let ours_before = mesh.wait_up(&a, &b).await;
    let theirs_before = mesh.wait_up(&b, &a).await;
    // Samples are being written (one a second).
    let before = eventually(Duration::from_secs(20), "samples written", || async {
        let s = status(&mesh, &a).await;
        (s["spool"]["written"].as_u64() >= Some(3)).then_some(s)
    })
    .await;
    let written_before = before["spool"]["written"].as_u64().unwrap();

    emulator.pause();
    // The spool notices (its writes time out) and keeps what it cannot write.
    eventually(
        Duration::from_secs(20),
        "the spool to see the store down",
        || async {
            let s = status(&mesh, &a).await;
            (s["spool"]["storeDown"] == true && s["spool"]["pending"].as_u64() > Some(0))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(OUTAGE).await;
    // The links never stalled: both sides still see each other up, and no link ended meanwhile:
    // each holds the connection it had before the outage (a new one would carry a later
    // `establishedAt`; with rejoining off, an ended link would not be back at all).
    let ours = mesh.wait_up(&a, &b).await;
    let theirs = mesh.wait_up(&b, &a).await;
    assert_eq!(
        (&ours["establishedAt"], &theirs["establishedAt"]),
        (
            &ours_before["establishedAt"],
            &theirs_before["establishedAt"]
        ),
        "{ours} / {theirs}\n{}",
        a.proc.log()
    );
    let during = status(&mesh, &a).await;
    let pending = during["spool"]["pending"].as_u64().unwrap();
    assert!(pending >= 20, "a sample a second was spooled: {during}");
    emulator.resume();

    for p in [&a, &b] {
        let after = eventually(Duration::from_secs(60), "the spool to drain", || async {
            let s = status(&mesh, p).await;
            (s["spool"]["pending"] == 0 && s["spool"]["storeDown"] == false).then_some(s)
        })
        .await;
        assert_eq!(after["spool"]["dropped"], 0, "{after}");
        assert_eq!(after["spool"]["rejected"], 0, "{after}");
        assert!(after["spool"]["retries"].as_u64() > Some(0), "{after}");
        eprintln!("after the outage: {}", after["spool"]);
        if std::ptr::eq(p, &a) {
            let written = after["spool"]["written"].as_u64().unwrap();
            assert!(
                written >= written_before + pending,
                "every write spooled during the outage was written: {after}"
            );
        }
    }
}
