//! File transfer wire formats (proto/FILES.md): the signed manifest, the control messages and
//! data pieces on a link's `file` channel, and the transfer record the sender keeps in the store.
//!
//! A file is cut into chunks of `chunkSize` bytes (the last may be shorter); the manifest names
//! the SHA-256 of every chunk and of the whole file and is signed by the sender, so a receiver can
//! check each chunk as it arrives and the whole file before it renames it into place. Chunks
//! travel as pieces no larger than one SCTP message.

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed, signature_fields};
use crate::{Error, KeyId, PeerId, UnixMillis};

/// Smallest chunk: small enough to re-send cheaply, large enough to keep the manifest short.
pub const MIN_CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk; with [`MAX_CHUNKS`] it bounds a file at 32 GiB.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Most chunks in one manifest: keeps a manifest (64 hex digits per chunk) inside one 64 KiB
/// SCTP message, the size every WebRTC stack accepts.
pub const MAX_CHUNKS: u64 = 512;
/// Largest file a manifest can describe.
pub const MAX_FILE_SIZE: u64 = MAX_CHUNKS * MAX_CHUNK_SIZE as u64;
/// Payload bytes in one data piece: a piece with its header fits a 64 KiB message.
pub const PIECE_SIZE: usize = 65536 - PIECE_HEADER;
/// Type byte, transfer id (16 bytes), chunk index and offset (4 bytes each, big-endian).
pub const PIECE_HEADER: usize = 1 + 16 + 4 + 4;
/// Longest file name, in bytes (what common file systems allow).
pub const MAX_NAME_BYTES: usize = 255;

const CONTROL_TAG: u8 = 0x01;
const PIECE_TAG: u8 = 0x02;
const MESSAGE_TAG: u8 = 0x03;
/// Type byte and sequence number (8 bytes, big-endian) and kind (1 byte) of a queued message.
pub const MESSAGE_HEADER: usize = 1 + 8 + 1;

/// The chunk size for a file of `size` bytes: the smallest power of two from [`MIN_CHUNK_SIZE`]
/// that needs no more than [`MAX_CHUNKS`] chunks, or `None` when the file is too large.
pub fn chunk_size_for(size: u64) -> Option<u32> {
    let mut chunk = MIN_CHUNK_SIZE;
    while size.div_ceil(u64::from(chunk)) > MAX_CHUNKS {
        chunk = chunk.checked_mul(2).filter(|c| *c <= MAX_CHUNK_SIZE)?;
    }
    Some(chunk)
}

/// A transfer's id: 16 random bytes, 32 lowercase hex digits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    pub fn random(rng: &mut (impl rand::Rng + ?Sized)) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        TransferId(b)
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidField {
            field: "transfer id",
            reason: format!("expected 32 lowercase hex digits, got {s:?}"),
        };
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| bad())?;
        Ok(TransferId(b))
    }
}

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for TransferId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TransferId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TransferId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest, 64 lowercase hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut b = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "expected a SHA-256 digest: 64 lowercase hex digits",
            ));
        }
        hex::decode_to_slice(&s, &mut b).map_err(serde::de::Error::custom)?;
        Ok(Digest(b))
    }
}

/// What the sender promises to send, signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub id: TransferId,
    pub from: PeerId,
    pub to: PeerId,
    /// The file's name, no directory: the receiver decides where it goes.
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub sha256: Digest,
    pub chunks: Vec<Digest>,
    /// When the sender made it (ms since the epoch).
    pub ts: UnixMillis,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl Manifest {
    /// The number of chunks a file of this size and chunk size has.
    pub fn chunk_count(&self) -> u32 {
        u32::try_from(self.size.div_ceil(u64::from(self.chunk_size.max(1)))).unwrap_or(u32::MAX)
    }

    /// Byte length of chunk `i` (the last one may be short); 0 past the end.
    pub fn chunk_len(&self, i: u32) -> u32 {
        let start = u64::from(i) * u64::from(self.chunk_size);
        let len = self
            .size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size));
        u32::try_from(len).unwrap_or(0)
    }

    /// Where chunk `i` starts in the file.
    pub fn chunk_offset(&self, i: u32) -> u64 {
        u64::from(i) * u64::from(self.chunk_size)
    }

    /// Checks everything but the signature: a manifest that passes describes a file this
    /// protocol can carry, with a name that is safe to create in a directory.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidField { field, reason });
        check_name(&self.name)?;
        if self.from == self.to {
            return bad("to", "a peer cannot send a file to itself".into());
        }
        if self.size > MAX_FILE_SIZE {
            return bad(
                "size",
                format!(
                    "{} bytes is more than the {MAX_FILE_SIZE} a transfer carries",
                    self.size
                ),
            );
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || !self.chunk_size.is_power_of_two()
        {
            return bad(
                "chunkSize",
                format!(
                    "expected a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, got {}",
                    self.chunk_size
                ),
            );
        }
        let count = self.size.div_ceil(u64::from(self.chunk_size));
        if count > MAX_CHUNKS {
            return bad("chunks", format!("{count} chunks, at most {MAX_CHUNKS}"));
        }
        if self.chunks.len() as u64 != count {
            return bad(
                "chunks",
                format!("{} digests for {count} chunks", self.chunks.len()),
            );
        }
        Ok(())
    }
}

/// A file name a receiver can create: one path component, no control characters.
pub fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("not a file name")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if name.starts_with('.') {
        // Dot files would hide next to the receiver's own partial files.
        Some("starts with a dot")
    } else {
        None
    };
    match reason {
        Some(r) => Err(Error::InvalidField {
            field: "name",
            reason: format!("{name:?}: {r}"),
        }),
        None => Ok(()),
    }
}

impl Signed for Manifest {
    const DOMAIN: &'static str = "file-manifest";

    fn signer(&self) -> &PeerId {
        &self.from
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut w = CanonicalWriter::new(Self::DOMAIN);
        w.bytes(&self.id.0)
            .str(self.from.as_str())
            .str(self.to.as_str())
            .str(&self.name)
            .u64(self.size)
            .u64(u64::from(self.chunk_size))
            .bytes(&self.sha256.0)
            .u64(self.chunks.len() as u64);
        for c in &self.chunks {
            w.bytes(&c.0);
        }
        Ok(w.u64(self.ts).finish())
    }
    signature_fields!();
}

/// Why a receiver refused a transfer or a side gave one up; stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseCode {
    /// Larger than the receiver accepts.
    TooLarge,
    /// Not enough free space on the receiver's disk.
    NoSpace,
    /// The sender is not registered, or not one the receiver takes files from.
    UnknownSender,
    /// The manifest's signature does not verify.
    BadSignature,
    /// The manifest is malformed.
    InvalidManifest,
    /// The receiver could not write the file.
    StorageError,
    /// The sender's file changed while it was being sent.
    SourceChanged,
    /// Cancelled by an operator.
    Cancelled,
    /// The same id names a different manifest.
    Conflict,
    /// No progress for longer than the receiver keeps a partial file; it was removed.
    Expired,
}

impl RefuseCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseCode::TooLarge => "too_large",
            RefuseCode::NoSpace => "no_space",
            RefuseCode::UnknownSender => "unknown_sender",
            RefuseCode::BadSignature => "bad_signature",
            RefuseCode::InvalidManifest => "invalid_manifest",
            RefuseCode::StorageError => "storage_error",
            RefuseCode::SourceChanged => "source_changed",
            RefuseCode::Cancelled => "cancelled",
            RefuseCode::Conflict => "conflict",
            RefuseCode::Expired => "expired",
        }
    }
}

/// Control messages on the `file` channel (JSON after a `0x01` byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Sender → receiver: a new transfer, or the same one again to resume it.
    Offer { manifest: Box<Manifest> },
    /// Receiver → sender: go ahead; `have` lists the chunks already verified on its disk.
    Accept { id: TransferId, have: Vec<u32> },
    /// Receiver → sender: no; nothing of it is kept.
    Refuse {
        id: TransferId,
        code: RefuseCode,
        message: String,
    },
    /// Receiver → sender: chunk verified and written.
    Ack { id: TransferId, chunk: u32 },
    /// Receiver → sender: chunk failed its check; send it again.
    Nack { id: TransferId, chunk: u32 },
    /// Receiver → sender: the whole file matched its digest and is in place.
    Done { id: TransferId },
    /// Either side: the transfer is abandoned.
    Cancel {
        id: TransferId,
        code: RefuseCode,
        message: String,
    },
    /// Queued messages (proto/FILES.md, "Queued messages"), sent by each side when a link comes
    /// up: the last message from the other side this side has delivered.
    MsgState { delivered: u64 },
    /// Receiver → sender: every message up to this sequence number is delivered.
    MsgAck {
        #[serde(rename = "upTo")]
        up_to: u64,
    },
    /// Sender → receiver: messages up to this one were dropped (the sender's queue was full)
    /// and will not come; the receiver records them as lost.
    MsgSkip {
        #[serde(rename = "upTo")]
        up_to: u64,
    },
}

/// One message on the `file` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Control(Control),
    Piece(Piece<'a>),
    Message(QueuedMessage<'a>),
}

/// A queued message: the sender numbers its messages to a peer from 1, without gaps, so the
/// receiver delivers each exactly once and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage<'a> {
    pub seq: u64,
    pub kind: MessageKind,
    pub data: &'a [u8],
}

/// What a queued message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// An application message sent as text (UTF-8).
    Text,
    /// An application message sent as binary.
    Binary,
    /// A gossip frame (an envelope, proto/GOSSIP.md) for a peer that was away.
    Gossip,
}

impl MessageKind {
    pub fn as_u8(self) -> u8 {
        match self {
            MessageKind::Text => 0,
            MessageKind::Binary => 1,
            MessageKind::Gossip => 2,
        }
    }

    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(MessageKind::Text),
            1 => Some(MessageKind::Binary),
            2 => Some(MessageKind::Gossip),
            _ => None,
        }
    }
}

impl QueuedMessage<'_> {
    /// The message's header; its data follows it on the wire.
    pub fn header(seq: u64, kind: MessageKind) -> [u8; MESSAGE_HEADER] {
        let mut h = [0u8; MESSAGE_HEADER];
        h[0] = MESSAGE_TAG;
        h[1..9].copy_from_slice(&seq.to_be_bytes());
        h[9] = kind.as_u8();
        h
    }
}

/// Part of a chunk: `data` starts `offset` bytes into chunk `chunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    pub id: TransferId,
    pub chunk: u32,
    pub offset: u32,
    pub data: &'a [u8],
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CONTROL_TAG];
        // Serialising these shapes cannot fail: no maps with non-string keys, no floats.
        serde_json::to_writer(&mut out, self).unwrap_or_default();
        out
    }
}

impl Piece<'_> {
    /// Writes the piece's header followed by its data into `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(PIECE_HEADER + self.data.len());
        out.push(PIECE_TAG);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.chunk.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(self.data);
    }
}

impl<'a> Frame<'a> {
    /// Decodes one message; the error says what was wrong with it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidField {
            field: "file frame",
            reason,
        };
        match bytes.split_first() {
            Some((&CONTROL_TAG, json)) => serde_json::from_slice(json)
                .map(Frame::Control)
                .map_err(|e| bad(e.to_string())),
            Some((&PIECE_TAG, rest)) if rest.len() >= PIECE_HEADER - 1 => {
                let (id, rest) = rest.split_at(16);
                let (chunk, rest) = rest.split_at(4);
                let (offset, data) = rest.split_at(4);
                let mut idb = [0u8; 16];
                idb.copy_from_slice(id);
                Ok(Frame::Piece(Piece {
                    id: TransferId(idb),
                    chunk: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                    offset: u32::from_be_bytes([offset[0], offset[1], offset[2], offset[3]]),
                    data,
                }))
            }
            Some((&PIECE_TAG, _)) => Err(bad("a piece shorter than its header".into())),
            Some((&MESSAGE_TAG, rest)) if rest.len() >= MESSAGE_HEADER - 1 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&rest[..8]);
                match MessageKind::from_u8(rest[8]) {
                    Some(kind) => Ok(Frame::Message(QueuedMessage {
                        seq: u64::from_be_bytes(seq),
                        kind,
                        data: &rest[9..],
                    })),
                    None => Err(bad(format!("unknown message kind {}", rest[8]))),
                }
            }
            Some((&MESSAGE_TAG, _)) => Err(bad("a message shorter than its header".into())),
            Some((tag, _)) => Err(bad(format!("unknown frame type {tag:#04x}"))),
            None => Err(bad("empty".into())),
        }
    }
}

/// Where a transfer stands, as the sender records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Hashing the file to build the manifest.
    Preparing,
    /// No link to the receiver yet (being connected).
    Waiting,
    /// Manifest sent, no answer yet.
    Offered,
    Sending,
    /// The link dropped; resumes when it is back.
    Paused,
    Complete,
    Refused,
    Failed,
    Cancelled,
}

impl TransferState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TransferState::Complete
                | TransferState::Refused
                | TransferState::Failed
                | TransferState::Cancelled
        )
    }
}

/// The sender's record of a transfer (stored in `mesh_transfers`, shown by `meshctl transfers`
/// and the dashboard). Rewritten as it progresses; a write never replaces a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRecord {
    pub id: TransferId,
    pub from: PeerId,
    pub to: PeerId,
    pub name: String,
    pub size: u64,
    pub state: TransferState,
    /// Bytes the receiver has verified.
    pub bytes: u64,
    /// Recent rate, bytes per second.
    #[serde(default)]
    pub rate_bps: u64,
    /// Estimated time left at that rate (ms); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// Bytes put on the wire since the sending worker (re)started, sent again included: a resume
    /// that skips verified chunks shows here.
    #[serde(default)]
    pub sent_bytes: u64,
    /// Chunks sent again after failing the receiver's check.
    #[serde(default)]
    pub repaired_chunks: u64,
    /// Times the transfer resumed after its link dropped or a side restarted.
    #[serde(default)]
    pub resumes: u64,
    /// Why it was refused or failed: a [`RefuseCode`] string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Increases with every write of this record, so a late write never replaces a newer one
    /// (two writes can share a millisecond).
    #[serde(default)]
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::signing::verify_signature;
    use rand::SeedableRng;

    fn manifest(size: u64) -> Manifest {
        let chunk_size = chunk_size_for(size).expect("carriable");
        let n = size.div_ceil(u64::from(chunk_size));
        Manifest {
            id: TransferId([7; 16]),
            from: "alpha".parse().expect("id"),
            to: "beta".parse().expect("id"),
            name: "snap.tar".into(),
            size,
            chunk_size,
            sha256: Digest::of(b"whole"),
            chunks: (0..n).map(|i| Digest::of(&i.to_be_bytes())).collect(),
            ts: 1_700_000_000_000,
            sig: String::new(),
            kid: None,
        }
    }

    #[test]
    fn chunk_sizes_keep_manifests_short() {
        for (size, chunk) in [
            (0, Some(MIN_CHUNK_SIZE)),
            (1, Some(MIN_CHUNK_SIZE)),
            (256 << 20, Some(MIN_CHUNK_SIZE)),
            (512 << 20, Some(MIN_CHUNK_SIZE)),
            ((512 << 20) + 1, Some(2 << 20)),
            (MAX_FILE_SIZE, Some(MAX_CHUNK_SIZE)),
            (MAX_FILE_SIZE + 1, None),
        ] {
            assert_eq!(chunk_size_for(size), chunk, "size {size}");
        }
    }

    #[test]
    fn chunk_geometry() {
        let m = manifest((3 << 20) + 5);
        assert_eq!(m.chunk_count(), 4);
        assert_eq!(m.chunk_len(0), 1 << 20);
        assert_eq!(m.chunk_len(3), 5);
        assert_eq!(m.chunk_len(4), 0);
        assert_eq!(m.chunk_offset(3), 3 << 20);
        assert_eq!(manifest(0).chunk_count(), 0);
    }

    #[test]
    fn a_largest_manifest_fits_one_message() {
        let mut m = manifest(MAX_FILE_SIZE);
        m.name = "n".repeat(MAX_NAME_BYTES);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        m.sign(&Identity::generate(m.from.clone(), &mut rng))
            .expect("sign");
        let bytes = Control::Offer {
            manifest: Box::new(m),
        }
        .encode();
        assert!(bytes.len() <= 65536, "{} bytes", bytes.len());
    }

    #[test]
    fn signature_covers_every_field() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut m = manifest(5 << 20);
        let id = Identity::generate(m.from.clone(), &mut rng);
        m.sign(&id).expect("sign");
        verify_signature(&m, &id.public_key()).expect("verifies");
        let tamper: [fn(&mut Manifest); 7] = [
            |m| m.name.push('x'),
            |m| m.size += 1,
            |m| m.chunk_size *= 2,
            |m| m.sha256.0[0] ^= 1,
            |m| m.chunks[2].0[31] ^= 1,
            |m| m.id.0[0] ^= 1,
            |m| m.to = "gamma".parse().expect("id"),
        ];
        for (i, t) in tamper.iter().enumerate() {
            let mut bad = m.clone();
            t(&mut bad);
            assert!(
                verify_signature(&bad, &id.public_key()).is_err(),
                "tamper {i} not detected"
            );
        }
    }

    #[test]
    fn validation() {
        manifest(10 << 20).validate().expect("valid");
        let cases: [fn(&mut Manifest); 7] = [
            |m| m.name = "../etc/passwd".into(),
            |m| m.name = ".hidden".into(),
            |m| m.name = "a\nb".into(),
            |m| m.chunk_size = 3 << 20,
            |m| {
                m.chunks.pop();
            },
            |m| m.to = m.from.clone(),
            |m| m.size = MAX_FILE_SIZE + 1,
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut m = manifest(10 << 20);
            c(&mut m);
            assert!(m.validate().is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn frames_round_trip() {
        let id = TransferId([9; 16]);
        let data = vec![0xab; 1000];
        let mut buf = Vec::new();
        Piece {
            id,
            chunk: 3,
            offset: 65511,
            data: &data,
        }
        .encode_into(&mut buf);
        assert_eq!(buf.len(), PIECE_HEADER + 1000);
        assert_eq!(
            Frame::decode(&buf).expect("piece"),
            Frame::Piece(Piece {
                id,
                chunk: 3,
                offset: 65511,
                data: &data
            })
        );
        for c in [
            Control::Accept {
                id,
                have: vec![0, 2],
            },
            Control::Refuse {
                id,
                code: RefuseCode::TooLarge,
                message: "no".into(),
            },
            Control::Ack { id, chunk: 1 },
            Control::Nack { id, chunk: 1 },
            Control::Done { id },
        ] {
            assert_eq!(
                Frame::decode(&c.encode()).expect("control"),
                Frame::Control(c)
            );
        }
        for kind in [MessageKind::Text, MessageKind::Binary, MessageKind::Gossip] {
            let mut m = QueuedMessage::header(7, kind).to_vec();
            m.extend_from_slice(b"hi");
            assert_eq!(
                Frame::decode(&m).expect("message"),
                Frame::Message(QueuedMessage {
                    seq: 7,
                    kind,
                    data: b"hi"
                })
            );
        }
        for c in [
            Control::MsgState { delivered: 3 },
            Control::MsgAck { up_to: 4 },
            Control::MsgSkip { up_to: 5 },
        ] {
            assert_eq!(
                Frame::decode(&c.encode()).expect("control"),
                Frame::Control(c)
            );
        }
        assert_eq!(
            String::from_utf8(Control::MsgAck { up_to: 4 }.encode()[1..].to_vec()).expect("utf-8"),
            r#"{"t":"msg_ack","upTo":4}"#
        );
        let mut bad_kind = QueuedMessage::header(1, MessageKind::Text).to_vec();
        bad_kind[9] = 7;
        for bad in [
            &b""[..],
            &[0x02, 1, 2][..],
            &[0x09][..],
            &b"\x01{\"t\":\"x\"}"[..],
            &[0x03, 0, 0][..],
            &bad_kind[..],
        ] {
            assert!(Frame::decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn ids_are_strict() {
        let id = TransferId([0xab; 16]);
        assert_eq!(TransferId::parse(&id.to_string()).expect("parses"), id);
        for bad in [
            "",
            "AB",
            &"AB".repeat(16),
            &"zz".repeat(16),
            &"ab".repeat(17),
        ] {
            assert!(TransferId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
