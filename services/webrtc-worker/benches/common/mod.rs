//! What the benchmarks share: Chromium's side, the page `chromium.html` served on loopback and
//! opened in headless Chromium, which posts its measurements back as JSON.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use mesh_testkit::browser::Chromium;
use serde_json::{Value, json};

const PAGE: &str = include_str!("../chromium.html");

/// Runs the page with `query` (`setups=…&bytes=…`) and returns what it reports.
pub async fn chromium(query: &str) -> Value {
    let (tx, rx) = tokio::sync::oneshot::channel::<Value>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/result",
            post(move |Json(v): Json<Value>| {
                let tx = tx.clone();
                async move {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(v);
                    }
                    Json(json!({}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/?{query}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Real addresses instead of mDNS names between the page's two connections, as two services
    // would have; mDNS resolution is not what is being measured.
    let browser = Chromium::open(&url, &["--disable-features=WebRtcHideLocalIpsWithMdns"]);
    let result = tokio::time::timeout(Duration::from_secs(600), rx)
        .await
        .expect("chromium finished")
        .unwrap();
    drop(browser);
    assert_eq!(result["ok"], true, "{result}");
    result
}
