//! Calls to workers: one POST per signaling step, with a time-out and the caller's trace
//! context, and every failure turned into an error that names the peer and the step.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use mesh_service::ApiError;
use mesh_types::Peer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Largest answer read from a worker.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// A step of the handshake, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Dial,
    Offer,
    Answer,
    WaitUp,
    /// Asking a worker to send a file (not part of a handshake).
    Transfer,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Dial => "dial",
            Step::Offer => "offer",
            Step::Answer => "answer",
            Step::WaitUp => "wait_up",
            Step::Transfer => "transfer",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Step::Dial => "/dial",
            Step::Offer => "/offer",
            Step::Answer => "/answer",
            Step::WaitUp => "/links",
            Step::Transfer => "/transfers",
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
                // A registered URL says where the worker is; a redirect would let it point the
                // proxy anywhere else.
                .redirect(reqwest::redirect::Policy::none())
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
        let body = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
        self.call(peer, step, reqwest::Method::POST, step.path(), Some(body))
            .await
    }

    /// `peer`'s worker's view of its links (`GET /links`).
    pub async fn links(&self, peer: &Peer) -> Result<serde_json::Value, ApiError> {
        self.call(peer, Step::WaitUp, reqwest::Method::GET, "/links", None)
            .await
    }

    /// Asks `peer`'s worker to hang up on `other` (a handshake that will not finish); best
    /// effort, so a failure is only logged.
    pub async fn hang_up(&self, peer: &Peer, other: &mesh_types::PeerId) {
        let path = format!("/links/{other}");
        let result: Result<serde_json::Value, ApiError> = self
            .call(peer, Step::WaitUp, reqwest::Method::DELETE, &path, None)
            .await;
        if let Err(e) = result {
            tracing::debug!(peer = %peer.id, %other, error = %e, "hang-up after a failed connect");
        }
    }

    async fn call<R: DeserializeOwned>(
        &self,
        peer: &Peer,
        step: Step,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<R, ApiError> {
        let fail = |status: StatusCode, code: &str, message: String, upstream: Option<u16>| {
            let mut details = json!({ "peer": peer.id, "step": step.as_str() });
            if let Some(s) = upstream {
                details["upstreamStatus"] = json!(s);
            }
            ApiError::new(
                status,
                code.to_string(),
                format!("{}: {message}", step.as_str()),
            )
            .with_details(details)
        };
        let Some(base) = peer.endpoints.https.as_deref() else {
            return Err(fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_endpoint",
                format!("peer {} has no worker URL (endpoints.https)", peer.id),
                None,
            ));
        };
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut headers = HeaderMap::new();
        mesh_service::http::inject_trace_context(&mut headers);
        let mut req = self.http.request(method, &url).headers(headers);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let mut res = match req.send().await {
            Ok(res) => res,
            Err(e) if e.is_timeout() => {
                return Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!("peer {}'s worker at {url} did not answer in time", peer.id),
                    None,
                ));
            }
            Err(e) => {
                return Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    format!("peer {}'s worker at {url} is unreachable: {e}", peer.id),
                    None,
                ));
            }
        };
        let status = res.status();
        // Bounded: a worker's answers are small; whatever sits at a registered URL is not
        // allowed to make the proxy buffer more.
        let mut bytes = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    bytes.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => {
                    return Err(fail(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        format!(
                            "peer {}'s worker sent more than {MAX_ANSWER_BYTES} bytes",
                            peer.id
                        ),
                        Some(status.as_u16()),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    let (status, code) = if e.is_timeout() {
                        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                    } else {
                        (StatusCode::BAD_GATEWAY, "upstream_error")
                    };
                    return Err(fail(
                        status,
                        code,
                        format!("reading peer {}'s answer: {e}", peer.id),
                        None,
                    ));
                }
            }
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("peer {}'s worker sent an unreadable answer: {e}", peer.id),
                    Some(status.as_u16()),
                )
            });
        }
        // The worker's own JSON error keeps its code (it says what was wrong, e.g.
        // `link_exists`); the status is always the gateway's, 502, so a worker's 401 or 404 is
        // never mistaken for the proxy's own.
        let refusal = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let field = |name: &str| {
            refusal
                .as_ref()
                .and_then(|v| v.get("error")?.get(name)?.as_str().map(str::to_string))
        };
        let code = field("code")
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or_else(|| "upstream_error".into());
        let message = field("message")
            .map(|m| m.chars().take(500).collect::<String>())
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(fail(
            StatusCode::BAD_GATEWAY,
            &code,
            format!("peer {}'s worker refused: {message}", peer.id),
            Some(status.as_u16()),
        ))
    }
}
