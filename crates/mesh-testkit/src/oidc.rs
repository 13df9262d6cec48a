//! A stand-in OIDC issuer for tests: Ed25519 keys in a JWKS served on loopback, and ID tokens
//! signed with them, so services verify real tokens over real HTTP (as they would Google's).

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test";

/// PKCS#8 v1 DER of an Ed25519 private key: a fixed prefix (RFC 8410) and the 32-byte seed.
fn pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    der
}

/// The public JWK of the key derived from `seed`.
pub fn jwk(kid: &str, seed: [u8; 32]) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
           "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

/// A JWT with `claims`, signed by the key derived from `seed` and naming `kid`.
pub fn token(kid: &str, seed: [u8; 32], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&pkcs8(seed))).unwrap()
}

/// ID-token claims from [`ISSUER`] for a verified `email`, expiring `exp_from_now` s from now.
pub fn claims(email: &str, audience: &str, exp_from_now: i64) -> Value {
    // The service under test checks `exp` against the wall clock, so the token's times must be
    // read from it too.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({"iss": ISSUER, "aud": audience, "sub": format!("sub-{email}"), "email": email,
           "email_verified": true, "iat": now, "exp": now + exp_from_now})
}

/// Serves `jwks` at `/certs` on a free loopback port (for the test's life); returns its URL.
pub async fn jwks_server(jwks: Value) -> String {
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
