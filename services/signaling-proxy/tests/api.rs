//! The proxy's HTTP API against real workers: registry, brokered connections, links, and every
//! refusal with its documented status and code.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Mesh, OPERATOR, PEER, READER};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_peers_register_and_two_links_come_up_through_the_proxy() {
    let mesh = Mesh::new(&[]);
    let workers: Vec<_> = ["alpha", "bravo", "charlie"]
        .iter()
        .enumerate()
        .map(|(i, n)| mesh.worker(n, 10 + i as u64))
        .collect();
    for w in &workers {
        let reg = Mesh::registration(&w.identity, &w.proc.url, &w.identity);
        let (s, peer) = mesh
            .post(
                "/api/mesh/peers",
                Some(PEER),
                &serde_json::to_value(&reg).unwrap(),
            )
            .await;
        // The worker registered itself on start; this refreshes it (200), trust untouched.
        assert!(s == 200 || s == 201, "{s} {peer}");
        assert_eq!(peer["trust"], json!(0.1));
    }
    let (s, peers) = mesh.get("/api/mesh/peers", Some(READER)).await;
    assert_eq!((s, peers["count"].as_u64()), (200, Some(3)), "{peers}");

    for (a, b) in [("alpha", "bravo"), ("bravo", "charlie")] {
        let (s, link) = mesh
            .post(
                "/api/mesh-rtc/connect",
                Some(OPERATOR),
                &json!({"a": a, "b": b}),
            )
            .await;
        assert_eq!(s, 200, "{link}\nproxy:\n{}", mesh.proxy.log());
        assert_eq!(link["health"], "up");
        assert_eq!(link["id"], format!("{a}<->{b}"));
    }
    let (s, links) = mesh
        .get("/api/mesh-rtc/links?health=up", Some(READER))
        .await;
    assert_eq!(s, 200);
    assert_eq!(links["count"], 2, "{links}");
    let (_, only_charlie) = mesh
        .get("/api/mesh-rtc/links?peer=charlie", Some(READER))
        .await;
    assert_eq!(only_charlie["count"], 1, "{only_charlie}");
    assert_eq!(only_charlie["links"][0]["id"], "bravo<->charlie");

    // A caller's trace continues through the proxy into the worker: its log lines carry it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (s, _, v) = mesh
        .call_with(
            reqwest::Method::POST,
            "/api/mesh-rtc/dial",
            Some(OPERATOR),
            Some(&json!({"from": "charlie", "peerTo": "alpha"})),
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let charlie = &workers[2];
    // The worker logs before it answers, but its log reaches this test through a pipe and a
    // reader thread: wait for the line rather than read at once.
    mesh_testkit::process::eventually(
        std::time::Duration::from_secs(10),
        "the worker's log line carrying the caller's trace",
        || {
            let traced = charlie
                .proc
                .log()
                .lines()
                .any(|l| l.contains("dialled; offer signed") && l.contains(trace));
            async move { traced.then_some(()) }
        },
    )
    .await;

    // Connecting a pair that is already linked names the step and the peer.
    let (s, again) = mesh
        .post(
            "/api/mesh-rtc/connect",
            Some(OPERATOR),
            &json!({"a": "alpha", "b": "bravo"}),
        )
        .await;
    assert_eq!((s, code(&again)), (502, "link_exists"), "{again}");
    assert_eq!(again["error"]["details"]["upstreamStatus"], 409);
    assert_eq!(again["error"]["details"]["step"], "dial");
    assert_eq!(again["error"]["details"]["peer"], "alpha");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_carry_the_documented_codes() {
    let mesh = Mesh::new(&[]);
    let alpha = mesh.worker("alpha", 21);
    let mallory = mesh_testkit::identity("mallory", 99);

    // Forged: alpha's registration signed by another key.
    let forged = Mesh::registration(&alpha.identity, &alpha.proc.url, &mallory);
    let (s, v) = mesh
        .post(
            "/api/mesh/peers",
            Some(PEER),
            &serde_json::to_value(&forged).unwrap(),
        )
        .await;
    assert_eq!((s, code(&v)), (401, "wrong_signer"), "{v}");
    // Tampered: alpha's own registration with its worker URL changed after signing.
    let mut tampered = Mesh::registration(&alpha.identity, &alpha.proc.url, &alpha.identity);
    tampered.endpoints.https = Some("http://mallory.example".into());
    let body = serde_json::to_value(&tampered).unwrap();
    let (s, v) = mesh.post("/api/mesh/peers", Some(PEER), &body).await;
    assert_eq!((s, code(&v)), (401, "bad_signature"), "{v}");

    // Wrong key: a well-signed registration of alpha's id with a new key.
    let impostor = mesh_testkit::identity("alpha", 98);
    let wrong_key = Mesh::registration(&impostor, "http://127.0.0.1:9", &impostor);
    let (s, v) = mesh
        .post(
            "/api/mesh/peers",
            Some(PEER),
            &serde_json::to_value(&wrong_key).unwrap(),
        )
        .await;
    assert_eq!((s, code(&v)), (409, "key_mismatch"), "{v}");

    // Reserved: ids that anonymous WebSocket clients get.
    let squatter = mesh_testkit::identity("anon-abc", 97);
    let reg = Mesh::registration(&squatter, "http://127.0.0.1:9", &squatter);
    let body = serde_json::to_value(&reg).unwrap();
    let (s, v) = mesh.post("/api/mesh/peers", Some(PEER), &body).await;
    assert_eq!((s, code(&v)), (400, "reserved_id"), "{v}");

    // Replayed: the same registration twice.
    let reg = Mesh::registration(&alpha.identity, &alpha.proc.url, &alpha.identity);
    let body = serde_json::to_value(&reg).unwrap();
    assert_eq!(mesh.post("/api/mesh/peers", Some(PEER), &body).await.0, 200);
    let (s, v) = mesh.post("/api/mesh/peers", Some(PEER), &body).await;
    assert_eq!((s, code(&v)), (409, "replayed"), "{v}");

    // No credential, a bad one, a weak one.
    let (s, v) = mesh.get("/api/mesh/peers", None).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated"), "{v}");
    let (s, v) = mesh.get("/api/mesh/peers", Some("not-a-token")).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated"), "{v}");
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/connect",
            Some(READER),
            &json!({"a": "alpha", "b": "bravo"}),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");

    // A peer credential may register and forward signed messages, not dial for others.
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/dial",
            Some(PEER),
            &json!({"from": "alpha", "peerTo": "ghost"}),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    // A worker URL the proxy would not call.
    let odd = mesh_testkit::identity("odd", 96);
    for url in [
        "file:///etc/passwd",
        "http://user:pw@10.0.0.1",
        "http://10.0.0.1/?x=1",
    ] {
        let reg = Mesh::registration(&odd, url, &odd);
        let body = serde_json::to_value(&reg).unwrap();
        let (s, v) = mesh.post("/api/mesh/peers", Some(PEER), &body).await;
        assert_eq!((s, code(&v)), (400, "invalid_input"), "{url}: {v}");
    }

    // Bad input.
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/dial",
            Some(OPERATOR),
            &json!({"from": "alpha", "peerTo": "nobody"}),
        )
        .await;
    assert_eq!((s, code(&v)), (404, "unknown_peer"), "{v}");
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/dial",
            Some(OPERATOR),
            &json!({"from": "alpha"}),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "bad_json"), "{v}");
    let (s, v) = mesh.get("/api/mesh-rtc/links?limit=0", Some(READER)).await;
    assert_eq!((s, code(&v)), (400, "invalid_query"), "{v}");
    let big = json!({"from": "alpha", "peerTo": "x".repeat(70_000)});
    let (s, v) = mesh.post("/api/mesh-rtc/dial", Some(OPERATOR), &big).await;
    assert_eq!((s, code(&v)), (413, "body_too_large"), "{v}");

    // A worker that is gone: the error names the peer and the step.
    let ghost = mesh_testkit::identity("ghost", 31);
    let reg = Mesh::registration(&ghost, "http://127.0.0.1:9", &ghost);
    let (s, _) = mesh
        .post(
            "/api/mesh/peers",
            Some(PEER),
            &serde_json::to_value(&reg).unwrap(),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/dial",
            Some(OPERATOR),
            &json!({"from": "ghost", "peerTo": "alpha"}),
        )
        .await;
    assert_eq!((s, code(&v)), (502, "upstream_unreachable"), "{v}");
    assert_eq!(
        v["error"]["details"],
        json!({"peer": "ghost", "step": "dial"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_limit_client_is_told_when_to_come_back() {
    let mesh = Mesh::new(&[("MESH_RATE_PER_CREDENTIAL", "1")]);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (s, headers, v) = mesh
            .call(reqwest::Method::GET, "/api/mesh/peers", Some(READER), None)
            .await;
        if s == 429 {
            assert_eq!(code(&v), "rate_limited", "{v}");
            retry_after = headers.get("retry-after").cloned();
        }
        statuses.push(s);
    }
    assert_eq!(
        &statuses[..2],
        &[200, 200],
        "a burst of twice the rate passes: {statuses:?}"
    );
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    // Health checks are never limited.
    let (s, _) = mesh.get("/healthz", None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowlist_refuses_everyone_else() {
    let alpha = mesh_testkit::identity("alpha", 51);
    let bravo = mesh_testkit::identity("bravo", 52);
    let charlie = mesh_testkit::identity("charlie", 53);
    // alpha by id, charlie by key.
    let allow = format!("alpha,key:{}", charlie.public_key().to_base64());
    let mesh = Mesh::new(&[("MESH_PEER_ALLOWLIST", allow.as_str())]);
    for (who, expect) in [(&alpha, 201), (&bravo, 403), (&charlie, 201)] {
        let reg = Mesh::registration(who, "http://127.0.0.1:9", who);
        let (s, v) = mesh
            .post(
                "/api/mesh/peers",
                Some(PEER),
                &serde_json::to_value(&reg).unwrap(),
            )
            .await;
        assert_eq!(s, expect, "{}: {v}", who.id());
        if expect == 403 {
            assert_eq!(code(&v), "not_allowed");
        }
    }
}
