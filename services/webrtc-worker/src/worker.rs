//! The worker's state and its one driver per link. The registry maps each remote peer to at most
//! one connection; a dialled connection waits in it for its answer until the dial time-out. Each
//! connection's driver task owns its QoS meter, sends probes, samples QoS every interval, writes
//! the link document (at once on a state change) and removes the connection when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_store::{PeerUpsert, SharedStore, StoreError};
use mesh_types::signing::Signed;
use mesh_types::{
    Answer, Endpoints, Health, Identity, Link, LinkQos, Offer, PeerId, Verifier, VerifierConfig,
    VerifyError,
};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use crate::clock::Clock;
use crate::inbox::{Inbox, Received};
use crate::liveness::{Detector, Transition};
use crate::lock;
use crate::qos::{Probe, ProbeKind, QosMeter};
use crate::transport::{Channel, ConnEvent, ConnState, Connection, Transport, TransportError};

/// Largest message the mesh channel carries: the SCTP max-message-size we advertise.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Whether an offer from a peer we are already linked with replaces that link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// A signed, fresh offer: the peer restarted and lost the old connection.
    Yes,
    /// A relayed offer, vouched for only by the signaling server.
    No,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("peer {0} is not registered")]
    UnknownPeer(PeerId),
    #[error("this message is addressed to {to}, not to this worker ({me})")]
    WrongAddressee { to: PeerId, me: PeerId },
    #[error("a peer cannot dial itself")]
    SelfDial,
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("nothing is pending for {0}: no dial is waiting for its answer")]
    NothingPending(PeerId),
    #[error("the link with {peer} is {state}, not waiting for an answer")]
    WrongState { peer: PeerId, state: &'static str },
    #[error("both sides dialled; {winner} offers, so accept its offer instead")]
    Glare { winner: PeerId },
    #[error("a link with {0} exists; hang up first (DELETE /links/{0})")]
    LinkExists(PeerId),
    #[error("no link with {0}")]
    NoLink(PeerId),
    #[error("the link with {0} is not connected yet")]
    NotConnected(PeerId),
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    MessageTooLarge(usize),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Signing our own offer or answer failed: a bug, not the caller's fault.
    #[error("signing: {0}")]
    Signing(#[from] mesh_types::Error),
}

/// Which side of the handshake this worker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Dialer,
    Answerer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingAnswer,
    Connecting,
    Connected,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::AwaitingAnswer => "awaiting-answer",
            Phase::Connecting => "connecting",
            Phase::Connected => "connected",
        }
    }
}

/// What `GET /links` shows of one connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    pub peer: PeerId,
    pub role: Role,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<LinkQos>,
    /// When the connection came up, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established_at: Option<u64>,
    /// The selected path's local candidate type (`host`, `srflx`, `prflx`, `relay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Whether the link's gossip channel is open (a browser peer has none: gossip to it goes
    /// over HTTPS, if at all).
    pub gossip: bool,
}

struct Entry {
    generation: u64,
    conn: Arc<Connection>,
    role: Role,
    phase: Phase,
    /// This side offered an ICE restart on the connection and waits for the answer.
    restarting: bool,
    view: watch::Receiver<LinkView>,
    stop: Arc<Notify>,
}

/// Timings of the links' drivers.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub qos_interval: Duration,
    pub probe_interval: Duration,
    pub dial_timeout: Duration,
    pub liveness: crate::liveness::DetectorConfig,
}

pub struct Worker {
    identity: Identity,
    region: Mutex<Option<String>>,
    pub(crate) gossip: crate::gossip::Gossip,
    store: SharedStore,
    transport: Transport,
    timings: Timings,
    verifier: Mutex<Verifier>,
    links: Mutex<HashMap<PeerId, Entry>>,
    inbox: Mutex<Inbox>,
    next_generation: AtomicU64,
    clock: Clock,
    /// Woken whenever a link is removed, so shutdown can wait for the drivers to finish.
    removed: Notify,
    rejoin: crate::rejoin::RejoinSettings,
    /// Link samples and audit records on their way to the store.
    pub(crate) spool: Arc<crate::spool::Spool>,
    /// Peers being rejoined, each with what cancels its loop.
    pub(crate) rejoining: Mutex<HashMap<PeerId, Arc<Notify>>>,
    /// Set when the worker starts to stop: no new rejoining from then on.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// File transfers, sending and receiving.
    pub(crate) files: crate::files::Files,
    /// Queued messages to and from worker peers.
    pub(crate) queues: crate::queue::Queues,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", self.identity.id())
            .finish_non_exhaustive()
    }
}

impl Worker {
    // Each part is configured on its own; a builder would only rename the arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        store: SharedStore,
        transport: Transport,
        timings: Timings,
        gossip: crate::gossip::GossipSettings,
        rejoin: crate::rejoin::RejoinSettings,
        spool_capacity: usize,
        files: crate::files::FilesConfig,
    ) -> Arc<Self> {
        Arc::new(Worker {
            gossip: crate::gossip::Gossip::new(identity.id().clone(), gossip),
            region: Mutex::new(None),
            identity,
            store,
            transport,
            timings,
            verifier: Mutex::new(Verifier::new(VerifierConfig::default())),
            links: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Inbox::new(1024, 8 * 1024 * 1024)),
            next_generation: AtomicU64::new(1),
            clock: Clock::new(),
            removed: Notify::new(),
            rejoin,
            spool: Arc::new(crate::spool::Spool::new(spool_capacity)),
            rejoining: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            queues: crate::queue::Queues::new(files.dir.join("queue"), files.queue_capacity),
            files: crate::files::Files::new(files),
        })
    }

    pub(crate) fn rejoin_settings(&self) -> &crate::rejoin::RejoinSettings {
        &self.rejoin
    }

    pub(crate) fn dial_timeout(&self) -> Duration {
        self.timings.dial_timeout
    }

    pub fn id(&self) -> &PeerId {
        self.identity.id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Wall-clock milliseconds, from the worker's clock.
    pub fn now_ms(&self) -> mesh_types::UnixMillis {
        self.clock.now_ms()
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The region this worker registered with.
    pub fn region(&self) -> Option<String> {
        lock(&self.region).clone()
    }

    /// The connection to `peer`, if it is connected (its channels usable).
    pub(crate) fn connected(&self, peer: &PeerId) -> Option<Arc<Connection>> {
        lock(&self.links)
            .get(peer)
            .filter(|e| e.phase == Phase::Connected)
            .map(|e| e.conn.clone())
    }

    /// Whether any connection to `peer` exists (connected or being made).
    pub(crate) fn has_link(&self, peer: &PeerId) -> bool {
        lock(&self.links).contains_key(peer)
    }

    /// Registers (or refreshes) this worker's peer record, keeping its trust, so peers sharing
    /// the store can verify what it signs.
    pub async fn register_self(
        &self,
        region: Option<String>,
        https: String,
    ) -> Result<(), StoreError> {
        lock(&self.region).clone_from(&region);
        self.store
            .upsert_peer(&PeerUpsert {
                id: self.id().clone(),
                pub_key: self.identity.public_key(),
                region,
                endpoints: Endpoints {
                    webrtc: None,
                    https: Some(https),
                },
                seen_at: self.clock.now_ms(),
                initial_trust: mesh_types::peer::INITIAL_TRUST,
            })
            .await
            .map(|_| ())
    }

    async fn registered_key(&self, peer: &PeerId) -> Result<mesh_types::PublicKey, WorkerError> {
        match self.store.get_peer(peer).await {
            Ok(p) => Ok(p.pub_key),
            Err(e) if e.kind() == mesh_store::ErrorKind::NotFound => {
                Err(WorkerError::UnknownPeer(peer.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /dial`: a new connection to `peer_to`, waiting for its answer; returns the signed offer.
    pub async fn dial(self: &Arc<Self>, peer_to: PeerId) -> Result<Offer, WorkerError> {
        self.dial_generation(peer_to).await.map(|(offer, _)| offer)
    }

    /// [`dial`](Self::dial), also naming the connection's generation, so that the caller can
    /// later act on this connection only (a newer one may take its place).
    pub(crate) async fn dial_generation(
        self: &Arc<Self>,
        peer_to: PeerId,
    ) -> Result<(Offer, u64), WorkerError> {
        if &peer_to == self.id() {
            return Err(WorkerError::SelfDial);
        }
        self.registered_key(&peer_to).await?;
        if lock(&self.links).contains_key(&peer_to) {
            return Err(WorkerError::LinkExists(peer_to));
        }
        let (conn, events) = self.transport.connect().await?;
        let sdp = match conn.offer().await {
            Ok(sdp) => sdp,
            Err(e) => {
                conn.close().await;
                return Err(WorkerError::Transport(e));
            }
        };
        let mut offer = Offer::new(self.id().clone(), peer_to.clone(), sdp, self.clock.now_ms());
        offer.sign(&self.identity)?;
        let deadline = self.clock.deadline_in(self.timings.dial_timeout);
        let generation = self
            .register(
                peer_to,
                conn,
                events,
                Role::Dialer,
                Phase::AwaitingAnswer,
                Some(deadline),
            )
            .await?;
        Ok((offer, generation))
    }

    /// `POST /offer`: verifies a peer's offer and answers it with a new connection.
    pub async fn accept_offer(self: &Arc<Self>, offer: Offer) -> Result<Answer, WorkerError> {
        if &offer.peer_to != self.id() {
            return Err(WorkerError::WrongAddressee {
                to: offer.peer_to,
                me: self.id().clone(),
            });
        }
        let key = self.registered_key(&offer.peer_from).await?;
        lock(&self.verifier).verify(&offer, &key, self.clock.now_ms())?;
        let sdp = self
            .answer_offer(offer.peer_from.clone(), &offer.sdp, Replace::Yes)
            .await?;
        let mut answer = Answer::new(self.id().clone(), offer.peer_from, sdp, self.clock.now_ms());
        answer.sign(&self.identity)?;
        Ok(answer)
    }

    /// An offer relayed by the signaling proxy over WebSocket signaling: the proxy proved
    /// `from` (a registered peer's key, or an anonymous id it assigned), so there is no signature
    /// to check here. Returns the answer's SDP.
    pub async fn accept_relayed_offer(
        self: &Arc<Self>,
        from: PeerId,
        sdp: &str,
    ) -> Result<String, WorkerError> {
        if &from == self.id() {
            return Err(WorkerError::SelfDial);
        }
        // Relayed offers carry no signature of their own, so they never replace a link.
        self.answer_offer(from, sdp, Replace::No).await
    }

    /// A candidate `from` trickled for its connection to us.
    pub async fn add_remote_candidate(
        &self,
        from: &PeerId,
        candidate: &mesh_types::signaling::IceCandidate,
    ) -> Result<(), WorkerError> {
        let conn = lock(&self.links)
            .get(from)
            .map(|e| e.conn.clone())
            .ok_or_else(|| WorkerError::NoLink(from.clone()))?;
        Ok(conn.add_remote_candidate(candidate).await?)
    }

    /// Answers an offer from `from` (already authenticated) and registers the connection.
    async fn answer_offer(
        self: &Arc<Self>,
        from: PeerId,
        offer_sdp: &str,
        replace: Replace,
    ) -> Result<String, WorkerError> {
        // A re-offer from the connection we have (same DTLS fingerprint): an ICE restart, answered
        // on that connection, which keeps its channels; anything else is a new connection.
        if replace == Replace::Yes {
            let existing = lock(&self.links).get(&from).map(|e| e.conn.clone());
            if let Some(conn) = existing
                && let Some(ours) = conn.remote_fingerprint().await
                && crate::transport::fingerprint_of(offer_sdp) == Some(ours.as_str())
            {
                let sdp = conn.answer(offer_sdp).await?;
                tracing::info!(peer = %from, "ICE restart answered on the live connection");
                return Ok(sdp);
            }
        }
        // Glare: when both sides dialled, the lower id's offer wins.
        let replaced = {
            let mut links = lock(&self.links);
            match links.get(&from) {
                Some(e)
                    if e.role == Role::Dialer
                        && e.phase == Phase::AwaitingAnswer
                        && self.id() < &from =>
                {
                    return Err(WorkerError::Glare {
                        winner: self.id().clone(),
                    });
                }
                Some(_) if replace == Replace::No => {
                    return Err(WorkerError::LinkExists(from));
                }
                // A verified, fresh offer from a peer we think we are linked with means it lost
                // the old connection (it restarted): the new one replaces it.
                Some(_) => links.remove(&from),
                None => None,
            }
        };
        if let Some(old) = replaced {
            old.stop.notify_one();
        }
        let (conn, events) = self.transport.connect().await?;
        let sdp = match conn.answer(offer_sdp).await {
            Ok(sdp) => sdp,
            Err(e) => {
                conn.close().await;
                return Err(e.into());
            }
        };
        self.register(from, conn, events, Role::Answerer, Phase::Connecting, None)
            .await?;
        Ok(sdp)
    }

    /// `POST /answer`: completes a pending dial.
    pub async fn accept_answer(self: &Arc<Self>, answer: Answer) -> Result<(), WorkerError> {
        if &answer.peer_to != self.id() {
            return Err(WorkerError::WrongAddressee {
                to: answer.peer_to,
                me: self.id().clone(),
            });
        }
        let key = self.registered_key(&answer.peer_from).await?;
        lock(&self.verifier).verify(&answer, &key, self.clock.now_ms())?;
        let from = answer.peer_from.clone();
        let (conn, generation, restart) = {
            let mut links = lock(&self.links);
            let entry = links
                .get_mut(&from)
                .ok_or_else(|| WorkerError::NothingPending(from.clone()))?;
            if entry.restarting {
                entry.restarting = false;
                (entry.conn.clone(), entry.generation, true)
            } else if entry.role != Role::Dialer || entry.phase != Phase::AwaitingAnswer {
                return Err(WorkerError::WrongState {
                    peer: from.clone(),
                    state: entry.phase.as_str(),
                });
            } else {
                entry.phase = Phase::Connecting;
                (entry.conn.clone(), entry.generation, false)
            }
        };
        if restart {
            // The answer to our ICE restart. From the same connection (its DTLS fingerprint),
            // the connection and its channels carry on; from a new one (the peer restarted
            // meanwhile and answered as to a new link), ours is finished: dial anew.
            if conn.remote_fingerprint().await.as_deref()
                != crate::transport::fingerprint_of(&answer.sdp)
            {
                self.stop_generation(&from, generation);
                self.rejoin(from.clone(), "the peer restarted during an ICE restart");
                return Err(WorkerError::WrongState {
                    peer: from,
                    state: "restarted",
                });
            }
            conn.accept_answer(&answer.sdp).await?;
            tracing::info!(peer = %from, "ICE restarted on the live connection");
            return Ok(());
        }
        if let Err(e) = conn.accept_answer(&answer.sdp).await {
            // A broken answer leaves nothing behind: the dial is over.
            self.stop_generation(&from, generation);
            return Err(e.into());
        }
        Ok(())
    }

    /// The path of a live link broke (ICE disconnected): the dialler restarts ICE on the same
    /// connection, through the same signalling as a rejoin. If that fails, the link's fate is
    /// the detector's and ICE's as before (and a lost link is rejoined with a new connection).
    pub(crate) async fn restart_ice(self: &Arc<Self>, peer: PeerId, generation: u64) {
        let conn = {
            let mut links = lock(&self.links);
            match links.get_mut(&peer) {
                Some(e)
                    if e.generation == generation && e.role == Role::Dialer && !e.restarting =>
                {
                    e.restarting = true;
                    e.conn.clone()
                }
                _ => return,
            }
        };
        tracing::info!(%peer, "restarting ICE on the live connection");
        let outcome = async {
            let sdp = conn.restart_offer().await.map_err(|e| e.to_string())?;
            let mut offer = Offer::new(self.id().clone(), peer.clone(), sdp, self.clock.now_ms());
            offer.sign(&self.identity).map_err(|e| e.to_string())?;
            let answer = self.deliver_offer(&offer, self.rejoin_settings()).await?;
            self.accept_answer(answer).await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(why) = outcome {
            tracing::warn!(%peer, "ICE restart failed: {why}");
            let ours = {
                let mut links = lock(&self.links);
                match links.get_mut(&peer) {
                    Some(e) if e.generation == generation => {
                        e.restarting = false;
                        true
                    }
                    _ => false,
                }
            };
            // The link went meanwhile (or the peer answered as a new connection): a new one.
            if !ours {
                self.rejoin(peer, "an ICE restart could not finish");
            }
        }
    }

    /// `DELETE /links/{peer}`: hangs up, and stops any rejoining: the operator wants it down.
    pub fn hang_up(&self, peer: &PeerId) -> Result<(), WorkerError> {
        self.cancel_rejoin(peer);
        let entry = lock(&self.links)
            .remove(peer)
            .ok_or_else(|| WorkerError::NoLink(peer.clone()))?;
        entry.stop.notify_one();
        Ok(())
    }

    /// Stops every link (on shutdown) and waits, at most `within`, for their drivers to write
    /// them `down` and finish.
    pub async fn hang_up_all(&self, within: Duration) {
        self.stopping.store(true, Ordering::Release);
        self.cancel_all_rejoins();
        let stops: Vec<Arc<Notify>> = lock(&self.links).values().map(|e| e.stop.clone()).collect();
        for stop in stops {
            stop.notify_one();
        }
        let drained = async {
            loop {
                let removed = self.removed.notified();
                if lock(&self.links).is_empty() {
                    return;
                }
                removed.await;
            }
        };
        if tokio::time::timeout(within, drained).await.is_err() {
            tracing::warn!(
                left = lock(&self.links).len(),
                "links still closing at shutdown"
            );
        }
    }

    /// Sends an application message on the mesh channel of the link with `peer`.
    pub async fn send(&self, peer: &PeerId, data: &[u8], text: bool) -> Result<(), WorkerError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(WorkerError::MessageTooLarge(data.len()));
        }
        let conn = {
            let links = lock(&self.links);
            let entry = links
                .get(peer)
                .ok_or_else(|| WorkerError::NoLink(peer.clone()))?;
            if entry.phase != Phase::Connected {
                return Err(WorkerError::NotConnected(peer.clone()));
            }
            entry.conn.clone()
        };
        conn.send(Channel::Mesh, data, text).await.map_err(|e| {
            tracing::warn!(%peer, "mesh send failed: {e}");
            WorkerError::NotConnected(peer.clone())
        })
    }

    /// Puts a message from `from` in the inbox `GET /messages` reads.
    pub(crate) fn to_inbox(&self, from: PeerId, data: &[u8], text: bool) {
        lock(&self.inbox).push(from, self.clock.now_ms(), data, text);
    }

    pub fn links(&self) -> Vec<LinkView> {
        let mut views: Vec<LinkView> = lock(&self.links)
            .values()
            .map(|e| e.view.borrow().clone())
            .collect();
        views.sort_by(|a, b| a.peer.cmp(&b.peer));
        views
    }

    pub fn messages(&self, limit: usize, from: Option<&PeerId>) -> (Vec<Received>, u64) {
        let inbox = lock(&self.inbox);
        (inbox.recent(limit, from), inbox.dropped())
    }

    async fn register(
        self: &Arc<Self>,
        peer: PeerId,
        conn: Connection,
        events: mpsc::Receiver<ConnEvent>,
        role: Role,
        phase: Phase,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<u64, WorkerError> {
        let conn = Arc::new(conn);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let initial = LinkView {
            peer: peer.clone(),
            role,
            state: phase.as_str(),
            health: None,
            qos: None,
            established_at: None,
            candidate: None,
            gossip: false,
        };
        let (view_tx, view_rx) = watch::channel(initial);
        let stop = Arc::new(Notify::new());
        let inserted = {
            let mut links = lock(&self.links);
            let free = !links.contains_key(&peer);
            if free {
                let entry = Entry {
                    generation,
                    conn: conn.clone(),
                    role,
                    phase,
                    restarting: false,
                    view: view_rx,
                    stop: stop.clone(),
                };
                links.insert(peer.clone(), entry);
            }
            free
        };
        if !inserted {
            // Another dial or offer for this peer won the race while we built the connection.
            conn.close().await;
            return Err(WorkerError::LinkExists(peer));
        }
        let driver = LinkDriver {
            worker: self.clone(),
            peer,
            generation,
            conn,
            view: view_tx,
            stop,
            deadline,
        };
        tokio::spawn(driver.run(events));
        Ok(generation)
    }

    pub(crate) fn stop_generation(&self, peer: &PeerId, generation: u64) {
        let mut links = lock(&self.links);
        if links.get(peer).is_some_and(|e| e.generation == generation)
            && let Some(e) = links.remove(peer)
        {
            e.stop.notify_one();
        }
    }

    /// The generation of the connection registered for `peer`, if any.
    pub(crate) fn generation_of(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.links).get(peer).map(|e| e.generation)
    }

    fn phase(&self, peer: &PeerId, generation: u64) -> Option<Phase> {
        lock(&self.links)
            .get(peer)
            .filter(|e| e.generation == generation)
            .map(|e| e.phase)
    }

    fn set_phase(&self, peer: &PeerId, generation: u64, phase: Phase) {
        if let Some(e) = lock(&self.links)
            .get_mut(peer)
            .filter(|e| e.generation == generation)
        {
            e.phase = phase;
        }
    }

    fn forget(&self, peer: &PeerId, generation: u64) {
        let mut links = lock(&self.links);
        if links.get(peer).is_some_and(|e| e.generation == generation) {
            links.remove(peer);
        }
        drop(links);
        self.removed.notify_waiters();
    }
}

/// Drives one connection from creation to removal.
struct LinkDriver {
    worker: Arc<Worker>,
    peer: PeerId,
    generation: u64,
    conn: Arc<Connection>,
    view: watch::Sender<LinkView>,
    stop: Arc<Notify>,
    deadline: Option<tokio::time::Instant>,
}

/// Why a driver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    HungUp,
    NoAnswer,
    Failed,
    PeerClosed,
    /// The failure detector heard nothing for its dead bound.
    PeerSilent,
}

impl LinkDriver {
    async fn run(mut self, mut events: mpsc::Receiver<ConnEvent>) {
        let clock = self.worker.clock;
        let timings = self.worker.timings;
        let mut meter = QosMeter::new();
        let mut probe_open = false;
        let mut mesh_open = false;
        let mut connected = false;
        let mut established: Option<u64> = None;
        let mut gossip_open = false;
        let mut file_open = false;
        // Dropped when this driver ends: that ends the link's file session.
        let mut file_session: Option<watch::Sender<()>> = None;
        // Gossip state is exchanged once per connection, when it is up with its gossip channel.
        let mut synced = false;
        // Watching starts when the link is up and its probe channel open: heartbeats need both.
        let mut liveness: Option<Detector> = None;
        let mut probe_tick = tokio::time::interval(timings.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample_tick = tokio::time::interval_at(
            clock.deadline_in(timings.qos_interval),
            timings.qos_interval,
        );
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = clock.deadline_in(Duration::from_secs(86_400 * 365));
        let no_answer = tokio::time::sleep_until(self.deadline.unwrap_or(far));
        tokio::pin!(no_answer);

        let end = loop {
            if file_open && established.is_some() && file_session.is_none() {
                let (tx, rx) = watch::channel(());
                file_session = Some(tx);
                self.worker.start_file_session(
                    self.peer.clone(),
                    self.generation,
                    self.conn.clone(),
                    rx,
                );
            }
            tokio::select! {
                () = self.stop.notified() => break End::HungUp,
                () = &mut no_answer, if self.deadline.is_some() => {
                    if self.worker.phase(&self.peer, self.generation) == Some(Phase::AwaitingAnswer) {
                        break End::NoAnswer;
                    }
                    self.deadline = None;
                }
                event = events.recv() => match event.inspect(|e| {
                    if !matches!(e, ConnEvent::Message { .. }) {
                        tracing::debug!(peer = %self.peer, event = ?e, "connection event");
                    }
                }) {
                    None => break End::Failed,
                    Some(ConnEvent::State(ConnState::Connected)) => {
                        connected = true;
                        if mesh_open {
                            self.up(&mut established).await;
                            if gossip_open && !synced {
                                synced = true;
                                self.sync_gossip();
                            }
                            if probe_open {
                                liveness.get_or_insert_with(|| Detector::new(timings.liveness, clock.now_us()));
                            }
                        }
                    }
                    Some(ConnEvent::State(ConnState::Disconnected)) => {
                        connected = false;
                        // The path broke under a live link: restart ICE on it.
                        if established.is_some() {
                            self.restart_ice();
                        }
                        if let Some(at) = established {
                            self.write(Health::Down, LinkQos { last_ts: clock.now_ms(), ..Default::default() }, at).await;
                        }
                    }
                    Some(ConnEvent::State(ConnState::Failed | ConnState::Closed)) => break End::Failed,
                    Some(ConnEvent::State(ConnState::Connecting)) => {}
                    Some(ConnEvent::Open(Channel::Probe)) => {
                        probe_open = true;
                        if established.is_some() {
                            liveness.get_or_insert_with(|| Detector::new(timings.liveness, clock.now_us()));
                        }
                    }
                    Some(ConnEvent::Open(Channel::Mesh)) => {
                        mesh_open = true;
                        if connected {
                            self.up(&mut established).await;
                            if gossip_open && !synced {
                                synced = true;
                                self.sync_gossip();
                            }
                            if probe_open {
                                liveness.get_or_insert_with(|| Detector::new(timings.liveness, clock.now_us()));
                            }
                        }
                    }
                    Some(ConnEvent::Message { channel: Channel::Probe, data, .. }) => {
                        if let Some(d) = liveness.as_mut()
                            && d.heard(clock.now_us()) == Some(Transition::Cleared)
                        {
                            tracing::info!(peer = %self.peer, "peer heard again; no longer suspect");
                        }
                        if Probe::decode(&data).is_some_and(|p| p.kind == ProbeKind::Bye) {
                            // The peer hung up on purpose: whatever we were redialling stops too.
                            self.worker.cancel_rejoin(&self.peer);
                            break End::PeerClosed;
                        }
                        if let Some(probe) = Probe::decode(&data)
                            && let Some(pong) = meter.on_probe(probe, clock.now_us())
                        {
                            // A lost pong is what the probe channel measures; no retry.
                            let _ = self.conn.send(Channel::Probe, &pong.encode(), false).await;
                        }
                    }
                    Some(ConnEvent::Message { channel: Channel::Mesh, data, text }) => {
                        tracing::debug!(peer = %self.peer, bytes = data.len(), text, "mesh message");
                        self.worker.to_inbox(self.peer.clone(), &data, text);
                    }
                    // The transport queues file messages apart, for the file session.
                    Some(ConnEvent::Message { channel: Channel::File, .. }) => {}
                    Some(ConnEvent::Message { channel: Channel::Gossip, data, .. }) => {
                        // Off the driver's loop: a store write must not hold up probes.
                        let worker = self.worker.clone();
                        let peer = self.peer.clone();
                        tokio::spawn(async move { worker.gossip_frame(peer, data).await });
                    }
                    Some(ConnEvent::Open(Channel::Gossip)) => {
                        self.view.send_modify(|v| v.gossip = true);
                        gossip_open = true;
                        if established.is_some() && !synced {
                            synced = true;
                            self.sync_gossip();
                        }
                    }
                    Some(ConnEvent::Closed(Channel::Gossip)) => self.view.send_modify(|v| v.gossip = false),
                    Some(ConnEvent::Open(Channel::File)) => file_open = true,
                    Some(ConnEvent::Closed(Channel::File)) => {
                        file_open = false;
                        file_session = None;
                    }
                    Some(ConnEvent::Closed(Channel::Mesh)) => break End::PeerClosed,
                    Some(ConnEvent::Closed(Channel::Probe)) => {
                        // No heartbeats without the channel: ICE's own checks remain.
                        probe_open = false;
                        liveness = None;
                    }
                },
                _ = probe_tick.tick(), if probe_open || liveness.is_some() => {
                    match liveness.as_mut().and_then(|d| d.tick(clock.now_us())) {
                        Some(Transition::Suspected { silent }) => {
                            tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "peer suspect: no probe heard");
                        }
                        Some(Transition::Died { silent }) => {
                            tracing::warn!(peer = %self.peer, silent_ms = silent.as_millis() as u64, "peer dead: no probe heard; link down");
                            break End::PeerSilent;
                        }
                        Some(Transition::Cleared) | None => {}
                    }
                    if probe_open {
                        let ping = meter.ping(clock.now_us());
                        let _ = self.conn.send(Channel::Probe, &ping.encode(), false).await;
                    }
                }
                _ = sample_tick.tick() => {
                    let stats = self.conn.stats(clock.instant()).await;
                    let sample = meter.sample(clock.now_us(), clock.now_ms(), stats.ice_rtt_ms, stats.bytes, connected);
                    self.view.send_modify(|v| v.candidate = stats.local_candidate.clone());
                    if let Some(at) = established {
                        self.write(sample.health, sample.qos, at).await;
                    }
                }
            }
        };

        tracing::info!(peer = %self.peer, reason = ?end, "link ended");
        drop(file_session);
        if end == End::HungUp {
            // Tell the peer first, before anything slow: otherwise it hears silence, takes it
            // for a failure and redials. The probe channel is lossy, so say it a few times.
            let bye = Probe {
                kind: ProbeKind::Bye,
                seq: 0,
                sent_us: clock.now_us(),
            }
            .encode();
            for _ in 0..3 {
                let _ = self.conn.send(Channel::Probe, &bye, false).await;
            }
        }
        // Then `down` in the store: closing a connection to a peer that is gone can take a
        // while, and the store should say so at once.
        if let Some(at) = established {
            self.write(
                Health::Down,
                LinkQos {
                    last_ts: clock.now_ms(),
                    ..Default::default()
                },
                at,
            )
            .await;
        }
        self.conn.close().await;
        // A link that worked and was lost (not hung up, not closed by the peer) is worth getting
        // back. Decided before the link leaves the registry, so whoever sees it gone sees the
        // decision too.
        if established.is_some() && matches!(end, End::PeerSilent | End::Failed) {
            self.worker.rejoin(self.peer.clone(), "link lost");
        }
        // The peer closed on purpose (a hang-up, a shutdown; it redials us itself when it
        // restarts): a redial of ours under way, a restarted worker's say, must not undo that.
        if end == End::PeerClosed {
            self.worker.cancel_rejoin(&self.peer);
        }
        self.worker.forget(&self.peer, self.generation);
    }

    /// Restarts ICE on this link, off the driver's loop (only the dialler does, so the two
    /// sides do not both offer; one restart at a time).
    fn restart_ice(&self) {
        let (worker, peer, generation) = (self.worker.clone(), self.peer.clone(), self.generation);
        tokio::spawn(async move { worker.restart_ice(peer, generation).await });
    }

    /// Exchanges gossip state with the peer, off the driver's loop.
    fn sync_gossip(&self) {
        let worker = self.worker.clone();
        let peer = self.peer.clone();
        tokio::spawn(async move { worker.sync_gossip(peer).await });
    }

    /// The link is usable (connected, mesh channel open): it counts as established from now.
    async fn up(&self, established: &mut Option<u64>) {
        let clock = self.worker.clock;
        let at = *established.get_or_insert(clock.now_ms());
        self.worker
            .set_phase(&self.peer, self.generation, Phase::Connected);
        self.write(
            Health::Up,
            LinkQos {
                last_ts: clock.now_ms(),
                ..Default::default()
            },
            at,
        )
        .await;
    }

    /// Writes the link document and updates the view. A store that cannot be written is logged:
    /// the next sample writes again.
    async fn write(&self, health: Health, qos: LinkQos, established: u64) {
        let state = self
            .worker
            .phase(&self.peer, self.generation)
            .map_or("closed", Phase::as_str);
        self.view.send_modify(|v| {
            v.state = if health == Health::Down && state == "connected" {
                "disconnected"
            } else {
                state
            };
            v.health = Some(health);
            v.qos = Some(qos.clone());
            v.established_at = Some(established);
        });
        if let Some(rtt) = qos.rtt_ms.filter(|r| r.is_finite()) {
            crate::metrics::METRICS.rtt.record(rtt, &[]);
        }
        let link = match Link::new(self.worker.id(), &self.peer, health, qos, established) {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(peer = %self.peer, "cannot build the link document: {e}");
                return;
            }
        };
        // Spooled: the store may be slow or away, and this driver must keep probing.
        self.worker.spool.push(crate::spool::Write::Link(link));
    }
}
