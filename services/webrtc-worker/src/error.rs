//! The worker's one error type: what its operations refuse and why. A leaf module, so every part
//! can name it without naming the others; `api` maps it to the JSON error shape.

use mesh_store::StoreError;
use mesh_types::{PeerId, VerifyError};

use crate::transport::TransportError;

/// Largest message the mesh channel carries: the SCTP max-message-size we advertise.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

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
