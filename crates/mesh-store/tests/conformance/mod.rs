//! The conformance suite every `Store` backend must pass. Each case is an async function over a
//! fresh, empty store; `conformance!` instantiates them as tests for one backend.

use std::sync::Arc;

use mesh_store::{ErrorKind, LinkQuery, LinkWrite, PeerUpsert, SharedStore};
use mesh_testkit::{identity, peer_id};
use mesh_types::signing::Signed;
use mesh_types::transfer::{TransferId, TransferRecord, TransferState};
use mesh_types::{
    AuditRecord, AuditTarget, Endpoints, GossipEntry, Health, Hlc, Link, LinkQos, Transport,
};

/// Generates one `#[tokio::test]` per case, each on a store made by `$make().await`, which
/// returns `(store, guard)`; the guard lives as long as the test (a temp dir, say).
#[macro_export]
macro_rules! conformance {
    ($make:path) => {
        $crate::conformance!(@cases $make;
            peers_round_trip_and_missing_peers_are_not_found,
            registration_keeps_trust_and_binds_the_key,
            peers_list_in_id_order,
            set_trust_is_all_or_nothing,
            links_are_one_per_pair_and_older_samples_lose,
            links_list_newest_first_with_filters_and_limit,
            audit_is_append_only_and_newest_first,
            documents_keep_their_shape,
            concurrent_link_writes_keep_the_newest,
            zero_limits_are_refused,
            gossip_state_keeps_the_superseding_entry,
            transfers_keep_the_newest_version,
            ping_answers
        );
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                conformance::$case(store).await;
            }
        )*
    };
}

fn upsert(name: &str, seed: u64, seen_at: u64) -> PeerUpsert {
    PeerUpsert {
        id: peer_id(name),
        pub_key: identity(name, seed).public_key(),
        region: Some("europe-west1".into()),
        endpoints: Endpoints {
            webrtc: None,
            https: Some(format!("https://{name}.test")),
        },
        seen_at,
        initial_trust: 0.1,
    }
}

fn link(x: &str, y: &str, health: Health, last_ts: u64) -> Link {
    let qos = LinkQos {
        rtt_ms: Some(1.5),
        loss_pct: Some(0.0),
        last_ts,
        ..Default::default()
    };
    Link::new(&peer_id(x), &peer_id(y), health, qos, 1_000).unwrap()
}

fn audit(id: &str, ts: u64) -> AuditRecord {
    AuditRecord {
        id: id.into(),
        ts,
        kind: "push".into(),
        recorded_by: None,
        from: peer_id("a"),
        fanout: 2,
        succeeded: 1,
        failed: 1,
        envelope_id: Some(format!("env-{id}")),
        targets: vec![
            AuditTarget {
                peer: peer_id("b"),
                transport: Transport::Datachannel,
                ok: true,
                error: None,
                fallback: None,
            },
            AuditTarget {
                peer: peer_id("c"),
                transport: Transport::Https,
                ok: false,
                error: Some("timeout".into()),
                fallback: Some("no up link".into()),
            },
        ],
        reason: None,
    }
}

pub async fn peers_round_trip_and_missing_peers_are_not_found(store: SharedStore) {
    let stored = store.upsert_peer(&upsert("a", 1, 100)).await.unwrap();
    assert_eq!(store.get_peer(&peer_id("a")).await.unwrap(), stored);
    assert_eq!(stored.trust, 0.1);
    let missing = store.get_peer(&peer_id("nobody")).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

pub async fn registration_keeps_trust_and_binds_the_key(store: SharedStore) {
    store.upsert_peer(&upsert("a", 1, 100)).await.unwrap();
    store.set_trust(&[(peer_id("a"), 0.8)]).await.unwrap();
    let mut again = upsert("a", 1, 200);
    again.endpoints.https = Some("https://a.moved".into());
    let refreshed = store.upsert_peer(&again).await.unwrap();
    assert_eq!(refreshed.trust, 0.8, "re-registration must not reset trust");
    assert_eq!(refreshed.last_seen_at, 200);
    assert_eq!(
        refreshed.endpoints.https.as_deref(),
        Some("https://a.moved")
    );

    let other_key = store.upsert_peer(&upsert("a", 2, 300)).await.unwrap_err();
    assert_eq!(other_key.kind(), ErrorKind::Conflict);
    assert_eq!(
        store.get_peer(&peer_id("a")).await.unwrap().pub_key,
        identity("a", 1).public_key()
    );

    let new_key = identity("a", 2).public_key();
    let replaced = store
        .replace_peer_key(&peer_id("a"), &new_key)
        .await
        .unwrap();
    assert_eq!((replaced.pub_key, replaced.trust), (new_key, 0.8));
    store.upsert_peer(&upsert("a", 2, 400)).await.unwrap();
    let unknown = store
        .replace_peer_key(&peer_id("zed"), &new_key)
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
}

pub async fn peers_list_in_id_order(store: SharedStore) {
    for (i, name) in ["c", "a", "b"].iter().enumerate() {
        store
            .upsert_peer(&upsert(name, i as u64, 10))
            .await
            .unwrap();
    }
    let ids: Vec<String> = store
        .list_peers()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

pub async fn set_trust_is_all_or_nothing(store: SharedStore) {
    store.upsert_peer(&upsert("a", 1, 10)).await.unwrap();
    store.upsert_peer(&upsert("b", 2, 10)).await.unwrap();
    let err = store
        .set_trust(&[(peer_id("a"), 0.5), (peer_id("ghost"), 0.5)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        store.get_peer(&peer_id("a")).await.unwrap().trust,
        0.1,
        "partial write"
    );
    let err = store
        .set_trust(&[(peer_id("a"), 0.5), (peer_id("b"), 1.5)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        store.get_peer(&peer_id("a")).await.unwrap().trust,
        0.1,
        "partial write"
    );
    store
        .set_trust(&[(peer_id("a"), 0.5), (peer_id("b"), 1.0)])
        .await
        .unwrap();
    assert_eq!(store.get_peer(&peer_id("b")).await.unwrap().trust, 1.0);
}

pub async fn links_are_one_per_pair_and_older_samples_lose(store: SharedStore) {
    assert_eq!(
        store
            .upsert_link(&link("b", "a", Health::Up, 10))
            .await
            .unwrap(),
        LinkWrite::Applied
    );
    assert_eq!(
        store
            .upsert_link(&link("a", "b", Health::Degraded, 20))
            .await
            .unwrap(),
        LinkWrite::Applied
    );
    assert_eq!(
        store
            .upsert_link(&link("a", "b", Health::Down, 15))
            .await
            .unwrap(),
        LinkWrite::Stale
    );
    let links = store.list_links(&LinkQuery::default()).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].id.as_str(), links[0].health, links[0].qos.last_ts),
        ("a<->b", Health::Degraded, 20)
    );
    assert_eq!(store.get_link(&links[0].id).await.unwrap(), links[0]);
    let missing = store.get_link(&"a<->z".parse().unwrap()).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let mut bad = link("a", "b", Health::Up, 30);
    bad.qos.loss_pct = Some(250.0);
    assert_eq!(
        store.upsert_link(&bad).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

pub async fn links_list_newest_first_with_filters_and_limit(store: SharedStore) {
    for l in [
        link("a", "b", Health::Up, 10),
        link("a", "c", Health::Down, 30),
        link("b", "c", Health::Up, 20),
        link("c", "d", Health::Degraded, 40),
        link("b", "d", Health::Up, 20),
    ] {
        store.upsert_link(&l).await.unwrap();
    }
    let ids = |links: Vec<Link>| {
        links
            .into_iter()
            .map(|l| l.id.to_string())
            .collect::<Vec<_>>()
    };
    let all = store.list_links(&LinkQuery::default()).await.unwrap();
    // Ties on lastTs break by id, descending.
    assert_eq!(ids(all), ["c<->d", "a<->c", "b<->d", "b<->c", "a<->b"]);
    let q = |peer: Option<&str>, health, limit| LinkQuery {
        peer: peer.map(peer_id),
        health,
        limit,
    };
    assert_eq!(
        ids(store.list_links(&q(Some("c"), None, 100)).await.unwrap()),
        ["c<->d", "a<->c", "b<->c"]
    );
    assert_eq!(
        ids(store
            .list_links(&q(None, Some(Health::Up), 100))
            .await
            .unwrap()),
        ["b<->d", "b<->c", "a<->b"]
    );
    assert_eq!(
        ids(store
            .list_links(&q(Some("b"), Some(Health::Up), 100))
            .await
            .unwrap()),
        ["b<->d", "b<->c", "a<->b"]
    );
    assert_eq!(
        ids(store
            .list_links(&q(Some("a"), Some(Health::Up), 100))
            .await
            .unwrap()),
        ["a<->b"]
    );
    assert_eq!(
        ids(store.list_links(&q(None, None, 2)).await.unwrap()),
        ["c<->d", "a<->c"]
    );
    assert!(
        store
            .list_links(&q(Some("nobody"), None, 100))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn audit_is_append_only_and_newest_first(store: SharedStore) {
    for (id, ts) in [("r1", 10), ("r2", 30), ("r3", 20)] {
        store.append_audit(&audit(id, ts)).await.unwrap();
    }
    let dup = store.append_audit(&audit("r1", 99)).await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    let got = store.list_audit(10).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r2", "r3", "r1"]);
    assert_eq!(got[2], audit("r1", 10), "the first record is unchanged");
    assert_eq!(store.list_audit(1).await.unwrap().len(), 1);
}

pub async fn documents_keep_their_shape(store: SharedStore) {
    // Unknown figures stay absent (not zero, not null) through a round trip.
    let mut sparse = link("a", "b", Health::Up, 10);
    sparse.qos = LinkQos {
        last_ts: 10,
        ..Default::default()
    };
    store.upsert_link(&sparse).await.unwrap();
    let back = store.get_link(&sparse.id).await.unwrap();
    assert_eq!(back, sparse);
    let json = serde_json::to_value(&back).unwrap();
    assert!(
        json.get("rttMs").is_none() && json.get("lossPct").is_none(),
        "{json}"
    );

    let mut p = upsert("a", 1, 10);
    p.region = None;
    p.endpoints = Endpoints::default();
    let stored = store.upsert_peer(&p).await.unwrap();
    assert_eq!(store.get_peer(&peer_id("a")).await.unwrap(), stored);
    assert_eq!(stored.region, None);
}

pub async fn concurrent_link_writes_keep_the_newest(store: SharedStore) {
    let store = Arc::new(store);
    let writes = (1..=16u64).map(|ts| {
        let store = store.clone();
        tokio::spawn(async move { store.upsert_link(&link("a", "b", Health::Up, ts)).await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        store
            .get_link(&"a<->b".parse().unwrap())
            .await
            .unwrap()
            .qos
            .last_ts,
        16
    );
}

pub async fn zero_limits_are_refused(store: SharedStore) {
    let q = LinkQuery {
        limit: 0,
        ..Default::default()
    };
    assert_eq!(
        store.list_links(&q).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        store.list_audit(0).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

fn entry(origin: &str, wall_ms: u64, value: serde_json::Value) -> GossipEntry {
    let mut e = GossipEntry {
        key: GossipEntry::telemetry_key(&peer_id(origin)),
        origin: peer_id(origin),
        hlc: Hlc {
            wall_ms,
            counter: 0,
        },
        value,
        sig: String::new(),
        kid: None,
    };
    e.sign(&identity(origin, 1)).unwrap();
    e
}

pub async fn gossip_state_keeps_the_superseding_entry(store: SharedStore) {
    let a1 = entry("a", 10, serde_json::json!({"links": []}));
    let a2 = entry("a", 20, serde_json::json!({"links": [1]}));
    let b1 = entry("b", 15, serde_json::json!(null));
    assert_eq!(
        store.merge_gossip(&[a2.clone(), b1.clone()]).await.unwrap(),
        2
    );
    assert_eq!(
        store.merge_gossip(std::slice::from_ref(&a1)).await.unwrap(),
        0,
        "older loses"
    );
    assert_eq!(
        store.merge_gossip(std::slice::from_ref(&a2)).await.unwrap(),
        0,
        "same is no change"
    );
    assert_eq!(
        store.list_gossip(10).await.unwrap(),
        vec![a2.clone(), b1.clone()]
    );
    assert_eq!(store.list_gossip(1).await.unwrap(), vec![a2]);
    let mut foreign = b1;
    foreign.key = "telemetry/a".into();
    assert_eq!(
        store.merge_gossip(&[foreign]).await.unwrap_err().kind(),
        ErrorKind::InvalidInput,
        "a key that is not its origin's"
    );
}

fn transfer(id: u8, version: u64, updated_at: u64, bytes: u64) -> TransferRecord {
    TransferRecord {
        id: TransferId([id; 16]),
        from: peer_id("a"),
        to: peer_id("b"),
        name: "snap.tar".into(),
        size: 10 << 20,
        state: TransferState::Sending,
        bytes,
        rate_bps: 1000,
        eta_ms: Some(5),
        sent_bytes: 0,
        repaired_chunks: 1,
        resumes: 0,
        error_code: None,
        error: None,
        started_at: 1,
        updated_at,
        version,
    }
}

pub async fn transfers_keep_the_newest_version(store: SharedStore) {
    assert!(store.put_transfer(&transfer(1, 2, 20, 200)).await.unwrap());
    assert!(
        !store.put_transfer(&transfer(1, 1, 30, 100)).await.unwrap(),
        "an older version loses, whatever its time"
    );
    assert!(store.put_transfer(&transfer(1, 3, 20, 300)).await.unwrap());
    let mut done = transfer(2, 1, 40, 10 << 20);
    done.state = TransferState::Complete;
    done.eta_ms = None;
    store.put_transfer(&done).await.unwrap();
    let got = store.list_transfers(10).await.unwrap();
    assert_eq!(got, vec![done, transfer(1, 3, 20, 300)]);
    assert_eq!(store.list_transfers(1).await.unwrap().len(), 1);
    assert_eq!(
        store.list_transfers(0).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

pub async fn ping_answers(store: SharedStore) {
    store.ping().await.unwrap();
}
