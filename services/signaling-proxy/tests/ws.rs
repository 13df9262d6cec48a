//! WebSocket signaling (`/ws`) end to end against the proxy binary: registration by signed
//! nonce, the peers broadcast, relaying with `from` stamped by the server, and every refusal
//! with its code.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Mesh, Socket, next};
use futures_util::{SinkExt, StreamExt};
use mesh_types::Identity;
use mesh_types::signaling::RegisterProof;
use mesh_types::signing::Signed as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Client {
    ws: Socket,
    nonce: String,
}

impl Client {
    async fn open(mesh: &Mesh) -> Client {
        let url = mesh.proxy.url.replace("http://", "ws://") + "/ws";
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = next(&mut ws).await;
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["limits"]["maxMessageBytes"], 65536);
        Client {
            nonce: hello["nonce"].as_str().unwrap().to_string(),
            ws,
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        next(&mut self.ws).await
    }

    /// Skips the list of peers and join/leave news.
    async fn next_not_peers(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if !["peers", "peerJoined", "peerLeft"].contains(&v["type"].as_str().unwrap_or("")) {
                return v;
            }
        }
    }

    async fn register(&mut self, who: &Identity) -> Value {
        let mut proof = RegisterProof::new(who.id().clone(), self.nonce.clone(), common::now_ms());
        proof.sign(who).unwrap();
        self.send(json!({"type": "register", "proof": proof})).await;
        self.next().await
    }
}

async fn registered_peer(mesh: &Mesh, name: &str, seed: u64) -> Identity {
    let id = mesh_testkit::identity(name, seed);
    let reg = Mesh::registration(&id, "http://127.0.0.1:9", &id);
    let (s, v) = mesh
        .post(
            "/api/mesh/peers",
            Some(common::PEER),
            &serde_json::to_value(&reg).unwrap(),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_peers_relay_offers_answers_and_candidates() {
    let mesh = Mesh::new(&[]);
    let alice = registered_peer(&mesh, "alice", 1).await;
    let bob = registered_peer(&mesh, "bob", 2).await;
    let mut a = Client::open(&mesh).await;
    let mut b = Client::open(&mesh).await;

    assert_eq!(
        a.register(&alice).await,
        json!({"type": "registered", "id": "alice", "anonymous": false})
    );
    assert_eq!(a.next().await, json!({"type": "peers", "peers": ["alice"]}));
    assert_eq!(b.register(&bob).await["type"], "registered");
    assert_eq!(
        b.next().await,
        json!({"type": "peers", "peers": ["alice", "bob"]})
    );
    assert_eq!(a.next().await, json!({"type": "peerJoined", "id": "bob"}));

    a.send(json!({"type": "offer", "to": "bob", "sdp": "v=0 offer"}))
        .await;
    assert_eq!(
        b.next().await,
        json!({"type": "offer", "from": "alice", "sdp": "v=0 offer"})
    );
    b.send(json!({"type": "answer", "to": "alice", "sdp": "v=0 answer", "from": "bob"}))
        .await;
    assert_eq!(
        a.next().await,
        json!({"type": "answer", "from": "bob", "sdp": "v=0 answer"})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    a.send(json!({"type": "candidate", "to": "bob", "candidate": cand}))
        .await;
    assert_eq!(
        b.next().await,
        json!({"type": "candidate", "from": "alice", "candidate": cand})
    );
    a.send(json!({"type": "candidate", "to": "bob", "candidate": null}))
        .await;
    assert_eq!(
        b.next().await,
        json!({"type": "candidate", "from": "alice", "candidate": null})
    );
    a.send(json!({"type": "ping", "ref": "p1"})).await;
    assert_eq!(a.next().await, json!({"type": "pong", "ref": "p1"}));

    // Leaving is broadcast.
    drop(b);
    assert_eq!(a.next().await, json!({"type": "peerLeft", "id": "bob"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_messages_get_error_replies() {
    let mesh = Mesh::new(&[("MESH_WS_MESSAGES_PER_SEC", "5")]);
    let alice = registered_peer(&mesh, "alice", 1).await;
    let bob = registered_peer(&mesh, "bob", 2).await;
    let mallory = mesh_testkit::identity("mallory", 3); // never registered
    let mut a = Client::open(&mesh).await;

    let err = |v: &Value| {
        (
            v["type"].as_str().unwrap_or("").to_string(),
            v["code"].as_str().unwrap_or("").to_string(),
        )
    };
    a.send(json!({"type": "offer", "to": "bob", "sdp": "x", "ref": "r1"}))
        .await;
    let v = a.next().await;
    assert_eq!(err(&v), ("error".into(), "not_registered".into()), "{v}");
    assert_eq!(v["ref"], "r1");
    assert_eq!(err(&a.register(&mallory).await).1, "unknown_peer");
    // A proof over another connection's nonce.
    let mut proof = RegisterProof::new(alice.id().clone(), "not-this-one".into(), common::now_ms());
    proof.sign(&alice).unwrap();
    a.send(json!({"type": "register", "proof": proof})).await;
    assert_eq!(err(&a.next().await).1, "bad_nonce");
    // A proof signed by the wrong key.
    let mut forged = RegisterProof::new(alice.id().clone(), a.nonce.clone(), common::now_ms());
    forged.sign(&mesh_testkit::identity("alice", 77)).unwrap();
    a.send(json!({"type": "register", "proof": forged})).await;
    assert_eq!(err(&a.next().await).1, "wrong_signer");
    a.send(json!({"type": "register"})).await;
    assert_eq!(err(&a.next().await).1, "anonymous_not_allowed");

    let mut a = Client::open(&mesh).await;
    assert_eq!(a.register(&alice).await["type"], "registered");
    a.send(json!({"type": "offer", "to": "bob", "sdp": "x", "from": "bob"}))
        .await;
    assert_eq!(err(&a.next_not_peers().await).1, "spoofed_from");
    a.send(json!({"type": "offer", "to": "bob", "sdp": "x"}))
        .await;
    assert_eq!(
        err(&a.next_not_peers().await).1,
        "unknown_peer",
        "bob is registered but not connected"
    );
    a.send(json!({"type": "shout"})).await;
    assert_eq!(err(&a.next_not_peers().await).1, "bad_message");
    a.ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(err(&a.next_not_peers().await).1, "bad_message");
    a.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(err(&a.next_not_peers().await).1, "bad_frame");
    let oversized = json!({"type": "offer", "to": "bob", "sdp": "x".repeat(70_000)});
    a.send(oversized).await;
    assert_eq!(err(&a.next_not_peers().await).1, "message_too_large");
    // Over the rate (5/s, burst 10): some pings are refused, each with a reply.
    for i in 0..30 {
        a.send(json!({"type": "ping", "ref": i.to_string()})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..30 {
        let v = a.next_not_peers().await;
        codes.push(if v["type"] == "pong" {
            "pong".to_string()
        } else {
            err(&v).1
        });
    }
    assert!(codes.contains(&"rate_limited".to_string()), "{codes:?}");
    assert!(codes.contains(&"pong".to_string()), "{codes:?}");
    assert_eq!(codes.len(), 30, "every message got a reply");
    let _ = bob;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_registration_replaces_the_first_and_says_why() {
    let mesh = Mesh::new(&[("MESH_WS_ANONYMOUS", "true")]);
    let alice = registered_peer(&mesh, "alice", 1).await;
    let mut first = Client::open(&mesh).await;
    assert_eq!(first.register(&alice).await["type"], "registered");
    let mut second = Client::open(&mesh).await;
    assert_eq!(second.register(&alice).await["type"], "registered");
    let told = first.next_not_peers().await;
    assert_eq!(
        (told["type"].as_str(), told["code"].as_str()),
        (Some("error"), Some("replaced")),
        "{told}"
    );
    let closed = first.next_not_peers().await;
    assert_eq!(closed["frame"][0], 4001, "{closed}");

    // Anonymous ids, where the operator allows them.
    let mut anon = Client::open(&mesh).await;
    anon.send(json!({"type": "register"})).await;
    let v = anon.next().await;
    assert_eq!(
        (v["type"].as_str(), v["anonymous"].as_bool()),
        (Some("registered"), Some(true)),
        "{v}"
    );
    assert!(v["id"].as_str().unwrap().starts_with("anon-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_is_bounded_and_closes_silent_clients() {
    let mesh = Mesh::new(&[("MESH_WS_MAX_CONNECTIONS", "2"), ("MESH_WS_IDLE_SECS", "3")]);
    let mut first = Client::open(&mesh).await;
    let _second = Client::open(&mesh).await;
    let url = mesh.proxy.url.replace("http://", "ws://") + "/ws";
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("a third connection was not refused: {other:?}"),
    }
    // A client that neither sends nor answers pings (it does not read, so its library cannot
    // pong) is told and closed once the idle time-out passes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let told = first.next().await;
    assert_eq!(told["code"], "idle_timeout", "{told}");
    let closed = first.next().await;
    assert_eq!(closed["frame"][0], 4003, "{closed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_not_waited_on() {
    let mesh = Mesh::new(&[
        ("MESH_WS_IDLE_SECS", "3"),
        ("MESH_WS_MESSAGES_PER_SEC", "100000"),
    ]);
    let alice = registered_peer(&mesh, "alice", 1).await;
    let bob = registered_peer(&mesh, "bob", 2).await;
    let mut a = Client::open(&mesh).await;
    assert_eq!(a.register(&alice).await["type"], "registered");
    let mut b = Client::open(&mesh).await;
    assert_eq!(b.register(&bob).await["type"], "registered");
    // Bob stops reading. Alice sends until bob's socket and queue are full: relays are refused.
    let big = "x".repeat(60_000);
    let mut busy = false;
    for _ in 0..2_000 {
        a.send(json!({"type": "offer", "to": "bob", "sdp": big}))
            .await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(1), a.ws.next()).await
            && t.contains("peer_busy")
        {
            busy = true;
            break;
        }
    }
    assert!(
        busy,
        "relays to a client that does not read are refused with peer_busy"
    );
    // The server's write to bob cannot finish; within the idle time-out bob is dropped and
    // everyone hears it leave.
    let left = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let v = a.next().await;
            if v["type"] == "peerLeft" {
                return v;
            }
        }
    })
    .await
    .expect("bob dropped within the write time-out");
    assert_eq!(left["id"], "bob");
    drop(b);
}

/// A registry refusal reads the same whichever way the peer came: HTTP registration or `/ws`.
#[tokio::test(flavor = "multi_thread")]
async fn a_reserved_id_is_refused_alike_over_http_and_ws() {
    let mesh = Mesh::new(&[]);
    let squatter = mesh_testkit::identity("anon-abc", 97);
    let reg = Mesh::registration(&squatter, "http://127.0.0.1:9", &squatter);
    let (s, http) = mesh
        .post(
            "/api/mesh/peers",
            Some(common::PEER),
            &serde_json::to_value(&reg).unwrap(),
        )
        .await;
    assert_eq!(s, 400, "{http}");
    let mut c = Client::open(&mesh).await;
    let ws = c.register(&squatter).await;
    assert_eq!(ws["code"], "reserved_id", "{ws}");
    assert_eq!(
        (&ws["code"], &ws["message"]),
        (&http["error"]["code"], &http["error"]["message"]),
    );
}
