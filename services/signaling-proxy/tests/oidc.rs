//! OIDC ID tokens as credentials, against the proxy binary and a JWKS served by the test (its
//! own Ed25519 keys standing in for Google's).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use base64::Engine as _;
use common::Mesh;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://proxy.test";

/// PKCS#8 v1 DER of an Ed25519 private key: a fixed prefix (RFC 8410) and the 32-byte seed.
fn pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&seed);
    der
}

fn jwk(kid: &str, seed: [u8; 32]) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
           "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

fn token(kid: &str, seed: [u8; 32], claims: Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&pkcs8(seed))).unwrap()
}

fn claims(email: &str, aud: &str, exp_from_now: i64) -> Value {
    let now = (common::now_ms() / 1000) as i64;
    json!({"iss": ISSUER, "aud": aud, "sub": format!("sub-{email}"), "email": email,
           "email_verified": true, "iat": now, "exp": now + exp_from_now})
}

/// Serves `jwks` at `/certs` on a free loopback port; returns its URL.
async fn jwks_server(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
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
