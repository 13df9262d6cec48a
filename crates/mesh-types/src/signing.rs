//! Canonical, domain-separated signing bytes and the sans-IO verifier (signature, signer,
//! freshness window, replay cache). The byte layout is specified in proto/SIGNING.md.
//!
//! Layout: `"meshrtc/v1/" + domain + 0x00`, then each field in a fixed order: a string or byte
//! field as a 4-byte big-endian length and its bytes, an integer as 8 bytes big-endian, an
//! optional field as `0x00` (absent) or `0x01` and the field. Length prefixes make the encoding
//! injective, and the domain tag stops a signature over one message kind being replayed as
//! another.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use crate::{Error, Identity, KeyId, PeerId, PublicKey, Signature, UnixMillis, VerifyError};

/// The three [`Signed`] methods every signed shape implements the same way, over its
/// `sig: String` and `kid: Option<KeyId>` fields.
macro_rules! signature_fields {
    () => {
        fn sig(&self) -> &str {
            &self.sig
        }
        fn kid(&self) -> Option<&$crate::KeyId> {
            self.kid.as_ref()
        }
        fn set_signature(&mut self, sig: $crate::Signature, kid: $crate::KeyId) {
            self.sig = sig.to_base64();
            self.kid = Some(kid);
        }
    };
}
pub(crate) use signature_fields;

/// Prefix of every domain tag; the version bumps if the layout ever changes.
pub const DOMAIN_PREFIX: &str = "meshrtc/v1/";

/// Builds canonical signing bytes field by field.
#[derive(Debug)]
pub struct CanonicalWriter {
    buf: Vec<u8>,
}

impl CanonicalWriter {
    pub fn new(domain: &str) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(DOMAIN_PREFIX.as_bytes());
        buf.extend_from_slice(domain.as_bytes());
        buf.push(0);
        CanonicalWriter { buf }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Every field we sign is bounded far below 4 GiB by body limits; saturate rather than wrap.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.buf.push(0),
            Some(s) => {
                self.buf.push(1);
                self.str(s);
            }
        }
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// A message that carries its own Ed25519 signature.
pub trait Signed {
    /// Domain tag, e.g. `"offer"`; appended to [`DOMAIN_PREFIX`].
    const DOMAIN: &'static str;

    /// The peer that claims to have signed the message.
    fn signer(&self) -> &PeerId;
    /// When the signer made it (ms since the epoch); checked against the freshness window.
    fn ts(&self) -> UnixMillis;
    /// The canonical bytes the signature covers.
    fn signing_bytes(&self) -> Result<Vec<u8>, Error>;
    /// The signature as sent (base64); empty when missing.
    fn sig(&self) -> &str;
    /// The key id sent beside the signature, if any.
    fn kid(&self) -> Option<&KeyId>;
    fn set_signature(&mut self, sig: Signature, kid: KeyId);

    /// Signs in place with `identity`, which must be the message's signer.
    fn sign(&mut self, identity: &Identity) -> Result<(), Error>
    where
        Self: Sized,
    {
        if identity.id() != self.signer() {
            return Err(Error::NotSigner {
                signer: self.signer().to_string(),
                identity: identity.id().to_string(),
            });
        }
        let sig = identity.sign_bytes(&self.signing_bytes()?);
        self.set_signature(sig, identity.public_key().key_id());
        Ok(())
    }
}

/// Checks a signature against `key` without the freshness window or the replay cache: for stored
/// records (a peer registration read back later) whose age is expected.
pub fn verify_signature<T: Signed>(msg: &T, key: &PublicKey) -> Result<(), VerifyError> {
    if msg.sig().is_empty() {
        return Err(VerifyError::MissingSignature);
    }
    let sig =
        Signature::from_base64(msg.sig()).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if let Some(kid) = msg.kid()
        && *kid != key.key_id()
    {
        return Err(VerifyError::WrongSigner {
            claimed: msg.signer().to_string(),
            kid: kid.to_string(),
        });
    }
    let bytes = msg
        .signing_bytes()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if key.verify(&bytes, &sig) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Freshness and replay settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// A message's `ts` may be this far from `now`, either way (default ±60 s).
    pub window_ms: u64,
    /// Most messages remembered at once; beyond it new messages are refused, not forgotten,
    /// since forgetting one still inside the window would let it be replayed.
    pub replay_capacity: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            window_ms: 60_000,
            replay_capacity: 100_000,
        }
    }
}

/// Verifies signed messages: signature by the claimed peer's key, freshness, no replay.
/// Sans-IO: the caller looks up the key and passes the time.
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    replay: ReplayCache,
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Self {
        Verifier {
            config,
            replay: ReplayCache::new(config.replay_capacity),
        }
    }

    pub fn config(&self) -> VerifierConfig {
        self.config
    }

    /// Accepts `msg` once, if `key` (the registered key of `msg.signer()`) signed it and its `ts`
    /// is within the window of `now_ms`. Remembers it so the same message is refused next time.
    pub fn verify<T: Signed>(
        &mut self,
        msg: &T,
        key: &PublicKey,
        now_ms: UnixMillis,
    ) -> Result<(), VerifyError> {
        verify_signature(msg, key)?;
        self.admit(msg, now_ms)
    }

    /// The rest of [`verify`](Self::verify) for a message whose signature the caller has
    /// already checked with [`verify_signature`]: freshness, then the replay cache.
    pub fn admit<T: Signed>(&mut self, msg: &T, now_ms: UnixMillis) -> Result<(), VerifyError> {
        self.check_fresh(msg.ts(), now_ms)?;
        let sig =
            Signature::from_base64(msg.sig()).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        self.replay.insert(
            T::DOMAIN,
            &sig,
            msg.ts().saturating_add(self.config.window_ms),
            now_ms,
        )
    }

    fn check_fresh(&self, ts: UnixMillis, now_ms: UnixMillis) -> Result<(), VerifyError> {
        let window_ms = self.config.window_ms;
        if ts + window_ms < now_ms {
            return Err(VerifyError::Stale {
                ts,
                age_ms: now_ms - ts,
                window_ms,
            });
        }
        if ts > now_ms + window_ms {
            return Err(VerifyError::FromFuture {
                ts,
                ahead_ms: ts - now_ms,
                window_ms,
            });
        }
        Ok(())
    }
}

/// Remembers accepted signatures until their message leaves the freshness window, after which the
/// window itself refuses a replay. Bounded: when full of live entries it refuses new ones.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashSet<(&'static str, [u8; 64])>,
    by_expiry: BinaryHeap<Reverse<(UnixMillis, &'static str, [u8; 64])>>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity,
            seen: HashSet::new(),
            by_expiry: BinaryHeap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records a signature that may be replayed until `expires_ms`.
    pub fn insert(
        &mut self,
        domain: &'static str,
        sig: &Signature,
        expires_ms: UnixMillis,
        now_ms: UnixMillis,
    ) -> Result<(), VerifyError> {
        self.purge(now_ms);
        let key = (domain, sig.0);
        if self.seen.contains(&key) {
            return Err(VerifyError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(VerifyError::ReplayCacheFull(self.capacity));
        }
        self.seen.insert(key);
        self.by_expiry.push(Reverse((expires_ms, domain, sig.0)));
        debug_assert_eq!(self.seen.len(), self.by_expiry.len());
        Ok(())
    }

    fn purge(&mut self, now_ms: UnixMillis) {
        while let Some(Reverse((expires, domain, sig))) = self.by_expiry.peek().copied() {
            if expires >= now_ms {
                break;
            }
            self.by_expiry.pop();
            self.seen.remove(&(domain, sig));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Offer;
    use rand::SeedableRng;

    const NOW: u64 = 1_750_000_000_000;

    fn identity(name: &str, seed: u64) -> Identity {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Identity::generate(PeerId::new(name).unwrap(), &mut rng)
    }

    fn offer(from: &Identity, ts: u64) -> Offer {
        let mut o = Offer::new(
            from.id().clone(),
            PeerId::new("b").unwrap(),
            "v=0\r\n".into(),
            ts,
        );
        o.sign(from).unwrap();
        o
    }

    #[test]
    fn accepts_a_fresh_signed_message_once() {
        let a = identity("a", 1);
        let mut v = Verifier::new(VerifierConfig::default());
        let o = offer(&a, NOW);
        assert_eq!(v.verify(&o, &a.public_key(), NOW + 10), Ok(()));
        assert_eq!(
            v.verify(&o, &a.public_key(), NOW + 20),
            Err(VerifyError::Replayed)
        );
    }

    #[test]
    fn each_failure_has_its_own_kind() {
        let a = identity("a", 1);
        let mallory = identity("a", 2);
        let mut v = Verifier::new(VerifierConfig::default());

        let mut tampered = offer(&a, NOW);
        tampered.sdp.push_str("a=evil\r\n");
        assert_eq!(
            v.verify(&tampered, &a.public_key(), NOW),
            Err(VerifyError::BadSignature)
        );

        let forged = offer(&mallory, NOW);
        assert!(matches!(
            v.verify(&forged, &a.public_key(), NOW),
            Err(VerifyError::WrongSigner { .. })
        ));

        let stale = offer(&a, NOW - 60_001);
        assert!(matches!(
            v.verify(&stale, &a.public_key(), NOW),
            Err(VerifyError::Stale { .. })
        ));
        let future = offer(&a, NOW + 60_001);
        assert!(matches!(
            v.verify(&future, &a.public_key(), NOW),
            Err(VerifyError::FromFuture { .. })
        ));

        let mut unsigned = offer(&a, NOW);
        unsigned.sig.clear();
        assert_eq!(
            v.verify(&unsigned, &a.public_key(), NOW),
            Err(VerifyError::MissingSignature)
        );
        unsigned.sig = "***".into();
        assert!(matches!(
            v.verify(&unsigned, &a.public_key(), NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn without_a_kid_a_wrong_key_is_a_bad_signature() {
        let a = identity("a", 1);
        let mut forged = offer(&identity("a", 2), NOW);
        forged.kid = None;
        let mut v = Verifier::new(VerifierConfig::default());
        assert_eq!(
            v.verify(&forged, &a.public_key(), NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn window_edges_are_inclusive() {
        let a = identity("a", 1);
        let mut v = Verifier::new(VerifierConfig::default());
        assert_eq!(
            v.verify(&offer(&a, NOW - 60_000), &a.public_key(), NOW),
            Ok(())
        );
        assert_eq!(
            v.verify(&offer(&a, NOW + 60_000), &a.public_key(), NOW),
            Ok(())
        );
    }

    #[test]
    fn replay_cache_forgets_only_what_the_window_refuses() {
        let a = identity("a", 1);
        let mut v = Verifier::new(VerifierConfig {
            window_ms: 1_000,
            replay_capacity: 2,
        });
        let first = offer(&a, NOW);
        v.verify(&first, &a.public_key(), NOW).unwrap();
        v.verify(&offer(&a, NOW + 1), &a.public_key(), NOW).unwrap();
        // Full of live entries: refuse rather than forget.
        assert_eq!(
            v.verify(&offer(&a, NOW + 2), &a.public_key(), NOW),
            Err(VerifyError::ReplayCacheFull(2))
        );
        // Once `first` has left the window it is purged, and the window refuses its replay.
        let later = NOW + 1_001;
        v.verify(&offer(&a, later), &a.public_key(), later).unwrap();
        assert!(matches!(
            v.verify(&first, &a.public_key(), later),
            Err(VerifyError::Stale { .. })
        ));
    }

    #[test]
    fn signing_as_someone_else_is_refused() {
        let a = identity("a", 1);
        let mut o = Offer::new(
            PeerId::new("z").unwrap(),
            PeerId::new("b").unwrap(),
            "v=0".into(),
            NOW,
        );
        assert!(matches!(o.sign(&a), Err(Error::NotSigner { .. })));
    }

    #[test]
    fn layout_is_length_prefixed() {
        let bytes = CanonicalWriter::new("t")
            .str("ab")
            .u64(1)
            .opt_str(None)
            .opt_str(Some(""))
            .finish();
        let mut want = b"meshrtc/v1/t\0".to_vec();
        want.extend_from_slice(&[
            0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0,
        ]);
        assert_eq!(bytes, want);
    }
}
