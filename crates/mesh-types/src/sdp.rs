//! Signed SDP offers and answers: `{peerFrom, peerTo, sdp, ts, sig, kid?}` on the wire.
//! One generic shape; the kind marker picks the signing domain so an offer's signature can never
//! pass as an answer's.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::signing::{CanonicalWriter, Signed};
use crate::{Error, KeyId, PeerId, UnixMillis};

/// Names the signing domain of an [`SdpMessage`].
pub trait SdpKind {
    const DOMAIN: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfferKind;
impl SdpKind for OfferKind {
    const DOMAIN: &'static str = "offer";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnswerKind;
impl SdpKind for AnswerKind {
    const DOMAIN: &'static str = "answer";
}

/// A session description sent from one peer to another, signed by the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound = "")]
pub struct SdpMessage<K> {
    pub peer_from: PeerId,
    pub peer_to: PeerId,
    pub sdp: String,
    /// When the sender signed it, ms since the epoch.
    pub ts: UnixMillis,
    /// Base64 Ed25519 signature; empty until signed. A missing field reads as empty so that the
    /// verifier, not the JSON parser, reports it (as `missing_signature`).
    #[serde(default)]
    pub sig: String,
    /// Which key signed it; lets a receiver tell a wrong key from a tampered message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<KeyId>,
    #[serde(skip)]
    kind: PhantomData<K>,
}

pub type Offer = SdpMessage<OfferKind>;
pub type Answer = SdpMessage<AnswerKind>;

impl<K> SdpMessage<K> {
    /// An unsigned message; call [`Signed::sign`] before sending it.
    pub fn new(peer_from: PeerId, peer_to: PeerId, sdp: String, ts: UnixMillis) -> Self {
        SdpMessage {
            peer_from,
            peer_to,
            sdp,
            ts,
            sig: String::new(),
            kid: None,
            kind: PhantomData,
        }
    }
}

impl<K: SdpKind> Signed for SdpMessage<K> {
    const DOMAIN: &'static str = K::DOMAIN;

    fn signer(&self) -> &PeerId {
        &self.peer_from
    }
    fn ts(&self) -> UnixMillis {
        self.ts
    }
    fn signing_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(CanonicalWriter::new(K::DOMAIN)
            .str(self.peer_from.as_str())
            .str(self.peer_to.as_str())
            .str(&self.sdp)
            .u64(self.ts)
            .finish())
    }
    crate::signing::signature_fields!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Verifier, VerifierConfig, VerifyError};
    use rand::SeedableRng;

    #[test]
    fn an_offer_signature_does_not_verify_as_an_answer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = Identity::generate(PeerId::new("a").unwrap(), &mut rng);
        let mut offer = Offer::new(a.id().clone(), PeerId::new("b").unwrap(), "v=0".into(), 5);
        offer.sign(&a).unwrap();
        let json = serde_json::to_string(&offer).unwrap();
        let as_answer: Answer = serde_json::from_str(&json).unwrap();
        let mut v = Verifier::new(VerifierConfig::default());
        assert_eq!(
            v.verify(&as_answer, &a.public_key(), 5),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(v.verify(&offer, &a.public_key(), 5), Ok(()));
    }

    #[test]
    fn wire_shape_is_camel_case_and_sig_may_be_missing() {
        let o: Offer =
            serde_json::from_str(r#"{"peerFrom":"a","peerTo":"b","sdp":"v=0","ts":1}"#).unwrap();
        assert_eq!(o.sig, "");
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"peerFrom":"a","peerTo":"b","sdp":"v=0","ts":1,"sig":""})
        );
    }
}
