//! meshctl as a user runs it: a real process, a real data directory.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::Command;

use mesh_store::Store;
use mesh_store::embedded::EmbeddedStore;
use serde_json::Value;

fn meshctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn init_registers_peers_that_another_process_reads_and_a_rerun_resumes() {
    let dir = mesh_testkit::data_dir();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = meshctl(&["init", "--peers", "3", "--data-dir", d, "--json"]);
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    let peers = first["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    assert!(
        peers
            .iter()
            .all(|p| p["status"] == "new" && p["trust"] == 0.1)
    );

    // Another process (this test) reads what meshctl wrote, and raises one peer's trust.
    let store = EmbeddedStore::open(dir.path().join("store")).await.unwrap();
    let stored = store.list_peers().await.unwrap();
    assert_eq!(stored.len(), 3);
    for (row, peer) in peers.iter().zip(&stored) {
        assert_eq!(row["id"], peer.id.as_str());
        assert_eq!(row["pubKey"], peer.pub_key.to_base64());
    }
    store
        .set_trust(&[(stored[0].id.clone(), 0.7)])
        .await
        .unwrap();

    // A second run is a restart: the same keys, trust kept, last-seen moved on.
    let (ok, out, err) = meshctl(&["init", "--peers", "3", "--data-dir", d, "--json"]);
    assert!(ok, "{err}");
    let second: Value = serde_json::from_str(&out).unwrap();
    let again = second["peers"].as_array().unwrap();
    for (a, b) in peers.iter().zip(again) {
        assert_eq!(
            (a["id"].clone(), a["kid"].clone(), b["status"].as_str()),
            (b["id"].clone(), b["kid"].clone(), Some("resumed"))
        );
        assert!(b["lastSeenAt"].as_u64() >= a["lastSeenAt"].as_u64());
    }
    assert_eq!(
        again[0]["trust"], 0.7,
        "re-registration must not reset trust"
    );
}

#[test]
fn init_prints_a_table_by_default() {
    let dir = mesh_testkit::data_dir();
    let (ok, out, err) = meshctl(&[
        "init",
        "--peers",
        "2",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("PEER"), "{out}");
    assert!(
        out.contains("peer-1") && out.contains("peer-2") && out.contains("2 peers registered"),
        "{out}"
    );
}

#[test]
fn keygen_writes_a_private_seed_and_refuses_to_overwrite() {
    let dir = mesh_testkit::data_dir();
    let path = dir.path().join("a.seed");
    let p = path.to_str().unwrap();
    let (ok, out, err) = meshctl(&["keygen", "--id", "peer-a", "--out", p, "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let seed = std::fs::read_to_string(&path).unwrap();
    let identity =
        mesh_types::Identity::from_seed_base64(mesh_testkit::peer_id("peer-a"), &seed).unwrap();
    assert_eq!(v["pubKey"], identity.public_key().to_base64());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (ok, _, err) = meshctl(&["keygen", "--id", "peer-a", "--out", p]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    let (ok, _, err) = meshctl(&["keygen", "--id", "bad/id", "--out", &format!("{p}2")]);
    assert!(!ok && err.contains("invalid peer id"), "{err}");
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let (ok, _, err) = meshctl(&["init", "--peers", "0"]);
    assert!(!ok && err.contains("--peers"), "{err}");
    let (ok, out, _) = meshctl(&["--help"]);
    assert!(
        ok && out.contains("init") && out.contains("keygen"),
        "{out}"
    );
}

#[test]
fn token_prints_a_token_and_the_entry_that_holds_only_its_hash() {
    let (ok, out, err) = meshctl(&["token", "--name", "ops", "--role", "operator", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(token.len() >= 43, "32 random bytes: {token}");
    let (name, rest) = v["entry"].as_str().unwrap().split_once(':').unwrap();
    let (role, hash) = rest.split_once(':').unwrap();
    assert_eq!((name, role), ("ops", "operator"));
    // The hash the proxy checks presented tokens against.
    assert_eq!(hash, mesh_auth::sha256_hex(token));
    assert!(!v["entry"].as_str().unwrap().contains(token));
    let (ok, _, err) = meshctl(&["token", "--name", "ops", "--role", "admin"]);
    assert!(!ok && err.contains("admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_over_the_proxys_rate_limit_wait_as_told_and_succeed() {
    let dir = mesh_testkit::data_dir();
    let (ok, out, err) = meshctl(&["token", "--name", "ops", "--role", "read", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let store = format!("embedded:{}", dir.path().join("store").display());
    // One request a second for the credential: the second and third must wait for it.
    let config = signaling_proxy::ProxyConfig::from_source(&std::collections::HashMap::from([
        ("MESH_STORE", store.as_str()),
        ("MESH_API_TOKENS", v["entry"].as_str().unwrap()),
        ("MESH_RATE_PER_CREDENTIAL", "1"),
    ]))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(signaling_proxy::run(config, listener, async {
        let _ = stopped.await;
    }));
    let d = dir.path().to_str().unwrap().to_string();
    let outcomes = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| {
                meshctl(&[
                    "peers",
                    "--proxy",
                    &url,
                    "--token",
                    &token,
                    "--data-dir",
                    &d,
                    "--json",
                ])
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (ok, out, err) in &outcomes {
        assert!(ok, "{err}");
        assert!(serde_json::from_str::<Value>(out).is_ok(), "{out}");
    }
    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
}
