//! Proxy fixtures: a real `signaling-proxy` process and real `webrtc-worker` processes sharing
//! one embedded store on loopback, with three API tokens (operator, read, peer).
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Duration;

use mesh_testkit::process::ServiceProcess;
use mesh_types::signing::Signed as _;
use mesh_types::{Endpoints, Identity, PeerRegistration};
use serde_json::{Value, json};

pub const OPERATOR: &str = "test-operator-token";
pub const READER: &str = "test-read-token";
pub const PEER: &str = "test-peer-token";

pub fn tokens_env() -> String {
    let h = |t: &str| signaling_proxy::auth::sha256_hex(t);
    format!(
        "ops:operator:{},dash:read:{},worker:peer:{}",
        h(OPERATOR),
        h(READER),
        h(PEER)
    )
}

pub fn now_ms() -> u64 {
    signaling_proxy::now_ms()
}

pub struct Worker {
    pub identity: Identity,
    pub proc: ServiceProcess,
}

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub proxy: ServiceProcess,
}

impl Mesh {
    /// A proxy on a fresh store, with `extra` environment.
    pub fn new(extra: &[(&str, &str)]) -> Self {
        let dir = mesh_testkit::data_dir();
        let mut env = vec![
            (
                "MESH_STORE",
                format!("embedded:{}", dir.path().join("store").display()),
            ),
            ("MESH_API_TOKENS", tokens_env()),
        ];
        for (k, v) in extra {
            env.push((k, v.to_string()));
        }
        let proxy = ServiceProcess::start(
            env!("CARGO_BIN_EXE_signaling-proxy"),
            &env,
            "signaling-proxy serving",
        );
        Mesh {
            dir,
            http: reqwest::Client::new(),
            proxy,
        }
    }

    /// A worker for `name` on the proxy's store.
    pub fn worker(&self, name: &str, seed: u64) -> Worker {
        self.worker_with(name, seed, &[])
    }

    /// [`worker`](Self::worker) with `extra` environment.
    pub fn worker_with(&self, name: &str, seed: u64, extra: &[(&str, &str)]) -> Worker {
        let identity = mesh_testkit::identity(name, seed);
        let mut env = vec![
            ("PEER_ID", name.to_string()),
            ("MESH_SIGNING_KEY", identity.seed_base64()),
            (
                "MESH_STORE",
                format!("embedded:{}", self.dir.path().join("store").display()),
            ),
            ("MESH_UDP_ADDRS", "127.0.0.1:0".to_string()),
            ("QOS_INTERVAL_SECS", "1".to_string()),
            ("MESH_PROBE_INTERVAL_MS", "50".to_string()),
        ];
        for (k, v) in extra {
            env.push((k, v.to_string()));
        }
        let proc = ServiceProcess::start(
            mesh_testkit::workspace_bin("webrtc-worker", "webrtc-worker"),
            &env,
            "webrtc-worker serving",
        );
        Worker { identity, proc }
    }

    /// A registration of `identity` naming `https` as its worker, signed by `signer`.
    pub fn registration(identity: &Identity, https: &str, signer: &Identity) -> PeerRegistration {
        let mut reg = PeerRegistration::new(
            identity.id().clone(),
            identity.public_key(),
            Some("local".into()),
            Endpoints {
                webrtc: None,
                https: Some(https.into()),
            },
            now_ms(),
        );
        // Signing as another identity needs its id on the message; put ours back after.
        reg.id = signer.id().clone();
        reg.sign(signer).unwrap();
        reg.id = identity.id().clone();
        reg
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.proxy.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\nproxy log:\n{}", self.proxy.log()));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let (s, _, v) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await;
        (s, v)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::GET, path, token, None).await;
        (s, v)
    }
}

/// A WebSocket client of the proxy's `/ws`.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON (waits at most 10 s).
pub async fn next(ws: &mut Socket) -> Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .unwrap();
        match frame {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => {
                return json!({"type": "closed", "frame": c.map(|c| (u16::from(c.code), c.reason.to_string()))});
            }
            _ => {}
        }
    }
}
