//! Golden test vectors in proto/vectors/signing.json: the signing bytes, signatures and verdicts
//! of each signed message kind, so that a client in another language can check itself against
//! them. `MESH_UPDATE_VECTORS=1` rewrites the file from the cases below; otherwise it is checked.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::PathBuf;

use mesh_types::signing::{Signed, verify_signature};
use mesh_types::{
    Answer, Endpoints, Envelope, Hlc, Identity, Offer, PeerId, PeerRegistration, Verifier,
    VerifierConfig,
};
use serde_json::{Value, json};

/// Fixed so the vectors are reproducible; `now` of every verdict below.
const NOW: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const WINDOW_MS: u64 = 60_000;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/vectors/signing.json")
}

fn key(name: &str, seed_byte: u8) -> Identity {
    use base64::Engine as _;
    let seed = base64::engine::general_purpose::STANDARD.encode([seed_byte; 32]);
    Identity::from_seed_base64(PeerId::new(name).unwrap(), &seed).unwrap()
}

fn signed<T: Signed>(mut msg: T, by: &Identity) -> T {
    msg.sign(by).unwrap();
    msg
}

fn p(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

/// Every case: (name, domain, message as JSON, expected verdict: "ok" or an error code).
/// (name, domain, message as JSON, expected verdict).
type Case = (&'static str, &'static str, Value, &'static str);

fn cases() -> (Vec<Identity>, Vec<Case>) {
    let alice = key("alice", 1);
    let bob = key("bob", 2);
    let mallory = key("alice", 3); // claims to be alice with another key

    let offer = signed(
        Offer::new(
            p("alice"),
            p("bob"),
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
            NOW,
        ),
        &alice,
    );
    let answer = signed(
        Answer::new(
            p("bob"),
            p("alice"),
            "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n".into(),
            NOW + 5,
        ),
        &bob,
    );
    let registration = signed(
        PeerRegistration::new(
            p("alice"),
            alice.public_key(),
            Some("europe-west1".into()),
            Endpoints {
                webrtc: None,
                https: Some("https://alice.example".into()),
            },
            NOW,
        ),
        &alice,
    );
    let envelope = signed(
        Envelope {
            id: "env-0001".into(),
            ts: NOW,
            kind: "telemetry".into(),
            payload: json!({"links": [{"id": "alice<->bob", "rttMs": 1.25, "lossPct": 0}], "seen": 2}),
            from: p("alice"),
            hlc: Hlc {
                wall_ms: NOW,
                counter: 7,
            },
            ttl: 4,
            hops: 0,
            sig: String::new(),
            kid: None,
        },
        &alice,
    );

    let mut tampered = offer.clone();
    tampered.sdp.push_str("a=tampered\r\n");
    let wrong_signer = signed(
        Offer::new(p("alice"), p("bob"), "v=0\r\n".into(), NOW),
        &mallory,
    );
    let stale = signed(
        Offer::new(p("alice"), p("bob"), "v=0\r\n".into(), NOW - WINDOW_MS - 1),
        &alice,
    );
    let future = signed(
        Offer::new(p("alice"), p("bob"), "v=0\r\n".into(), NOW + WINDOW_MS + 1),
        &alice,
    );
    let mut hopped = envelope.clone();
    hopped.hops = 2;

    let cases = vec![
        ("offer", "offer", j(&offer), "ok"),
        ("answer", "answer", j(&answer), "ok"),
        ("peer registration", "peer", j(&registration), "ok"),
        ("envelope", "envelope", j(&envelope), "ok"),
        (
            "envelope forwarded twice (hops are not signed)",
            "envelope",
            j(&hopped),
            "ok",
        ),
        (
            "offer with tampered sdp",
            "offer",
            j(&tampered),
            "bad_signature",
        ),
        (
            "offer signed by another key",
            "offer",
            j(&wrong_signer),
            "wrong_signer",
        ),
        (
            "offer older than the window",
            "offer",
            j(&stale),
            "stale_timestamp",
        ),
        (
            "offer beyond the window ahead",
            "offer",
            j(&future),
            "future_timestamp",
        ),
        (
            "offer presented as an answer",
            "answer",
            j(&offer),
            "bad_signature",
        ),
    ];
    (vec![alice, bob, mallory], cases)
}

fn j<T: serde::Serialize>(msg: &T) -> Value {
    serde_json::to_value(msg).unwrap()
}

fn signing_bytes(domain: &str, msg: &Value) -> Vec<u8> {
    let v = msg.clone();
    match domain {
        "offer" => serde_json::from_value::<Offer>(v).unwrap().signing_bytes(),
        "answer" => serde_json::from_value::<Answer>(v).unwrap().signing_bytes(),
        "peer" => serde_json::from_value::<PeerRegistration>(v)
            .unwrap()
            .signing_bytes(),
        "envelope" => serde_json::from_value::<Envelope>(v)
            .unwrap()
            .signing_bytes(),
        other => panic!("unknown domain {other}"),
    }
    .unwrap()
}

/// The verdict of a fresh verifier at `NOW` against alice's (or bob's) registered key.
fn verdict(domain: &str, msg: &Value, keys: &[Identity]) -> String {
    let mut verifier = Verifier::new(VerifierConfig {
        window_ms: WINDOW_MS,
        ..Default::default()
    });
    let signer = |field: &str| msg[field].as_str().unwrap().to_string();
    let registered = |id: String| {
        keys.iter()
            .find(|k| k.id().as_str() == id)
            .unwrap()
            .public_key()
    };
    let result = match domain {
        "offer" => verifier.verify(
            &serde_json::from_value::<Offer>(msg.clone()).unwrap(),
            &registered(signer("peerFrom")),
            NOW,
        ),
        "answer" => verifier.verify(
            &serde_json::from_value::<Answer>(msg.clone()).unwrap(),
            &registered(signer("peerFrom")),
            NOW,
        ),
        "peer" => {
            let reg = serde_json::from_value::<PeerRegistration>(msg.clone()).unwrap();
            // A registration is checked against the key it carries.
            verifier.verify(&reg, &reg.pub_key, NOW)
        }
        "envelope" => verifier.verify(
            &serde_json::from_value::<Envelope>(msg.clone()).unwrap(),
            &registered(signer("from")),
            NOW,
        ),
        other => panic!("unknown domain {other}"),
    };
    match result {
        Ok(()) => "ok".into(),
        Err(e) => e.code().into(),
    }
}

fn build() -> Value {
    let (keys, cases) = cases();
    let keys_json: Vec<Value> = keys
        .iter()
        .take(2)
        .map(|k| json!({"peer": k.id(), "seed": k.seed_base64(), "pubKey": k.public_key(), "kid": k.public_key().key_id()}))
        .collect();
    let cases_json: Vec<Value> = cases
        .iter()
        .map(|(name, domain, msg, expect)| {
            json!({
                "name": name,
                "domain": domain,
                "message": msg,
                "signingBytesHex": hex::encode(signing_bytes(domain, msg)),
                "expect": expect,
            })
        })
        .collect();
    json!({
        "description": "meshrtc signing test vectors; see proto/SIGNING.md. Verdicts are at nowMs with the window.",
        "nowMs": NOW,
        "windowMs": WINDOW_MS,
        "keys": keys_json,
        "cases": cases_json,
    })
}

#[test]
fn golden_vectors_match() {
    let built = build();
    let path = vectors_path();
    if std::env::var_os("MESH_UPDATE_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        stored, built,
        "proto/vectors/signing.json is out of date: rerun with MESH_UPDATE_VECTORS=1"
    );
}

#[test]
fn stored_vectors_verify_with_their_verdicts() {
    // Reads the file, not `build()`: this is what another language's client would check.
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    let (keys, _) = cases();
    let cases = stored["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut verdicts = std::collections::BTreeSet::new();
    for case in cases {
        let domain = case["domain"].as_str().unwrap();
        let msg = &case["message"];
        assert_eq!(
            hex::encode(signing_bytes(domain, msg)),
            case["signingBytesHex"],
            "{}",
            case["name"]
        );
        assert_eq!(
            verdict(domain, msg, &keys),
            case["expect"].as_str().unwrap(),
            "{}",
            case["name"]
        );
        verdicts.insert(case["expect"].as_str().unwrap().to_string());
    }
    // Tampering, a wrong signer, stale and future timestamps each have their own code.
    for code in [
        "ok",
        "bad_signature",
        "wrong_signer",
        "stale_timestamp",
        "future_timestamp",
    ] {
        assert!(verdicts.contains(code), "no vector for {code}");
    }
    // Signatures are deterministic: re-signing the valid offer with alice's seed reproduces it.
    let offer: Offer = serde_json::from_value(cases[0]["message"].clone()).unwrap();
    let mut again = offer.clone();
    again.sign(&keys[0]).unwrap();
    assert_eq!(again.sig, offer.sig);
    verify_signature(&offer, &keys[0].public_key()).unwrap();
}

#[test]
fn a_replayed_vector_is_refused() {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    let (keys, _) = cases();
    let offer: Offer = serde_json::from_value(stored["cases"][0]["message"].clone()).unwrap();
    let mut verifier = Verifier::new(VerifierConfig::default());
    verifier.verify(&offer, &keys[0].public_key(), NOW).unwrap();
    let again = verifier
        .verify(&offer, &keys[0].public_key(), NOW + 1)
        .unwrap_err();
    assert_eq!(again.code(), "replayed");
}

#[test]
fn an_independent_javascript_client_reproduces_the_vectors() {
    // proto/check-vectors.mjs rebuilds the signing bytes from the spec alone and verifies the
    // signatures with Node's own Ed25519: the interop claim of proto/, checked.
    let script = vectors_path().with_file_name("../check-vectors.mjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(vectors_path())
        .output()
        .expect("node (Node.js 20+) must be installed to check the vectors");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10 vectors checked"), "{stdout}");
}
