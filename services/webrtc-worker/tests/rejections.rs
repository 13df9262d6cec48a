//! Bad signaling input gets the documented status and code and leaves no connection behind.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::time::Duration;

use common::Mesh;
use mesh_testkit::process::eventually;
use mesh_types::signing::Signed;
use mesh_types::{Answer, Offer};
use serde_json::{Value, json};

#[allow(clippy::disallowed_methods)] // The test plays a remote peer, which reads its own clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_replayed_and_misaddressed_offers_are_refused() {
    let mesh = Mesh::new();
    let a = mesh.worker("alpha", 1, &[]);
    let b = mesh.worker("bravo", 2, &[]);

    // A real offer from alpha, to tamper with.
    let (s, offer) = mesh.post(&a, "/dial", &json!({"peerTo": "bravo"})).await;
    assert_eq!(s, 200);
    let mut tampered = offer.clone();
    tampered["sdp"] = Value::String(
        offer["sdp"]
            .as_str()
            .unwrap()
            .replace("a=setup:", "a=x-tampered\r\na=setup:"),
    );
    let (s, r) = mesh.post(&b, "/offer", &tampered).await;
    assert_eq!((s, code(&r)), (401, "bad_signature"), "{r}");

    // Signed by another key while claiming to be alpha.
    let mallory = mesh_testkit::identity("alpha", 99);
    let mut forged = Offer::new(
        mallory.id().clone(),
        b.identity.id().clone(),
        offer["sdp"].as_str().unwrap().into(),
        now_ms(),
    );
    forged.sign(&mallory).unwrap();
    let (s, r) = mesh.post(&b, "/offer", &json!(forged)).await;
    assert_eq!((s, code(&r)), (401, "wrong_signer"), "{r}");

    // Signed by alpha, but two minutes old, or from the future.
    for (ts, want) in [
        (now_ms() - 120_000, "stale_timestamp"),
        (now_ms() + 120_000, "future_timestamp"),
    ] {
        let mut old = Offer::new(
            a.identity.id().clone(),
            b.identity.id().clone(),
            offer["sdp"].as_str().unwrap().into(),
            ts,
        );
        old.sign(&a.identity).unwrap();
        let (s, r) = mesh.post(&b, "/offer", &json!(old)).await;
        assert_eq!((s, code(&r)), (401, want), "{r}");
    }

    // No signature at all.
    let mut unsigned = offer.clone();
    unsigned.as_object_mut().unwrap().remove("sig");
    let (s, r) = mesh.post(&b, "/offer", &unsigned).await;
    assert_eq!((s, code(&r)), (401, "missing_signature"), "{r}");

    // From a peer nobody registered.
    let zed = mesh_testkit::identity("zed", 5);
    let mut stranger = Offer::new(
        zed.id().clone(),
        b.identity.id().clone(),
        "v=0\r\n".into(),
        now_ms(),
    );
    stranger.sign(&zed).unwrap();
    let (s, r) = mesh.post(&b, "/offer", &json!(stranger)).await;
    assert_eq!((s, code(&r)), (403, "unknown_peer"), "{r}");

    // Addressed to someone else.
    let (s, r) = mesh.post(&a, "/offer", &offer).await;
    assert_eq!((s, code(&r)), (403, "wrong_addressee"), "{r}");

    // Correctly signed but not SDP.
    let mut junk = Offer::new(
        a.identity.id().clone(),
        b.identity.id().clone(),
        "not sdp at all".into(),
        now_ms(),
    );
    junk.sign(&a.identity).unwrap();
    let (s, r) = mesh.post(&b, "/offer", &json!(junk)).await;
    assert_eq!((s, code(&r)), (400, "bad_sdp"), "{r}");

    // Malformed and oversized bodies.
    let res = mesh
        .http
        .post(format!("{}/offer", b.proc.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(code(&res.json().await.unwrap()), "bad_json");
    let big = json!({"peerFrom": "alpha", "peerTo": "bravo", "sdp": "x".repeat(70_000), "ts": now_ms(), "sig": ""});
    let (s, r) = mesh.post(&b, "/offer", &big).await;
    assert_eq!((s, code(&r)), (413, "body_too_large"), "{r}");

    // None of that left a connection on bravo.
    assert_eq!(mesh.link_count(&b).await, 0);

    // The genuine offer is accepted once; the same offer again is a replay.
    let (s, answer) = mesh.post(&b, "/offer", &offer).await;
    assert_eq!(s, 200, "{answer}");
    let (s, r) = mesh.post(&b, "/offer", &offer).await;
    assert_eq!((s, code(&r)), (409, "replayed"), "{r}");
    assert_eq!(
        mesh.link_count(&b).await,
        1,
        "the replay did not add a connection"
    );

    // Completing the handshake still works after all that.
    let (s, _) = mesh.post(&a, "/answer", &answer).await;
    assert_eq!(s, 200);
    mesh.wait_up(&a, &b).await;

    // The same answer again: signature fine, but it is a replay.
    let (s, r) = mesh.post(&a, "/answer", &answer).await;
    assert_eq!((s, code(&r)), (409, "replayed"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_need_a_pending_dial_in_the_right_state() {
    let mesh = Mesh::new();
    let a = mesh.worker("alpha", 1, &[]);
    let b = mesh.worker("bravo", 2, &[]);
    let c = mesh.worker("charlie", 3, &[]);

    // charlie never dialled bravo.
    let mut answer = Answer::new(
        b.identity.id().clone(),
        c.identity.id().clone(),
        "v=0\r\n".into(),
        now_ms(),
    );
    answer.sign(&b.identity).unwrap();
    let (s, r) = mesh.post(&c, "/answer", &json!(answer)).await;
    assert_eq!((s, code(&r)), (404, "nothing_pending"), "{r}");

    // alpha connects to bravo; a second, fresh answer from bravo finds the link past that state.
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let mut late = Answer::new(
        b.identity.id().clone(),
        a.identity.id().clone(),
        "v=0\r\n".into(),
        now_ms(),
    );
    late.sign(&b.identity).unwrap();
    let (s, r) = mesh.post(&a, "/answer", &json!(late)).await;
    assert_eq!((s, code(&r)), (409, "wrong_state"), "{r}");

    // Dialling a linked peer again, yourself, or a stranger.
    let (s, r) = mesh.post(&a, "/dial", &json!({"peerTo": "bravo"})).await;
    assert_eq!((s, code(&r)), (409, "link_exists"), "{r}");
    let (s, r) = mesh.post(&a, "/dial", &json!({"peerTo": "alpha"})).await;
    assert_eq!((s, code(&r)), (400, "invalid_input"), "{r}");
    let (s, r) = mesh.post(&a, "/dial", &json!({"peerTo": "nobody"})).await;
    assert_eq!((s, code(&r)), (403, "unknown_peer"), "{r}");
    let (s, r) = mesh.post(&a, "/dial", &json!({"peerTo": "bad/id"})).await;
    assert_eq!((s, code(&r)), (400, "bad_json"), "{r}");

    // An answer carrying broken SDP ends the pending dial instead of leaving it half-open.
    let (s, _) = mesh.post(&c, "/dial", &json!({"peerTo": "alpha"})).await;
    assert_eq!(s, 200);
    assert_eq!(mesh.link_count(&c).await, 1);
    let mut broken = Answer::new(
        a.identity.id().clone(),
        c.identity.id().clone(),
        "garbage".into(),
        now_ms(),
    );
    broken.sign(&a.identity).unwrap();
    let (s, r) = mesh.post(&c, "/answer", &json!(broken)).await;
    assert_eq!((s, code(&r)), (400, "bad_sdp"), "{r}");
    eventually(
        Duration::from_secs(5),
        "charlie to drop the failed dial",
        || async { (mesh.link_count(&c).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_dial_is_closed_and_dropped_after_the_timeout() {
    const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
    let mesh = Mesh::new();
    let a = mesh.worker("alpha", 1, &[("MESH_DIAL_TIMEOUT_SECS", "1")]);
    let b = mesh.worker("bravo", 2, &[]);
    // Read before the dial: its deadline is counted from later, once the dial is registered.
    let since_dial = elapsed_since_now();
    let (s, offer) = mesh.post(&a, "/dial", &json!({"peerTo": "bravo"})).await;
    assert_eq!(s, 200);
    let links = mesh.get(&a, "/links").await;
    assert_eq!(links["links"][0]["state"], "awaiting-answer", "{links}");
    eventually(Duration::from_secs(5), "the dial to time out", || async {
        (mesh.link_count(&a).await == 0).then_some(())
    })
    .await;
    // Dropped by the time-out, not before it (nothing else ends a dial that got no answer).
    let gone = since_dial();
    assert!(
        gone >= DIAL_TIMEOUT,
        "the dial went after {gone:?}, before its {DIAL_TIMEOUT:?} time-out"
    );
    // Closed for good: the answer, when it comes after all, finds nothing waiting for it.
    let (s, answer) = mesh.post(&b, "/offer", &offer).await;
    assert_eq!(s, 200, "{answer}");
    let (s, r) = mesh.post(&a, "/answer", &answer).await;
    assert_eq!((s, code(&r)), (404, "nothing_pending"), "{r}");
    assert_eq!(mesh.link_count(&a).await, 0);
}

/// A stopwatch started now: the time since, each time it is called.
#[allow(clippy::disallowed_methods)] // The test measures a worker's time-out from outside.
fn elapsed_since_now() -> impl Fn() -> Duration {
    let start = std::time::Instant::now();
    move || start.elapsed()
}
