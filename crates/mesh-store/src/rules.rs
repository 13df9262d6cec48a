//! The storage rules both backends apply, as pure functions over what is stored and what is
//! written, so that the embedded store and Firestore cannot drift apart.

use mesh_types::{Link, Peer, PublicKey, peer::validate_trust};

use crate::{LinkWrite, MAX_LIST_LIMIT, PeerUpsert, StoreError};

/// The peer to store when `upsert` meets `existing`: refreshes endpoints, region and last-seen
/// time, keeps trust, and refuses a different key for a bound id.
pub fn merge_peer(existing: Option<Peer>, upsert: &PeerUpsert) -> Result<Peer, StoreError> {
    validate_trust(upsert.initial_trust)?;
    match existing {
        None => Ok(Peer {
            id: upsert.id.clone(),
            pub_key: upsert.pub_key,
            region: upsert.region.clone(),
            endpoints: upsert.endpoints.clone(),
            last_seen_at: upsert.seen_at,
            trust: upsert.initial_trust,
        }),
        Some(old) if old.pub_key != upsert.pub_key => Err(StoreError::Conflict(format!(
            "peer {} is bound to key {}; an operator must replace it",
            old.id,
            old.pub_key.key_id()
        ))),
        Some(old) => Ok(Peer {
            region: upsert.region.clone().or(old.region),
            endpoints: upsert.endpoints.clone(),
            // A late, reordered registration must not move last-seen backwards.
            last_seen_at: old.last_seen_at.max(upsert.seen_at),
            ..old
        }),
    }
}

/// The peer with its key replaced by an operator.
pub fn replace_key(existing: Peer, key: &PublicKey) -> Peer {
    Peer {
        pub_key: *key,
        ..existing
    }
}

/// Whether `incoming` may replace `existing`: only an observation at least as new.
pub fn link_write(existing: Option<&Link>, incoming: &Link) -> LinkWrite {
    match existing {
        Some(old) if old.qos.last_ts > incoming.qos.last_ts => LinkWrite::Stale,
        _ => LinkWrite::Applied,
    }
}

/// Checks every score before any is written, so `set_trust` is all or nothing.
pub fn validate_scores(scores: &[(mesh_types::PeerId, f64)]) -> Result<(), StoreError> {
    for (id, trust) in scores {
        validate_trust(*trust)
            .map_err(|e| StoreError::InvalidInput(format!("trust of {id}: {e}")))?;
    }
    Ok(())
}

/// A caller's limit, capped; zero is refused rather than silently returning nothing.
pub fn limit(requested: usize) -> Result<usize, StoreError> {
    if requested == 0 {
        return Err(StoreError::InvalidInput("limit must be at least 1".into()));
    }
    Ok(requested.min(MAX_LIST_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_types::{Endpoints, Health, Identity, LinkQos, PeerId};
    use rand::SeedableRng;

    fn key(seed: u64) -> PublicKey {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Identity::generate(PeerId::new("p").unwrap(), &mut rng).public_key()
    }

    fn upsert(seen_at: u64, key: PublicKey) -> PeerUpsert {
        PeerUpsert {
            id: PeerId::new("p").unwrap(),
            pub_key: key,
            region: None,
            endpoints: Endpoints {
                webrtc: None,
                https: Some(format!("https://p/{seen_at}")),
            },
            seen_at,
            initial_trust: 0.1,
        }
    }

    #[test]
    fn registration_keeps_trust_and_refuses_a_new_key() {
        let k = key(1);
        let first = merge_peer(None, &upsert(10, k)).unwrap();
        assert_eq!(first.trust, 0.1);
        let trusted = Peer {
            trust: 0.9,
            region: Some("eu".into()),
            ..first
        };
        let again = merge_peer(Some(trusted.clone()), &upsert(20, k)).unwrap();
        assert_eq!((again.trust, again.last_seen_at), (0.9, 20));
        assert_eq!(again.region.as_deref(), Some("eu"));
        assert_eq!(again.endpoints.https.as_deref(), Some("https://p/20"));
        let late = merge_peer(Some(again), &upsert(15, k)).unwrap();
        assert_eq!(late.last_seen_at, 20);
        assert!(matches!(
            merge_peer(Some(trusted), &upsert(30, key(2))),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn older_link_samples_lose() {
        let (a, b) = (PeerId::new("a").unwrap(), PeerId::new("b").unwrap());
        let at = |ts| {
            Link::new(
                &a,
                &b,
                Health::Up,
                LinkQos {
                    last_ts: ts,
                    ..Default::default()
                },
                1,
            )
            .unwrap()
        };
        assert_eq!(link_write(None, &at(5)), LinkWrite::Applied);
        assert_eq!(link_write(Some(&at(5)), &at(5)), LinkWrite::Applied);
        assert_eq!(link_write(Some(&at(5)), &at(6)), LinkWrite::Applied);
        assert_eq!(link_write(Some(&at(6)), &at(5)), LinkWrite::Stale);
    }

    #[test]
    fn limits_and_scores_are_checked() {
        assert!(limit(0).is_err());
        assert_eq!(limit(5).unwrap(), 5);
        assert_eq!(limit(1_000_000).unwrap(), MAX_LIST_LIMIT);
        let p = PeerId::new("p").unwrap();
        assert!(validate_scores(&[(p.clone(), 0.5)]).is_ok());
        assert!(validate_scores(&[(p, f64::NAN)]).is_err());
    }
}
