//! Gossip end to end: real workers with live DataChannel links, the `gossip-push` binary run as
//! an operator would run it, and envelopes handed to a worker by hand to see refusals audited.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use mesh_store::Store;
use mesh_testkit::process::eventually;
use mesh_testkit::workers::{Mesh, Peer};
use mesh_types::signing::Signed;
use mesh_types::{AuditRecord, Delivery, Envelope, Hlc, Identity, TELEMETRY, TelemetryPayload};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs `gossip-push run-once` on the mesh's store; returns its exit code and report.
async fn run_once(store: &Path, extra: &[(&str, &str)]) -> (i32, Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gossip-push"));
    cmd.arg("run-once")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MESH_STORE", format!("embedded:{}", store.display()))
        .env("RUST_LOG", "info");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "gossip-push printed no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn targets(report: &Value) -> Vec<Value> {
    report["origins"][0]["targets"].as_array().unwrap().clone()
}

fn target<'a>(targets: &'a [Value], peer: &str) -> &'a Value {
    targets
        .iter()
        .find(|t| t["peer"] == peer)
        .unwrap_or_else(|| panic!("{peer} not among {targets:?}"))
}

/// `origin`'s telemetry entry in a `GET /gossip/state` answer.
fn telemetry_of(state: &Value, origin: &str) -> Option<Value> {
    state["entries"]
        .as_array()?
        .iter()
        .find(|e| e["key"] == format!("telemetry/{origin}"))
        .cloned()
}

/// The peers a telemetry entry lists links to.
fn linked_peers(entry: &Value) -> Vec<&str> {
    entry["value"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["peer"].as_str().unwrap())
        .collect()
}

async fn audit(store: &impl Store) -> Vec<AuditRecord> {
    store.list_audit(100).await.unwrap()
}

/// An envelope from `origin` (no entries), signed, stamped `ts`.
fn envelope(origin: &Identity, id: &str, ts: u64) -> Envelope {
    let mut e = Envelope {
        id: id.into(),
        ts,
        kind: TELEMETRY.into(),
        payload: serde_json::to_value(TelemetryPayload::default()).unwrap(),
        from: origin.id().clone(),
        hlc: Hlc {
            wall_ms: ts,
            counter: 0,
        },
        ttl: 0,
        hops: 0,
        sig: String::new(),
        kid: None,
    };
    e.sign(origin).unwrap();
    e
}

fn delivery(sender: &Identity, to: &Peer, envelope: Envelope) -> Value {
    let mut d = Delivery {
        sender: sender.id().clone(),
        to: to.identity.id().clone(),
        ts: now_ms(),
        envelope,
        sig: String::new(),
        kid: None,
    };
    d.sign(sender).unwrap();
    serde_json::to_value(d).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn envelopes_ride_datachannels_fall_back_to_https_and_bad_ones_are_audited() {
    let mesh = Mesh::new();
    let [a, b, c, d] =
        [("a", 1), ("b", 2), ("c", 3), ("d", 4)].map(|(n, s)| mesh.worker(n, s, &[]));
    for (x, y) in [(&a, &b), (&a, &c), (&a, &d), (&b, &d)] {
        mesh.connect(x, y).await;
        mesh.wait_up(x, y).await;
    }
    // Up means the mesh channel is open; the gossip channel opens beside it.
    for p in ["b", "c", "d"] {
        eventually(
            Duration::from_secs(10),
            &format!("a's gossip channel to {p}"),
            || async {
                let links = mesh.get(&a, "/links").await;
                links["links"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["peer"] == p && l["gossip"] == true)
                    .then_some(())
            },
        )
        .await;
    }
    let store = mesh_store::embedded::EmbeddedStore::open(mesh.store_dir())
        .await
        .unwrap();
    let job = [("MESH_GOSSIP_FROM", "a"), ("MESH_TRUST_SEEDS", "a")];

    // Run 1: a pushes to b, c and d over its links' gossip channels.
    let (code, report) = run_once(&mesh.store_dir(), &job).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["trustUpdated"], 4, "{report:#}");
    let first = targets(&report);
    assert_eq!(first.len(), 3, "{report:#}");
    for t in &first {
        assert_eq!(
            (&t["transport"], &t["ok"]),
            (&json!("datachannel"), &json!(true)),
            "{t}"
        );
    }
    let envelope_id = report["origins"][0]["envelopeId"]
        .as_str()
        .unwrap()
        .to_string();
    // Each receiver merged a's signed telemetry: a's view of its three links.
    for p in [&b, &c, &d] {
        let state = mesh.get(p, "/gossip/state").await;
        let entry = telemetry_of(&state, "a").unwrap_or_else(|| panic!("{state:#}"));
        assert_eq!(linked_peers(&entry), ["b", "c", "d"], "{entry:#}");
    }
    let push = audit(&store)
        .await
        .into_iter()
        .find(|r| r.kind == "push" && r.envelope_id.as_deref() == Some(envelope_id.as_str()))
        .expect("the run's audit record");
    assert_eq!(
        (push.from.as_str(), push.fanout, push.succeeded, push.failed),
        ("a", 3, 3, 0)
    );

    // Run 2: a's link to d is gone (d is still up through b): d gets the envelope over HTTPS,
    // and the audit says why the DataChannel was not used.
    assert_eq!(mesh.hang_up(&a, "d").await, 200);
    eventually(
        Duration::from_secs(10),
        "a to drop its link to d",
        || async {
            let links = mesh.get(&a, "/links").await;
            (!links["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["peer"] == "d"))
            .then_some(())
        },
    )
    .await;
    let (code, report) = run_once(&mesh.store_dir(), &job).await;
    assert_eq!(code, 0, "{report:#}");
    let second = targets(&report);
    let to_d = target(&second, "d");
    assert_eq!(
        (&to_d["transport"], &to_d["ok"]),
        (&json!("https"), &json!(true)),
        "{to_d}"
    );
    assert!(
        to_d["fallback"]
            .as_str()
            .unwrap()
            .contains("no connected link"),
        "{to_d}"
    );
    assert_eq!(target(&second, "b")["transport"], "datachannel");
    let id2 = report["origins"][0]["envelopeId"]
        .as_str()
        .unwrap()
        .to_string();
    let push2 = audit(&store)
        .await
        .into_iter()
        .find(|r| r.envelope_id.as_deref() == Some(id2.as_str()))
        .unwrap();
    let d_target = push2
        .targets
        .iter()
        .find(|t| t.peer.as_str() == "d")
        .unwrap();
    assert_eq!(d_target.transport, mesh_types::Transport::Https);
    assert!(d_target.fallback.is_some());
    // d accepted and merged it: it holds a's telemetry as this run signed it (a's view of its
    // links without d), the very entry a holds now.
    let a_state = mesh.get(&a, "/gossip/state").await;
    let second_entry = telemetry_of(&a_state, "a").unwrap_or_else(|| panic!("{a_state:#}"));
    assert_eq!(linked_peers(&second_entry), ["b", "c"], "{second_entry:#}");
    eventually(
        Duration::from_secs(10),
        "d to hold a's telemetry from the second run",
        || async {
            let state = mesh.get(&d, "/gossip/state").await;
            (telemetry_of(&state, "a").as_ref() == Some(&second_entry)).then_some(())
        },
    )
    .await;

    // Envelopes handed to b over HTTPS by c, by hand: one good, then a replay of that very
    // request, a tampered envelope and a future-dated one. Each refusal is answered with its
    // code and audited by b.
    let post = |body: Value| {
        let url = format!("{}/gossip", b.proc.url);
        let http = mesh.http.clone();
        async move {
            let res = http.post(url).json(&body).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let good = delivery(
        &c.identity,
        &b,
        envelope(&c.identity, "by-hand-1", now_ms()),
    );
    let (s, v) = post(good.clone()).await;
    assert_eq!((s, &v["outcome"]), (200, &json!("accepted")), "{v}");
    let (s, v) = post(good).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("replayed")),
        "{v}"
    );
    let mut tampered = envelope(&c.identity, "by-hand-2", now_ms());
    tampered.payload = json!({"entries": [], "extra": 1});
    let (s, v) = post(delivery(&c.identity, &b, tampered)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_signature")),
        "{v}"
    );
    let future = envelope(&c.identity, "by-hand-3", now_ms() + 120_000);
    let (s, v) = post(delivery(&c.identity, &b, future)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("future_timestamp")),
        "{v}"
    );

    // A delivery that claims to be c's but is signed by d: refused, and audited as an
    // unverified claim, not as c's doing.
    let mut forged: Delivery = serde_json::from_value(delivery(
        &d.identity,
        &b,
        envelope(&d.identity, "by-hand-4", now_ms()),
    ))
    .unwrap();
    forged.sender = c.identity.id().clone();
    let (s, v) = post(serde_json::to_value(&forged).unwrap()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("wrong_signer")),
        "{v}"
    );

    // c keeps handing b envelopes: past its quota (from its trust) b refuses with 429 and
    // records the drop.
    let mut limited = None;
    for i in 0..200 {
        let e = envelope(&c.identity, &format!("burst-{i}"), now_ms());
        let (s, v) = post(delivery(&c.identity, &b, e)).await;
        if s == 429 {
            limited = Some(v);
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let limited = limited.expect("c's quota ran out within 200 envelopes");
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");

    // Refusals are audited through b's spool, a moment after b answered: wait for them all.
    let records = eventually(
        Duration::from_secs(20),
        "b's refusals in the audit trail",
        || async {
            let all = audit(&store).await;
            let by_b = |kind: &str, code: &str| {
                all.iter().any(|r| {
                    r.kind == kind
                        && r.recorded_by.as_ref().map(|p| p.as_str()) == Some("b")
                        && r.reason.as_deref().unwrap_or("").starts_with(code)
                })
            };
            (by_b("drop", "")
                && [
                    "wrong_signer",
                    "replayed",
                    "bad_signature",
                    "future_timestamp",
                ]
                .iter()
                .all(|code| by_b("reject", code)))
            .then_some(all)
        },
    )
    .await;
    let drops: Vec<AuditRecord> = records
        .iter()
        .filter(|r| r.kind == "drop")
        .cloned()
        .collect();
    assert!(
        drops
            .iter()
            .any(|r| r.from.as_str() == "c"
                && r.recorded_by.as_ref().map(|p| p.as_str()) == Some("b")),
        "{drops:#?}"
    );

    let rejects: Vec<AuditRecord> = records
        .into_iter()
        .filter(|r| r.kind == "reject" && r.recorded_by.as_ref().map(|p| p.as_str()) == Some("b"))
        .collect();
    let unverified = rejects
        .iter()
        .find(|r| {
            r.reason
                .as_deref()
                .unwrap_or("")
                .starts_with("wrong_signer")
        })
        .expect("the forged delivery's record");
    assert!(
        unverified.reason.as_deref().unwrap().contains("unverified"),
        "{unverified:#?}"
    );
    for code in ["replayed", "bad_signature", "future_timestamp"] {
        assert!(
            rejects
                .iter()
                .any(|r| r.from.as_str() == "c"
                    && r.reason.as_deref().unwrap_or("").starts_with(code)),
            "no {code} audit record among {rejects:#?}"
        );
    }
}
