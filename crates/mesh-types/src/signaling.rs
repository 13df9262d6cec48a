//! The WebSocket signaling protocol spoken on the proxy's `/ws`: the messages clients and the
//! server exchange, and the signed proof a peer gives that it holds its registered key.
//! proto/SIGNALING.md is the specification, with examples.

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed};
use crate::{Error, KeyId, PeerId, UnixMillis};

/// A client's proof of its identity: the server's per-connection nonce and the time, signed with
/// the key registered for `id`. The nonce makes it good for one connection only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProof {
    pub id: PeerId,
    pub nonce: String,
    pub ts: UnixMillis,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl RegisterProof {
    pub fn new(id: PeerId, nonce: String, ts: UnixMillis) -> Self {
        RegisterProof {
            id,
            nonce,
            ts,
            sig: String::new(),
            kid: None,
        }
    }
}

impl Signed for RegisterProof {
    const DOMAIN: &'static str = "ws-register";

    fn signer(&self) -> &PeerId {
        &self.id
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(CanonicalWriter::new(Self::DOMAIN)
            .str(self.id.as_str())
            .str(&self.nonce)
            .u64(self.ts)
            .finish())
    }
    crate::signing::signature_fields!();
}

/// An ICE candidate as browsers hand it over (`RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// What a client sends. `ref` is echoed in an error about the message, so a client can tell
/// which of its messages was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// Proves the client holds `proof.id`'s key (signing the server's nonce); without a proof, a
    /// request for a server-assigned anonymous id, granted only where the operator allows it.
    Register {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<RegisterProof>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Offer {
        to: PeerId,
        sdp: String,
        /// Refused unless it is the sender's own id: the server stamps `from` itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<PeerId>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Answer {
        to: PeerId,
        sdp: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<PeerId>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A trickled candidate; `null` says the sender has gathered all of them.
    Candidate {
        to: PeerId,
        candidate: Option<IceCandidate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<PeerId>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Ping {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl ClientMessage {
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientMessage::Register { reference, .. }
            | ClientMessage::Offer { reference, .. }
            | ClientMessage::Answer { reference, .. }
            | ClientMessage::Candidate { reference, .. }
            | ClientMessage::Ping { reference } => reference.as_deref(),
        }
    }
}

/// Limits the server enforces, announced in `hello` so clients can stay inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WsLimits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub idle_timeout_secs: u64,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// First message on every connection: the nonce to sign and the server's clock.
    Hello {
        nonce: String,
        server_time: UnixMillis,
        limits: WsLimits,
    },
    Registered {
        id: PeerId,
        anonymous: bool,
    },
    /// Everyone registered on this server, sent to a client when it registers; after that,
    /// every join and leave is broadcast as `peerJoined` / `peerLeft` (a full list to everyone
    /// on every change would cost the server O(n²) per join with thousands of clients).
    Peers {
        peers: Vec<PeerId>,
    },
    PeerJoined {
        id: PeerId,
    },
    PeerLeft {
        id: PeerId,
    },
    Offer {
        from: PeerId,
        sdp: String,
    },
    Answer {
        from: PeerId,
        sdp: String,
    },
    Candidate {
        from: PeerId,
        candidate: Option<IceCandidate>,
    },
    Pong {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A message was refused (and not relayed), or the connection is about to close.
    Error {
        code: String,
        message: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::signing::verify_signature;

    fn check(json: &str) -> ClientMessage {
        let msg: ClientMessage = serde_json::from_str(json).unwrap();
        let back: ClientMessage =
            serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(back, msg, "round trip of {json}");
        msg
    }

    #[test]
    fn client_messages_parse_as_documented() {
        check(r#"{"type":"ping"}"#);
        check(r#"{"type":"register"}"#);
        check(r#"{"type":"offer","to":"b","sdp":"v=0","ref":"7"}"#);
        check(r#"{"type":"candidate","to":"b","candidate":null}"#);
        let m = check(
            r#"{"type":"candidate","to":"b","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        );
        assert!(
            matches!(m, ClientMessage::Candidate { candidate: Some(c), .. } if c.sdp_mid.as_deref() == Some("0"))
        );
        for bad in [
            r#"{"type":"shout"}"#,
            r#"{"type":"offer","sdp":"v=0"}"#,
            r#"{"type":"offer","to":"not a peer id!","sdp":"v=0"}"#,
            r#""ping""#,
        ] {
            assert!(serde_json::from_str::<ClientMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_register_proof_binds_id_nonce_and_time() {
        let id = PeerId::new("peer-a").unwrap();
        let who = Identity::from_seed_base64(id.clone(), &base64_seed(3)).unwrap();
        let mut proof = RegisterProof::new(id, "n0nce".into(), 1_700_000_000_000);
        proof.sign(&who).unwrap();
        assert!(verify_signature(&proof, &who.public_key()).is_ok());
        let mut other_nonce = proof.clone();
        other_nonce.nonce = "another".into();
        assert!(verify_signature(&other_nonce, &who.public_key()).is_err());
    }

    fn base64_seed(n: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }
}
