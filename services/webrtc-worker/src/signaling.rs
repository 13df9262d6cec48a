//! The worker as a native peer on the proxy's WebSocket signaling (`MESH_SIGNALING_URL`,
//! proto/SIGNALING.md): it registers with a signed proof of its key, answers offers relayed from
//! browsers and other WebRTC stacks, and takes their trickled candidates. Its own candidates
//! travel in the answer (it gathers before answering), so it trickles none.
//!
//! The driver owns the socket; it reconnects with backoff when the connection drops. Offers are
//! answered in their own tasks (answering waits for gathering), and candidates that arrive
//! while an offer is being answered are held and added once the connection exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mesh_types::PeerId;
use mesh_types::signaling::{ClientMessage, IceCandidate, RegisterProof, ServerMessage};
use mesh_types::signing::Signed as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::worker::Worker;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff; a shorter one (refused, replaced by a
/// twin with our id) keeps backing off.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence before the connection counts as dead, until the server's `hello` says its idle
/// time-out (it pings at a third of that).
const DEFAULT_SILENCE: Duration = Duration::from_secs(120);
/// Offers answered at once; more are refused until some finish.
const MAX_PENDING_OFFERS: usize = 32;

/// What an offer task reports back to the driver.
enum Done {
    Answered { to: PeerId, sdp: String },
    Failed { to: PeerId },
}

/// Runs until the task is dropped (the worker's shutdown aborts it). How long a session lasted
/// decides the backoff.
pub async fn run(worker: Arc<Worker>, url: String) {
    let mut backoff = BACKOFF_MIN;
    let clock = *worker.clock();
    loop {
        let began = clock.since_start();
        let outcome = session(&worker, &url).await;
        if clock.since_start().saturating_sub(began) >= HEALTHY_SESSION {
            backoff = BACKOFF_MIN;
        }
        match outcome {
            Ok(()) => {
                tracing::warn!(%url, retry_in_ms = backoff.as_millis() as u64, "signaling connection closed; reconnecting")
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, retry_in_ms = backoff.as_millis() as u64, "signaling connection failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(worker: &Arc<Worker>, url: &str) -> anyhow::Result<()> {
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| anyhow::anyhow!("no WebSocket connection within {CONNECT_TIMEOUT:?}"))??;
    let (mut sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(64);
    // Candidates from peers whose offer is still being answered.
    let mut held: HashMap<PeerId, Vec<IceCandidate>> = HashMap::new();
    let mut silence = DEFAULT_SILENCE;
    loop {
        tokio::select! {
            frame = tokio::time::timeout(silence, stream.next()) => {
                // The server pings well within its idle time-out; nothing at all means the path
                // is gone (a NAT or load balancer dropped it without a word).
                let Ok(frame) = frame else {
                    anyhow::bail!("nothing from the signaling server for {silence:?}");
                };
                let Some(frame) = frame else { return Ok(()) };
                let text = match frame? {
                    Message::Text(t) => t,
                    Message::Close(_) => return Ok(()),
                    _ => continue,
                };
                let msg: ServerMessage = match serde_json::from_str(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable signaling message");
                        continue;
                    }
                };
                if let ServerMessage::Hello { limits, .. } = &msg {
                    silence = Duration::from_secs(limits.idle_timeout_secs.max(1) * 2);
                }
                if let Some(reply) = on_message(worker, msg, &mut held, &done_tx).await {
                    sink.send(Message::text(serde_json::to_string(&reply)?)).await?;
                }
            }
            Some(done) = done_rx.recv() => match done {
                Done::Answered { to, sdp } => {
                    let answer = ClientMessage::Answer { to: to.clone(), sdp, from: None, reference: None };
                    sink.send(Message::text(serde_json::to_string(&answer)?)).await?;
                    for c in held.remove(&to).unwrap_or_default() {
                        add_candidate(worker, &to, &c).await;
                    }
                }
                Done::Failed { to } => {
                    held.remove(&to);
                }
            }
        }
    }
}

async fn on_message(
    worker: &Arc<Worker>,
    msg: ServerMessage,
    held: &mut HashMap<PeerId, Vec<IceCandidate>>,
    done: &mpsc::Sender<Done>,
) -> Option<ClientMessage> {
    match msg {
        ServerMessage::Hello { nonce, .. } => {
            let mut proof = RegisterProof::new(worker.id().clone(), nonce, worker.now_ms());
            if let Err(e) = proof.sign(worker.identity()) {
                tracing::error!(error = %e, "cannot sign the signaling proof");
                return None;
            }
            Some(ClientMessage::Register {
                proof: Some(proof),
                reference: None,
            })
        }
        ServerMessage::Registered { id, .. } => {
            tracing::info!(peer = %id, "registered on WebSocket signaling");
            None
        }
        ServerMessage::Offer { from, sdp } => {
            // One offer per peer at a time (a second would race the first for the same link),
            // and a bounded number in all.
            if held.contains_key(&from) || held.len() >= MAX_PENDING_OFFERS {
                tracing::warn!(peer = %from, pending = held.len(), "relayed offer ignored: one from this peer is still being answered, or too many are");
                return None;
            }
            held.insert(from.clone(), Vec::new());
            let worker = worker.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let outcome = match worker
                    .links()
                    .accept_relayed_offer(from.clone(), &sdp)
                    .await
                {
                    Ok(sdp) => Done::Answered { to: from, sdp },
                    Err(e) => {
                        tracing::warn!(peer = %from, error = %e, "refused a relayed offer");
                        Done::Failed { to: from }
                    }
                };
                let _ = done.send(outcome).await;
            });
            None
        }
        ServerMessage::Candidate { from, candidate } => {
            // `null`: the peer has gathered everything; the library needs no signal for it.
            let candidate = candidate?;
            match held.get_mut(&from) {
                Some(waiting) => waiting.push(candidate),
                None => add_candidate(worker, &from, &candidate).await,
            }
            None
        }
        ServerMessage::Error { code, message, .. } => {
            tracing::warn!(%code, %message, "signaling server refused a message");
            None
        }
        ServerMessage::Peers { .. }
        | ServerMessage::PeerJoined { .. }
        | ServerMessage::PeerLeft { .. }
        | ServerMessage::Pong { .. } => None,
        ServerMessage::Answer { from, .. } => {
            tracing::warn!(peer = %from, "an answer over signaling, but this worker sends no offers there");
            None
        }
    }
}

async fn add_candidate(worker: &Worker, from: &PeerId, candidate: &IceCandidate) {
    // A candidate we cannot use (an mDNS name, a link already gone) is not fatal: others may
    // work, and the peer's checks reveal its address anyway.
    match worker.links().add_remote_candidate(from, candidate).await {
        Ok(()) => {
            tracing::debug!(peer = %from, candidate = %candidate.candidate, "remote candidate added")
        }
        Err(e) => tracing::debug!(peer = %from, error = %e, "remote candidate not added"),
    }
}
