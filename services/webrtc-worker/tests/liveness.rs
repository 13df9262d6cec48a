//! Failure detection with real processes: a peer that stops answering (SIGSTOP) becomes suspect
//! and is cleared when it answers again (SIGCONT), without the link going down; a peer killed
//! outright (SIGKILL) is declared dead from probe silence and the link is written `down` in the
//! store, well before ICE would have given up on it.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, Peer};
use mesh_store::Store;
use mesh_store::embedded::EmbeddedStore;
use mesh_testkit::process::eventually;
use mesh_types::{Health, LinkId};

/// Probes every 50 ms (the testkit's default), suspect after 300 ms of silence, dead after
/// 3 s: below ICE's own time-outs (5 s disconnected, 25 s failed), so the detector is what acts,
/// with room between the two bounds for a loaded machine to resume the paused peer in time.
const FAST: &[(&str, &str)] = &[
    ("MESH_SUSPECT_AFTER_MS", "300"),
    ("MESH_DEAD_AFTER_MS", "3000"),
    // This test watches detection alone; rejoining is tested on its own. Without it, a link that
    // ended stays gone: nothing redials.
    ("MESH_REJOIN", "false"),
];

/// How soon after SIGKILL the survivor must have dropped the link for the detector (dead after
/// 3 s) to be what ended it. ICE alone keeps a silent link until its failed time-out, 30 s of
/// silence (rtc-ice: 5 s to `disconnected`, then 25 s), holding it meanwhile as `disconnected`
/// while it restarts ICE; nothing else ends a link on silence.
const DEAD_WITHIN: Duration = Duration::from_secs(20);

/// Waits for `message` to appear in `peer`'s log more often than `before` times.
async fn logged(peer: &Peer, message: &str, before: usize, within: Duration) {
    eventually(within, &format!("{message:?} in the log"), || {
        let found = peer.proc.log().matches(message).count() > before;
        async move { found.then_some(()) }
    })
    .await;
}

fn count(peer: &Peer, message: &str) -> usize {
    peer.proc.log().matches(message).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_peer_is_suspected_and_cleared_and_a_killed_one_is_declared_dead() {
    let mesh = Mesh::new();
    let a = mesh.worker("live-a", 31, FAST);
    let b = mesh.worker("live-b", 32, FAST);
    mesh.connect(&a, &b).await;
    let before = mesh.wait_up(&a, &b).await;
    mesh.wait_up(&b, &a).await;

    // Paused past the suspicion bound but not the dead one: suspect, then cleared, link kept.
    let (suspected, cleared) = (
        count(&a, "peer suspect: no probe heard"),
        count(&a, "peer heard again; no longer suspect"),
    );
    b.proc.signal("-STOP");
    logged(
        &a,
        "peer suspect: no probe heard",
        suspected,
        Duration::from_secs(10),
    )
    .await;
    b.proc.signal("-CONT");
    logged(
        &a,
        "peer heard again; no longer suspect",
        cleared,
        Duration::from_secs(10),
    )
    .await;
    // A pause shorter than the dead bound must not end the link: a still holds the connection it
    // had before the pause (a new one would have a later `establishedAt`; with rejoining off,
    // an ended link would not be back at all), and it comes back up.
    let kept = mesh.link(&a, "live-b").await;
    assert_eq!(
        kept.as_ref().map(|l| &l["establishedAt"]),
        Some(&before["establishedAt"]),
        "the pause ended the link: {kept:?} (before: {before})\n{}",
        a.proc.log()
    );
    let after = mesh.wait_up(&a, &b).await;
    assert_eq!(
        after["establishedAt"], before["establishedAt"],
        "the same connection after the pause: {before} / {after}"
    );

    // Killed: no close from the peer, just silence.
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    let id: LinkId = "live-a<->live-b".parse().unwrap();
    assert_eq!(store.get_link(&id).await.unwrap().health, Health::Up);
    let killed_at = Instant::now();
    drop(b); // SIGKILL
    // The detector, not ICE, ends the link: the survivor drops it well before ICE would.
    eventually(
        DEAD_WITHIN,
        "live-a to drop the link after the peer was killed",
        || async { mesh.link(&a, "live-b").await.is_none().then_some(()) },
    )
    .await;
    let detected = killed_at.elapsed();
    assert_eq!(mesh.link_count(&a).await, 0);
    // Written `down` as it ended (before it left the registry; the spool carries it to the
    // store).
    let link = eventually(
        Duration::from_secs(10),
        "the link written down after the peer was killed",
        || {
            let store = store.clone();
            let id = id.clone();
            async move {
                let link = store.get_link(&id).await.ok()?;
                (link.health == Health::Down).then_some(link)
            }
        },
    )
    .await;
    assert_eq!(link.health, Health::Down);
    // A figure for the record (the benchmark measures it over many runs); not an assertion.
    eprintln!(
        "detection: link dropped {} ms after SIGKILL (dead bound 3000 ms)",
        detected.as_millis()
    );
}
