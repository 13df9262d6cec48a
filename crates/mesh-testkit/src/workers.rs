//! Worker fixtures: real `webrtc-worker` processes sharing one embedded store on loopback, and
//! the HTTP calls tests make to them (signaling by hand, as an operator with curl would).

use std::time::Duration;

use crate::process::{ServiceProcess, eventually};
use mesh_types::Identity;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

#[derive(Debug)]
pub struct Peer {
    pub identity: Identity,
    pub proc: ServiceProcess,
}

impl Mesh {
    pub fn new() -> Self {
        Mesh {
            dir: crate::data_dir(),
            http: reqwest::Client::new(),
        }
    }

    pub fn store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// Starts a worker for `name` (key from `seed`) with fast QoS so tests see samples quickly.
    pub fn worker(&self, name: &str, seed: u64, extra: &[(&str, &str)]) -> Peer {
        start_worker(&self.store_dir(), name, seed, extra)
    }

    pub async fn post(&self, peer: &Peer, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", peer.proc.url))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\nworker log:\n{}", peer.proc.log()));
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, peer: &Peer, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", peer.proc.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nworker log:\n{}", peer.proc.log()))
            .json()
            .await
            .unwrap()
    }

    /// dial → offer → answer over HTTP, as the proxy (or an operator with curl) does.
    pub async fn connect(&self, a: &Peer, b: &Peer) {
        let (s, offer) = self
            .post(a, "/dial", &json!({"peerTo": b.identity.id()}))
            .await;
        assert_eq!(s, 200, "dial: {offer}\n{}", a.proc.log());
        let (s, answer) = self.post(b, "/offer", &offer).await;
        assert_eq!(s, 200, "offer: {answer}\n{}", b.proc.log());
        let (s, ok) = self.post(a, "/answer", &answer).await;
        assert_eq!((s, ok), (200, json!({"ok": true})), "{}", a.proc.log());
    }

    /// Waits until `a` reports its link to `b` connected and up.
    pub async fn wait_up(&self, a: &Peer, b: &Peer) -> Value {
        let peer = b.identity.id().to_string();
        eventually(
            Duration::from_secs(20),
            &format!("{} to see {peer} up", a.identity.id()),
            || async {
                let links = self.get(a, "/links").await;
                links["links"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| {
                        l["peer"] == peer.as_str()
                            && l["state"] == "connected"
                            && l["health"] == "up"
                    })
                    .cloned()
            },
        )
        .await
    }

    /// `DELETE /links/{peer}` on `p`; returns the status.
    pub async fn hang_up(&self, p: &Peer, peer: &str) -> u16 {
        self.http
            .delete(format!("{}/links/{peer}", p.proc.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE /links/{peer}: {e}\nworker log:\n{}", p.proc.log()))
            .status()
            .as_u16()
    }

    pub async fn link_count(&self, p: &Peer) -> u64 {
        self.get(p, "/links").await["count"].as_u64().unwrap()
    }

    /// `p`'s link to `peer` as `GET /links` shows it, if it has one (in any state).
    pub async fn link(&self, p: &Peer, peer: &str) -> Option<Value> {
        let links = self.get(p, "/links").await;
        links["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["peer"] == peer)
            .cloned()
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

/// Where [`start_worker`] keeps `name`'s files (received, partial, outgoing state).
pub fn files_dir(store_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    store_dir
        .parent()
        .unwrap_or(store_dir)
        .join("files")
        .join(name)
}

/// Starts a `webrtc-worker` for `name` (key from `seed`) on the embedded store in `store_dir`,
/// with fast QoS (1 s samples, 50 ms probes); `extra` adds or overrides variables.
pub fn start_worker(
    store_dir: &std::path::Path,
    name: &str,
    seed: u64,
    extra: &[(&str, &str)],
) -> Peer {
    let identity = crate::identity(name, seed);
    let mut env = vec![
        ("PEER_ID", name.to_string()),
        ("MESH_SIGNING_KEY", identity.seed_base64()),
        ("MESH_STORE", format!("embedded:{}", store_dir.display())),
        ("MESH_UDP_ADDRS", "127.0.0.1:0".to_string()),
        ("QOS_INTERVAL_SECS", "1".to_string()),
        ("MESH_PROBE_INTERVAL_MS", "50".to_string()),
        // Beside the store, in the test's own directory: never in the working directory.
        (
            "MESH_FILES_DIR",
            files_dir(store_dir, name).display().to_string(),
        ),
    ];
    for (k, v) in extra {
        env.push((k, v.to_string()));
    }
    let proc = ServiceProcess::start(
        crate::workspace_bin("webrtc-worker", "webrtc-worker"),
        &env,
        "webrtc-worker serving",
    );
    Peer { identity, proc }
}
