//! The shared HTTP stack as a client sees it: JSON errors for every failure, limits, request
//! ids, health and readiness, and graceful shutdown on a real socket.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use mesh_service::http::{bind, health_routes, serve, with_layers};
use mesh_service::{ApiJson, HttpLimits};
use mesh_store::embedded::EmbeddedStore;
use serde_json::Value;
use tower::ServiceExt;

fn limits() -> HttpLimits {
    HttpLimits {
        max_body_bytes: 1024,
        request_timeout: Duration::from_secs(5),
    }
}

async fn app() -> (Router, tempfile::TempDir) {
    let dir = mesh_testkit::data_dir();
    let store = Arc::new(EmbeddedStore::open(dir.path()).await.unwrap());
    let routes = Router::new()
        .route(
            "/echo",
            post(|ApiJson(v): ApiJson<Value>| async move { ApiJson(v) }),
        )
        .route("/never", get(std::future::pending::<&'static str>))
        .merge(health_routes(store));
    (with_layers(routes, &limits()), dir)
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, json)
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn assert_error(got: (StatusCode, axum::http::HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.2);
    assert_eq!(got.1["content-type"], "application/json");
    assert_eq!(got.2["error"]["code"], code, "{}", got.2);
    assert!(!got.2["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn every_failure_is_a_json_error_with_a_stable_code() {
    let (app, _dir) = app().await;
    assert_error(
        call(&app, Request::get("/nope").body(Body::empty()).unwrap()).await,
        404,
        "not_found",
    );
    let wrong_method = call(&app, Request::get("/echo").body(Body::empty()).unwrap()).await;
    assert!(wrong_method.1.contains_key("allow"), "Allow header kept");
    assert_error(wrong_method, 405, "method_not_allowed");
    assert_error(
        call(&app, post_json("/echo", "{not json")).await,
        400,
        "bad_json",
    );
    let text = Request::post("/echo")
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_error(call(&app, text).await, 415, "unsupported_media_type");
    let big = format!("\"{}\"", "x".repeat(2048));
    let too_large = call(&app, post_json("/echo", big)).await;
    assert_eq!(
        too_large.1["connection"], "close",
        "the unread body ends the connection"
    );
    assert_error(too_large, 413, "body_too_large");
    let ok = call(&app, post_json("/echo", r#"{"a":1}"#)).await;
    assert_eq!((ok.0, ok.2), (StatusCode::OK, serde_json::json!({"a": 1})));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_never_finishes_times_out_with_503() {
    let (app, _dir) = app().await;
    assert_error(
        call(&app, Request::get("/never").body(Body::empty()).unwrap()).await,
        503,
        "timeout",
    );
}

#[tokio::test]
async fn request_ids_are_assigned_or_kept() {
    let (app, _dir) = app().await;
    let (_, headers, _) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(headers["x-request-id"].len(), 36, "a UUID is assigned");
    let mine = Request::get("/healthz")
        .header("x-request-id", "req-42")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, mine).await.1["x-request-id"], "req-42");
}

#[tokio::test]
async fn health_and_readiness() {
    let (app, _dir) = app().await;
    let (status, _, body) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body), (StatusCode::OK, Value::String("ok".into())));
    let (status, _, body) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

/// A store whose backend is unreachable: every call fails as `Unavailable`.
#[derive(Debug)]
struct Unreachable;

fn down<T>() -> mesh_store::Result<T> {
    Err(mesh_store::StoreError::Unavailable(
        "connection refused".into(),
    ))
}

#[async_trait::async_trait]
impl mesh_store::Store for Unreachable {
    async fn upsert_peer(
        &self,
        _: &mesh_store::PeerUpsert,
    ) -> mesh_store::Result<mesh_types::Peer> {
        down()
    }
    async fn replace_peer_key(
        &self,
        _: &mesh_types::PeerId,
        _: &mesh_types::PublicKey,
    ) -> mesh_store::Result<mesh_types::Peer> {
        down()
    }
    async fn get_peer(&self, _: &mesh_types::PeerId) -> mesh_store::Result<mesh_types::Peer> {
        down()
    }
    async fn list_peers(&self) -> mesh_store::Result<Vec<mesh_types::Peer>> {
        down()
    }
    async fn set_trust(&self, _: &[(mesh_types::PeerId, f64)]) -> mesh_store::Result<()> {
        down()
    }
    async fn upsert_link(&self, _: &mesh_types::Link) -> mesh_store::Result<mesh_store::LinkWrite> {
        down()
    }
    async fn get_link(&self, _: &mesh_types::LinkId) -> mesh_store::Result<mesh_types::Link> {
        down()
    }
    async fn list_links(
        &self,
        _: &mesh_store::LinkQuery,
    ) -> mesh_store::Result<Vec<mesh_types::Link>> {
        down()
    }
    async fn append_audit(&self, _: &mesh_types::AuditRecord) -> mesh_store::Result<()> {
        down()
    }
    async fn list_audit(&self, _: usize) -> mesh_store::Result<Vec<mesh_types::AuditRecord>> {
        down()
    }
    async fn merge_gossip(&self, _: &[mesh_types::GossipEntry]) -> mesh_store::Result<usize> {
        down()
    }
    async fn list_gossip(&self, _: usize) -> mesh_store::Result<Vec<mesh_types::GossipEntry>> {
        down()
    }
    async fn put_transfer(
        &self,
        _: &mesh_types::transfer::TransferRecord,
    ) -> mesh_store::Result<bool> {
        down()
    }
    async fn list_transfers(
        &self,
        _: usize,
    ) -> mesh_store::Result<Vec<mesh_types::transfer::TransferRecord>> {
        down()
    }
    async fn ping(&self) -> mesh_store::Result<()> {
        down()
    }
}

#[tokio::test]
async fn readiness_fails_while_the_store_is_unreachable_but_liveness_holds() {
    let app = with_layers(health_routes(Arc::new(Unreachable)), &limits());
    assert_error(
        call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await,
        503,
        "not_ready",
    );
    let (status, _, _) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let router = Router::new().route(
        "/slow",
        get(move || {
            let (started, release) = (started_tx.clone(), release_rx.clone());
            async move {
                if let Some(tx) = started.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release.lock().await.take() {
                    let _ = rx.await;
                }
                "done"
            }
        }),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router,
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_secs(10),
    ));

    let client = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    });
    started_rx.await.unwrap();
    stop_tx.send(()).unwrap();
    // The server is draining: the in-flight request still completes.
    release_tx.send(()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .unwrap()
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done"),
        "{response}"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_requests_after_the_grace_period() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/never", get(std::future::pending::<&'static str>));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router,
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_millis(200),
    ));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /never HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned after the grace period")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bind_listens_on_every_interface() {
    let listener = bind(0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_unspecified(), "{addr}");
    assert_ne!(addr.port(), 0);
}
