//! Whole-mesh gossip rounds with the real [`Node`]: real envelopes, signatures and payloads,
//! seeded and deterministic, for what a round costs per peer (envelopes, bytes, entries checked)
//! and how far behind the state is. The workers' driver in miniature: each round every peer
//! pushes to `fanout` others, each acknowledgement tells the sender what its target now holds,
//! and a receiver forwards what is new to `fanout` more while the ttl lasts. `changes` peers
//! restamp their telemetry each round (the rest have nothing new to say).
//!
//! The benchmark (`benches/rounds.rs`, in `scripts/bench.sh idle`) runs it at N = 20 and 1,000,
//! and under callgrind for instructions per round.

use std::collections::HashMap;

use mesh_types::{Envelope, Identity, PeerId, PublicKey, UnixMillis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::json;

use crate::node::{Node, NodeConfig, Received};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundsConfig {
    pub peers: usize,
    pub fanout: usize,
    pub ttl: u8,
    /// Links in each peer's telemetry (the size of its entry).
    pub links_per_peer: usize,
    /// Peers whose telemetry is news each round (after the first, where all are).
    pub changes: usize,
    /// Time between rounds.
    pub every_ms: u64,
}

impl RoundsConfig {
    pub fn new(peers: usize) -> Self {
        RoundsConfig {
            peers,
            fanout: 3,
            ttl: 1,
            links_per_peer: (peers - 1).min(16),
            changes: 0,
            every_ms: 10_000,
        }
    }
}

/// What one round cost, summed over the peers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoundCost {
    /// Envelope sends (pushes and forwards) and their bytes of JSON.
    pub sent: u64,
    pub bytes: u64,
    /// Entries received that were new (verified), and already held (not verified).
    pub verified: u64,
    pub held: u64,
    /// After the round: (peer, origin) pairs where the peer lacks the origin's own entry.
    pub behind: u64,
}

/// A mesh of `config.peers` nodes, to be run round by round.
pub struct Mesh {
    config: RoundsConfig,
    ids: Vec<Identity>,
    keys: HashMap<PeerId, PublicKey>,
    nodes: Vec<Node>,
    rng: StdRng,
    round: u64,
    t0: UnixMillis,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("config", &self.config)
            .field("round", &self.round)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    pub fn new(config: RoundsConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids: Vec<Identity> = (0..config.peers)
            .map(|i| {
                let id = PeerId::new(format!("p{i}")).unwrap_or_else(|_| unreachable!("valid"));
                Identity::generate(id, &mut rng)
            })
            .collect();
        let keys = ids
            .iter()
            .map(|i| (i.id().clone(), i.public_key()))
            .collect();
        let nodes = ids
            .iter()
            .map(|i| {
                Node::new(
                    i.id().clone(),
                    NodeConfig {
                        ttl: config.ttl,
                        ..NodeConfig::default()
                    },
                )
            })
            .collect();
        Mesh {
            config,
            ids,
            keys,
            nodes,
            rng,
            round: 0,
            t0: 1_800_000_000_000,
        }
    }

    /// A telemetry value shaped like a worker's: `links_per_peer` link summaries.
    fn telemetry(&mut self, peer: usize) -> serde_json::Value {
        let n = self.config.peers;
        let links: Vec<_> = (1..=self.config.links_per_peer)
            .map(|k| {
                json!({
                    "peer": format!("p{}", (peer + k) % n),
                    "health": "up",
                    "rttMs": f64::from(self.rng.random_range(10..5000u32)) / 100.0,
                    "probeRttMs": f64::from(self.rng.random_range(10..5000u32)) / 100.0,
                    "jitterMs": f64::from(self.rng.random_range(0..500u32)) / 100.0,
                    "lossPct": 0.0,
                    "bitrateKbps": f64::from(self.rng.random_range(50..200u32)) / 10.0,
                    "lastTs": self.t0 + self.round * self.config.every_ms,
                })
            })
            .collect();
        json!({"region": "local", "links": links})
    }

    /// Runs one round.
    pub fn round(&mut self) -> RoundCost {
        let n = self.config.peers;
        let now = self.t0 + self.round * self.config.every_ms;
        let mut cost = RoundCost::default();
        let mut changing: Vec<usize> = (0..n).collect();
        changing.shuffle(&mut self.rng);
        let changes = if self.round == 0 {
            n
        } else {
            self.config.changes
        };
        for &p in &changing[..changes.min(n)] {
            let value = self.telemetry(p);
            let _ = self.nodes[p].stamp(&self.ids[p], value, now);
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        for origin in order {
            let targets = self.draw(&[origin]);
            let to: Vec<PeerId> = targets.iter().map(|&t| self.ids[t].id().clone()).collect();
            let Ok(envelope) =
                self.nodes[origin].envelope_for(&self.ids[origin], &to, now, &mut self.rng)
            else {
                continue;
            };
            for t in targets {
                let forward = self.hand(origin, t, &envelope, now, &mut cost);
                if let Some(forward) = forward {
                    for f in self.draw(&[origin, t]) {
                        self.hand(t, f, &forward, now, &mut cost);
                    }
                }
            }
        }
        cost.behind = self.behind();
        self.round += 1;
        cost
    }

    /// Rounds until every peer holds a piece of news one peer stamps now (`None`: not within
    /// `max_rounds`).
    pub fn spread(&mut self, max_rounds: usize) -> Option<usize> {
        let origin = self.rng.random_range(0..self.config.peers);
        let now = self.t0 + self.round * self.config.every_ms;
        let value = self.telemetry(origin);
        self.nodes[origin]
            .stamp(&self.ids[origin], value, now)
            .ok()?;
        let news = self.nodes[origin].own()?.clone();
        for r in 1..=max_rounds {
            self.round();
            let all = self
                .nodes
                .iter()
                .all(|n| n.state().get(&news.key).is_some_and(|e| e.hlc >= news.hlc));
            if all {
                return Some(r);
            }
        }
        None
    }

    /// Up to `fanout` distinct peers, none in `exclude`.
    fn draw(&mut self, exclude: &[usize]) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..self.config.peers)
            .filter(|p| !exclude.contains(p))
            .collect();
        pool.shuffle(&mut self.rng);
        pool.truncate(self.config.fanout);
        pool
    }

    /// `from` hands `envelope` to `to`; returns the copy `to` forwards, if any.
    fn hand(
        &mut self,
        from: usize,
        to: usize,
        envelope: &Envelope,
        now: UnixMillis,
        cost: &mut RoundCost,
    ) -> Option<Envelope> {
        cost.sent += 1;
        cost.bytes += serde_json::to_vec(envelope).map_or(0, |b| b.len() as u64);
        let keys = &self.keys;
        let key_of = |p: &PeerId| keys.get(p).copied();
        let sender = self.ids[from].id().clone();
        let received = self.nodes[to].receive_via(&sender, envelope, &key_of, now);
        let receiver = self.ids[to].id().clone();
        match received {
            Ok(Received::Accepted {
                changed,
                held,
                forward,
                ..
            }) => {
                cost.verified += changed.len() as u64;
                cost.held += held as u64;
                self.nodes[from].delivered(&receiver, envelope, now);
                forward.map(|f| *f)
            }
            Ok(Received::Duplicate) => {
                self.nodes[from].delivered(&receiver, envelope, now);
                None
            }
            Err(_) => None,
        }
    }

    fn behind(&self) -> u64 {
        let own: Vec<_> = self.nodes.iter().map(Node::own).collect();
        let mut behind = 0;
        for (p, node) in self.nodes.iter().enumerate() {
            for (o, mine) in own.iter().enumerate() {
                let Some(mine) = mine else { continue };
                if p != o && node.state().get(&mine.key).is_none_or(|e| e.hlc < mine.hlc) {
                    behind += 1;
                }
            }
        }
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Small meshes: signatures are slow in unoptimised test builds.
    fn small(changes: usize) -> RoundsConfig {
        RoundsConfig {
            changes,
            links_per_peer: 4,
            ..RoundsConfig::new(8)
        }
    }

    #[test]
    fn once_converged_a_quiet_mesh_sends_only_what_changed() {
        let mut mesh = Mesh::new(small(0), 1);
        let costs: Vec<RoundCost> = (0..16).map(|_| mesh.round()).collect();
        assert!(costs[0].verified > 0);
        let quiet = costs[costs.len() - 1];
        assert_eq!(quiet.behind, 0, "converged: {costs:?}");
        assert_eq!(quiet.verified, 0, "nothing new to verify: {quiet:?}");
        // Bare envelopes: no entry crosses the wire once every peer knows what the others hold.
        assert_eq!(quiet.held, 0, "{costs:?}");
        assert!(
            quiet.bytes < costs[0].bytes / 5,
            "first {} bytes, quiet {}",
            costs[0].bytes,
            quiet.bytes
        );
    }

    #[test]
    fn each_change_is_verified_once_per_peer() {
        let mut mesh = Mesh::new(small(2), 2);
        let costs: Vec<RoundCost> = (0..16).map(|_| mesh.round()).collect();
        // Stamps: all 8 in the first round, then 2 a round; each reaches the other 7 peers,
        // verified once by each (the last few may still be on their way when the run ends).
        let stamps = (8 + 2 * (costs.len() - 1)) as u64;
        let verified: u64 = costs.iter().map(|c| c.verified).sum();
        let most = 7 * stamps;
        assert!(
            verified <= most && verified >= most * 9 / 10,
            "{verified} of {most}"
        );
        let tail = &costs[8..];
        assert!(tail.iter().all(|c| c.behind <= 2 * 7), "{tail:?}");
    }
}
