//! Peers: the stored record `{id, pubKey, region, endpoints, lastSeenAt, trust}` and the signed
//! registration a peer sends to announce itself.

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed};
use crate::{Error, KeyId, PeerId, PublicKey, UnixMillis};

/// Trust a newly registered peer starts with, until the trust model (docs/TRUST.md) recomputes
/// it from the link graph. Above zero so a new peer can be chosen at all.
pub const INITIAL_TRUST: f64 = 0.1;

/// Where a peer can be reached. Unknown endpoints are omitted, never null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The worker's WebRTC signaling endpoint (usually its `/offer` base URL or a UDP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webrtc: Option<String>,
    /// The worker's HTTPS base URL, for signaling and the gossip fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
}

/// A peer as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub id: PeerId,
    pub pub_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoints: Endpoints,
    /// Last time the peer registered or was heard from, ms since the epoch.
    pub last_seen_at: UnixMillis,
    /// Trust in [0, 1], computed from the link graph. Registration never resets it.
    pub trust: f64,
}

impl Peer {
    /// Checks what serde cannot: trust is a number in [0, 1].
    pub fn validate(&self) -> Result<(), Error> {
        validate_trust(self.trust)
    }
}

/// Trust scores live in [0, 1]; NaN and infinities are refused, never stored as null.
pub fn validate_trust(trust: f64) -> Result<(), Error> {
    if (0.0..=1.0).contains(&trust) {
        Ok(())
    } else {
        Err(Error::InvalidField {
            field: "trust",
            reason: format!("{trust} is not in [0, 1]"),
        })
    }
}

/// A peer announcing itself, signed with the key it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRegistration {
    pub id: PeerId,
    pub pub_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoints: Endpoints,
    pub ts: UnixMillis,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl PeerRegistration {
    pub fn new(
        id: PeerId,
        pub_key: PublicKey,
        region: Option<String>,
        endpoints: Endpoints,
        ts: UnixMillis,
    ) -> Self {
        PeerRegistration {
            id,
            pub_key,
            region,
            endpoints,
            ts,
            sig: String::new(),
            kid: None,
        }
    }
}

impl Signed for PeerRegistration {
    const DOMAIN: &'static str = "peer";

    fn signer(&self) -> &PeerId {
        &self.id
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(CanonicalWriter::new(Self::DOMAIN)
            .str(self.id.as_str())
            .bytes(self.pub_key.as_bytes())
            .opt_str(self.region.as_deref())
            .opt_str(self.endpoints.webrtc.as_deref())
            .opt_str(self.endpoints.https.as_deref())
            .u64(self.ts)
            .finish())
    }
    crate::signing::signature_fields!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_must_be_in_unit_interval() {
        for ok in [0.0, 0.5, 1.0] {
            assert!(validate_trust(ok).is_ok(), "{ok}");
        }
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(validate_trust(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_endpoints_are_omitted() {
        let e = Endpoints {
            webrtc: None,
            https: Some("https://w".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"https":"https://w"}"#
        );
    }
}
