//! meshrtc's storage: peers, links, trust scores and the gossip audit trail behind one [`Store`]
//! trait, with an embedded on-disk backend (SQLite in WAL mode, the default) and a Firestore
//! backend holding the same document shapes.
//!
//! Invariants: only this crate knows how documents are stored; both backends pass the same
//! conformance suite (`tests/conformance`); the rules they share (trust is never reset, keys are
//! bound on first registration, older link samples never overwrite newer ones) live in
//! [`rules`] as pure functions.

mod config;
pub mod embedded;
mod error;
#[cfg(feature = "firestore")]
pub mod firestore;
pub mod rules;

use std::sync::Arc;

use async_trait::async_trait;
use mesh_types::transfer::TransferRecord;
use mesh_types::{
    AuditRecord, Endpoints, GossipEntry, Health, Link, LinkId, Peer, PeerId, PublicKey, UnixMillis,
};

pub use config::{StoreConfig, open};
pub use error::{ErrorKind, StoreError};

/// Most rows any list returns at once.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Collection (table) names, shared by both backends so the data reads the same everywhere.
pub const PEERS: &str = "mesh_peers";
pub const LINKS: &str = "mesh_links";
pub const AUDIT: &str = "mesh_gossip_audit";
pub const GOSSIP_STATE: &str = "mesh_gossip_state";
pub const TRANSFERS: &str = "mesh_transfers";

/// A peer registering or refreshing itself: everything but trust, which registration never sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerUpsert {
    pub id: PeerId,
    pub pub_key: PublicKey,
    pub region: Option<String>,
    pub endpoints: Endpoints,
    pub seen_at: UnixMillis,
    /// Trust given to a peer seen for the first time (the trust model's floor); ignored after.
    pub initial_trust: f64,
}

/// Whether a link write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkWrite {
    Applied,
    /// The store already holds a newer observation (`lastTs`) of this link; nothing changed.
    Stale,
}

/// Which links to list: newest `lastTs` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkQuery {
    /// Only links with this peer at either end.
    pub peer: Option<PeerId>,
    pub health: Option<Health>,
    /// At most this many (capped at [`MAX_LIST_LIMIT`]).
    pub limit: usize,
}

impl Default for LinkQuery {
    fn default() -> Self {
        LinkQuery {
            peer: None,
            health: None,
            limit: 100,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where meshrtc keeps its state. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Registers or refreshes a peer. Keeps its trust; a new peer gets `initial_trust`.
    /// `Conflict` if the id is bound to another key (see [`Store::replace_peer_key`]).
    async fn upsert_peer(&self, peer: &PeerUpsert) -> Result<Peer>;
    /// Operator action: binds `id` to a new key, keeping everything else. `NotFound` if unknown.
    async fn replace_peer_key(&self, id: &PeerId, key: &PublicKey) -> Result<Peer>;
    async fn get_peer(&self, id: &PeerId) -> Result<Peer>;
    /// Every peer, ordered by id.
    async fn list_peers(&self) -> Result<Vec<Peer>>;
    /// Sets trust scores in [0, 1]. All or nothing: `NotFound` if any peer is unknown,
    /// `InvalidInput` if any score is outside [0, 1].
    async fn set_trust(&self, scores: &[(PeerId, f64)]) -> Result<()>;
    /// Writes a link by its canonical id unless the store holds a newer observation.
    async fn upsert_link(&self, link: &Link) -> Result<LinkWrite>;
    async fn get_link(&self, id: &LinkId) -> Result<Link>;
    /// Links, newest `lastTs` first (ties by id, descending, as Firestore orders them).
    async fn list_links(&self, query: &LinkQuery) -> Result<Vec<Link>>;
    /// Appends an audit record. Append-only: `Conflict` if its id exists.
    async fn append_audit(&self, record: &AuditRecord) -> Result<()>;
    /// Audit records, newest `ts` first (ties by id, descending).
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>>;
    /// Merges gossiped entries into the mesh-wide state: each is written under its key unless
    /// the stored one supersedes it ([`GossipEntry::supersedes`]). Returns how many were written.
    async fn merge_gossip(&self, entries: &[GossipEntry]) -> Result<usize>;
    /// The gossiped state, newest stamp first.
    async fn list_gossip(&self, limit: usize) -> Result<Vec<GossipEntry>>;
    /// Cheap round trip for readiness probes.
    /// Writes a sender's transfer record unless the stored one has a higher `version`;
    /// returns whether it was written.
    async fn put_transfer(&self, record: &TransferRecord) -> Result<bool>;
    /// Transfer records, most recently updated first.
    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>>;
    async fn ping(&self) -> Result<()>;
}

/// The store as services hold it.
pub type SharedStore = Arc<dyn Store>;
