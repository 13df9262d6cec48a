//! Errors of mesh-types: one for malformed values, one for signature verification, whose kinds
//! the services map to distinct HTTP statuses and stable error codes.

/// A value that does not meet the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid peer id {id:?}: {reason}")]
    InvalidPeerId { id: String, reason: &'static str },
    #[error("invalid link id {0:?}: expected \"a<->b\" with a < b")]
    InvalidLinkId(String),
    #[error("a link joins two different peers, got {0} twice")]
    SelfLink(String),
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid signature encoding: {0}")]
    InvalidSignature(String),
    #[error("invalid signing key: {0}")]
    InvalidSigningKey(String),
    #[error("payload cannot be canonicalised: {0}")]
    Canonicalisation(String),
    #[error("{identity} cannot sign a message from {signer}")]
    NotSigner { signer: String, identity: String },
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

/// Why a signed message was refused. Each kind has a stable [`VerifyError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("message carries no signature")]
    MissingSignature,
    #[error("signature or key is not well formed: {0}")]
    Malformed(String),
    #[error("signature does not match the message")]
    BadSignature,
    #[error("message names {claimed} but was signed by key {kid}, not {claimed}'s key")]
    WrongSigner { claimed: String, kid: String },
    #[error("timestamp {ts} is {age_ms} ms old, older than the {window_ms} ms window")]
    Stale {
        ts: u64,
        age_ms: u64,
        window_ms: u64,
    },
    #[error("timestamp {ts} is {ahead_ms} ms in the future, beyond the {window_ms} ms window")]
    FromFuture {
        ts: u64,
        ahead_ms: u64,
        window_ms: u64,
    },
    #[error("message was already accepted once")]
    Replayed,
    #[error("replay cache is full ({0} messages in the window); try again shortly")]
    ReplayCacheFull(usize),
}

impl VerifyError {
    /// The stable, documented error code for this kind (proto/README.md).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature => "missing_signature",
            VerifyError::Malformed(_) => "malformed_signature",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongSigner { .. } => "wrong_signer",
            VerifyError::Stale { .. } => "stale_timestamp",
            VerifyError::FromFuture { .. } => "future_timestamp",
            VerifyError::Replayed => "replayed",
            VerifyError::ReplayCacheFull(_) => "replay_cache_full",
        }
    }
}
