//! One peer's gossip state machine, sans-IO: it stamps and signs what this peer originates, and
//! decides what to make of each envelope that arrives (verify, refuse, deduplicate, merge,
//! forward). The worker is its driver: it looks up keys, passes the time and moves the bytes.
//!
//! An envelope is accepted once: its signature by the origin's registered key checks, it is no
//! older than `max_age_ms` and no further ahead than `max_skew_ms`, and every entry it carries
//! is signed by that entry's own origin (a relay can pass on what it learned, never forge it).
//! The seen-cache remembers `(origin, id)` until the age limit itself refuses the envelope, so
//! no copy can slip in between; when full of live entries it refuses new envelopes (`busy`)
//! rather than forget one.
//!
//! Work is spent once: a copy of an envelope already taken is known by its signature before any
//! check that costs (no Ed25519, no canonical JSON), and an entry that cannot change the state
//! (this peer holds it, or something newer) is dropped without being verified.
//!
//! What goes out is what the receiver lacks. The node keeps, per peer, the newest stamp of each
//! key that peer is known to hold: it sent the entry to us, or acknowledged an envelope carrying
//! it. An envelope for a peer carries only the entries that peer does not hold (Scuttlebutt-style
//! anti-entropy with the versions kept on the sender's side, so nothing proportional to the mesh
//! crosses the wire). What a peer is known to hold is forgotten after `knowledge_max_age_ms` (and
//! when its link comes back): a full exchange then repairs anything the record got wrong.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use mesh_types::signing::{Signed, verify_signature};
use mesh_types::{
    Envelope, GossipEntry, Hlc, Identity, PeerId, PublicKey, TELEMETRY, TelemetryPayload,
    UnixMillis, VerifyError,
};
use rand::{Rng, RngExt as _};
use serde::Deserialize as _;

use crate::hlc::{self, HlcError};
use crate::merge::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// Envelopes older than this are refused as stale; far longer than an envelope takes to
    /// spread (its forwards follow within seconds).
    pub max_age_ms: u64,
    /// How far ahead of our clock an envelope or entry may be.
    pub max_skew_ms: u64,
    /// Most envelopes remembered at once.
    pub seen_capacity: usize,
    /// Most entries one envelope may carry.
    pub max_entries: usize,
    /// Budget for the entries of an envelope we originate (bytes of JSON).
    pub max_payload_bytes: usize,
    /// Entries not refreshed for this long are dropped from the state and not passed on.
    pub entry_max_age_ms: u64,
    /// Hops an envelope we originate may take beyond its first, and the most we forward anyone's.
    pub ttl: u8,
    /// How long what a peer is known to hold is trusted before the next envelope to it carries
    /// everything again.
    pub knowledge_max_age_ms: u64,
    /// Peers whose holdings are remembered at once (the least recently refreshed go first): at
    /// most this many times the state's size in stamps. A worker deals with a few dozen peers in
    /// 10 minutes of 2-minute rounds.
    pub knowledge_peers: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_age_ms: 10 * 60 * 1000,
            max_skew_ms: 10_000,
            seen_capacity: 100_000,
            max_entries: 64,
            max_payload_bytes: 48 * 1024,
            entry_max_age_ms: 60 * 60 * 1000,
            ttl: 1,
            knowledge_max_age_ms: 10 * 60 * 1000,
            knowledge_peers: 256,
        }
    }
}

/// Why an envelope was refused. Each kind has a stable [`Rejection::code`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid envelope: {0}")]
    Invalid(String),
    #[error("origin {0} is not a registered peer")]
    UnknownOrigin(PeerId),
    #[error("envelope signature: {0}")]
    Signature(VerifyError),
    #[error("envelope is {age_ms} ms old, older than the {max_age_ms} ms limit")]
    Stale { age_ms: u64, max_age_ms: u64 },
    #[error("envelope is {ahead_ms} ms ahead of this peer's clock (limit {max_skew_ms} ms)")]
    FromFuture { ahead_ms: u64, max_skew_ms: u64 },
    #[error("a different envelope {id} from {from} was accepted before: same id, other content")]
    Tampered { from: PeerId, id: String },
    #[error("entry {key:?}: {reason}")]
    BadEntry { key: String, reason: String },
    #[error("too many envelopes in flight ({0} remembered); try again shortly")]
    Busy(usize),
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_envelope",
            Rejection::UnknownOrigin(_) => "unknown_peer",
            Rejection::Signature(e) => e.code(),
            Rejection::Stale { .. } => "stale_timestamp",
            Rejection::FromFuture { .. } => "future_timestamp",
            Rejection::Tampered { .. } => "tampered",
            Rejection::BadEntry { .. } => "bad_entry",
            Rejection::Busy(_) => "busy",
        }
    }
}

/// What an accepted envelope did.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Accepted {
        /// The entries that changed the state (to persist).
        changed: Vec<GossipEntry>,
        /// Entries left out: their origin is unknown here, or they have expired.
        skipped: usize,
        /// Entries this peer held already (or held newer): not verified again.
        held: usize,
        /// The copy to pass on (one more hop), while the ttl lasts.
        forward: Option<Box<Envelope>>,
    },
    /// Seen before (another path brought it first): nothing to do.
    Duplicate,
}

/// Expiring `(origin, id)` → signature.
#[derive(Debug, Default)]
struct Seen {
    sigs: HashMap<(PeerId, String), String>,
    by_expiry: BinaryHeap<Reverse<(UnixMillis, PeerId, String)>>,
}

impl Seen {
    fn purge(&mut self, now_ms: UnixMillis) {
        while let Some(Reverse((expires, _, _))) = self.by_expiry.peek() {
            if *expires >= now_ms {
                break;
            }
            if let Some(Reverse((_, from, id))) = self.by_expiry.pop() {
                self.sigs.remove(&(from, id));
            }
        }
    }
}

/// The newest stamp of each key one peer is known to hold, since `since_ms`.
#[derive(Debug)]
struct Holdings {
    keys: HashMap<String, Hlc>,
    since_ms: UnixMillis,
}

/// What each peer is known to hold (see the module's documentation).
#[derive(Debug, Default)]
struct Knowledge {
    peers: HashMap<PeerId, Holdings>,
}

impl Holdings {
    /// Whether this record may still be trusted at `now_ms`.
    fn fresh(&self, config: &NodeConfig, now_ms: UnixMillis) -> bool {
        now_ms.saturating_sub(self.since_ms) <= config.knowledge_max_age_ms
    }
}

impl Knowledge {
    fn holds(&mut self, peer: &PeerId, config: &NodeConfig, now_ms: UnixMillis) -> &mut Holdings {
        if self
            .peers
            .get(peer)
            .is_some_and(|h| !h.fresh(config, now_ms))
        {
            self.peers.remove(peer);
        }
        if !self.peers.contains_key(peer) && self.peers.len() >= config.knowledge_peers.max(1) {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(id, h)| (h.since_ms, (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        self.peers.entry(peer.clone()).or_insert_with(|| Holdings {
            keys: HashMap::new(),
            since_ms: now_ms,
        })
    }

    fn record(
        &mut self,
        peer: &PeerId,
        key: &str,
        hlc: Hlc,
        config: &NodeConfig,
        now_ms: UnixMillis,
    ) {
        let holds = self.holds(peer, config, now_ms);
        match holds.keys.get_mut(key) {
            Some(known) => *known = (*known).max(hlc),
            None => {
                holds.keys.insert(key.to_string(), hlc);
            }
        }
    }

    fn lacks(
        &self,
        peer: &PeerId,
        entry: &GossipEntry,
        config: &NodeConfig,
        now_ms: UnixMillis,
    ) -> bool {
        match self.peers.get(peer) {
            Some(h) if h.fresh(config, now_ms) => h
                .keys
                .get(&entry.key)
                .is_none_or(|known| *known < entry.hlc),
            _ => true,
        }
    }
}

#[derive(Debug)]
pub struct Node {
    me: PeerId,
    config: NodeConfig,
    hlc: Hlc,
    state: State,
    seen: Seen,
    knowledge: Knowledge,
}

impl Node {
    pub fn new(me: PeerId, config: NodeConfig) -> Self {
        Node {
            me,
            config,
            hlc: Hlc::default(),
            state: State::default(),
            seen: Seen::default(),
            knowledge: Knowledge::default(),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn clock(&self) -> Hlc {
        self.hlc
    }

    /// Envelopes remembered by the seen-cache.
    pub fn seen(&self) -> usize {
        self.seen.sigs.len()
    }

    /// Restores entries kept from before a restart (already verified when they first came);
    /// returns how many changed the state.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = GossipEntry>) -> usize {
        let mut changed = 0;
        for e in entries {
            self.hlc = self.hlc.max(e.hlc);
            changed += usize::from(self.state.apply(e));
        }
        changed
    }

    /// Stamps, signs and remembers a telemetry envelope carrying `own` (this peer's telemetry)
    /// and, within the budget, the newest entries it has learned: everything, for no peer in
    /// particular (see [`Node::envelope_for`] for one peer).
    pub fn originate(
        &mut self,
        identity: &Identity,
        own: serde_json::Value,
        now_ms: UnixMillis,
        rng: &mut impl Rng,
    ) -> Result<Envelope, OriginateError> {
        self.stamp(identity, own, now_ms)?;
        self.envelope_for(identity, &[], now_ms, rng)
    }

    /// This peer's own entry as last stamped.
    pub fn own(&self) -> Option<&GossipEntry> {
        self.state.get(&GossipEntry::telemetry_key(&self.me))
    }

    /// Stamps and signs `own` as this peer's entry: news for every peer.
    pub fn stamp(
        &mut self,
        identity: &Identity,
        own: serde_json::Value,
        now_ms: UnixMillis,
    ) -> Result<(), OriginateError> {
        self.hlc = hlc::tick(self.hlc, now_ms)?;
        let mut mine = GossipEntry {
            key: GossipEntry::telemetry_key(&self.me),
            origin: self.me.clone(),
            hlc: self.hlc,
            value: own,
            sig: String::new(),
            kid: None,
        };
        mine.sign(identity)?;
        self.state.apply(mine);
        Ok(())
    }

    /// A signed envelope for the peers `to` (for anyone, when empty): this peer's own entry and
    /// the newest it has learned, each only if one of them is not known to hold it, within the
    /// entry and size budgets. It may carry no entries: it still says this peer is alive, and
    /// its clock.
    pub fn envelope_for(
        &mut self,
        identity: &Identity,
        to: &[PeerId],
        now_ms: UnixMillis,
        rng: &mut impl Rng,
    ) -> Result<Envelope, OriginateError> {
        self.seen.purge(now_ms);
        if self.seen.sigs.len() >= self.config.seen_capacity {
            return Err(OriginateError::Busy(self.config.seen_capacity));
        }
        self.hlc = hlc::tick(self.hlc, now_ms)?;
        self.state
            .expire(now_ms.saturating_sub(self.config.entry_max_age_ms));
        let (config, knowledge) = (&self.config, &self.knowledge);
        // A peer holds its own newest entry.
        let wanted = |e: &GossipEntry| {
            to.is_empty()
                || to
                    .iter()
                    .any(|peer| e.origin != *peer && knowledge.lacks(peer, e, config, now_ms))
        };
        let own_key = GossipEntry::telemetry_key(&self.me);
        let mut candidates: Vec<&GossipEntry> = self
            .state
            .iter()
            .map(|(_, e)| e)
            .filter(|e| wanted(e))
            .collect();
        // Our own entry first, then the newest.
        candidates.sort_by(|a, b| {
            (b.key == own_key)
                .cmp(&(a.key == own_key))
                .then_with(|| b.hlc.cmp(&a.hlc))
                .then_with(|| a.key.cmp(&b.key))
        });
        let mut budget = self.config.max_payload_bytes;
        let mut entries = Vec::new();
        for e in candidates {
            if entries.len() >= self.config.max_entries {
                break;
            }
            let size = serde_json::to_vec(e).map_or(usize::MAX, |b| b.len());
            if size <= budget {
                budget -= size;
                entries.push(e.clone());
            }
        }
        let payload = serde_json::to_value(TelemetryPayload { entries })
            .map_err(|e| OriginateError::Encode(e.to_string()))?;
        let id: String = (0..16)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        let mut envelope = Envelope {
            id,
            ts: now_ms,
            kind: TELEMETRY.to_string(),
            payload,
            from: self.me.clone(),
            hlc: self.hlc,
            ttl: self.config.ttl,
            hops: 0,
            sig: String::new(),
            kid: None,
        };
        envelope.sign(identity)?;
        // Our own envelope coming back through the mesh is a duplicate, not news.
        self.remember(&envelope);
        Ok(envelope)
    }

    /// `peer` took `envelope` (accepted it, or had it already): it holds what the envelope
    /// carries, or newer.
    pub fn delivered(&mut self, peer: &PeerId, envelope: &Envelope, now_ms: UnixMillis) {
        for e in heads(envelope) {
            self.knowledge
                .record(peer, &e.key, e.hlc, &self.config, now_ms);
        }
    }

    /// Forgets what `peer` is known to hold (its link came back: it may have lost state, or
    /// missed what was sent while it was away); the next envelope to it carries everything.
    pub fn forget(&mut self, peer: &PeerId) {
        self.knowledge.peers.remove(peer);
    }

    /// Peers whose holdings are remembered.
    pub fn known_peers(&self) -> usize {
        self.knowledge.peers.len()
    }

    fn remember(&mut self, envelope: &Envelope) {
        let expires = envelope
            .ts
            .saturating_add(self.config.max_age_ms)
            .saturating_add(self.config.max_skew_ms);
        let key = (envelope.from.clone(), envelope.id.clone());
        self.seen.sigs.insert(key.clone(), envelope.sig.clone());
        self.seen.by_expiry.push(Reverse((expires, key.0, key.1)));
    }

    /// Decides what to make of an envelope that came straight from its origin. `key_of`
    /// returns the registered key of a peer (the driver reads them from the store).
    pub fn receive(
        &mut self,
        envelope: &Envelope,
        key_of: &dyn Fn(&PeerId) -> Option<PublicKey>,
        now_ms: UnixMillis,
    ) -> Result<Received, Rejection> {
        let origin = envelope.from.clone();
        self.receive_via(&origin, envelope, key_of, now_ms)
    }

    /// Decides what to make of an envelope `sender` handed over (its origin, or a relay).
    pub fn receive_via(
        &mut self,
        sender: &PeerId,
        envelope: &Envelope,
        key_of: &dyn Fn(&PeerId) -> Option<PublicKey>,
        now_ms: UnixMillis,
    ) -> Result<Received, Rejection> {
        let config = self.config;
        envelope
            .validate()
            .map_err(|e| Rejection::Invalid(e.to_string()))?;
        let key = key_of(&envelope.from)
            .ok_or_else(|| Rejection::UnknownOrigin(envelope.from.clone()))?;
        let age = now_ms.saturating_sub(envelope.ts);
        if age > config.max_age_ms {
            return Err(Rejection::Stale {
                age_ms: age,
                max_age_ms: config.max_age_ms,
            });
        }
        let ahead = envelope.ts.max(envelope.hlc.wall_ms).saturating_sub(now_ms);
        if ahead > config.max_skew_ms {
            return Err(Rejection::FromFuture {
                ahead_ms: ahead,
                max_skew_ms: config.max_skew_ms,
            });
        }
        self.seen.purge(now_ms);
        let seen_sig = self
            .seen
            .sigs
            .get(&(envelope.from.clone(), envelope.id.clone()));
        // The very envelope taken before (its signature checked then): nothing to check again.
        if seen_sig.is_some_and(|sig| *sig == envelope.sig) {
            return Ok(Received::Duplicate);
        }
        let seen_before = seen_sig.is_some();
        verify_signature(envelope, &key).map_err(Rejection::Signature)?;
        if seen_before {
            return Err(Rejection::Tampered {
                from: envelope.from.clone(),
                id: envelope.id.clone(),
            });
        }
        if self.seen.sigs.len() >= config.seen_capacity {
            return Err(Rejection::Busy(config.seen_capacity));
        }
        // Check every entry before applying any: an envelope is taken whole or not at all.
        let checked = if envelope.kind == TELEMETRY {
            self.check_entries(envelope, key_of, now_ms)?
        } else {
            // A kind this version does not know: still deduplicated and passed on.
            Checked::default()
        };
        self.hlc = hlc::receive(self.hlc, envelope.hlc, now_ms, config.max_skew_ms).map_err(
            |e| match e {
                HlcError::TooFarAhead {
                    ahead_ms,
                    max_skew_ms,
                    ..
                } => Rejection::FromFuture {
                    ahead_ms,
                    max_skew_ms,
                },
                HlcError::CounterExhausted => Rejection::Busy(config.seen_capacity),
            },
        )?;
        self.remember(envelope);
        // The sender and the origin hold what the envelope carries (or newer).
        for (key, hlc) in &checked.carried {
            self.knowledge.record(sender, key, *hlc, &config, now_ms);
            if *sender != envelope.from {
                self.knowledge
                    .record(&envelope.from, key, *hlc, &config, now_ms);
            }
        }
        let changed: Vec<GossipEntry> = checked
            .fresh
            .into_iter()
            .filter(|e| self.state.apply(e.clone()))
            .collect();
        // The origin's ttl, but never more hops than this peer allows its own envelopes: an
        // origin cannot make its envelope flood the mesh by asking for 255.
        let forward = (envelope.hops < envelope.ttl.min(config.ttl)).then(|| {
            Box::new(Envelope {
                hops: envelope.hops + 1,
                ..envelope.clone()
            })
        });
        Ok(Received::Accepted {
            changed,
            skipped: checked.skipped,
            held: checked.held,
            forward,
        })
    }

    fn check_entries(
        &self,
        envelope: &Envelope,
        key_of: &dyn Fn(&PeerId) -> Option<PublicKey>,
        now_ms: UnixMillis,
    ) -> Result<Checked, Rejection> {
        let payload = TelemetryPayload::deserialize(&envelope.payload)
            .map_err(|e| Rejection::Invalid(format!("telemetry payload: {e}")))?;
        if payload.entries.len() > self.config.max_entries {
            return Err(Rejection::Invalid(format!(
                "{} entries, more than {}",
                payload.entries.len(),
                self.config.max_entries
            )));
        }
        let mut checked = Checked::default();
        for e in payload.entries {
            let bad = |reason: String| Rejection::BadEntry {
                key: e.key.clone(),
                reason,
            };
            e.validate().map_err(|err| bad(err.to_string()))?;
            // The one kind of key this version knows: one entry per origin, so no peer can grow
            // everyone's state (and the store) by inventing keys.
            if e.key != GossipEntry::telemetry_key(&e.origin) {
                return Err(bad(format!(
                    "only telemetry/{} is accepted from {}",
                    e.origin, e.origin
                )));
            }
            if e.hlc.wall_ms > now_ms.saturating_add(self.config.max_skew_ms) {
                return Err(bad(format!(
                    "stamped {} ms ahead of this peer's clock",
                    e.hlc.wall_ms - now_ms
                )));
            }
            let Some(key) = key_of(&e.origin) else {
                checked.skipped += 1;
                continue;
            };
            // What this peer holds already, or something newer, cannot change the state: it is
            // dropped unverified (verifying is the costly part of taking an envelope).
            if let Some(held) = self.state.get(&e.key)
                && (held.hlc.cmp(&e.hlc) == Ordering::Greater || *held == e)
            {
                checked.held += 1;
                checked.carried.push((e.key.clone(), e.hlc));
                continue;
            }
            // The envelope's signer vouched for this entry: a forged one refuses it whole.
            verify_signature(&e, &key).map_err(|err| bad(err.to_string()))?;
            if e.hlc.wall_ms + self.config.entry_max_age_ms < now_ms {
                checked.skipped += 1;
                continue;
            }
            checked.carried.push((e.key.clone(), e.hlc));
            checked.fresh.push(e);
        }
        Ok(checked)
    }
}

/// An envelope's entries, checked.
#[derive(Debug, Default)]
struct Checked {
    /// Verified, and possibly news.
    fresh: Vec<GossipEntry>,
    /// Held here already, or older than what is held: not verified, not applied.
    held: usize,
    /// Left out: unknown origin, or expired.
    skipped: usize,
    /// Key and stamp of every entry the sender is now known to hold.
    carried: Vec<(String, Hlc)>,
}

/// What identifies an entry of a telemetry payload: its key, origin and stamp.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct EntryHead {
    pub key: String,
    pub origin: PeerId,
    pub hlc: Hlc,
}

#[derive(serde::Deserialize)]
struct Heads {
    entries: Vec<EntryHead>,
}

/// The heads of `envelope`'s entries, read in place (values and signatures are skipped, not
/// copied); none for a payload that is not telemetry-shaped. For the bookkeeping that needs
/// no more than that, on every acknowledgement and receipt.
pub fn heads(envelope: &Envelope) -> Vec<EntryHead> {
    Heads::deserialize(&envelope.payload).map_or_else(|_| Vec::new(), |h| h.entries)
}

#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    #[error(transparent)]
    Clock(#[from] HlcError),
    #[error("signing: {0}")]
    Signing(#[from] mesh_types::Error),
    #[error("encoding the payload: {0}")]
    Encode(String),
    /// The seen-cache is full: an envelope we could not remember would come back as news.
    #[error("too many envelopes in flight ({0} remembered); try again shortly")]
    Busy(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    const NOW: UnixMillis = 1_800_000_000_000;

    fn identity(name: &str, seed: u64) -> Identity {
        Identity::generate(PeerId::new(name).unwrap(), &mut StdRng::seed_from_u64(seed))
    }

    struct Fixture {
        a: Identity,
        b: Identity,
        c: Identity,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                a: identity("a", 1),
                b: identity("b", 2),
                c: identity("c", 3),
            }
        }

        fn keys(&self) -> impl Fn(&PeerId) -> Option<PublicKey> + '_ {
            move |p: &PeerId| {
                [&self.a, &self.b, &self.c]
                    .into_iter()
                    .find(|i| i.id() == p)
                    .map(Identity::public_key)
            }
        }

        fn node(&self, who: &Identity) -> Node {
            Node::new(who.id().clone(), NodeConfig::default())
        }
    }

    fn changes(r: &Received) -> usize {
        match r {
            Received::Accepted { changed, .. } => changed.len(),
            Received::Duplicate => 0,
        }
    }

    #[test]
    fn state_spreads_through_a_relay_and_duplicates_are_not_news() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let (mut a, mut b, mut c) = (f.node(&f.a), f.node(&f.b), f.node(&f.c));
        let from_a = a
            .originate(&f.a, json!({"links": []}), NOW, &mut rng)
            .unwrap();
        let got = b.receive(&from_a, &f.keys(), NOW + 5).unwrap();
        let Received::Accepted {
            changed, forward, ..
        } = &got
        else {
            panic!("{got:?}")
        };
        assert_eq!(changed.len(), 1);
        let forward = forward.as_ref().expect("ttl 1 allows one forward");
        assert_eq!(forward.hops, 1);
        assert_eq!(
            b.receive(&from_a, &f.keys(), NOW + 6),
            Ok(Received::Duplicate)
        );
        // The forwarded copy reached c: it has a's entry, and cannot be forwarded again.
        match c.receive(forward, &f.keys(), NOW + 7).unwrap() {
            Received::Accepted {
                changed, forward, ..
            } => {
                assert_eq!(changed.len(), 1);
                assert!(forward.is_none());
            }
            other => panic!("{other:?}"),
        }
        // b's own envelope carries what it learned from a: a push of more than its own news.
        let from_b = b
            .originate(&f.b, json!({"links": []}), NOW + 10, &mut rng)
            .unwrap();
        let mut fresh = f.node(&f.c);
        let r = fresh.receive(&from_b, &f.keys(), NOW + 11).unwrap();
        assert_eq!(changes(&r), 2);
        assert!(fresh.state().get("telemetry/a").is_some());
        // An origin's own envelope coming back is a duplicate.
        assert_eq!(
            a.receive(forward, &f.keys(), NOW + 12),
            Ok(Received::Duplicate)
        );
    }

    #[test]
    fn tampered_forged_stale_and_future_envelopes_are_refused() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut a = f.node(&f.a);
        let env = a
            .originate(&f.a, json!({"links": []}), NOW, &mut rng)
            .unwrap();
        let keys = f.keys();
        let code = |r: Result<Received, Rejection>| r.unwrap_err().code();

        let mut tampered = env.clone();
        tampered.ttl = 5;
        assert_eq!(
            code(f.node(&f.b).receive(&tampered, &keys, NOW)),
            "bad_signature"
        );
        let mut renamed = env.clone();
        renamed.from = f.c.id().clone();
        assert_eq!(
            code(f.node(&f.b).receive(&renamed, &keys, NOW)),
            "wrong_signer"
        );
        let nobody = |_: &PeerId| None;
        assert_eq!(
            code(f.node(&f.b).receive(&env, &nobody, NOW)),
            "unknown_peer"
        );
        let late = NOW + NodeConfig::default().max_age_ms + 1;
        assert_eq!(
            code(f.node(&f.b).receive(&env, &keys, late)),
            "stale_timestamp"
        );
        let early = NOW - NodeConfig::default().max_skew_ms - 1;
        assert_eq!(
            code(f.node(&f.b).receive(&env, &keys, early)),
            "future_timestamp"
        );
        // An origin asking for many hops gets only as many as the receiver allows (1).
        let mut greedy = env.clone();
        greedy.id = "greedy".into();
        greedy.ttl = 200;
        greedy.hops = 1;
        greedy.sign(&f.a).unwrap();
        match f.node(&f.b).receive(&greedy, &keys, NOW).unwrap() {
            Received::Accepted { forward, .. } => assert!(forward.is_none()),
            other => panic!("{other:?}"),
        }
        let mut hops = env.clone();
        hops.hops = 9;
        assert_eq!(
            code(f.node(&f.b).receive(&hops, &keys, NOW)),
            "invalid_envelope"
        );

        // Same id, different content, both properly signed: equivocation.
        let mut b = f.node(&f.b);
        assert!(b.receive(&env, &keys, NOW).is_ok());
        let mut other = env.clone();
        other.payload = json!({"entries": []});
        other.sign(&f.a).unwrap();
        assert_eq!(code(b.receive(&other, &keys, NOW)), "tampered");
    }

    #[test]
    fn a_relay_cannot_forge_or_claim_another_peers_entry() {
        let f = Fixture::new();
        let keys = f.keys();
        // An entry under `key`, claiming `origin`, signed by b.
        let by_b = |key: &str, origin: &Identity| {
            let mut e = GossipEntry {
                key: key.into(),
                origin: f.b.id().clone(),
                hlc: Hlc {
                    wall_ms: NOW,
                    counter: 0,
                },
                value: json!({"links": []}),
                sig: String::new(),
                kid: None,
            };
            e.sign(&f.b).unwrap();
            e.origin = origin.id().clone();
            e
        };
        let env = |entries: Vec<GossipEntry>, id: &str| {
            let mut e = Envelope {
                id: id.into(),
                ts: NOW,
                kind: TELEMETRY.into(),
                payload: serde_json::to_value(TelemetryPayload { entries }).unwrap(),
                from: f.b.id().clone(),
                hlc: Hlc {
                    wall_ms: NOW,
                    counter: 0,
                },
                ttl: 1,
                hops: 0,
                sig: String::new(),
                kid: None,
            };
            e.sign(&f.b).unwrap();
            e
        };
        let mut c = f.node(&f.c);
        for (what, entry, id) in [
            // a's entry, but b's signature.
            ("forged", by_b("telemetry/a", &f.a), "e1"),
            // b writing a key that belongs to a: refused by the key rule.
            ("claimed", by_b("telemetry/a", &f.b), "e2"),
            // b's own key, but not a kind this version knows: no inventing keys to grow the state.
            ("invented", by_b("junk1/b", &f.b), "e4"),
        ] {
            let r = c.receive(&env(vec![entry], id), &keys, NOW);
            assert_eq!(r.unwrap_err().code(), "bad_entry", "{what}");
        }
        // Nothing was applied from any refused envelope.
        assert!(c.state().is_empty());
    }

    #[test]
    fn the_seen_cache_refuses_rather_than_forgets() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut a = f.node(&f.a);
        let mut b = Node::new(
            f.b.id().clone(),
            NodeConfig {
                seen_capacity: 2,
                ..NodeConfig::default()
            },
        );
        let keys = f.keys();
        for i in 0..2 {
            let e = a
                .originate(&f.a, json!({"links": []}), NOW + i, &mut rng)
                .unwrap();
            assert!(b.receive(&e, &keys, NOW + i).is_ok());
        }
        let e = a
            .originate(&f.a, json!({"links": []}), NOW + 2, &mut rng)
            .unwrap();
        assert_eq!(b.receive(&e, &keys, NOW + 2).unwrap_err().code(), "busy");
        // Nor does b originate what it could not remember.
        assert!(matches!(
            b.originate(&f.b, json!({"links": []}), NOW + 2, &mut rng),
            Err(OriginateError::Busy(2))
        ));
        // Once the first two are past the age limit (and so refused as stale anyway), there is
        // room again.
        let later = NOW + NodeConfig::default().max_age_ms + NodeConfig::default().max_skew_ms + 5;
        let e = a
            .originate(&f.a, json!({"links": []}), later, &mut rng)
            .unwrap();
        assert!(b.receive(&e, &keys, later).is_ok());
        assert_eq!(b.seen(), 1);
    }

    fn carried(e: &Envelope) -> Vec<String> {
        let payload: TelemetryPayload = serde_json::from_value(e.payload.clone()).unwrap();
        payload.entries.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn copies_and_entries_already_held_are_not_checked_again() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let keys = f.keys();
        let (mut a, mut b, mut c) = (f.node(&f.a), f.node(&f.b), f.node(&f.c));
        let from_a = a.originate(&f.a, json!({"n": 1}), NOW, &mut rng).unwrap();
        b.receive(&from_a, &keys, NOW + 1).unwrap();
        // A copy whose signature is the one taken: a duplicate, known without verifying, even
        // if the bytes it signs were changed on the way (nothing of it is taken).
        let mut copy = from_a.clone();
        copy.payload = json!({"entries": []});
        assert_eq!(b.receive(&copy, &keys, NOW + 2), Ok(Received::Duplicate));
        // c relays a's entry (held by b) beside its own: b verifies only c's.
        c.receive(&from_a, &keys, NOW + 2).unwrap();
        let from_c = c
            .originate(&f.c, json!({"n": 2}), NOW + 3, &mut rng)
            .unwrap();
        match b.receive_via(f.c.id(), &from_c, &keys, NOW + 4).unwrap() {
            Received::Accepted { changed, held, .. } => {
                assert_eq!((changed.len(), held), (1, 1));
            }
            other => panic!("{other:?}"),
        }
        // An entry b holds with a broken signature cannot change b's state, so it costs
        // nothing; a newer one with a broken signature refuses the envelope, as before.
        let mut stale = a.state().get("telemetry/a").unwrap().clone();
        stale.sig = "AAAA".into();
        let mut fresher = stale.clone();
        fresher.hlc.wall_ms += 100;
        let relay = |entries: Vec<GossipEntry>, id: &str| {
            let mut e = Envelope {
                id: id.into(),
                ts: NOW + 5,
                kind: TELEMETRY.into(),
                payload: serde_json::to_value(TelemetryPayload { entries }).unwrap(),
                from: f.c.id().clone(),
                hlc: Hlc {
                    wall_ms: NOW + 5,
                    counter: 0,
                },
                ttl: 0,
                hops: 0,
                sig: String::new(),
                kid: None,
            };
            e.sign(&f.c).unwrap();
            e
        };
        let older = b.state().get("telemetry/a").unwrap().clone();
        let older = GossipEntry {
            hlc: Hlc {
                wall_ms: older.hlc.wall_ms - 1,
                ..older.hlc
            },
            sig: "AAAA".into(),
            ..older
        };
        assert!(matches!(
            b.receive(&relay(vec![older], "r1"), &keys, NOW + 5),
            Ok(Received::Accepted { held: 1, .. })
        ));
        assert_eq!(
            b.receive(&relay(vec![fresher], "r2"), &keys, NOW + 5)
                .unwrap_err()
                .code(),
            "bad_entry"
        );
    }

    #[test]
    fn envelopes_carry_only_what_their_targets_lack() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let keys = f.keys();
        let (mut a, mut b, mut c) = (f.node(&f.a), f.node(&f.b), f.node(&f.c));
        let (pb, pc) = (f.b.id().clone(), f.c.id().clone());
        let (to_b, to_c) = (std::slice::from_ref(&pb), std::slice::from_ref(&pc));
        let from_c = c.originate(&f.c, json!({"n": 3}), NOW, &mut rng).unwrap();
        a.receive(&from_c, &keys, NOW + 1).unwrap();
        a.stamp(&f.a, json!({"n": 1}), NOW + 2).unwrap();
        // b is known to hold nothing: everything goes. c holds its own entry: only a's goes.
        let first = a.envelope_for(&f.a, to_b, NOW + 3, &mut rng).unwrap();
        assert_eq!(carried(&first), ["telemetry/a", "telemetry/c"]);
        let to_c = a.envelope_for(&f.a, to_c, NOW + 3, &mut rng).unwrap();
        assert_eq!(carried(&to_c), ["telemetry/a"]);
        // Once b has taken it, the next envelope carries nothing, until a's entry is news.
        b.receive(&first, &keys, NOW + 4).unwrap();
        a.delivered(&pb, &first, NOW + 4);
        let nothing = a.envelope_for(&f.a, to_b, NOW + 5, &mut rng).unwrap();
        assert!(carried(&nothing).is_empty());
        assert_eq!(
            b.receive(&nothing, &keys, NOW + 6).map(|r| changes(&r)),
            Ok(0)
        );
        a.stamp(&f.a, json!({"n": 2}), NOW + 7).unwrap();
        let news = a.envelope_for(&f.a, to_b, NOW + 8, &mut rng).unwrap();
        assert_eq!(carried(&news), ["telemetry/a"]);
        // For several targets, what any of them lacks.
        let both = a
            .envelope_for(&f.a, &[pb.clone(), pc.clone()], NOW + 8, &mut rng)
            .unwrap();
        assert_eq!(carried(&both), ["telemetry/a"]);
        // What b sent a is what b holds: a does not send it back.
        let from_b = b
            .originate(&f.b, json!({"n": 4}), NOW + 9, &mut rng)
            .unwrap();
        a.receive(&from_b, &keys, NOW + 10).unwrap();
        a.delivered(&pb, &news, NOW + 10);
        let back = a.envelope_for(&f.a, to_b, NOW + 11, &mut rng).unwrap();
        assert!(carried(&back).is_empty(), "{:?}", carried(&back));
        // Forgotten (the link came back) or too old to trust: everything again.
        a.forget(&pb);
        let all = a.envelope_for(&f.a, to_b, NOW + 12, &mut rng).unwrap();
        assert_eq!(carried(&all).len(), 2, "{:?}", carried(&all));
        a.delivered(&pb, &all, NOW + 12);
        let later = NOW + 13 + a.config().knowledge_max_age_ms;
        let refreshed = a.envelope_for(&f.a, to_b, later, &mut rng).unwrap();
        assert_eq!(carried(&refreshed).len(), 2);
    }

    #[test]
    fn what_peers_hold_is_bounded_and_the_longest_known_goes_first() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let config = NodeConfig {
            knowledge_peers: 2,
            ..NodeConfig::default()
        };
        let mut a = Node::new(f.a.id().clone(), config);
        let env = a.originate(&f.a, json!({"n": 1}), NOW, &mut rng).unwrap();
        let peers: Vec<PeerId> = ["x", "y", "z"].map(|p| PeerId::new(p).unwrap()).into();
        for (i, p) in peers.iter().enumerate() {
            a.delivered(p, &env, NOW + i as u64);
        }
        assert_eq!(a.known_peers(), 2);
        let lacks = |a: &mut Node, p: &PeerId, rng: &mut StdRng| {
            carried(
                &a.envelope_for(&f.a, std::slice::from_ref(p), NOW + 5, rng)
                    .unwrap(),
            )
            .len()
        };
        assert_eq!(lacks(&mut a, &peers[0], &mut rng), 1, "x was forgotten");
        assert_eq!(lacks(&mut a, &peers[2], &mut rng), 0, "z is remembered");
    }

    #[test]
    fn originated_payloads_stay_within_their_budget_newest_first() {
        let f = Fixture::new();
        let mut rng = StdRng::seed_from_u64(7);
        let config = NodeConfig {
            max_entries: 3,
            ..NodeConfig::default()
        };
        let mut a = Node::new(f.a.id().clone(), config);
        let mut b = f.node(&f.b);
        let mut c = f.node(&f.c);
        let keys = f.keys();
        let eb = b.originate(&f.b, json!({"n": 1}), NOW, &mut rng).unwrap();
        let ec = c
            .originate(&f.c, json!({"n": 2}), NOW + 1, &mut rng)
            .unwrap();
        a.receive(&eb, &keys, NOW + 2).unwrap();
        a.receive(&ec, &keys, NOW + 2).unwrap();
        let mine = a
            .originate(&f.a, json!({"n": 0}), NOW + 3, &mut rng)
            .unwrap();
        let payload: TelemetryPayload = serde_json::from_value(mine.payload).unwrap();
        let keys_in: Vec<&str> = payload.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys_in, ["telemetry/a", "telemetry/c", "telemetry/b"]);
        assert!(mine.hlc > ec.hlc, "the clock moved past what it received");
        let small = NodeConfig {
            max_entries: 2,
            ..NodeConfig::default()
        };
        let mut a2 = Node::new(f.a.id().clone(), small);
        a2.restore(a.state().iter().map(|(_, e)| e.clone()));
        let e = a2
            .originate(&f.a, json!({"n": 0}), NOW + 4, &mut rng)
            .unwrap();
        let payload: TelemetryPayload = serde_json::from_value(e.payload).unwrap();
        assert_eq!(payload.entries.len(), 2);
    }
}
