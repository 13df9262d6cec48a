//! Interop through the proxy's WebSocket signaling: headless Chromium (Debian `chromium`)
//! registers on `/ws`, offers to a real worker that joined `/ws` as a native peer, trickles its
//! candidates, and exchanges text and 64 KiB binary DataChannel messages with it both ways.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use common::Mesh;
use mesh_testkit::browser::{Chromium, pattern};
use mesh_testkit::process::ServiceProcess;
use serde_json::{Value, json};

const PAGE: &str = include_str!("chromium/ws-interop.html");

struct Harness {
    http: reqwest::Client,
    worker: ServiceProcess,
    /// What the worker received from the browser.
    check: Mutex<Option<Value>>,
    result: Mutex<Option<tokio::sync::oneshot::Sender<Value>>>,
}

type S = State<Arc<Harness>>;

/// The browser has sent its messages: check the worker got them, then send the worker's.
async fn ready(State(h): S, Json(body): Json<Value>) -> Json<Value> {
    let browser = body["id"].as_str().unwrap().to_string();
    let url = format!("{}/messages?from={browser}&limit=2", h.worker.url);
    let got = mesh_testkit::process::eventually(
        Duration::from_secs(10),
        "the worker to receive both messages",
        || async {
            let m: Value = h.http.get(&url).send().await.ok()?.json().await.ok()?;
            let msgs = m["messages"].as_array()?.clone();
            (msgs.len() == 2).then_some(msgs)
        },
    )
    .await;
    let binary = base64::engine::general_purpose::STANDARD
        .decode(got[1]["base64"].as_str().unwrap())
        .unwrap();
    *h.check.lock().unwrap() =
        Some(json!({"text": got[0]["text"], "binaryIntact": binary == pattern(65536, 5)}));
    let send = format!("{}/links/{browser}/messages", h.worker.url);
    let res = h
        .http
        .post(&send)
        .json(&json!({"text": "hello from the worker"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let res = h
        .http
        .post(&send)
        .header("content-type", "application/octet-stream")
        .body(pattern(65536, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    Json(json!({}))
}

async fn result(State(h): S, Json(body): Json<Value>) -> Json<Value> {
    if let Some(tx) = h.result.lock().unwrap().take() {
        let _ = tx.send(body);
    }
    Json(json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_offers_to_a_worker_over_websocket_signaling() {
    let mesh = Mesh::new(&[("MESH_WS_ANONYMOUS", "true")]);
    let ws_url = mesh.proxy.url.replace("http://", "ws://") + "/ws";
    let identity = mesh_testkit::identity("worker", 41);
    let worker = ServiceProcess::start(
        mesh_testkit::workspace_bin("webrtc-worker", "webrtc-worker"),
        &[
            ("PEER_ID", "worker".to_string()),
            ("MESH_SIGNING_KEY", identity.seed_base64()),
            (
                "MESH_STORE",
                format!("embedded:{}", mesh.dir.path().join("store").display()),
            ),
            ("MESH_UDP_ADDRS", "127.0.0.1:0".to_string()),
            ("MESH_SIGNALING_URL", ws_url.clone()),
            ("RUST_LOG", "info,webrtc_worker=debug".to_string()),
        ],
        "webrtc-worker serving",
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let harness = Arc::new(Harness {
        http: reqwest::Client::new(),
        worker,
        check: Mutex::default(),
        result: Mutex::new(Some(tx)),
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/ready", post(ready))
        .route("/result", post(result))
        .with_state(harness.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = format!(
        "http://{}/?ws={ws_url}&worker=worker",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Plain host candidates (no mDNS names), so the trickled ones are usable by the worker.
    let _chromium = Chromium::open(&page, &["--disable-features=WebRtcHideLocalIpsWithMdns"]);
    let logs = || {
        format!(
            "worker log:\n{}\nproxy log:\n{}",
            harness.worker.log(),
            mesh.proxy.log()
        )
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap_or_else(|_| panic!("the page did not finish\n{}", logs()))
        .unwrap();
    assert_eq!(outcome["ok"], true, "{outcome:#}\n{}", logs());
    assert!(
        outcome["me"].as_str().unwrap().starts_with("anon-"),
        "{outcome}"
    );
    assert!(
        outcome["trickled"].as_u64().unwrap() >= 1,
        "Chromium trickled candidates: {outcome}"
    );
    assert_eq!(
        outcome["got"]["text"], "hello from the worker",
        "{outcome:#}"
    );
    assert_eq!(outcome["got"]["binaryBytes"], 65536, "{outcome:#}");
    assert_eq!(outcome["got"]["binaryIntact"], true, "{outcome:#}");
    let check = harness.check.lock().unwrap().clone().unwrap();
    assert_eq!(check["text"], "hello from chromium over ws signaling");
    assert_eq!(check["binaryIntact"], true);
    // The worker is on the proxy's WebSocket signaling under its own (signed) id, not an
    // anonymous one: a client that registers there finds it listed.
    let listed = ws_peers(&ws_url).await;
    assert!(
        listed.iter().any(|p| p == "worker"),
        "{listed:?}\n{}",
        logs()
    );
}

/// Registers anonymously on the proxy's WebSocket signaling at `url` and returns the peers the
/// proxy lists there (itself included).
async fn ws_peers(url: &str) -> Vec<String> {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;

    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(common::next(&mut ws).await["type"], "hello");
    ws.send(Message::text(json!({"type": "register"}).to_string()))
        .await
        .unwrap();
    let registered = common::next(&mut ws).await;
    assert_eq!(registered["type"], "registered", "{registered}");
    let peers = common::next(&mut ws).await;
    assert_eq!(peers["type"], "peers", "{peers}");
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}
