//! The link core: the one owner of peer connections. It keeps the registry (each remote peer maps
//! to at most one connection; a dialled one waits in it for its answer until the dial time-out),
//! makes and verifies the signed offers and answers, and runs one driver per connection
//! (`driver`), whose decisions are the sans-IO `LinkState` (`state`).
//!
//! Features never reach in: they get [`LinkEvent`]s through a [`LinkObserver`] (frames, a link
//! ready for gossip or files, a path broken, a link ended) and act through the methods here (`send`,
//! `connected`, `dial`, `hang_up`, ...). Only this module and `transport` name connections' parts.

mod driver;
#[cfg(test)]
pub(crate) mod fake;
mod handle;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use mesh_store::SharedStore;
use mesh_types::signing::Signed;
use mesh_types::{Answer, Health, Identity, LinkQos, Offer, PeerId, Verifier, VerifierConfig};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use crate::clock::Clock;
use crate::error::{MAX_MESSAGE_BYTES, WorkerError};
use crate::lock;
use crate::spool::Spool;
use crate::transport::{Channel, ConnEvent, Connection, Transport};
pub use handle::LinkHandle;
pub use state::{End, LinkTimings};

/// Whether an offer from a peer we are already linked with replaces that link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// A signed, fresh offer: the peer restarted and lost the old connection.
    Yes,
    /// A relayed offer, vouched for only by the signaling server.
    No,
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

impl LinkView {
    /// Connected, and its last write said `up`.
    pub fn is_up(&self) -> bool {
        self.state == "connected" && self.health == Some(Health::Up)
    }
}

/// What the core tells features. Published from the link's driver, in the order things happen;
/// an observer must not block (it spawns what takes time).
#[derive(Debug)]
pub enum LinkEvent {
    /// The link is up with its gossip channel open (once per connection).
    GossipReady { peer: PeerId },
    /// The link is up with its file channel open: the file session may run on `conn` until
    /// `ended` says otherwise (its sender is dropped when the channel closes or the link ends).
    FileSession {
        peer: PeerId,
        generation: u64,
        conn: Arc<Connection>,
        ended: watch::Receiver<()>,
    },
    /// A message on the mesh or gossip channel.
    Frame {
        peer: PeerId,
        channel: Channel,
        data: Bytes,
        text: bool,
    },
    /// The path of a live link broke (ICE disconnected): a restart may save it
    /// ([`Links::begin_ice_restart`]).
    PathBroken { peer: PeerId, generation: u64 },
    /// A link ended. Published before it leaves the registry, so whoever then finds it gone sees
    /// what the observers decided.
    Ended {
        peer: PeerId,
        end: End,
        /// Whether it had come up.
        established: bool,
    },
    /// The answer to our ICE restart came from a new connection (the peer restarted meanwhile):
    /// ours is being closed, and a new link is wanted.
    Replaced { peer: PeerId },
}

/// Whoever wants the core's events (the wiring, which hands them to the features).
pub trait LinkObserver: Send + Sync {
    fn on_link_event(self: Arc<Self>, event: LinkEvent);
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

/// The link core. Cheap to share (`Arc`); its state is behind its own locks.
pub struct Links {
    /// Itself, for the drivers it spawns (each holds the core while its link lives).
    me: Weak<Links>,
    identity: Arc<Identity>,
    store: SharedStore,
    transport: Transport,
    timings: LinkTimings,
    clock: Clock,
    verifier: Mutex<Verifier>,
    registry: Mutex<HashMap<PeerId, Entry>>,
    next_generation: AtomicU64,
    /// Woken whenever a link is removed, so shutdown can wait for the drivers to finish.
    removed: Notify,
    /// Link documents on their way to the store.
    spool: Arc<Spool>,
    /// The one observer (the wiring): held weakly, since it owns the core.
    observer: OnceLock<Weak<dyn LinkObserver>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("id", self.identity.id())
            .finish_non_exhaustive()
    }
}

impl Links {
    pub fn new(
        identity: Arc<Identity>,
        store: SharedStore,
        transport: Transport,
        timings: LinkTimings,
        clock: Clock,
        spool: Arc<Spool>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Links {
            me: me.clone(),
            identity,
            store,
            transport,
            timings,
            clock,
            verifier: Mutex::new(Verifier::new(VerifierConfig::default())),
            registry: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            removed: Notify::new(),
            spool,
            observer: OnceLock::new(),
        })
    }

    /// Sets who gets the links' events; once, before the first link (a second call is ignored).
    pub fn observe(&self, observer: Weak<dyn LinkObserver>) {
        if self.observer.set(observer).is_err() {
            tracing::error!("the link core has an observer already");
        }
    }

    fn publish(&self, event: LinkEvent) {
        match self.observer.get().and_then(Weak::upgrade) {
            Some(observer) => observer.on_link_event(event),
            // Before the wiring observes (a bug) or after the worker is gone (shutdown).
            None => tracing::debug!(?event, "link event with no observer"),
        }
    }

    pub fn id(&self) -> &PeerId {
        self.identity.id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The connection to `peer`, if it is connected (its channels usable).
    pub fn connected(&self, peer: &PeerId) -> Option<Arc<Connection>> {
        lock(&self.registry)
            .get(peer)
            .filter(|e| e.phase == Phase::Connected)
            .map(|e| e.conn.clone())
    }

    /// Whether any connection to `peer` exists (connected or being made).
    pub fn has_link(&self, peer: &PeerId) -> bool {
        lock(&self.registry).contains_key(peer)
    }

    /// Whether the link with `peer` is connected and was last written `up`.
    pub fn is_up(&self, peer: &PeerId) -> bool {
        lock(&self.registry)
            .get(peer)
            .is_some_and(|e| e.view.borrow().is_up())
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

    /// `POST /dial`: a new connection to `peer_to`, waiting for its answer; returns the signed
    /// offer and the connection's generation, so that the caller can later act on this
    /// connection only (a newer one may take its place).
    pub async fn dial(&self, peer_to: PeerId) -> Result<(Offer, u64), WorkerError> {
        if &peer_to == self.id() {
            return Err(WorkerError::SelfDial);
        }
        self.registered_key(&peer_to).await?;
        if lock(&self.registry).contains_key(&peer_to) {
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
        let generation = self
            .register(peer_to, conn, events, Role::Dialer, Phase::AwaitingAnswer)
            .await?;
        Ok((offer, generation))
    }

    /// `POST /offer`: verifies a peer's offer and answers it with a new connection.
    pub async fn accept_offer(&self, offer: Offer) -> Result<Answer, WorkerError> {
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
        &self,
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
        let conn = lock(&self.registry)
            .get(from)
            .map(|e| e.conn.clone())
            .ok_or_else(|| WorkerError::NoLink(from.clone()))?;
        Ok(conn.add_remote_candidate(candidate).await?)
    }

    /// Answers an offer from `from` (already authenticated) and registers the connection.
    async fn answer_offer(
        &self,
        from: PeerId,
        offer_sdp: &str,
        replace: Replace,
    ) -> Result<String, WorkerError> {
        // A re-offer from the connection we have (same DTLS fingerprint): an ICE restart, answered
        // on that connection, which keeps its channels; anything else is a new connection.
        if replace == Replace::Yes {
            let existing = lock(&self.registry).get(&from).map(|e| e.conn.clone());
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
            let mut registry = lock(&self.registry);
            match registry.get(&from) {
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
                Some(_) => registry.remove(&from),
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
        self.register(from, conn, events, Role::Answerer, Phase::Connecting)
            .await?;
        Ok(sdp)
    }

    /// `POST /answer`: completes a pending dial, or the ICE restart this side offered.
    pub async fn accept_answer(&self, answer: Answer) -> Result<(), WorkerError> {
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
            let mut registry = lock(&self.registry);
            let entry = registry
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
            // meanwhile and answered as to a new link), ours is finished.
            if conn.remote_fingerprint().await.as_deref()
                != crate::transport::fingerprint_of(&answer.sdp)
            {
                self.stop_generation(&from, generation);
                self.publish(LinkEvent::Replaced { peer: from.clone() });
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

    /// Starts an ICE restart on the link with `peer` if it is still this generation, dialled by
    /// this side (so the two sides do not both offer) and not restarting already: the signed
    /// re-offer to deliver.
    pub async fn begin_ice_restart(
        &self,
        peer: &PeerId,
        generation: u64,
    ) -> Option<Result<Offer, WorkerError>> {
        let conn = {
            let mut registry = lock(&self.registry);
            match registry.get_mut(peer) {
                Some(e)
                    if e.generation == generation && e.role == Role::Dialer && !e.restarting =>
                {
                    e.restarting = true;
                    e.conn.clone()
                }
                _ => return None,
            }
        };
        tracing::info!(%peer, "restarting ICE on the live connection");
        let offer = async {
            let sdp = conn.restart_offer().await?;
            let mut offer = Offer::new(self.id().clone(), peer.clone(), sdp, self.clock.now_ms());
            offer.sign(&self.identity)?;
            Ok(offer)
        };
        Some(offer.await)
    }

    /// An ICE restart could not finish: whether the link is still this generation (and waits
    /// for no answer any more); `false` means it went meanwhile.
    pub fn ice_restart_failed(&self, peer: &PeerId, generation: u64) -> bool {
        match lock(&self.registry).get_mut(peer) {
            Some(e) if e.generation == generation => {
                e.restarting = false;
                true
            }
            _ => false,
        }
    }

    /// `DELETE /links/{peer}`: hangs up.
    pub fn hang_up(&self, peer: &PeerId) -> Result<(), WorkerError> {
        let entry = lock(&self.registry)
            .remove(peer)
            .ok_or_else(|| WorkerError::NoLink(peer.clone()))?;
        entry.stop.notify_one();
        Ok(())
    }

    /// Stops every link (on shutdown) and waits, at most `within`, for their drivers to write
    /// them `down` and finish.
    pub async fn hang_up_all(&self, within: Duration) {
        let stops: Vec<Arc<Notify>> = lock(&self.registry)
            .values()
            .map(|e| e.stop.clone())
            .collect();
        for stop in stops {
            stop.notify_one();
        }
        let drained = async {
            loop {
                let removed = self.removed.notified();
                if lock(&self.registry).is_empty() {
                    return;
                }
                removed.await;
            }
        };
        if tokio::time::timeout(within, drained).await.is_err() {
            tracing::warn!(
                left = lock(&self.registry).len(),
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
            let registry = lock(&self.registry);
            let entry = registry
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

    /// Every link as `GET /links` shows it, by peer.
    pub fn views(&self) -> Vec<LinkView> {
        let mut views: Vec<LinkView> = lock(&self.registry)
            .values()
            .map(|e| e.view.borrow().clone())
            .collect();
        views.sort_by(|a, b| a.peer.cmp(&b.peer));
        views
    }

    async fn register(
        &self,
        peer: PeerId,
        conn: Connection,
        events: mpsc::Receiver<ConnEvent>,
        role: Role,
        phase: Phase,
    ) -> Result<u64, WorkerError> {
        let conn = Arc::new(conn);
        let Some(links) = self.me.upgrade() else {
            // The worker is being dropped: no new link.
            conn.close().await;
            return Err(WorkerError::Busy("the worker is stopping".into()));
        };
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
            let mut registry = lock(&self.registry);
            let free = !registry.contains_key(&peer);
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
                registry.insert(peer.clone(), entry);
            }
            free
        };
        if !inserted {
            // Another dial or offer for this peer won the race while we built the connection.
            conn.close().await;
            return Err(WorkerError::LinkExists(peer));
        }
        let driver = driver::LinkDriver {
            links,
            peer,
            generation,
            conn,
            view: view_tx,
            stop,
            dialled: role == Role::Dialer,
        };
        tokio::spawn(driver.run(events));
        Ok(generation)
    }

    /// Stops the connection to `peer` if it is still this generation.
    pub fn stop_generation(&self, peer: &PeerId, generation: u64) {
        let mut registry = lock(&self.registry);
        if registry
            .get(peer)
            .is_some_and(|e| e.generation == generation)
            && let Some(e) = registry.remove(peer)
        {
            e.stop.notify_one();
        }
    }

    /// The generation of the connection registered for `peer`, if any.
    pub fn generation_of(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.registry).get(peer).map(|e| e.generation)
    }

    fn phase(&self, peer: &PeerId, generation: u64) -> Option<Phase> {
        lock(&self.registry)
            .get(peer)
            .filter(|e| e.generation == generation)
            .map(|e| e.phase)
    }

    fn set_phase(&self, peer: &PeerId, generation: u64, phase: Phase) {
        if let Some(e) = lock(&self.registry)
            .get_mut(peer)
            .filter(|e| e.generation == generation)
        {
            e.phase = phase;
        }
    }

    fn forget(&self, peer: &PeerId, generation: u64) {
        let mut registry = lock(&self.registry);
        if registry
            .get(peer)
            .is_some_and(|e| e.generation == generation)
        {
            registry.remove(peer);
        }
        drop(registry);
        self.removed.notify_waiters();
    }

    /// Spools a link document: the store may be slow or away, and a driver must keep probing.
    fn write(&self, link: mesh_types::Link) {
        self.spool.push(crate::spool::Write::Link(link));
    }
}

#[async_trait::async_trait]
impl LinkHandle for Links {
    fn id(&self) -> &PeerId {
        Links::id(self)
    }

    fn has_link(&self, peer: &PeerId) -> bool {
        Links::has_link(self, peer)
    }

    fn is_up(&self, peer: &PeerId) -> bool {
        Links::is_up(self, peer)
    }

    fn views(&self) -> Vec<LinkView> {
        Links::views(self)
    }

    fn generation_of(&self, peer: &PeerId) -> Option<u64> {
        Links::generation_of(self, peer)
    }

    fn stop_generation(&self, peer: &PeerId, generation: u64) {
        Links::stop_generation(self, peer, generation);
    }

    fn dial_timeout(&self) -> Duration {
        self.timings.dial_timeout
    }

    async fn dial(&self, peer: PeerId) -> Result<(Offer, u64), WorkerError> {
        Links::dial(self, peer).await
    }

    async fn accept_answer(&self, answer: Answer) -> Result<(), WorkerError> {
        Links::accept_answer(self, answer).await
    }

    async fn begin_ice_restart(
        &self,
        peer: &PeerId,
        generation: u64,
    ) -> Option<Result<Offer, WorkerError>> {
        Links::begin_ice_restart(self, peer, generation).await
    }

    fn ice_restart_failed(&self, peer: &PeerId, generation: u64) -> bool {
        Links::ice_restart_failed(self, peer, generation)
    }

    async fn send_on(
        &self,
        peer: &PeerId,
        channel: Channel,
        data: &[u8],
    ) -> Result<(), WorkerError> {
        let conn = self
            .connected(peer)
            .ok_or_else(|| WorkerError::NotConnected(peer.clone()))?;
        Ok(conn.send(channel, data, false).await?)
    }
}
