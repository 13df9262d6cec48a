//! Gossip wire shapes: the signed envelope `{id, ts, kind, payload, from, hlc, ttl, hops, sig}`,
//! its hybrid logical clock stamp, and the audit record each gossip run leaves behind.
//! The selection, HLC and merge rules live in mesh-gossip; these are only the shapes.

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed};
use crate::{Error, KeyId, PeerId, Signature, UnixMillis};

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
    fn sig(&self) -> &str {
        &self.sig
    }
    fn kid(&self) -> Option<&KeyId> {
        self.kid.as_ref()
    }
    fn set_signature(&mut self, sig: Signature, kid: KeyId) {
        self.sig = sig.to_base64();
        self.kid = Some(kid);
    }
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
    pub from: PeerId,
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
