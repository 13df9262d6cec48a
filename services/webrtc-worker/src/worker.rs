//! The worker's wiring: it builds the link core (`links`) and the features around it (rejoin,
//! queue, gossip, files), hands the core's events to the features, and is what the HTTP API and
//! `run` hold. It decides nothing about links itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mesh_store::{PeerUpsert, SharedStore, StoreError};
use mesh_types::transfer::MessageKind;
use mesh_types::{Endpoints, Identity, PeerId};

use crate::clock::Clock;
use crate::error::{MAX_MESSAGE_BYTES, WorkerError};
use crate::files::{Files, FilesParts};
use crate::gossip::{Gossip, GossipParts};
use crate::inbox::{Inbox, Received};
use crate::links::{End, LinkEvent, LinkObserver, LinkTimings, Links};
use crate::lock;
use crate::queue::{Arrived, Queue, Queues, Sent};
use crate::rejoin::{HttpCourier, Rejoin};
use crate::transport::{Channel, Transport};

pub use crate::links::{LinkView, Role};

pub struct Worker {
    links: Arc<Links>,
    clock: Clock,
    /// The region this worker registers with.
    region: Option<String>,
    gossip: Arc<Gossip>,
    store: SharedStore,
    inbox: Mutex<Inbox>,
    rejoin: Arc<Rejoin>,
    /// Link samples and audit records on their way to the store.
    pub(crate) spool: Arc<crate::spool::Spool>,
    /// File transfers, sending and receiving.
    files: Arc<Files>,
    /// Queued messages to and from worker peers.
    queue: Arc<Queue>,
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
    pub region: Option<String>,
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
        let identity = Arc::new(parts.identity);
        let links = Links::new(
            identity.clone(),
            parts.store.clone(),
            parts.transport,
            parts.timings,
            parts.clock,
            spool.clone(),
        );
        let http = crate::gossip::http_client();
        let courier = HttpCourier {
            http: http.clone(),
            store: parts.store.clone(),
            proxy: parts.rejoin.proxy.clone(),
        };
        let rejoin = Rejoin::new(
            links.clone(),
            parts.store.clone(),
            Arc::new(courier),
            parts.clock,
            parts.rejoin,
            os_seeded(),
        );
        let queue = Queue::new(
            Queues::new(parts.files.dir.join("queue"), parts.files.queue_capacity),
            links.clone(),
            rejoin.clone(),
        );
        let gossip = Gossip::new(GossipParts {
            settings: parts.gossip,
            clock: parts.clock,
            links: links.clone(),
            identity: identity.clone(),
            store: parts.store.clone(),
            spool: spool.clone(),
            queue: queue.clone(),
            region: parts.region.clone(),
            http,
            rng: os_seeded(),
        });
        let files = Files::new(FilesParts {
            config: parts.files,
            links: links.clone(),
            rejoin: rejoin.clone(),
            store: parts.store.clone(),
            spool: spool.clone(),
            identity: identity.clone(),
            clock: parts.clock,
        });
        let worker = Arc::new(Worker {
            files,
            gossip,
            queue,
            links,
            rejoin,
            clock: parts.clock,
            region: parts.region,
            store: parts.store,
            inbox: Mutex::new(Inbox::new(1024, 8 * 1024 * 1024)),
            spool,
        });
        let weak = Arc::downgrade(&worker);
        worker.queue.deliver_to(move |arrived| {
            if let Some(worker) = weak.upgrade() {
                worker.deliver_arrived(arrived);
            }
        });
        let observer: Arc<dyn LinkObserver> = worker.clone();
        worker.links.observe(Arc::downgrade(&observer));
        worker
    }

    /// The link core: connections, their handshakes and their views.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// File transfers, sending and receiving.
    pub fn files(&self) -> &Arc<Files> {
        &self.files
    }

    /// Queued messages to and from worker peers.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// A message the queue delivered: text and binary to the inbox; gossip is checked, merged
    /// and audited like one from the gossip channel.
    fn deliver_arrived(self: Arc<Self>, arrived: Arrived) {
        let Arrived { from, kind, data } = arrived;
        match kind {
            MessageKind::Text => self.to_inbox(from, &data, true),
            MessageKind::Binary => self.to_inbox(from, &data, false),
            MessageKind::Gossip => {
                tokio::spawn(async move { self.gossip.on_frame(from, data).await });
            }
        }
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

    /// Gossip: pushes, receipts and the state this peer holds.
    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// Registers (or refreshes) this worker's peer record, keeping its trust, so peers sharing
    /// the store can verify what it signs.
    pub async fn register_self(&self, https: String) -> Result<(), StoreError> {
        self.store
            .upsert_peer(&PeerUpsert {
                id: self.id().clone(),
                pub_key: self.identity().public_key(),
                region: self.region.clone(),
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

    /// `POST /links/{peer}/messages`: to a browser peer straight on the mesh channel; to a
    /// worker peer through its outbox (linked or not).
    pub async fn send_message(
        self: &Arc<Self>,
        peer: &PeerId,
        data: Vec<u8>,
        text: bool,
    ) -> Result<Sent, WorkerError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(WorkerError::MessageTooLarge(data.len()));
        }
        let connected = self.links.connected(peer).is_some();
        // Workers (peers with a worker URL) get a queue; a browser has only the mesh channel,
        // and one that is away may never come back to this worker.
        match self.gossip.worker_url_of(peer).await? {
            Some(Some(_)) => {}
            Some(None) | None if connected => {
                self.links.send(peer, &data, text).await?;
                return Ok(Sent::Direct);
            }
            Some(None) => return Err(WorkerError::NotConnected(peer.clone())),
            None => return Err(WorkerError::UnknownPeer(peer.clone())),
        }
        // Carried now (or as soon as the receiver says where it stands: a link seconds old).
        let linked = connected;
        let kind = if text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let seq = self
            .queue
            .enqueue(peer, kind, Bytes::from(data), !linked)
            .await
            .map_err(|e| WorkerError::Busy(format!("the outbox cannot be written: {e}")))?;
        Ok(Sent::Queued { seq, linked })
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

/// A generator seeded from the OS: the wiring is a driver, and may read it.
#[allow(clippy::disallowed_methods)]
fn os_seeded() -> rand::rngs::StdRng {
    use rand::SeedableRng as _;
    rand::rngs::StdRng::from_rng(&mut rand::rng())
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
                tokio::spawn(async move { self.gossip.on_frame(peer, data).await });
            }
            // The core publishes frames of the mesh and gossip channels only.
            LinkEvent::Frame { .. } => {}
            LinkEvent::GossipReady { peer } => {
                tokio::spawn(async move { self.gossip.sync(peer).await });
            }
            LinkEvent::FileSession {
                peer,
                generation,
                conn,
                ended,
            } => crate::file_channel::start(
                peer,
                generation,
                conn,
                ended,
                self.files.clone(),
                self.queue.clone(),
            ),
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
