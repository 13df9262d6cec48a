//! Gossip wire shapes (proto/GOSSIP.md): the signed envelope `{id, ts, kind, payload, from, hlc,
//! ttl, hops, sig}`, the signed state entries a telemetry payload carries, the signed delivery
//! that carries an envelope over HTTPS, the DataChannel frames, and the audit record.
//! The selection, HLC and merge rules live in mesh-gossip; these are only the shapes.

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed};
use crate::{Error, KeyId, PeerId, UnixMillis};

/// A hybrid logical clock stamp: wall time in ms and a counter that orders events within a ms.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Hlc {
    pub wall_ms: UnixMillis,
    pub counter: u32,
}

/// A signed gossip message. `hops` is the only field forwarders change, so it is not signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per origin message: 1 to 64 letters, digits, `-` or `_`.
    pub id: String,
    pub ts: UnixMillis,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The origin peer, whose key signs the envelope.
    pub from: PeerId,
    pub hlc: Hlc,
    /// How many hops the origin allows.
    pub ttl: u8,
    /// How many hops it has taken; receivers refuse `hops > ttl`.
    #[serde(default)]
    pub hops: u8,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl Envelope {
    /// Checks what serde cannot: the id's alphabet and the hop count.
    pub fn validate(&self) -> Result<(), Error> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(Error::InvalidField {
                field: "id",
                reason: "1 to 64 letters, digits, '-' or '_'".into(),
            });
        }
        if self.hops > self.ttl {
            return Err(Error::InvalidField {
                field: "hops",
                reason: format!("{} hops exceed ttl {}", self.hops, self.ttl),
            });
        }
        Ok(())
    }
}

impl Signed for Envelope {
    const DOMAIN: &'static str = "envelope";

    fn signer(&self) -> &PeerId {
        &self.from
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        // RFC 8785 (JCS) makes the payload's bytes independent of key order and number spelling,
        // so a client in any language can reproduce them.
        let payload =
            serde_jcs::to_vec(&self.payload).map_err(|e| Error::Canonicalisation(e.to_string()))?;
        Ok(CanonicalWriter::new(Self::DOMAIN)
            .str(&self.id)
            .str(self.from.as_str())
            .str(&self.kind)
            .u64(self.ts)
            .u64(self.hlc.wall_ms)
            .u64(u64::from(self.hlc.counter))
            .u64(u64::from(self.ttl))
            .bytes(&payload)
            .finish())
    }
    crate::signing::signature_fields!();
}

/// The envelope kind whose payload is a [`TelemetryPayload`].
pub const TELEMETRY: &str = "telemetry";

/// One key of the gossiped state, as its origin signed it: relayed verbatim by everyone who
/// learns it, so a relay can pass on what it heard but never forge or alter it. An origin may
/// write only keys that end in `/<origin>` (see [`GossipEntry::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GossipEntry {
    pub key: String,
    pub origin: PeerId,
    pub hlc: Hlc,
    /// Any JSON; `null` may be stored as an absent field (Firestore drops nulls).
    #[serde(default)]
    pub value: serde_json::Value,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl GossipEntry {
    /// The key an origin's telemetry lives under.
    pub fn telemetry_key(origin: &PeerId) -> String {
        format!("telemetry/{origin}")
    }

    /// Checks what serde cannot: the key is `<kind>/<origin>`, a kind of 1 to 32 lowercase
    /// letters, digits or `-`, and the entry's own origin (an origin writes only its own keys).
    pub fn validate(&self) -> Result<(), Error> {
        let ok = self.key.split_once('/').is_some_and(|(kind, owner)| {
            owner == self.origin.as_str()
                && (1..=32).contains(&kind.len())
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !ok {
            return Err(Error::InvalidField {
                field: "key",
                reason: format!(
                    "{:?} must be <kind>/{} (an origin writes only its own keys)",
                    self.key, self.origin
                ),
            });
        }
        Ok(())
    }

    /// The entry's document id in the store: the key with `:` for `/` (which Firestore ids
    /// cannot hold; neither kinds nor peer ids contain `:`).
    pub fn doc_id(&self) -> String {
        self.key.replace('/', ":")
    }

    /// Whether this entry wins over `other` for the same key: the greatest
    /// `(hlc, origin, value, sig)`, a total order, so every replica and the store keep the same
    /// one whatever order entries arrive in.
    pub fn supersedes(&self, other: &GossipEntry) -> bool {
        (self.hlc, &self.origin)
            .cmp(&(other.hlc, &other.origin))
            .then_with(|| {
                // Same stamp and origin, different values (a buggy or lying origin): still ordered.
                self.value.to_string().cmp(&other.value.to_string())
            })
            .then_with(|| self.sig.cmp(&other.sig))
            == std::cmp::Ordering::Greater
    }
}

impl Signed for GossipEntry {
    const DOMAIN: &'static str = "gossip-entry";

    fn signer(&self) -> &PeerId {
        &self.origin
    }
    fn ts(&self) -> UnixMillis {
        self.hlc.wall_ms
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        let value =
            serde_jcs::to_vec(&self.value).map_err(|e| Error::Canonicalisation(e.to_string()))?;
        Ok(CanonicalWriter::new(Self::DOMAIN)
            .str(&self.key)
            .str(self.origin.as_str())
            .u64(self.hlc.wall_ms)
            .u64(u64::from(self.hlc.counter))
            .bytes(&value)
            .finish())
    }
    crate::signing::signature_fields!();
}

/// The payload of a `telemetry` envelope: the origin's own entry first, then what it has
/// learned, newest first, within the envelope's size budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryPayload {
    pub entries: Vec<GossipEntry>,
}

/// One link in a telemetry entry's value: the origin's view of its link to `peer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSummary {
    pub peer: PeerId,
    pub health: crate::Health,
    #[serde(flatten)]
    pub qos: crate::LinkQos,
}

/// The value of a `telemetry/<origin>` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub links: Vec<LinkSummary>,
}

/// An envelope handed from one peer to the next over HTTPS, signed by the sender (not the
/// origin): it says who passes the envelope on, to whom and when, so the receiver can apply
/// that sender's rate limit and refuse a replayed request. Over a DataChannel the link itself
/// (DTLS, keyed by signed offers) says who is sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub sender: PeerId,
    pub to: PeerId,
    pub ts: UnixMillis,
    pub envelope: Envelope,
    #[serde(default)]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
}

impl Signed for Delivery {
    const DOMAIN: &'static str = "gossip-delivery";

    fn signer(&self) -> &PeerId {
        &self.sender
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        // The envelope is bound by its origin's signature and its hop count.
        Ok(CanonicalWriter::new(Self::DOMAIN)
            .str(self.sender.as_str())
            .str(self.to.as_str())
            .u64(self.ts)
            .str(self.envelope.from.as_str())
            .str(&self.envelope.id)
            .u64(u64::from(self.envelope.hops))
            .str(&self.envelope.sig)
            .finish())
    }
    crate::signing::signature_fields!();
}

/// What a receiver made of an envelope: the body of `POST /gossip`'s answer and of an ack frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// New: verified, merged (and forwarded while its ttl lasts).
    Accepted,
    /// Already seen by another path: nothing to do, and not an error.
    Duplicate,
    /// Refused; the ack's `code` says why.
    Rejected,
}

/// A message on a link's `gossip` DataChannel (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum GossipFrame {
    Envelope {
        envelope: Envelope,
    },
    /// The receiver's answer to an envelope from this link.
    #[serde(rename_all = "camelCase")]
    Ack {
        /// The envelope's origin and id.
        from: PeerId,
        id: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// How a gossip target was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Datachannel,
    Https,
    /// Not sent (rate-limited, refused before sending).
    None,
}

impl Transport {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Datachannel => "datachannel",
            Transport::Https => "https",
            Transport::None => "none",
        }
    }
}

/// What happened to one target of a gossip push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditTarget {
    pub peer: PeerId,
    pub transport: Transport,
    pub ok: bool,
    /// Why it failed; omitted on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the DataChannel was not used, when the envelope went (or was tried) over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// An append-only audit record: one per gossip run, and one per envelope refused or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Unique; the document id in the store.
    pub id: String,
    pub ts: UnixMillis,
    /// What is audited: `push` (a gossip run), `reject` (an envelope refused), `drop` (rate limit).
    pub kind: String,
    /// The pushing peer (`push`), or the peer that handed over the refused envelope.
    pub from: PeerId,
    /// The peer that refused or dropped the envelope (`reject`, `drop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_by: Option<PeerId>,
    pub fanout: u32,
    pub succeeded: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<AuditTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Verifier, VerifierConfig, VerifyError};
    use rand::SeedableRng;

    fn envelope(from: &Identity, payload: serde_json::Value) -> Envelope {
        let mut e = Envelope {
            id: "e1".into(),
            ts: 10,
            kind: "telemetry".into(),
            payload,
            from: from.id().clone(),
            hlc: Hlc {
                wall_ms: 10,
                counter: 0,
            },
            ttl: 3,
            hops: 0,
            sig: String::new(),
            kid: None,
        };
        e.sign(from).unwrap();
        e
    }

    #[test]
    fn payload_key_order_does_not_matter_but_hops_are_unsigned() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let a = Identity::generate(PeerId::new("a").unwrap(), &mut rng);
        let e = envelope(&a, serde_json::json!({"x": 1, "y": [1.0, "s"]}));
        let mut reordered: Envelope = serde_json::from_str(
            &serde_json::to_string(&e)
                .unwrap()
                .replace(r#""x":1,"y":[1.0,"s"]"#, r#""y":[1,"s"],"x":1"#),
        )
        .unwrap();
        reordered.hops = 2;
        let mut v = Verifier::new(VerifierConfig::default());
        assert_eq!(v.verify(&reordered, &a.public_key(), 10), Ok(()));

        let mut tampered = e.clone();
        tampered.ttl = 9;
        assert_eq!(
            v.verify(&tampered, &a.public_key(), 10),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn validate_checks_id_and_hops() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let a = Identity::generate(PeerId::new("a").unwrap(), &mut rng);
        let mut e = envelope(&a, serde_json::json!(null));
        assert!(e.validate().is_ok());
        e.hops = 4;
        assert!(e.validate().is_err());
        e.hops = 0;
        e.id = "a/b".into();
        assert!(e.validate().is_err());
    }
}
