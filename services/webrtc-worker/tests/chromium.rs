//! Interop with a real browser: headless Chromium (its libwebrtc) and a worker open the mesh and
//! probe channels with each side offering in turn, and exchange text and 64 KiB binary messages
//! both ways. The test server relays the browser's signaling and signs for the browser peer, as
//! the signaling proxy does for browsers.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use base64::Engine as _;
use common::{Mesh, Peer};
use mesh_store::embedded::EmbeddedStore;
use mesh_store::{PeerUpsert, Store};
use mesh_testkit::browser::{Chromium, pattern};
use mesh_types::signing::Signed;
use mesh_types::{Answer, Endpoints, Identity, Offer};
use serde_json::{Value, json};

const PAGE: &str = include_str!("chromium/interop.html");

#[allow(clippy::disallowed_methods)] // The relay signs as the browser peer, with its own clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Relay {
    mesh: Mesh,
    worker: Peer,
    browser: Identity,
    /// What the worker received from the browser, per mode.
    checks: Mutex<Vec<(String, Value)>>,
    result: Mutex<Option<tokio::sync::oneshot::Sender<Value>>>,
}

type S = State<Arc<Relay>>;

async fn signal_offer(State(r): S, Json(body): Json<Value>) -> Json<Value> {
    let mut offer = Offer::new(
        r.browser.id().clone(),
        r.worker.identity.id().clone(),
        body["sdp"].as_str().unwrap().into(),
        now_ms(),
    );
    offer.sign(&r.browser).unwrap();
    let (status, answer) = r.mesh.post(&r.worker, "/offer", &json!(offer)).await;
    assert_eq!(status, 200, "{answer}");
    Json(json!({"sdp": answer["sdp"]}))
}

async fn signal_worker_offer(State(r): S) -> Json<Value> {
    // The previous mode's link may still be winding down on the worker.
    let _ = r
        .mesh
        .http
        .delete(format!("{}/links/browser", r.worker.proc.url))
        .send()
        .await;
    let (status, offer) = r
        .mesh
        .post(&r.worker, "/dial", &json!({"peerTo": "browser"}))
        .await;
    assert_eq!(status, 200, "{offer}");
    Json(json!({"sdp": offer["sdp"]}))
}

async fn signal_answer(State(r): S, Json(body): Json<Value>) -> Json<Value> {
    let mut answer = Answer::new(
        r.browser.id().clone(),
        r.worker.identity.id().clone(),
        body["sdp"].as_str().unwrap().into(),
        now_ms(),
    );
    answer.sign(&r.browser).unwrap();
    let (status, ok) = r.mesh.post(&r.worker, "/answer", &json!(answer)).await;
    assert_eq!(status, 200, "{ok}");
    Json(json!({}))
}

/// The browser sent its messages and listens: check what the worker got, then send ours.
async fn ready(State(r): S, Json(body): Json<Value>) -> Json<Value> {
    let mode = body["mode"].as_str().unwrap().to_string();
    let wanted = async {
        loop {
            let m = r
                .mesh
                .get(&r.worker, "/messages?from=browser&limit=2")
                .await;
            let msgs = m["messages"].as_array().unwrap().clone();
            if msgs.len() == 2 && msgs[0]["text"].as_str().is_some_and(|t| t.contains(&mode)) {
                return msgs;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let got = match tokio::time::timeout(Duration::from_secs(10), wanted).await {
        Ok(got) => got,
        Err(_) => panic!(
            "{mode}: the worker did not receive both messages; it has {}\nworker log:\n{}",
            r.mesh.get(&r.worker, "/messages?from=browser").await,
            r.worker.proc.log()
        ),
    };
    let binary = base64::engine::general_purpose::STANDARD
        .decode(got[1]["base64"].as_str().unwrap())
        .unwrap();
    r.checks.lock().unwrap().push((mode.clone(), json!({"text": got[0]["text"], "binaryIntact": binary == pattern(65536, 5), "binaryBytes": binary.len()})));
    let (s, _) = r
        .mesh
        .post(
            &r.worker,
            "/links/browser/messages",
            &json!({"text": format!("hello from the worker ({mode})")}),
        )
        .await;
    assert_eq!(s, 200);
    let res = r
        .mesh
        .http
        .post(format!("{}/links/browser/messages", r.worker.proc.url))
        .header("content-type", "application/octet-stream")
        .body(pattern(65536, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    Json(json!({}))
}

async fn result(State(r): S, Json(body): Json<Value>) -> Json<Value> {
    if let Some(tx) = r.result.lock().unwrap().take() {
        let _ = tx.send(body);
    }
    Json(json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_a_worker_exchange_text_and_64k_binary_whichever_side_offers() {
    let mesh = Mesh::new();
    let worker = mesh.worker("worker", 31, &[("RUST_LOG", "warn,webrtc_worker=debug")]);
    // The browser peer is registered with its key, as the proxy's registry would hold it.
    let browser = mesh_testkit::identity("browser", 32);
    let store = EmbeddedStore::open(mesh.store_dir()).await.unwrap();
    store
        .upsert_peer(&PeerUpsert {
            id: browser.id().clone(),
            pub_key: browser.public_key(),
            region: None,
            endpoints: Endpoints::default(),
            seen_at: now_ms(),
            initial_trust: 0.1,
        })
        .await
        .unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let relay = Arc::new(Relay {
        mesh,
        worker,
        browser,
        checks: Mutex::default(),
        result: Mutex::new(Some(tx)),
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/signal/offer", post(signal_offer))
        .route("/signal/worker-offer", post(signal_worker_offer))
        .route("/signal/answer", post(signal_answer))
        .route("/ready", post(ready))
        .route("/result", post(result))
        .with_state(relay.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let _chromium = Chromium::open(&url, &[]);
    let outcome = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the page did not finish; worker log:\n{}",
                relay.worker.proc.log()
            )
        })
        .unwrap();
    assert_eq!(
        outcome["ok"],
        true,
        "{outcome:#}\nworker log:\n{}",
        relay.worker.proc.log()
    );
    for mode in ["browser-offers", "worker-offers"] {
        let seen = &outcome["results"][mode];
        assert_eq!(
            seen["text"],
            format!("hello from the worker ({mode})"),
            "{outcome:#}"
        );
        assert_eq!(
            (seen["binaryBytes"].as_u64(), seen["binaryIntact"].as_bool()),
            (Some(65536), Some(true)),
            "{outcome:#}"
        );
    }
    let checks = relay.checks.lock().unwrap().clone();
    assert_eq!(checks.len(), 2);
    for (mode, got) in checks {
        assert_eq!(got["text"], format!("hello from chromium ({mode})"));
        assert_eq!(
            (got["binaryBytes"].as_u64(), got["binaryIntact"].as_bool()),
            (Some(65536), Some(true)),
            "{mode}"
        );
    }
}
