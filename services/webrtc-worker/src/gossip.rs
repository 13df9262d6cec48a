//! The worker's gossip driver (protocol in proto/GOSSIP.md): it pushes signed telemetry
//! envelopes to the peers a gossip run names, receives envelopes on its links' `gossip`
//! DataChannels and on `POST /gossip`, and forwards what is new. The decisions are
//! mesh-gossip's (`Node`, `Sampler`, trust quotas); this file owns the IO: the store, the
//! channels, HTTPS, the clock and the RNG.
//!
//! Transport per target: the `gossip` channel of a connected link, the envelope acknowledged by
//! the receiver within [`ACK_TIMEOUT`]; otherwise HTTPS to the target's worker, carried in a
//! [`Delivery`] signed by this peer. A refusal by the receiver is final (the other path would
//! get the same answer); only a missing link, a failed send or a lost ack fall back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use mesh_gossip::limits::{RateConfig, quota};
use mesh_gossip::node::{Node, NodeConfig, OriginateError, Received, Rejection, heads};
use mesh_gossip::select::{Candidate, Sampler, SelectionConfig};
use mesh_gossip::telemetry::{NewsConfig, compact, is_news};
use mesh_service::ApiError;
use mesh_store::SharedStore;
use mesh_types::rate::{Bucket, Keyed, Quota};
use mesh_types::signing::{Signed, verify_signature};
use mesh_types::transfer::MessageKind;
use mesh_types::{
    AuditRecord, AuditTarget, Delivery, Envelope, GossipEntry, GossipFrame, Identity, LinkSummary,
    Outcome, PeerId, PublicKey, Telemetry, Transport, UnixMillis, Verifier, VerifierConfig,
};
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::WorkerError;
use crate::links::LinkHandle;
use crate::lock;
use crate::queue::Queue;
use crate::spool::Spool;
use crate::transport::Channel;

/// How long a DataChannel delivery waits for the receiver's ack before trying HTTPS.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// One HTTPS delivery.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two reloads of the peer list caused by an unknown peer.
const RELOAD_AFTER: Duration = Duration::from_secs(2);
/// The peer list is reloaded at least this often anyway (trust and endpoints change).
const MAX_PEER_AGE: Duration = Duration::from_secs(30);
/// Refusals audited per sender: 1 a second, bursts of 10, and 20 a second (bursts of 100) in
/// all; the rest are counted into the sender's next record, so a flood of garbage cannot turn
/// into a flood of store writes. Senders that are not registered peers share one budget (and
/// one count), as do refusals before the sender's signature checks, or inventing or borrowing
/// names would get round it.
const AUDIT_PER_SECOND: f64 = 1.0;
const AUDIT_BURST: f64 = 10.0;
const AUDIT_ALL_PER_SECOND: f64 = 20.0;
const AUDIT_ALL_BURST: f64 = 100.0;
const UNREGISTERED: &str = "unregistered";
/// Pushes a worker originates: a run asks once per 2 minutes, so 1 a second (bursts of 10)
/// is generous, and bounds what any caller of `/gossip/push` can make it sign and remember.
const ORIGINATE: Quota = Quota::per_second_const(1, 10);

/// Gossip settings of a worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct GossipSettings {
    pub node: NodeConfig,
    pub rate: RateConfig,
    pub selection: SelectionConfig,
}

/// What this worker's gossip has done since it started (`GET /status`): the figures behind the
/// idle-cost benchmark's per-round costs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Envelopes this peer originated, and how often its own entry was restamped for them.
    pub originated: u64,
    pub restamped: u64,
    /// Envelope sends (originated or forwarded; a DataChannel send or an HTTPS delivery) and
    /// their bytes of JSON.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Envelopes received: taken, or copies of one taken before.
    pub accepted: u64,
    pub duplicates: u64,
    /// Entries in what was taken: verified (and new here), and already held (not verified).
    pub entries_verified: u64,
    pub entries_held: u64,
}

#[derive(Debug, Clone)]
struct PeerInfo {
    key: PublicKey,
    trust: f64,
    https: Option<String>,
    last_seen_ms: UnixMillis,
}

#[derive(Debug, Default)]
struct PeerCache {
    peers: HashMap<PeerId, PeerInfo>,
    /// When, on the worker's clock (time since its start).
    loaded: Option<Duration>,
}

type AckKey = (PeerId, PeerId, String);

#[derive(Debug)]
struct Ack {
    outcome: Outcome,
    code: Option<String>,
    message: Option<String>,
}

/// The gossip component: the node's state, the peer cache, the rate limits and the acks being
/// waited for; it reaches links, the store and the queue through the handles it was given.
pub struct Gossip {
    settings: GossipSettings,
    node: Mutex<Node>,
    peers: Mutex<PeerCache>,
    reload: tokio::sync::Mutex<()>,
    inbound: Mutex<Keyed<PeerId>>,
    outbound: Mutex<Keyed<PeerId>>,
    audit_budget: Mutex<AuditBudget>,
    acks: Mutex<HashMap<AckKey, oneshot::Sender<Ack>>>,
    deliveries: Mutex<Verifier>,
    /// Envelopes this peer originates: at most [`ORIGINATE_PER_SECOND`].
    originate: Mutex<Bucket>,
    /// Accepted entries the store has not taken yet (it failed): written with the next batch,
    /// the newest per key, so a store outage loses nothing that was acked.
    unstored: Mutex<HashMap<String, GossipEntry>>,
    /// The telemetry in this peer's own entry, and when it was stamped: a push restamps it only
    /// when the links' state is news (mesh-gossip's `telemetry`).
    stamped: Mutex<Option<(Telemetry, UnixMillis)>>,
    counters: Mutex<Counters>,
    http: reqwest::Client,
    rng: Mutex<StdRng>,
    clock: Clock,
    links: Arc<dyn LinkHandle>,
    identity: Arc<Identity>,
    store: SharedStore,
    /// Audit records on their way to the store.
    spool: Arc<Spool>,
    /// Where envelopes go for a worker peer that neither the link nor HTTPS reached.
    queue: Arc<Queue>,
    /// This worker's region, for its telemetry.
    region: Option<String>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    pub fn new(parts: GossipParts) -> Arc<Self> {
        let any = Quota::new(1.0, 1.0);
        Arc::new(Gossip {
            settings: parts.settings,
            node: Mutex::new(Node::new(parts.links.id().clone(), parts.settings.node)),
            peers: Mutex::new(PeerCache::default()),
            reload: tokio::sync::Mutex::new(()),
            inbound: Mutex::new(Keyed::new(any)),
            outbound: Mutex::new(Keyed::new(any)),
            audit_budget: Mutex::new(AuditBudget::new()),
            acks: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(Verifier::new(VerifierConfig::default())),
            originate: Mutex::new(ORIGINATE.bucket(Duration::ZERO)),
            unstored: Mutex::new(HashMap::new()),
            stamped: Mutex::new(None),
            counters: Mutex::new(Counters::default()),
            http: parts.http,
            rng: Mutex::new(parts.rng),
            clock: parts.clock,
            links: parts.links,
            identity: parts.identity,
            store: parts.store,
            spool: parts.spool,
            queue: parts.queue,
            region: parts.region,
        })
    }

    /// Time since the worker started: what the rate limits count in.
    fn elapsed(&self) -> Duration {
        self.clock.since_start()
    }
}

/// The HTTP client for calls to other workers and the proxy. No redirects: a worker URL from the
/// registry is called as registered.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// What the gossip component is built from: its settings and the handles it acts through.
#[derive(Debug)]
pub struct GossipParts {
    pub settings: GossipSettings,
    pub clock: Clock,
    pub links: Arc<dyn LinkHandle>,
    pub identity: Arc<Identity>,
    pub store: SharedStore,
    pub spool: Arc<Spool>,
    pub queue: Arc<Queue>,
    pub region: Option<String>,
    pub http: reqwest::Client,
    /// Draws targets and envelope ids.
    pub rng: StdRng,
}

/// An ack being waited for; dropping it stops the wait.
struct PendingAck<'a> {
    acks: &'a Mutex<HashMap<AckKey, oneshot::Sender<Ack>>>,
    key: AckKey,
}

impl Drop for PendingAck<'_> {
    fn drop(&mut self) {
        lock(self.acks).remove(&self.key);
    }
}

/// How many refusals may still be written to the store (see [`AUDIT_PER_SECOND`]).
struct AuditBudget {
    per_sender: Keyed<PeerId>,
    all: Quota,
    all_bucket: Bucket,
    /// Refusals not written one by one, per sender (registered peers and [`UNREGISTERED`]).
    suppressed: HashMap<PeerId, u64>,
}

impl AuditBudget {
    fn new() -> Self {
        let all = Quota::new(AUDIT_ALL_PER_SECOND, AUDIT_ALL_BURST);
        AuditBudget {
            per_sender: Keyed::new(Quota::new(AUDIT_PER_SECOND, AUDIT_BURST)),
            all,
            all_bucket: all.bucket(Duration::ZERO),
            suppressed: HashMap::new(),
        }
    }

    /// Whether a record for `key` may be written at `now`; if so, how many were suppressed
    /// before it.
    fn take(&mut self, key: &PeerId, now: Duration) -> Option<u64> {
        let allowed = self.per_sender.check(key, now).is_ok()
            && self.all.take(&mut self.all_bucket, now).is_ok();
        if allowed {
            Some(self.suppressed.remove(key).unwrap_or(0))
        } else {
            *self.suppressed.entry(key.clone()).or_default() += 1;
            None
        }
    }
}

/// What one push did: the envelope and each target's transport and result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub envelope_id: String,
    pub targets: Vec<AuditTarget>,
}

/// What `POST /gossip` answers for an envelope it took.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Taken {
    pub outcome: Outcome,
    /// Entries that changed this peer's state.
    pub changed: usize,
}

/// A refused envelope: the status and code the sender gets.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::new(r.status, r.code, r.message)
    }
}

impl From<mesh_types::VerifyError> for Refusal {
    fn from(e: mesh_types::VerifyError) -> Self {
        let api = ApiError::from(e);
        Refusal {
            status: api.status,
            code: api.code.to_string(),
            message: api.message,
        }
    }
}

fn refusal_of(r: &Rejection) -> Refusal {
    let status = match r {
        Rejection::Signature(v) => Refusal::from(v.clone()).status,
        Rejection::UnknownOrigin(_) => StatusCode::FORBIDDEN,
        Rejection::Stale { .. } | Rejection::FromFuture { .. } => StatusCode::UNAUTHORIZED,
        Rejection::Tampered { .. } => StatusCode::CONFLICT,
        Rejection::Invalid(_) | Rejection::BadEntry { .. } => StatusCode::BAD_REQUEST,
        Rejection::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Refusal {
        status,
        code: r.code().to_string(),
        message: r.to_string(),
    }
}

fn target(peer: &PeerId, transport: Transport, error: Option<String>) -> AuditTarget {
    AuditTarget {
        peer: peer.clone(),
        transport,
        ok: error.is_none(),
        error,
        fallback: None,
    }
}

impl Gossip {
    /// This peer's telemetry: its links' health and QoS as its drivers last measured them.
    fn telemetry(&self) -> Telemetry {
        Telemetry {
            region: self.region.clone(),
            links: self
                .links
                .views()
                .into_iter()
                .filter_map(|v| {
                    Some(LinkSummary {
                        peer: v.peer,
                        health: v.health?,
                        qos: v.qos?,
                    })
                })
                .collect(),
        }
    }

    /// Loads the gossiped state kept in the store (what this peer learned before a restart).
    pub async fn restore(&self) -> Result<usize, WorkerError> {
        let entries = self.store.list_gossip(mesh_store::MAX_LIST_LIMIT).await?;
        Ok(lock(&self.node).restore(entries))
    }

    /// The state as this peer sees it, newest stamp first.
    pub fn state(&self) -> Vec<GossipEntry> {
        let node = lock(&self.node);
        let mut entries: Vec<GossipEntry> = node.state().iter().map(|(_, e)| e.clone()).collect();
        entries.sort_by(|a, b| b.hlc.cmp(&a.hlc).then_with(|| a.key.cmp(&b.key)));
        entries
    }

    /// Reloads the peer list from the store when `force`d (an unknown peer; at most every
    /// [`RELOAD_AFTER`]) or when it is older than [`MAX_PEER_AGE`].
    async fn refresh_peers(&self, force: bool) -> Result<(), WorkerError> {
        let now = self.elapsed();
        let due = |cache: &PeerCache| match cache.loaded {
            None => true,
            Some(at) => {
                let age = now.saturating_sub(at);
                age > MAX_PEER_AGE || (force && age > RELOAD_AFTER)
            }
        };
        if !due(&lock(&self.peers)) {
            return Ok(());
        }
        let _one = self.reload.lock().await;
        if !due(&lock(&self.peers)) {
            return Ok(());
        }
        let peers = self.store.list_peers().await?;
        let mut cache = lock(&self.peers);
        cache.peers = peers
            .into_iter()
            .map(|p| {
                let info = PeerInfo {
                    key: p.pub_key,
                    trust: p.trust,
                    https: p.endpoints.https,
                    last_seen_ms: p.last_seen_at,
                };
                (p.id, info)
            })
            .collect();
        cache.loaded = Some(self.elapsed());
        Ok(())
    }

    /// Live peers in the cached registry (seen within the stale window), without reading the
    /// store: `GET /status` must answer while the store is away.
    pub fn live_peer_count(&self) -> usize {
        let now = self.clock.now_ms();
        let stale = self.settings.selection.stale_after_ms;
        lock(&self.peers)
            .peers
            .values()
            .filter(|p| now.saturating_sub(p.last_seen_ms) <= stale)
            .count()
    }

    /// Anti-entropy when a link comes up (new, or back after a partition): one envelope with this
    /// peer's state, newest entries first, straight to the peer; the peer does the same, so both
    /// hold the newer of each entry after one exchange (as far as one envelope carries: up to its
    /// entry and size limits, the newest first).
    pub async fn sync(self: &Arc<Self>, peer: PeerId) {
        // The peer may have lost state, or missed envelopes while away: send it everything.
        lock(&self.node).forget(&peer);
        let _ = self.refresh_peers(false).await;
        match self.push(vec![peer.clone()]).await {
            Ok(report) => {
                tracing::debug!(%peer, ok = report.targets.iter().all(|t| t.ok), "gossip state synced on link up");
            }
            // Rate-limited or busy: the next scheduled run carries the state instead.
            Err(e) => tracing::debug!(%peer, "gossip sync on link up skipped: {e}"),
        }
    }

    fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        lock(&self.peers).peers.get(peer).cloned()
    }

    /// `peer`'s worker URL from the (cached) registry: `None` when it is not registered,
    /// `Some(None)` for a peer without one (a browser).
    pub async fn worker_url_of(
        &self,
        peer: &PeerId,
    ) -> Result<Option<Option<String>>, WorkerError> {
        if self.peer_info(peer).is_none() {
            self.refresh_peers(true).await?;
        }
        Ok(self.peer_info(peer).map(|p| p.https))
    }

    /// `POST /gossip/push`: originates an envelope and delivers it to each of `targets`.
    pub async fn push(self: &Arc<Self>, targets: Vec<PeerId>) -> Result<PushReport, WorkerError> {
        let now = self.elapsed();
        let allowed = ORIGINATE.take(&mut lock(&self.originate), now);
        if let Err(wait) = allowed {
            return Err(WorkerError::RateLimited(format!(
                "this worker originates at most 1 envelope a second; next in {} ms",
                wait.as_millis()
            )));
        }
        self.refresh_peers(false).await?;
        let now_ms = self.clock.now_ms();
        let telemetry = compact(self.telemetry());
        let news = {
            let stamped = lock(&self.stamped);
            let prev = stamped.as_ref().map(|(t, at)| (t, *at));
            is_news(prev, &telemetry, now_ms, &NewsConfig::default())
        };
        let signing = |e: OriginateError| match e {
            OriginateError::Busy(_) => WorkerError::Busy(e.to_string()),
            e => WorkerError::Signing(mesh_types::Error::Canonicalisation(e.to_string())),
        };
        let mut restamped = None;
        let envelope = {
            let mut node = lock(&self.node);
            if news || node.own().is_none() {
                let own = serde_json::to_value(&telemetry).map_err(|e| {
                    WorkerError::Signing(mesh_types::Error::Canonicalisation(e.to_string()))
                })?;
                node.stamp(&self.identity, own, now_ms).map_err(signing)?;
                restamped = node.own().cloned();
            }
            let mut rng = lock(&self.rng);
            node.envelope_for(&self.identity, &targets, now_ms, &mut *rng)
                .map_err(signing)?
        };
        {
            let mut c = lock(&self.counters);
            c.originated += 1;
            c.restamped += u64::from(restamped.is_some());
        }
        // Our own entry is part of the mesh-wide state too.
        if let Some(mine) = restamped {
            *lock(&self.stamped) = Some((telemetry, now_ms));
            self.persist(vec![mine]).await;
        }
        let deliveries = targets.iter().map(|t| self.deliver(t, &envelope));
        let targets = futures_util::future::join_all(deliveries).await;
        for t in &targets {
            crate::metrics::METRICS.gossip_sent.add(
                1,
                &[
                    opentelemetry::KeyValue::new("outcome", if t.ok { "ok" } else { "failed" }),
                    opentelemetry::KeyValue::new("transport", t.transport.as_str()),
                ],
            );
        }
        let failed = targets.iter().filter(|t| !t.ok).count();
        // One line a push for each worker would drown the log; failures are what an operator
        // acts on (the gossip run's audit record holds every push).
        if failed > 0 {
            tracing::warn!(envelope = %envelope.id, ok = targets.len() - failed, failed, "gossip pushed");
        } else {
            tracing::debug!(envelope = %envelope.id, ok = targets.len(), "gossip pushed");
        }
        Ok(PushReport {
            envelope_id: envelope.id,
            targets,
        })
    }

    /// Delivers `envelope` to `peer`: over the link's gossip channel, else HTTPS.
    async fn deliver(self: &Arc<Self>, peer: &PeerId, envelope: &Envelope) -> AuditTarget {
        if peer == self.links.id() {
            return target(
                peer,
                Transport::None,
                Some("a peer does not gossip to itself".into()),
            );
        }
        let trust = self.peer_info(peer).map_or(0.0, |p| p.trust);
        let q = quota(trust, &self.settings.rate);
        let now = self.elapsed();
        let allowed = lock(&self.outbound).check_with(peer, q, now);
        if let Err(wait) = allowed {
            return target(
                peer,
                Transport::None,
                Some(format!(
                    "rate_limited: this peer's quota for {peer} is spent; next in {} ms",
                    wait.as_millis()
                )),
            );
        }
        let fallback = match self.deliver_datachannel(peer, envelope).await {
            Ok(ack) => {
                return match ack.outcome {
                    Outcome::Accepted | Outcome::Duplicate => {
                        self.delivered(peer, envelope);
                        target(peer, Transport::Datachannel, None)
                    }
                    Outcome::Rejected => target(
                        peer,
                        Transport::Datachannel,
                        Some(format!(
                            "{}: {}",
                            ack.code.as_deref().unwrap_or("rejected"),
                            ack.message.as_deref().unwrap_or("refused by the receiver")
                        )),
                    ),
                };
            }
            Err(why) => why,
        };
        let mut result = match self.deliver_https(peer, envelope).await {
            Ok(()) => {
                self.delivered(peer, envelope);
                target(peer, Transport::Https, None)
            }
            Err(e) => {
                // A worker that neither path reached gets it when its link is back.
                let queued = match self.peer_info(peer).and_then(|p| p.https) {
                    Some(_) => self.queue_gossip(peer, envelope).await,
                    None => None,
                };
                target(
                    peer,
                    Transport::Https,
                    Some(match queued {
                        Some(seq) => format!("{e}; queued for the link's return (message {seq})"),
                        None => e,
                    }),
                )
            }
        };
        result.fallback = Some(fallback);
        result
    }

    /// `peer` took `envelope`: what it carries need not be sent to `peer` again.
    fn delivered(&self, peer: &PeerId, envelope: &Envelope) {
        lock(&self.node).delivered(peer, envelope, self.clock.now_ms());
    }

    fn count_sent(&self, bytes: usize) {
        let mut c = lock(&self.counters);
        c.sent += 1;
        c.sent_bytes += bytes as u64;
    }

    /// What this worker's gossip has done since it started.
    pub fn counters(&self) -> Counters {
        *lock(&self.counters)
    }

    async fn queue_gossip(self: &Arc<Self>, peer: &PeerId, envelope: &Envelope) -> Option<u64> {
        let frame = serde_json::to_vec(&GossipFrame::Envelope {
            envelope: envelope.clone(),
        })
        .ok()?;
        match self
            .queue
            .enqueue(peer, MessageKind::Gossip, Bytes::from(frame), true)
            .await
        {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::warn!(%peer, "gossip envelope not queued: {e}");
                None
            }
        }
    }

    /// Sends on the gossip channel and waits for the ack; `Err` says why HTTPS should be tried.
    async fn deliver_datachannel(&self, peer: &PeerId, envelope: &Envelope) -> Result<Ack, String> {
        let frame = serde_json::to_vec(&GossipFrame::Envelope {
            envelope: envelope.clone(),
        })
        .map_err(|e| format!("encoding: {e}"))?;
        let key: AckKey = (peer.clone(), envelope.from.clone(), envelope.id.clone());
        let size = frame.len();
        let (tx, rx) = oneshot::channel();
        lock(&self.acks).insert(key.clone(), tx);
        // Removed however this ends, a cancelled request included.
        let _pending = PendingAck {
            acks: &self.acks,
            key,
        };
        async {
            self.links
                .send_on(peer, Channel::Gossip, &frame)
                .await
                .map_err(|e| match e {
                    WorkerError::NotConnected(_) => format!("no connected link to {peer}"),
                    e => format!("gossip channel: {e}"),
                })?;
            self.count_sent(size);
            match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(_)) => Err("the link closed before the ack".to_string()),
                Err(_) => Err(format!("no ack within {} s", ACK_TIMEOUT.as_secs())),
            }
        }
        .await
    }

    async fn deliver_https(&self, peer: &PeerId, envelope: &Envelope) -> Result<(), String> {
        if self.peer_info(peer).and_then(|p| p.https).is_none() {
            self.refresh_peers(true).await.map_err(|e| e.to_string())?;
        }
        let base = self
            .peer_info(peer)
            .and_then(|p| p.https)
            .ok_or_else(|| format!("{peer} has no registered HTTPS endpoint"))?;
        let mut delivery = Delivery {
            sender: self.links.id().clone(),
            to: peer.clone(),
            ts: self.clock.now_ms(),
            envelope: envelope.clone(),
            sig: String::new(),
            kid: None,
        };
        delivery
            .sign(&self.identity)
            .map_err(|e| format!("signing the delivery: {e}"))?;
        let url = format!("{}/gossip", base.trim_end_matches('/'));
        let body = serde_json::to_vec(&delivery).map_err(|e| format!("encoding: {e}"))?;
        self.count_sent(body.len());
        let res = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if res.status().is_success() {
            return Ok(());
        }
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        Err(format!(
            "{}: {} (HTTP {status})",
            body["error"]["code"].as_str().unwrap_or("http_error"),
            body["error"]["message"].as_str().unwrap_or("no message")
        ))
    }

    /// `POST /gossip`: an envelope handed over HTTPS, in a delivery signed by its sender.
    pub async fn receive_https(self: &Arc<Self>, delivery: Delivery) -> Result<Taken, Refusal> {
        let sender = delivery.sender.clone();
        let envelope_id = delivery.envelope.id.clone();
        let refuse = |code: &str, status: StatusCode, message: String| Refusal {
            status,
            code: code.to_string(),
            message,
        };
        // Who is sending is believed only once the delivery's signature checks; refusals
        // before that are audited as from an unverified sender.
        if self.peer_info(&sender).is_none() {
            let _ = self.refresh_peers(true).await;
        }
        let authenticated = match self.peer_info(&sender) {
            None => Err(refuse(
                "unknown_peer",
                StatusCode::FORBIDDEN,
                format!("sender {sender} is not a registered peer"),
            )),
            Some(p) => verify_signature(&delivery, &p.key).map_err(Refusal::from),
        };
        if let Err(r) = authenticated {
            self.audit_refusal(&sender, false, &envelope_id, "reject", &r)
                .await;
            return Err(r);
        }
        if &delivery.to != self.links.id() {
            let r = refuse(
                "wrong_addressee",
                StatusCode::FORBIDDEN,
                format!(
                    "this delivery is for {}, not {}",
                    delivery.to,
                    self.links.id()
                ),
            );
            self.audit_refusal(&sender, true, &envelope_id, "reject", &r)
                .await;
            return Err(r);
        }
        // The sender's quota before the replay cache takes an entry for it: one peer cannot
        // fill the cache that every sender's deliveries share.
        self.check_inbound(&sender, &envelope_id).await?;
        let fresh = lock(&self.deliveries)
            .admit(&delivery, self.clock.now_ms())
            .map_err(Refusal::from);
        if let Err(r) = fresh {
            self.audit_refusal(&sender, true, &envelope_id, "reject", &r)
                .await;
            return Err(r);
        }
        self.take(&sender, delivery.envelope).await
    }

    /// Takes one envelope from `sender`'s quota (set by its trust), or refuses and audits a drop.
    async fn check_inbound(&self, sender: &PeerId, envelope_id: &str) -> Result<(), Refusal> {
        let trust = self.peer_info(sender).map_or(0.0, |p| p.trust);
        let q = quota(trust, &self.settings.rate);
        let now = self.elapsed();
        let allowed = lock(&self.inbound).check_with(sender, q, now);
        let Err(wait) = allowed else {
            return Ok(());
        };
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let r = Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited".into(),
            message: format!(
                "{sender} is over its gossip quota ({:.0} a minute at trust {trust:.2}); retry after {secs} s",
                q.rate() * 60.0
            ),
        };
        self.audit_refusal(sender, true, envelope_id, "drop", &r)
            .await;
        Err(r)
    }

    /// A frame on `from`'s gossip channel (the link says who sent it).
    pub async fn on_frame(self: &Arc<Self>, from: PeerId, data: Bytes) {
        let frame: GossipFrame = match serde_json::from_slice(&data) {
            Ok(f) => f,
            Err(e) => {
                let r = Refusal {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_json".into(),
                    message: format!("gossip frame: {e}"),
                };
                self.audit_refusal(&from, true, "", "reject", &r).await;
                return;
            }
        };
        match frame {
            GossipFrame::Ack {
                from: origin,
                id,
                outcome,
                code,
                message,
            } => {
                let waiting = lock(&self.acks).remove(&(from.clone(), origin, id));
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(Ack {
                            outcome,
                            code,
                            message,
                        });
                    }
                    // Late (after its time-out, when HTTPS was tried): nothing waits for it.
                    None => tracing::debug!(peer = %from, "an ack nobody waits for"),
                }
            }
            GossipFrame::Envelope { envelope } => {
                let (origin, id) = (envelope.from.clone(), envelope.id.clone());
                let taken = match self.check_inbound(&from, &id).await {
                    Ok(()) => self.take(&from, envelope).await,
                    Err(r) => Err(r),
                };
                let ack = match taken {
                    Ok(t) => GossipFrame::Ack {
                        from: origin,
                        id,
                        outcome: t.outcome,
                        code: None,
                        message: None,
                    },
                    Err(r) => GossipFrame::Ack {
                        from: origin,
                        id,
                        outcome: Outcome::Rejected,
                        code: Some(r.code),
                        message: Some(r.message),
                    },
                };
                if let Ok(bytes) = serde_json::to_vec(&ack) {
                    // A lost ack makes the sender try HTTPS, where the envelope is a duplicate.
                    if let Err(e) = self.links.send_on(&from, Channel::Gossip, &bytes).await {
                        tracing::debug!(peer = %from, "gossip ack not sent: {e}");
                    }
                }
            }
        }
    }

    /// The receive path both transports share (the sender authenticated and within its
    /// quota): the node's verdict; new state is stored and the envelope forwarded while its ttl
    /// lasts.
    async fn take(self: &Arc<Self>, sender: &PeerId, envelope: Envelope) -> Result<Taken, Refusal> {
        let _ = self.refresh_peers(false).await;
        let unknown = |g: &Gossip| {
            let cache = lock(&g.peers);
            let mut origins = vec![envelope.from.clone()];
            // Only the origins, read in place: the node parses the entries it needs.
            origins.extend(heads(&envelope).into_iter().map(|e| e.origin));
            origins.iter().any(|o| !cache.peers.contains_key(o))
        };
        if unknown(self) {
            let _ = self.refresh_peers(true).await;
        }
        let verdict = {
            let cache = lock(&self.peers);
            let key_of = |p: &PeerId| cache.peers.get(p).map(|i| i.key);
            lock(&self.node).receive_via(sender, &envelope, &key_of, self.clock.now_ms())
        };
        let outcome = match &verdict {
            Ok(Received::Duplicate) => "duplicate".to_string(),
            Ok(Received::Accepted { .. }) => "accepted".to_string(),
            Err(rejection) => refusal_of(rejection).code.to_string(),
        };
        crate::metrics::METRICS
            .gossip_received
            .add(1, &[opentelemetry::KeyValue::new("outcome", outcome)]);
        match verdict {
            Ok(Received::Duplicate) => {
                lock(&self.counters).duplicates += 1;
                Ok(Taken {
                    outcome: Outcome::Duplicate,
                    changed: 0,
                })
            }
            Ok(Received::Accepted {
                changed,
                skipped,
                held,
                forward,
            }) => {
                {
                    let mut c = lock(&self.counters);
                    c.accepted += 1;
                    c.entries_verified += changed.len() as u64;
                    c.entries_held += held as u64;
                }
                tracing::debug!(
                    peer = %sender, origin = %envelope.from, envelope = %envelope.id,
                    changed = changed.len(), held, skipped, "gossip envelope accepted"
                );
                let count = changed.len();
                self.persist(changed).await;
                if let Some(forward) = forward {
                    let worker = self.clone();
                    let sender = sender.clone();
                    tokio::spawn(async move { worker.forward(&sender, *forward).await });
                }
                Ok(Taken {
                    outcome: Outcome::Accepted,
                    changed: count,
                })
            }
            Err(rejection) => {
                let r = refusal_of(&rejection);
                self.audit_refusal(sender, true, &envelope.id, "reject", &r)
                    .await;
                Err(r)
            }
        }
    }

    /// Writes `entries` (and any the store refused before) to the store; what it refuses again
    /// waits for the next write.
    async fn persist(&self, entries: Vec<GossipEntry>) {
        let mut batch = entries;
        batch.extend(lock(&self.unstored).drain().map(|(_, e)| e));
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.merge_gossip(&batch).await {
            tracing::warn!(
                entries = batch.len(),
                "gossiped state not stored yet, kept for the next write: {e}"
            );
            let mut unstored = lock(&self.unstored);
            for entry in batch {
                match unstored.get(&entry.key) {
                    Some(kept) if !entry.supersedes(kept) => {}
                    _ => {
                        unstored.insert(entry.key.clone(), entry);
                    }
                }
            }
        }
    }

    /// Passes an accepted envelope on to `fanout` peers other than its sender and origin.
    /// A worker knows only its own links, so a peer's health is not judged here (a peer whose
    /// link to us is down may be up elsewhere, and gets the envelope over HTTPS); stale peers
    /// are skipped.
    async fn forward(self: &Arc<Self>, sender: &PeerId, envelope: Envelope) {
        let candidates: Vec<Candidate> = lock(&self.peers)
            .peers
            .iter()
            .map(|(id, p)| Candidate {
                id: id.clone(),
                trust: p.trust,
                last_seen_ms: p.last_seen_ms,
                link: None,
            })
            .collect();
        let settings = self.settings.selection;
        let sampler = Sampler::new(&candidates, self.links.id(), self.clock.now_ms(), &settings);
        let chosen = {
            let mut rng = lock(&self.rng);
            sampler
                .draw(settings.fanout, &[sender, &envelope.from], &mut *rng)
                .chosen
        };
        for peer in chosen {
            let result = self.deliver(&peer, &envelope).await;
            if result.ok {
                tracing::debug!(%peer, envelope = %envelope.id, "gossip forwarded");
            } else {
                tracing::warn!(
                    %peer, envelope = %envelope.id, error = result.error.as_deref().unwrap_or(""),
                    "gossip forward failed"
                );
            }
        }
    }

    /// Writes a `reject` or `drop` audit record, within the sender's audit budget; what is over
    /// the budget is counted and named in the next record (and logged), never lost silently.
    async fn audit_refusal(
        &self,
        sender: &PeerId,
        verified: bool,
        envelope_id: &str,
        kind: &str,
        r: &Refusal,
    ) {
        tracing::warn!(peer = %sender, envelope = envelope_id, code = %r.code, "gossip refused: {}", r.message);
        let now = self.elapsed();
        let key = if verified {
            sender.clone()
        } else {
            PeerId::new(UNREGISTERED).unwrap_or_else(|_| sender.clone())
        };
        let Some(suppressed) = lock(&self.audit_budget).take(&key, now) else {
            return;
        };
        let mut reason = format!("{}: {}", r.code, r.message);
        if !verified {
            reason.push_str(&format!(
                " (sender {sender} unverified: the name is the caller's claim)"
            ));
        }
        if suppressed > 0 {
            reason.push_str(&format!(
                " (and {suppressed} earlier refusals of {key}, over the audit budget, not recorded one by one)"
            ));
        }
        let ts = self.clock.now_ms();
        let suffix: u64 = {
            let mut rng = lock(&self.rng);
            rand::RngExt::random(&mut *rng)
        };
        let record = AuditRecord {
            id: format!("{ts}-{kind}-{}-{suffix:016x}", self.links.id()),
            ts,
            kind: kind.to_string(),
            from: sender.clone(),
            recorded_by: Some(self.links.id().clone()),
            fanout: 0,
            succeeded: 0,
            failed: 1,
            envelope_id: (!envelope_id.is_empty()).then(|| envelope_id.to_string()),
            targets: Vec::new(),
            reason: Some(reason),
        };
        self.spool.push(crate::spool::Write::Audit(record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::new(s).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn the_audit_budget_counts_what_it_does_not_write() {
        let mut budget = AuditBudget::new();
        let at = Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(budget.take(&p("x"), at), Some(0));
        }
        assert_eq!(budget.take(&p("x"), at), None);
        assert_eq!(budget.take(&p("x"), at), None);
        // Another sender has its own budget; a second later x writes again, naming the two.
        assert_eq!(budget.take(&p("y"), at), Some(0));
        assert_eq!(budget.take(&p("x"), at + Duration::from_secs(1)), Some(2));
        // In all, at most the global burst gets through at once, however many senders.
        let mut budget = AuditBudget::new();
        let written = (0..500)
            .filter(|i| budget.take(&p(&format!("s{i}")), at).is_some())
            .count();
        assert_eq!(written, 100);
    }

    // ---- the component, against fake link cores, with paused time ----

    use rand::SeedableRng as _;

    use crate::fixtures::{World, identity, peer};
    use crate::links::fake::FakeLinks;
    use crate::queue::Queues;

    const WITHIN: Duration = Duration::from_secs(60);

    /// Worker `me`'s gossip in `w`'s store and directory, over `links`.
    fn node(w: &World, me: &str, links: Arc<FakeLinks>) -> Arc<Gossip> {
        let queue = Queue::new(
            Queues::new(w.dir.path().join(format!("queue-{me}")), 10),
            links.clone(),
            w.rejoin.clone(),
        );
        Gossip::new(GossipParts {
            settings: GossipSettings::default(),
            clock: w.clock,
            links,
            identity: Arc::new(identity(me)),
            store: w.store.clone(),
            spool: Arc::new(Spool::new(100)),
            queue,
            region: None,
            http: http_client(),
            rng: StdRng::seed_from_u64(11),
        })
    }

    fn sent(links: &FakeLinks, i: usize) -> (PeerId, Vec<u8>) {
        links.calls(|c| (c.sent[i].0.clone(), c.sent[i].2.clone()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_originates_at_most_one_envelope_a_second_in_bursts_of_ten() {
        let w = World::new(&[], &[]).await;
        let a = node(&w, "a", w.links.clone());
        for _ in 0..10 {
            a.push(Vec::new()).await.expect("within the burst");
        }
        assert!(matches!(
            a.push(Vec::new()).await,
            Err(WorkerError::RateLimited(_))
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        a.push(Vec::new()).await.expect("a second later");
    }

    #[tokio::test(start_paused = true)]
    async fn an_envelope_over_the_link_is_merged_and_acked_and_its_replay_changes_nothing() {
        let w = World::new(&[("b", 0)], &[]).await;
        let a = node(&w, "a", w.links.clone());
        let b_links = Arc::new(FakeLinks::new("b"));
        let b = node(&w, "b", b_links.clone());
        w.links.link_up(&peer("b"));
        b_links.link_up(&peer("a"));
        // b pushes to a over their link and waits for the ack.
        let push = tokio::spawn({
            let b = b.clone();
            async move { b.push(vec![peer("a")]).await }
        });
        b_links
            .until(WITHIN, "b's envelope sent", |l| {
                l.calls(|c| c.sent.len()) == 1
            })
            .await;
        let (to, envelope) = sent(&b_links, 0);
        assert_eq!(to, peer("a"));
        a.on_frame(peer("b"), Bytes::from(envelope.clone())).await;
        assert!(
            a.state().iter().any(|e| e.origin == peer("b")),
            "a holds b's telemetry"
        );
        let (to, ack) = sent(&w.links, 0);
        assert_eq!(to, peer("b"));
        b.on_frame(peer("a"), Bytes::from(ack)).await;
        let report = push
            .await
            .expect("the push ends")
            .expect("the push succeeds");
        assert_eq!(report.targets.len(), 1);
        assert!(report.targets[0].ok, "{report:?}");
        assert_eq!(report.targets[0].transport, Transport::Datachannel);
        // The same envelope again: a duplicate, acked as one, nothing merged twice.
        let held = a.state();
        a.on_frame(peer("b"), Bytes::from(envelope)).await;
        let (_, ack) = sent(&w.links, 1);
        let ack: GossipFrame = serde_json::from_slice(&ack).expect("an ack");
        assert!(
            matches!(
                ack,
                GossipFrame::Ack {
                    outcome: Outcome::Duplicate,
                    ..
                }
            ),
            "{ack:?}"
        );
        assert_eq!(a.state(), held);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_link_or_an_address_a_push_fails_and_says_why() {
        let w = World::new(&[("b", 0)], &[]).await;
        let a = node(&w, "a", w.links.clone());
        let report = a.push(vec![peer("b"), peer("a")]).await.expect("pushed");
        assert_eq!(report.targets.len(), 2);
        let to_b = &report.targets[0];
        assert!(!to_b.ok);
        assert_eq!(to_b.fallback.as_deref(), Some("no connected link to b"));
        assert!(
            to_b.error
                .as_deref()
                .is_some_and(|e| e.contains("no registered HTTPS endpoint"))
        );
        assert_eq!(
            report.targets[1].error.as_deref(),
            Some("a peer does not gossip to itself")
        );
    }
}
