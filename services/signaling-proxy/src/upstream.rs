//! Calls to workers: one POST per signaling step, with a time-out and the caller's trace
//! context, and every failure turned into an error that names the peer and the step.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use mesh_service::ApiError;
use mesh_types::Peer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// A step of the handshake, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Dial,
    Offer,
    Answer,
    WaitUp,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Dial => "dial",
            Step::Offer => "offer",
            Step::Answer => "answer",
            Step::WaitUp => "wait_up",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Step::Dial => "/dial",
            Step::Offer => "/offer",
            Step::Answer => "/answer",
            Step::WaitUp => "/links",
        }
    }
}

/// The HTTP client for workers.
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
}

impl Upstream {
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Upstream {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
        })
    }

    /// POSTs `body` to `peer`'s worker for `step` and decodes its JSON answer.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        peer: &Peer,
        step: Step,
        body: &B,
    ) -> Result<R, ApiError> {
        let fail = |status: StatusCode, code: &str, message: String| {
            ApiError::new(status, code.to_string(), message).with_details(json!({
                "peer": peer.id,
                "step": step.as_str(),
            }))
        };
        let Some(base) = peer.endpoints.https.as_deref() else {
            return Err(fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_endpoint",
                format!(
                    "{}: peer {} has no worker URL (endpoints.https)",
                    step.as_str(),
                    peer.id
                ),
            ));
        };
        let url = format!("{}{}", base.trim_end_matches('/'), step.path());
        let mut headers = HeaderMap::new();
        mesh_service::http::inject_trace_context(&mut headers);
        let sent = self
            .http
            .post(&url)
            .headers(headers)
            .json(body)
            .send()
            .await;
        let res = match sent {
            Ok(res) => res,
            Err(e) if e.is_timeout() => {
                return Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "{}: peer {}'s worker at {url} did not answer in time",
                        step.as_str(),
                        peer.id
                    ),
                ));
            }
            Err(e) => {
                return Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    format!(
                        "{}: peer {}'s worker at {url} is unreachable: {e}",
                        step.as_str(),
                        peer.id
                    ),
                ));
            }
        };
        let status = res.status();
        let bytes = match res.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                return Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "{}: peer {}'s worker stopped answering: {e}",
                        step.as_str(),
                        peer.id
                    ),
                ));
            }
            Err(e) => {
                return Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("{}: reading peer {}'s answer: {e}", step.as_str(), peer.id),
                ));
            }
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!(
                        "{}: peer {}'s worker sent an unreadable answer: {e}",
                        step.as_str(),
                        peer.id
                    ),
                )
            });
        }
        // The worker's own JSON error: keep its code; a client error stays a client error (the
        // request was wrong for that worker), anything else is the gateway's problem.
        let (code, message) = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some((
                    e.get("code")?.as_str()?.to_string(),
                    e.get("message")?.as_str()?.to_string(),
                ))
            })
            .unwrap_or_else(|| ("upstream_error".into(), format!("HTTP {status}")));
        let proxy_status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_GATEWAY
        };
        Err(ApiError::new(
            proxy_status,
            code,
            format!(
                "{}: peer {}'s worker refused: {message}",
                step.as_str(),
                peer.id
            ),
        )
        .with_details(json!({
            "peer": peer.id,
            "step": step.as_str(),
            "upstreamStatus": status.as_u16(),
        })))
    }
}
