//! OIDC ID tokens as credentials, against the proxy binary and a JWKS served by the test (its
//! own Ed25519 keys standing in for Google's).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::Mesh;
use serde_json::{Value, json};

use mesh_testkit::oidc::{ISSUER, jwk, jwks_server};

const AUDIENCE: &str = "https://proxy.test";

fn token(kid: &str, seed: [u8; 32], claims: Value) -> String {
    mesh_testkit::oidc::token(kid, seed, &claims)
}

fn claims(email: &str, aud: &str, exp_from_now: i64) -> Value {
    mesh_testkit::oidc::claims(email, aud, exp_from_now)
}

#[tokio::test(flavor = "multi_thread")]
async fn id_tokens_from_the_configured_issuer_are_credentials() {
    let key = [7u8; 32];
    let other = [8u8; 32];
    let url = jwks_server(json!({"keys": [jwk("k1", key)]})).await;
    let mesh = Mesh::new(&[
        ("MESH_OIDC_AUDIENCE", AUDIENCE),
        ("MESH_OIDC_ISSUER", ISSUER),
        ("MESH_OIDC_JWKS_URL", url.as_str()),
        (
            "MESH_OIDC_PRINCIPALS",
            "scheduler@test.iam=operator,viewer@test.iam=read",
        ),
    ]);
    let get = |t: String| {
        let mesh = &mesh;
        async move { mesh.get("/api/mesh/peers", Some(&t)).await }
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("<none>").to_string();

    let (s, v) = get(token(
        "k1",
        key,
        claims("scheduler@test.iam", AUDIENCE, 300),
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = get(token("k1", key, claims("viewer@test.iam", AUDIENCE, 300))).await;
    assert_eq!(s, 200, "{v}");
    // Role from the mapping: the viewer may read, not connect.
    let viewer = token("k1", key, claims("viewer@test.iam", AUDIENCE, 300));
    let (s, v) = mesh
        .post(
            "/api/mesh-rtc/connect",
            Some(&viewer),
            &json!({"a": "x", "b": "y"}),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden".to_string()), "{v}");

    for (what, bad) in [
        (
            "expired",
            token("k1", key, claims("scheduler@test.iam", AUDIENCE, -600)),
        ),
        (
            "another audience",
            token(
                "k1",
                key,
                claims("scheduler@test.iam", "https://elsewhere", 300),
            ),
        ),
        (
            "signed by another key",
            token("k1", other, claims("scheduler@test.iam", AUDIENCE, 300)),
        ),
        (
            "an unknown key id",
            token("k9", key, claims("scheduler@test.iam", AUDIENCE, 300)),
        ),
    ] {
        let (s, v) = get(bad).await;
        assert_eq!(
            (s, code(&v)),
            (401, "unauthenticated".to_string()),
            "{what}: {v}"
        );
    }
    let (s, v) = get(token("k1", key, claims("stranger@test.iam", AUDIENCE, 300))).await;
    assert_eq!(
        (s, code(&v)),
        (403, "forbidden".to_string()),
        "an unmapped subject: {v}"
    );
}
