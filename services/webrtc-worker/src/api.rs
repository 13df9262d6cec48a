//! The worker's HTTP API (documented in docs/ARCHITECTURE.md): signaling (`/dial`, `/offer`,
//! `/answer`), links, mesh-channel messages and gossip (`/gossip`, proto/GOSSIP.md). Handlers are thin: they parse, call the
//! [`Worker`], and map its errors to the JSON error shape.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use mesh_service::{ApiError, ApiJson};
use mesh_types::{Answer, Delivery, Offer, PeerId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::WorkerError;
use crate::files::FileError;
use crate::queue::Sent;
use crate::transport::TransportError;
use crate::worker::Worker;

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            WorkerError::Verify(v) => return v.into(),
            WorkerError::Store(s) => return s.into(),
            WorkerError::UnknownPeer(_) => (StatusCode::FORBIDDEN, "unknown_peer"),
            WorkerError::WrongAddressee { .. } => (StatusCode::FORBIDDEN, "wrong_addressee"),
            WorkerError::SelfDial => (StatusCode::BAD_REQUEST, "invalid_input"),
            WorkerError::NothingPending(_) => (StatusCode::NOT_FOUND, "nothing_pending"),
            WorkerError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
            WorkerError::Glare { .. } => (StatusCode::CONFLICT, "glare"),
            WorkerError::LinkExists(_) => (StatusCode::CONFLICT, "link_exists"),
            WorkerError::NoLink(_) => (StatusCode::NOT_FOUND, "no_link"),
            WorkerError::NotConnected(_) => (StatusCode::CONFLICT, "not_connected"),
            WorkerError::MessageTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "message_too_large"),
            WorkerError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            WorkerError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            WorkerError::Transport(TransportError::BadSdp(_)) => {
                (StatusCode::BAD_REQUEST, "bad_sdp")
            }
            WorkerError::Transport(TransportError::BadCandidate(_)) => {
                (StatusCode::BAD_REQUEST, "bad_candidate")
            }
            WorkerError::Transport(_) => (StatusCode::INTERNAL_SERVER_ERROR, "webrtc_error"),
            WorkerError::Signing(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        use crate::files::disk::SendPathError as P;
        let message = e.to_string();
        let (status, code) = match &e {
            FileError::Path { source, .. } => match source {
                P::NotFound => (StatusCode::NOT_FOUND, "file_not_found"),
                P::Outside => (StatusCode::FORBIDDEN, "path_not_allowed"),
                P::NotAFile => (StatusCode::BAD_REQUEST, "not_a_file"),
                P::Unreadable(_) => (StatusCode::BAD_REQUEST, "unreadable"),
                P::Root(_) => (StatusCode::SERVICE_UNAVAILABLE, "send_root_unusable"),
            },
            FileError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            FileError::ToSelf => (StatusCode::BAD_REQUEST, "invalid_input"),
            FileError::UnknownPeer(_) => (StatusCode::NOT_FOUND, "unknown_peer"),
            FileError::NotFound(_) => (StatusCode::NOT_FOUND, "no_transfer"),
            FileError::Ended(_) => (StatusCode::CONFLICT, "transfer_ended"),
            FileError::Io(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The worker's routes (without the shared layers; `lib::app` adds them).
pub fn routes(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/dial", post(dial))
        .route("/offer", post(offer))
        .route("/answer", post(answer))
        .route("/links", get(links))
        .route("/links/{peer}", delete(hang_up))
        .route("/links/{peer}/messages", post(send))
        .route("/messages", get(messages))
        .route("/gossip", post(gossip_receive))
        .route("/gossip/push", post(gossip_push))
        .route("/gossip/state", get(gossip_state))
        .route("/status", get(status))
        .route("/transfers", get(transfers).post(start_transfer))
        .route("/transfers/{id}", get(transfer).delete(cancel_transfer))
        .with_state(worker)
}

/// `GET /status`: what this worker is doing for reliability: its store writes (spooled while the
/// store is away), the peers it is rejoining, and what its gossip has cost.
async fn status(State(w): State<Arc<Worker>>) -> ApiJson<Value> {
    let rejoining: Vec<String> = w.rejoin().peers().iter().map(ToString::to_string).collect();
    let links = w.links().views();
    let up = links.iter().filter(|l| l.is_up()).count();
    ApiJson(json!({
        "peer": w.id(),
        "links": links.len(),
        "quorum": crate::quorum::quorum(w.gossip().live_peer_count(), up),
        "rejoining": rejoining,
        "spool": w.spool.stats(),
        "queues": w.queue().views(),
        "gossip": w.gossip().counters(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DialRequest {
    peer_to: PeerId,
}

async fn dial(
    State(w): State<Arc<Worker>>,
    ApiJson(req): ApiJson<DialRequest>,
) -> ApiResult<ApiJson<Offer>> {
    let (offer, _) = w.links().dial(req.peer_to).await?;
    tracing::info!(peer = %offer.peer_to, "dialled; offer signed");
    Ok(ApiJson(offer))
}

async fn offer(
    State(w): State<Arc<Worker>>,
    ApiJson(offer): ApiJson<Offer>,
) -> ApiResult<ApiJson<Answer>> {
    let answer = w.links().accept_offer(offer).await?;
    tracing::info!(peer = %answer.peer_to, "offer accepted; answer signed");
    Ok(ApiJson(answer))
}

async fn answer(
    State(w): State<Arc<Worker>>,
    ApiJson(answer): ApiJson<Answer>,
) -> ApiResult<ApiJson<Value>> {
    let from = answer.peer_from.clone();
    w.links().accept_answer(answer).await?;
    tracing::info!(peer = %from, "answer accepted; connecting");
    Ok(ApiJson(json!({"ok": true})))
}

async fn links(State(w): State<Arc<Worker>>) -> ApiJson<Value> {
    let links = w.links().views();
    ApiJson(json!({"peer": w.id(), "count": links.len(), "links": links}))
}

fn peer_param(peer: &str) -> ApiResult<PeerId> {
    PeerId::new(peer).map_err(|e| ApiError::bad_request("invalid_input", e.to_string()))
}

async fn hang_up(
    State(w): State<Arc<Worker>>,
    Path(peer): Path<String>,
) -> ApiResult<ApiJson<Value>> {
    w.hang_up(&peer_param(&peer)?)?;
    Ok(ApiJson(json!({"ok": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: Option<String>,
    base64: Option<String>,
}

/// A message body: JSON `{"text": ...}` or `{"base64": ...}`, raw `text/plain`, or raw
/// `application/octet-stream` (what `curl --data-binary @file` sends with that header).
async fn send(
    State(w): State<Arc<Worker>>,
    Path(peer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, ApiJson<Value>)> {
    let peer = peer_param(&peer)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (data, text) = if content_type.starts_with("application/json") {
        let m: MessageBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
        match (m.text, m.base64) {
            (Some(t), None) => (t.into_bytes(), true),
            (None, Some(b)) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| ApiError::bad_request("invalid_input", format!("base64: {e}")))?;
                (data, false)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_input",
                    "give exactly one of text and base64",
                ));
            }
        }
    } else if content_type.starts_with("text/plain") {
        let s = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("invalid_input", "text/plain body is not UTF-8"))?;
        (s.into_bytes(), true)
    } else if content_type.starts_with("application/octet-stream") {
        (body.to_vec(), false)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json ({\"text\"} or {\"base64\"}), text/plain or application/octet-stream",
        ));
    };
    let bytes = data.len();
    Ok(match w.send_message(&peer, data, text).await? {
        Sent::Direct => (StatusCode::OK, ApiJson(json!({"ok": true, "bytes": bytes}))),
        Sent::Queued { seq, linked: true } => (
            StatusCode::OK,
            ApiJson(json!({"ok": true, "bytes": bytes, "seq": seq})),
        ),
        // Accepted for delivery when the peer's link is back.
        Sent::Queued { seq, linked: false } => (
            StatusCode::ACCEPTED,
            ApiJson(json!({"ok": true, "bytes": bytes, "seq": seq, "queued": true})),
        ),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    limit: Option<usize>,
    from: Option<String>,
}

async fn messages(
    State(w): State<Arc<Worker>>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<ApiJson<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let from = q.from.as_deref().map(peer_param).transpose()?;
    let (messages, dropped) = w.messages(limit, from.as_ref());
    Ok(ApiJson(
        json!({"count": messages.len(), "dropped": dropped, "messages": messages}),
    ))
}

/// An envelope handed over HTTPS (the fallback transport), in a delivery its sender signed.
async fn gossip_receive(
    State(w): State<Arc<Worker>>,
    ApiJson(delivery): ApiJson<Delivery>,
) -> ApiResult<ApiJson<crate::gossip::Taken>> {
    Ok(ApiJson(w.gossip().receive_https(delivery).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    targets: Vec<PeerId>,
}

/// Originates a telemetry envelope and delivers it to `targets` (what a gossip run asks).
async fn gossip_push(
    State(w): State<Arc<Worker>>,
    ApiJson(req): ApiJson<PushRequest>,
) -> ApiResult<ApiJson<crate::gossip::PushReport>> {
    if req.targets.is_empty() || req.targets.len() > 16 {
        return Err(ApiError::bad_request(
            "invalid_input",
            "targets: 1 to 16 peer ids",
        ));
    }
    let mut unique = req.targets.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != req.targets.len() {
        return Err(ApiError::bad_request(
            "invalid_input",
            "targets: each peer once",
        ));
    }
    Ok(ApiJson(w.gossip().push(req.targets).await?))
}

/// The gossiped state as this peer sees it, newest first.
async fn gossip_state(State(w): State<Arc<Worker>>) -> ApiJson<Value> {
    let entries = w.gossip().state();
    ApiJson(json!({"peer": w.id(), "count": entries.len(), "entries": entries}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    to: PeerId,
    /// On this worker's machine, inside its send root (relative paths are taken from there).
    path: String,
}

/// `POST /transfers`: 202 with the new transfer; it goes on in the background.
async fn start_transfer(
    State(w): State<Arc<Worker>>,
    ApiJson(req): ApiJson<TransferRequest>,
) -> ApiResult<(StatusCode, ApiJson<Value>)> {
    if req.path.is_empty() {
        return Err(ApiError::bad_request("invalid_input", "path is empty"));
    }
    let view = w
        .files()
        .start_transfer(req.to, std::path::Path::new(&req.path))
        .await?;
    Ok((StatusCode::ACCEPTED, ApiJson(json!(view))))
}

async fn transfers(State(w): State<Arc<Worker>>) -> ApiJson<Value> {
    let all = w.files().transfers();
    ApiJson(json!({"peer": w.id(), "count": all.len(), "transfers": all}))
}

fn transfer_id(id: &str) -> ApiResult<mesh_types::transfer::TransferId> {
    mesh_types::transfer::TransferId::parse(id)
        .map_err(|e| ApiError::bad_request("invalid_input", e.to_string()))
}

async fn transfer(
    State(w): State<Arc<Worker>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Value>> {
    let id = transfer_id(&id)?;
    w.files()
        .transfer(id)
        .map(|v| ApiJson(json!(v)))
        .ok_or_else(|| FileError::NotFound(id).into())
}

/// `DELETE /transfers/{id}`: cancels a transfer under way, on both sides.
async fn cancel_transfer(
    State(w): State<Arc<Worker>>,
    Path(id): Path<String>,
) -> ApiResult<ApiJson<Value>> {
    w.files().cancel_transfer(transfer_id(&id)?).await?;
    Ok(ApiJson(json!({"ok": true})))
}
