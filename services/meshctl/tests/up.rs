//! `meshctl up` as a newcomer runs it: a real process that brings up three real workers, the
//! proxy and the gossip schedule; `meshctl links --json` and `meshctl gossip --json` (separate
//! processes, finding the mesh through the data directory) watch it form; SIGINT stops it
//! cleanly; a second `up` on the same directory resumes the same peers.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_store::embedded::EmbeddedStore;
use mesh_store::{LinkQuery, Store};
use mesh_testkit::process::eventually;
use serde_json::Value;

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// A running `meshctl up` with its output collected line by line.
struct Up {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Up {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(MESHCTL)
            .args(["up", "--peers", "3", "--listen", "127.0.0.1:0"])
            .args(["--gossip-every", "1", "--qos-every", "1"])
            .arg("--data-dir")
            .arg(dir)
            // The send root of `up`'s workers: the test's own directory.
            .current_dir(dir.parent().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        Up {
            child,
            output,
            readers,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit.
    async fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = eventually(Duration::from_secs(60), "meshctl up to exit", || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await;
        // The pipes closed with the process: the readers have everything once they end.
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (status, self.output())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs another meshctl command against the data directory; its JSON output on success.
fn meshctl_json(dir: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new(MESHCTL)
        .args(args)
        .arg("--json")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits for `links --json` to list exactly three links, all `up`.
async fn three_links_up(dir: &Path) -> Value {
    eventually(
        Duration::from_secs(90),
        "three up links in `meshctl links --json`",
        || {
            let links = meshctl_json(dir, &["links"]);
            async move {
                let links = links?;
                let all = links["links"].as_array()?;
                (all.len() == 3 && all.iter().all(|l| l["health"] == "up")).then_some(links)
            }
        },
    )
    .await
}

#[tokio::test]
async fn up_forms_a_mesh_gossips_stops_on_sigint_and_resumes() {
    let tmp = mesh_testkit::data_dir();
    let dir = tmp.path().join("mesh");

    let up = Up::start(&dir);
    let links = three_links_up(&dir).await;
    let mut pairs: Vec<String> = links["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        ["peer-1<->peer-2", "peer-1<->peer-3", "peer-2<->peer-3"]
    );

    // Gossip runs on the schedule, and each run is in the audit trail.
    let pushes = eventually(
        Duration::from_secs(60),
        "gossip pushes in `meshctl gossip --json`",
        || {
            let gossip = meshctl_json(&dir, &["gossip"]);
            async move {
                let records = gossip?["records"].as_array()?.clone();
                let pushes: Vec<Value> = records
                    .into_iter()
                    .filter(|r| r["kind"] == "push" && r["succeeded"].as_u64() > Some(0))
                    .collect();
                (!pushes.is_empty()).then_some(pushes)
            }
        },
    )
    .await;
    for p in &pushes {
        for t in p["targets"].as_array().unwrap() {
            assert!(t["ok"] == true || t["ok"] == false);
            assert!(
                ["peer-1", "peer-2", "peer-3"].contains(&t["peer"].as_str().unwrap()),
                "{p}"
            );
        }
    }
    let peers = meshctl_json(&dir, &["peers"]).unwrap();
    assert_eq!(peers["count"], 3);
    let keys_before: Vec<Value> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pubKey"].clone())
        .collect();

    // An operator provisions another peer against the running proxy: the registration is
    // signed by the new key and the proxy verifies it.
    let seed = tmp.path().join("edge-1.seed");
    let registered = meshctl_json(
        &dir,
        &[
            "keygen",
            "--id",
            "edge-1",
            "--out",
            seed.to_str().unwrap(),
            "--register",
            "--region",
            "eu-west1",
        ],
    )
    .expect("keygen --register");
    assert_eq!(registered["peer"]["id"], "edge-1");
    assert_eq!(registered["peer"]["region"], "eu-west1");
    let peers_now = meshctl_json(&dir, &["peers"]).unwrap();
    assert_eq!(peers_now["count"], 4);

    // A file from peer-1 to peer-2 over their link; `send` follows it to the end.
    let file = tmp.path().join("notes.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let sent = meshctl_json(
        &dir,
        &[
            "send",
            "--from",
            "peer-1",
            "--to",
            "peer-2",
            file.to_str().unwrap(),
        ],
    )
    .expect("meshctl send");
    assert_eq!(sent["state"], "complete", "{sent}");
    assert_eq!(sent["bytes"], data.len());
    let received = dir.join("files/peer-2/received/peer-1/notes.bin");
    assert_eq!(std::fs::read(&received).unwrap(), data);
    let listed = meshctl_json(&dir, &["transfers"]).unwrap();
    assert_eq!(listed["transfers"][0]["id"], sent["id"], "{listed}");
    // Outside the directory `up` was started in: refused before anything moves.
    let refused = Command::new(MESHCTL)
        .args([
            "send",
            "--from",
            "peer-1",
            "--to",
            "peer-2",
            "/etc/hostname",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("path_not_allowed"), "{err}");

    // One `up` per data directory.
    let second = Command::new(MESHCTL)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another `meshctl up` is running"), "{err}");

    let (status, output) = up.interrupt().await;
    assert!(status.success(), "exit {status}: {output}");
    assert!(output.contains("Dashboard: http://127.0.0.1:"), "{output}");
    assert!(output.contains("Stopped."), "{output}");
    assert!(
        !dir.join("up.json").exists(),
        "the run's state file is removed"
    );

    // Consistent on disk: every link written down by the worker that hung it up, and the
    // store opens cleanly in another process.
    let store = EmbeddedStore::open(dir.join("store")).await.unwrap();
    let stored = store
        .list_links(&LinkQuery {
            limit: 100,
            ..LinkQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|l| l.health == mesh_types::Health::Down),
        "{stored:?}"
    );
    assert!(!store.list_audit(10).await.unwrap().is_empty());
    drop(store);

    // Again on the same directory: the same peers, keys resumed, the mesh formed again.
    let up = Up::start(&dir);
    three_links_up(&dir).await;
    let peers = meshctl_json(&dir, &["peers"]).unwrap();
    let keys_after: Vec<Value> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] != "edge-1")
        .map(|p| p["pubKey"].clone())
        .collect();
    assert_eq!(keys_before, keys_after);
    let (status, output) = up.interrupt().await;
    assert!(status.success(), "exit {status}: {output}");
    assert_eq!(output.matches(" resumed").count(), 3, "{output}");
}

#[tokio::test]
async fn commands_explain_a_missing_proxy_and_a_bad_peer_id() {
    let tmp = mesh_testkit::data_dir();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = format!("http://127.0.0.1:{port}");
    let out = Command::new(MESHCTL)
        .args(["links", "--proxy", &proxy, "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach the proxy at {proxy}")),
        "{err}"
    );

    let out = Command::new(MESHCTL)
        .args(["connect", "peer-1", "not a peer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peer"));
}
