//! Trust from the link graph: personalised PageRank (damping 0.85) over links that are not
//! `down`, each weighted by its quality, restarting on operator-configured seed peers. Because
//! every walk restarts at a seed, rank reaches a peer only through links from the seeds' side of
//! the graph: a cluster of fresh identities linking only to each other cannot vote itself up.
//! Scores are scaled into [0, 1] (the best-connected peer gets 1). Sans-IO and deterministic;
//! iterates to a stated tolerance, not a fixed count. docs/TRUST.md explains the model.

use std::collections::{BTreeMap, BTreeSet};

use mesh_types::{Health, PeerId};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustConfig {
    pub damping: f64,
    /// Stop when the L1 change of the rank vector in one iteration is below this.
    pub tolerance: f64,
    /// A bound, never expected to be reached (the iteration contracts by `damping` each step).
    pub max_iterations: usize,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            damping: 0.85,
            tolerance: 1e-10,
            max_iterations: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustError {
    #[error("no seed peer is known: trust needs at least one operator-configured seed")]
    NoSeeds,
    #[error("did not converge to {tolerance} within {iterations} iterations")]
    NoConvergence { tolerance: f64, iterations: usize },
}

/// A link as the trust model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphLink {
    pub a: PeerId,
    pub b: PeerId,
    pub health: Health,
    pub loss_pct: Option<f64>,
}

/// How much a link counts: 0 when `down`, half when `degraded`, scaled down by its loss.
pub fn link_weight(link: &GraphLink) -> f64 {
    let base = match link.health {
        Health::Up => 1.0,
        Health::Degraded => 0.5,
        Health::Down => 0.0,
    };
    let loss = link
        .loss_pct
        .filter(|l| l.is_finite())
        .map_or(0.0, |l| l.clamp(0.0, 100.0));
    base * (1.0 - loss / 100.0)
}

/// The outcome: a score in [0, 1] per peer that has a counted link, and how it converged.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub scores: BTreeMap<PeerId, f64>,
    pub iterations: usize,
}

/// Trust of every peer with a counted link. Peers without one are absent: their stored trust
/// (the registration floor for a new peer, the last score for one that disconnected) stands.
pub fn compute(
    links: &[GraphLink],
    seeds: &[PeerId],
    config: &TrustConfig,
) -> Result<Scores, TrustError> {
    // Undirected, weighted adjacency over counted links; ids in a fixed order.
    let mut adjacency: BTreeMap<&PeerId, BTreeMap<&PeerId, f64>> = BTreeMap::new();
    for link in links {
        let w = link_weight(link);
        if w <= 0.0 || link.a == link.b {
            continue;
        }
        *adjacency
            .entry(&link.a)
            .or_default()
            .entry(&link.b)
            .or_default() += w;
        *adjacency
            .entry(&link.b)
            .or_default()
            .entry(&link.a)
            .or_default() += w;
    }
    let seeds: BTreeSet<&PeerId> = seeds.iter().collect();
    if seeds.is_empty() {
        return Err(TrustError::NoSeeds);
    }
    // Seeds restart the walk even when they have no counted link yet.
    let mut nodes: BTreeSet<&PeerId> = adjacency.keys().copied().collect();
    nodes.extend(seeds.iter().copied());
    let index: BTreeMap<&PeerId, usize> = nodes.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let restart: Vec<f64> = nodes
        .iter()
        .map(|p| {
            if seeds.contains(p) {
                1.0 / seeds.len() as f64
            } else {
                0.0
            }
        })
        .collect();
    let out: Vec<Vec<(usize, f64)>> = nodes
        .iter()
        .map(|p| {
            let edges = adjacency.get(p);
            let total: f64 = edges.map_or(0.0, |e| e.values().sum());
            edges
                .into_iter()
                .flatten()
                .map(|(q, w)| (index[q], w / total))
                .collect()
        })
        .collect();
    let d = config.damping;
    let mut rank = restart.clone();
    for iteration in 1..=config.max_iterations {
        let mut next: Vec<f64> = restart.iter().map(|r| (1.0 - d) * r).collect();
        // A peer with no counted link hands its mass back to the seeds.
        let mut dangling = 0.0;
        for (i, edges) in out.iter().enumerate() {
            if edges.is_empty() {
                dangling += rank[i];
            }
            for &(j, share) in edges {
                next[j] += d * rank[i] * share;
            }
        }
        for (x, r) in next.iter_mut().zip(&restart) {
            *x += d * dangling * r;
        }
        let change: f64 = next.iter().zip(&rank).map(|(a, b)| (a - b).abs()).sum();
        rank = next;
        if change < config.tolerance {
            let top = rank.iter().copied().fold(0.0, f64::max);
            let scores = nodes
                .iter()
                .zip(&rank)
                .filter(|(p, _)| adjacency.contains_key(*p))
                .map(|(p, r)| ((*p).clone(), if top > 0.0 { r / top } else { 0.0 }))
                .collect();
            return Ok(Scores {
                scores,
                iterations: iteration,
            });
        }
    }
    Err(TrustError::NoConvergence {
        tolerance: config.tolerance,
        iterations: config.max_iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn up(a: &str, b: &str) -> GraphLink {
        GraphLink {
            a: id(a),
            b: id(b),
            health: Health::Up,
            loss_pct: Some(0.0),
        }
    }

    #[test]
    fn a_sybil_cluster_cannot_vote_itself_up() {
        // Honest: a seed and a ring of four. Sybils: ten identities fully linked to each other,
        // with no link to the honest side.
        let mut links = vec![
            up("seed", "h1"),
            up("h1", "h2"),
            up("h2", "h3"),
            up("h3", "seed"),
        ];
        let sybils: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        for a in &sybils {
            for b in &sybils {
                if a < b {
                    links.push(up(a, b));
                }
            }
        }
        let s = compute(&links, &[id("seed")], &TrustConfig::default()).unwrap();
        for sybil in &sybils {
            assert!(
                s.scores[&id(sybil)] < 1e-9,
                "{sybil}: {}",
                s.scores[&id(sybil)]
            );
        }
        assert!(s.scores[&id("h2")] > 0.3);
        // One sybil buying a link to an honest peer gains a little, not a lot.
        links.push(up("h2", "s0"));
        let s = compute(&links, &[id("seed")], &TrustConfig::default()).unwrap();
        assert!(s.scores[&id("s0")] < s.scores[&id("h2")]);
    }

    #[test]
    fn scores_are_in_unit_range_and_converge_to_the_tolerance() {
        let links = vec![up("seed", "a"), up("a", "b"), up("b", "c"), up("seed", "c")];
        let config = TrustConfig::default();
        let s = compute(&links, &[id("seed")], &config).unwrap();
        assert!(s.scores.values().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(s.scores.values().copied().fold(0.0, f64::max), 1.0);
        assert!(s.iterations > 1 && s.iterations < config.max_iterations);
        // Symmetric positions get equal scores.
        assert!((s.scores[&id("a")] - s.scores[&id("c")]).abs() < 1e-9);
    }

    #[test]
    fn down_links_do_not_count_and_lossy_ones_count_less() {
        let mut lossy = up("seed", "b");
        lossy.loss_pct = Some(50.0);
        let mut down = up("seed", "c");
        down.health = Health::Down;
        let links = vec![up("seed", "a"), lossy, down];
        let s = compute(&links, &[id("seed")], &TrustConfig::default()).unwrap();
        assert!(s.scores[&id("a")] > s.scores[&id("b")]);
        assert!(
            !s.scores.contains_key(&id("c")),
            "a peer with only a down link keeps its stored trust"
        );
    }

    #[test]
    fn trust_needs_a_seed() {
        assert_eq!(
            compute(&[up("a", "b")], &[], &TrustConfig::default()),
            Err(TrustError::NoSeeds)
        );
    }
}
