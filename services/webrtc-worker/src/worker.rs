//! The worker's wiring: it builds the link core (`links`) and the features around it, hands the
//! core's events to the features, and is what the HTTP API and `run` hold. It decides nothing
//! about links itself. (Gossip, files and queue still extend `Worker` from their own
//! files; each is to become a component of its own, taking the core's handle.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_store::{PeerUpsert, SharedStore, StoreError};
use mesh_types::{Endpoints, Identity, PeerId};

use crate::clock::Clock;
use crate::error::WorkerError;
use crate::inbox::{Inbox, Received};
use crate::links::{End, LinkEvent, LinkObserver, LinkTimings, Links};
use crate::lock;
use crate::rejoin::Rejoin;
use crate::transport::{Channel, Transport};

pub use crate::error::MAX_MESSAGE_BYTES;
pub use crate::links::{LinkView, Role};

pub struct Worker {
    links: Arc<Links>,
    clock: Clock,
    region: Mutex<Option<String>>,
    pub(crate) gossip: crate::gossip::Gossip,
    store: SharedStore,
    inbox: Mutex<Inbox>,
    rejoin: Arc<Rejoin>,
    /// Link samples and audit records on their way to the store.
    pub(crate) spool: Arc<crate::spool::Spool>,
    /// File transfers, sending and receiving.
    pub(crate) files: crate::files::Files,
    /// Queued messages to and from worker peers.
    pub(crate) queues: crate::queue::Queues,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", self.id())
            .finish_non_exhaustive()
    }
}

/// The parts' settings, as `run` reads them from the configuration.
#[derive(Debug)]
pub struct Parts {
    pub identity: Identity,
    pub store: SharedStore,
    pub transport: Transport,
    pub timings: LinkTimings,
    pub clock: Clock,
    pub gossip: crate::gossip::GossipSettings,
    pub rejoin: crate::rejoin::RejoinSettings,
    pub spool_capacity: usize,
    pub files: crate::files::FilesConfig,
}

impl Worker {
    pub fn new(parts: Parts) -> Arc<Self> {
        let spool = Arc::new(crate::spool::Spool::new(parts.spool_capacity));
        let links = Links::new(
            parts.identity,
            parts.store.clone(),
            parts.transport,
            parts.timings,
            parts.clock,
            spool.clone(),
        );
        let gossip = crate::gossip::Gossip::new(links.id().clone(), parts.gossip, parts.clock);
        let rejoin = Rejoin::new(
            links.clone(),
            parts.store.clone(),
            gossip.http().clone(),
            parts.clock,
            parts.rejoin,
        );
        let worker = Arc::new(Worker {
            gossip,
            links,
            rejoin,
            clock: parts.clock,
            region: Mutex::new(None),
            store: parts.store,
            inbox: Mutex::new(Inbox::new(1024, 8 * 1024 * 1024)),
            spool,
            queues: crate::queue::Queues::new(
                parts.files.dir.join("queue"),
                parts.files.queue_capacity,
            ),
            files: crate::files::Files::new(parts.files),
        });
        let observer: Arc<dyn LinkObserver> = worker.clone();
        worker.links.observe(Arc::downgrade(&observer));
        worker
    }

    /// The link core: connections, their handshakes and their views.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// Getting lost links back.
    pub fn rejoin(&self) -> &Arc<Rejoin> {
        &self.rejoin
    }

    pub fn id(&self) -> &PeerId {
        self.links.id()
    }

    pub fn identity(&self) -> &Identity {
        self.links.identity()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
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
                pub_key: self.identity().public_key(),
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

    /// `DELETE /links/{peer}`: hangs up, and stops any rejoining: the operator wants it down.
    pub fn hang_up(&self, peer: &PeerId) -> Result<(), WorkerError> {
        self.rejoin.cancel(peer);
        self.links.hang_up(peer)
    }

    /// Stops every link (on shutdown), with no rejoining from now on, and waits at most `within`
    /// for their drivers to write them `down` and finish.
    pub async fn hang_up_all(&self, within: Duration) {
        self.rejoin.stop_all();
        self.links.hang_up_all(within).await;
    }

    /// Puts a message from `from` in the inbox `GET /messages` reads.
    pub(crate) fn to_inbox(&self, from: PeerId, data: &[u8], text: bool) {
        lock(&self.inbox).push(from, self.clock.now_ms(), data, text);
    }

    pub fn messages(&self, limit: usize, from: Option<&PeerId>) -> (Vec<Received>, u64) {
        let inbox = lock(&self.inbox);
        (inbox.recent(limit, from), inbox.dropped())
    }
}

impl LinkObserver for Worker {
    /// Hands each link event to the feature it concerns; what takes time runs on a task of its
    /// own, so the link's driver keeps probing.
    fn on_link_event(self: Arc<Self>, event: LinkEvent) {
        match event {
            LinkEvent::Frame {
                peer,
                channel: Channel::Mesh,
                data,
                text,
            } => self.to_inbox(peer, &data, text),
            LinkEvent::Frame {
                peer,
                channel: Channel::Gossip,
                data,
                ..
            } => {
                tokio::spawn(async move { self.gossip_frame(peer, data).await });
            }
            // The core publishes frames of the mesh and gossip channels only.
            LinkEvent::Frame { .. } => {}
            LinkEvent::GossipReady { peer } => {
                tokio::spawn(async move { self.sync_gossip(peer).await });
            }
            LinkEvent::FileSession {
                peer,
                generation,
                conn,
                ended,
            } => self.start_file_session(peer, generation, conn, ended),
            LinkEvent::PathBroken { peer, generation } => {
                tokio::spawn(self.rejoin.clone().restart_ice(peer, generation));
            }
            LinkEvent::Ended {
                peer,
                end,
                established,
            } => match end {
                // A link that worked and was lost (not hung up, not closed by the peer) is worth
                // getting back.
                End::PeerSilent | End::Failed if established => {
                    self.rejoin.start(peer, "link lost")
                }
                // The peer closed on purpose (a hang-up, a shutdown; it redials us itself when
                // it restarts): a redial of ours under way, a restarted worker's say, must not
                // undo that.
                End::PeerClosed => self.rejoin.cancel(&peer),
                _ => {}
            },
            LinkEvent::Replaced { peer } => {
                self.rejoin
                    .start(peer, "the peer restarted during an ICE restart");
            }
        }
    }
}
