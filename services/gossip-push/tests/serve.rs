//! `gossip-push serve`: `POST /run` for Cloud Scheduler, authenticated by OIDC ID tokens from the
//! configured issuer (a JWKS served by the test) or an operator API token.
#![allow(clippy::unwrap_used)]

use mesh_testkit::oidc::{claims, jwk, jwks_server, token};
use mesh_testkit::process::ServiceProcess;
use serde_json::{Value, json};

const AUDIENCE: &str = "https://gossip-push.test";

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduler_id_token_runs_gossip_and_nothing_else_does() {
    let key = [11u8; 32];
    let jwks = jwks_server(json!({"keys": [jwk("k1", key)]})).await;
    let dir = mesh_testkit::data_dir();
    let ops = mesh_auth::sha256_hex("ops-token");
    let env = vec![
        ("MESH_STORE", format!("embedded:{}", dir.path().display())),
        ("MESH_OIDC_AUDIENCE", AUDIENCE.to_string()),
        ("MESH_OIDC_ISSUER", mesh_testkit::oidc::ISSUER.to_string()),
        ("MESH_OIDC_JWKS_URL", jwks),
        (
            "MESH_OIDC_PRINCIPALS",
            "scheduler@test.iam=operator,viewer@test.iam=read".to_string(),
        ),
        ("MESH_API_TOKENS", format!("ops:operator:{ops}")),
    ];
    let job = ServiceProcess::start_with_args(
        env!("CARGO_BIN_EXE_gossip-push"),
        &["serve"],
        &env,
        "gossip-push serving",
    );
    let http = reqwest::Client::new();
    let run = |bearer: Option<String>| {
        let mut req = http.post(format!("{}/run", job.url));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let scheduler = token("k1", key, &claims("scheduler@test.iam", AUDIENCE, 300));
    let (s, report) = run(Some(scheduler)).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        report["origins"],
        json!([]),
        "an empty mesh: nothing to push"
    );
    let (s, _) = run(Some("ops-token".into())).await;
    assert_eq!(s, 200, "an operator API token also may");
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    let (s, v) = run(None).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated".into()));
    let viewer = token("k1", key, &claims("viewer@test.iam", AUDIENCE, 300));
    let (s, v) = run(Some(viewer)).await;
    assert_eq!((s, code(&v)), (403, "forbidden".into()));
    let elsewhere = token(
        "k1",
        key,
        &claims("scheduler@test.iam", "https://other", 300),
    );
    let (s, v) = run(Some(elsewhere)).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated".into()));
}
