//! Keeps proto/schema in step with the Rust types: every field a fully populated value
//! serialises is in its schema, nothing else is, and the schema requires exactly the fields that
//! are never left out.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mesh_types::{
    Answer, AuditRecord, AuditTarget, Endpoints, Envelope, Health, Hlc, Identity, Link, LinkQos,
    Offer, Peer, PeerId, PeerRegistration, Transport,
};
use serde_json::{Value, json};

fn schema(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../proto/schema/{name}.schema.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// `full` has every optional field set, `minimal` none of them.
fn check(name: &str, full: Value, minimal: Value) {
    let s = schema(name);
    assert_eq!(
        keys(&s["properties"]),
        keys(&full),
        "{name}: schema properties vs a full value"
    );
    let required: BTreeSet<String> = s["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let min = keys(&minimal);
    // `sig` is always written (empty until signed) but may be absent on input.
    let min: BTreeSet<String> = min
        .into_iter()
        .filter(|k| k != "sig" && k != "hops" && k != "endpoints")
        .collect();
    assert_eq!(required, min, "{name}: required fields vs a minimal value");
}

fn p(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

#[test]
fn schemas_match_the_types() {
    let id =
        Identity::from_seed_base64(p("a"), "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let mut offer = Offer::new(p("a"), p("b"), "v=0".into(), 1);
    let minimal_offer = serde_json::to_value(&offer).unwrap();
    mesh_types::signing::Signed::sign(&mut offer, &id).unwrap();
    check(
        "sdp-message",
        serde_json::to_value(&offer).unwrap(),
        minimal_offer,
    );
    let _: Answer = serde_json::from_value(serde_json::to_value(&offer).unwrap()).unwrap();

    let endpoints = Endpoints {
        webrtc: Some("udp://x".into()),
        https: Some("https://x".into()),
    };
    let mut reg = PeerRegistration::new(
        p("a"),
        id.public_key(),
        Some("eu".into()),
        endpoints.clone(),
        1,
    );
    let minimal_reg = serde_json::to_value(PeerRegistration::new(
        p("a"),
        id.public_key(),
        None,
        Endpoints::default(),
        1,
    ))
    .unwrap();
    mesh_types::signing::Signed::sign(&mut reg, &id).unwrap();
    check(
        "peer-registration",
        serde_json::to_value(&reg).unwrap(),
        minimal_reg,
    );

    let peer = Peer {
        id: p("a"),
        pub_key: id.public_key(),
        region: Some("eu".into()),
        endpoints,
        last_seen_at: 1,
        trust: 0.5,
    };
    let minimal_peer = Peer {
        region: None,
        endpoints: Endpoints::default(),
        ..peer.clone()
    };
    check(
        "peer",
        serde_json::to_value(&peer).unwrap(),
        serde_json::to_value(&minimal_peer).unwrap(),
    );

    let qos = LinkQos {
        rtt_ms: Some(1.0),
        probe_rtt_ms: Some(1.2),
        jitter_ms: Some(0.1),
        loss_pct: Some(0.0),
        bitrate_kbps: Some(8.0),
        last_ts: 2,
    };
    let link = Link::new(&p("a"), &p("b"), Health::Up, qos, 1).unwrap();
    let sparse = Link::new(
        &p("a"),
        &p("b"),
        Health::Up,
        LinkQos {
            last_ts: 2,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    check(
        "link",
        serde_json::to_value(&link).unwrap(),
        serde_json::to_value(&sparse).unwrap(),
    );

    let mut env = Envelope {
        id: "e".into(),
        ts: 1,
        kind: "telemetry".into(),
        payload: json!({}),
        from: p("a"),
        hlc: Hlc {
            wall_ms: 1,
            counter: 0,
        },
        ttl: 3,
        hops: 0,
        sig: String::new(),
        kid: None,
    };
    let minimal_env = serde_json::to_value(&env).unwrap();
    mesh_types::signing::Signed::sign(&mut env, &id).unwrap();
    check("envelope", serde_json::to_value(&env).unwrap(), minimal_env);

    let target = AuditTarget {
        peer: p("b"),
        transport: Transport::Https,
        ok: false,
        error: Some("timeout".into()),
        fallback: Some("no up link".into()),
    };
    let audit = AuditRecord {
        id: "r".into(),
        ts: 1,
        kind: "push".into(),
        recorded_by: Some(PeerId::new("r").unwrap()),
        from: p("a"),
        fanout: 1,
        succeeded: 0,
        failed: 1,
        envelope_id: Some("e".into()),
        targets: vec![target.clone()],
        reason: Some("x".into()),
    };
    let minimal_audit = AuditRecord {
        recorded_by: None,
        envelope_id: None,
        targets: vec![],
        reason: None,
        ..audit.clone()
    };
    check(
        "audit-record",
        serde_json::to_value(&audit).unwrap(),
        serde_json::to_value(&minimal_audit).unwrap(),
    );
    let target_schema = &schema("audit-record")["properties"]["targets"]["items"];
    assert_eq!(
        keys(&target_schema["properties"]),
        keys(&serde_json::to_value(&target).unwrap())
    );
}
