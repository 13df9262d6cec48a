//! meshrtc's shared vocabulary: validated peer ids, the wire and document shapes every service
//! speaks, Ed25519 identities, and the rules for signing and verifying them.
//!
//! Invariant: this crate does no IO, spawns no task and never reads the clock or the OS RNG.
//! Time (`now_ms`) and randomness come in as arguments, so every rule here is tested
//! deterministically and can be reused by any driver.

mod error;
mod gossip;
mod identity;
mod link;
pub mod peer;
mod peer_id;
pub mod rate;
mod sdp;
pub mod signaling;
pub mod signing;
pub mod transfer;

pub use error::{Error, VerifyError};
pub use gossip::{
    AuditRecord, AuditTarget, Delivery, Envelope, GossipEntry, GossipFrame, Hlc, LinkSummary,
    Outcome, TELEMETRY, Telemetry, TelemetryPayload, Transport,
};
pub use identity::{Identity, KeyId, PublicKey, Signature};
pub use link::{Health, Link, LinkId, LinkQos};
pub use peer::{Endpoints, Peer, PeerRegistration};
pub use peer_id::PeerId;
pub use sdp::{Answer, AnswerKind, Offer, OfferKind, SdpMessage};
pub use signing::{ReplayCache, Signed, Verifier, VerifierConfig};

/// Milliseconds since the Unix epoch: the unit of every `ts` on the wire.
pub type UnixMillis = u64;
