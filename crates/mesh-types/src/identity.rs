//! Ed25519 identities: a peer's signing key, its public key and signatures in their wire
//! encodings (standard base64), and the short key id that names which key signed.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, PeerId};

/// A peer's Ed25519 public key; on the wire, the standard base64 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, Error> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|e| Error::InvalidPublicKey(format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::InvalidPublicKey(format!("{} bytes, expected 32", b.len()))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| Error::InvalidPublicKey("not a point on the curve".into()))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The key id that travels next to signatures: the first 8 bytes of SHA-256 of the key, hex.
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    /// Strict verification: rejects small-order keys and malleable signatures.
    pub(crate) fn verify(&self, message: &[u8], sig: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl TryFrom<String> for PublicKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        PublicKey::from_base64(&s)
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.to_base64()
    }
}

/// Names a key without carrying it: 16 hex digits. Sent beside a signature so that a message
/// signed with the wrong key is reported as such, not as tampering.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 signature; on the wire, the standard base64 of its 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub(crate) [u8; 64]);

impl Signature {
    pub fn from_base64(s: &str) -> Result<Self, Error> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|e| Error::InvalidSignature(format!("not base64: {e}")))?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::InvalidSignature(format!("{} bytes, expected 64", b.len()))
        })?;
        Ok(Signature(bytes))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_base64())
    }
}

/// A peer's id with its signing key. The seed is the only secret in meshrtc.
pub struct Identity {
    id: PeerId,
    key: SigningKey,
}

impl Identity {
    /// A fresh identity from `rng`, which must be cryptographically secure.
    pub fn generate(id: PeerId, rng: &mut (impl rand::CryptoRng + ?Sized)) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Identity {
            id,
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// From the base64 32-byte seed operators keep in `MESH_SIGNING_KEY` or a secret file.
    pub fn from_seed_base64(id: PeerId, seed: &str) -> Result<Self, Error> {
        let bytes = B64
            .decode(seed.trim())
            .map_err(|e| Error::InvalidSigningKey(format!("not base64: {e}")))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::InvalidSigningKey(format!("{} bytes, expected a 32-byte seed", b.len()))
        })?;
        Ok(Identity {
            id,
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn seed_base64(&self) -> String {
        B64.encode(self.key.to_bytes())
    }

    pub fn id(&self) -> &PeerId {
        &self.id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    pub(crate) fn sign_bytes(&self, message: &[u8]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seed_round_trips_and_debug_hides_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let id = Identity::generate(PeerId::new("a").unwrap(), &mut rng);
        let again = Identity::from_seed_base64(id.id().clone(), &id.seed_base64()).unwrap();
        assert_eq!(id.public_key(), again.public_key());
        assert!(!format!("{id:?}").contains(&id.seed_base64()));
    }

    #[test]
    fn rejects_malformed_keys_and_signatures() {
        assert!(matches!(
            PublicKey::from_base64("!!"),
            Err(Error::InvalidPublicKey(_))
        ));
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(Error::InvalidPublicKey(_))
        ));
        assert!(matches!(
            Signature::from_base64("AAAA"),
            Err(Error::InvalidSignature(_))
        ));
        let a = PeerId::new("a").unwrap();
        assert!(matches!(
            Identity::from_seed_base64(a, "AAAA"),
            Err(Error::InvalidSigningKey(_))
        ));
    }
}
