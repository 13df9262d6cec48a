//! A seeded, deterministic simulation of gossip over a whole mesh, using the real selection
//! ([`Sampler`]) and trust model ([`trust::compute`]): how many rounds one piece of news takes to
//! reach 99 % and 100 % of the live peers, and how many envelopes a peer receives per round.
//!
//! The model is the deployed protocol: every round, every live peer pushes its envelope to
//! `fanout` peers (the news travels in it once the peer has it, since an envelope carries what
//! its origin has learned); a receiver seeing an envelope for the first time forwards it to
//! `fanout` more while its ttl lasts; each delivery is lost with probability `loss`; dead peers
//! never answer but stay candidates (the worst case: nobody has noticed yet). News learned in a
//! round is pushed from the next round on. The benchmark (`benches/spread.rs`) runs it over many
//! seeds; docs/BENCHMARKS.md has the results.

use std::collections::{HashMap, HashSet, VecDeque};

use mesh_types::{Health, PeerId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt as _, SeedableRng};

use crate::select::{Candidate, Sampler, SelectionConfig};
use crate::trust::{self, GraphLink, TrustConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Every peer the same trust: selection is uniform.
    Uniform,
    /// Trust from the real model over a preferential-attachment link graph (a few hubs, many
    /// leaves: the skew the weight cap has to contain).
    Trust,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub peers: usize,
    pub fanout: usize,
    /// Probability that a delivery is lost.
    pub loss: f64,
    /// Share of peers that are dead.
    pub dead: f64,
    pub weighting: Weighting,
    pub ttl: u8,
    pub max_rounds: usize,
    /// The selection settings (`fanout` is taken from [`SimConfig::fanout`]).
    pub selection: SelectionConfig,
}

impl SimConfig {
    pub fn new(peers: usize, weighting: Weighting) -> Self {
        SimConfig {
            peers,
            fanout: 3,
            loss: 0.0,
            dead: 0.0,
            weighting,
            ttl: 0,
            max_rounds: 60,
            selection: SelectionConfig::default(),
        }
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRun {
    /// The first round after which at least 99 % of live peers had the news.
    pub rounds_to_99: Option<usize>,
    pub rounds_to_100: Option<usize>,
    /// Most envelopes one live peer received in one round.
    pub max_load: u32,
    /// Envelopes received per live peer per round, on average.
    pub mean_load: f64,
}

/// Trust scores in [0, 1] for `n` peers over a preferential-attachment graph (each newcomer
/// links to 3 peers chosen in proportion to their degree), seeded by 3 peers.
fn skewed_trust(ids: &[PeerId], rng: &mut StdRng) -> Vec<f64> {
    let n = ids.len();
    let mut links = Vec::new();
    // Each endpoint listed once per link: drawing from it is drawing by degree.
    let mut ends: Vec<usize> = Vec::new();
    for i in 1..n {
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < 3.min(i) {
            let j = if ends.is_empty() {
                0
            } else {
                ends[rng.random_range(0..ends.len())]
            };
            chosen.insert(j);
        }
        for j in chosen {
            links.push(GraphLink {
                a: ids[i].clone(),
                b: ids[j].clone(),
                health: Health::Up,
                loss_pct: None,
            });
            ends.extend([i, j]);
        }
    }
    let seeds: Vec<PeerId> = ids.iter().take(3).cloned().collect();
    let scores = trust::compute(&links, &seeds, &TrustConfig::default())
        .map(|s| s.scores)
        .unwrap_or_default();
    ids.iter()
        .map(|id| {
            scores
                .get(id)
                .copied()
                .unwrap_or(mesh_types::peer::INITIAL_TRUST)
        })
        .collect()
}

/// Runs one simulation; the same `seed` always gives the same result.
pub fn run(config: &SimConfig, seed: u64) -> SimRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = config.peers;
    let ids: Vec<PeerId> = (0..n)
        .map(|i| PeerId::new(format!("p{i}")).unwrap_or_else(|_| unreachable!("a valid id")))
        .collect();
    let index: HashMap<&PeerId, usize> = ids.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let trust = match config.weighting {
        Weighting::Uniform => vec![0.5; n],
        Weighting::Trust => skewed_trust(&ids, &mut rng),
    };
    let candidates: Vec<Candidate> = ids
        .iter()
        .zip(&trust)
        .map(|(id, t)| Candidate {
            id: id.clone(),
            trust: *t,
            last_seen_ms: 0,
            link: Some(Health::Up),
        })
        .collect();
    let selection = SelectionConfig {
        fanout: config.fanout,
        ..config.selection
    };
    let samplers: Vec<Sampler> = ids
        .iter()
        .map(|me| Sampler::new(&candidates, me, 0, &selection))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let dead_count = ((n as f64) * config.dead).round() as usize;
    let mut dead = vec![false; n];
    // The news starts at a live peer: the first in the shuffled order is never dead.
    for &i in order.iter().skip(1).take(dead_count) {
        dead[i] = true;
    }
    let live = n - dead_count;
    let mut informed = vec![false; n];
    informed[order[0]] = true;
    let (mut rounds_to_99, mut rounds_to_100) = (None, None);
    let (mut max_load, mut total_load, mut rounds) = (0u32, 0u64, 0usize);

    for round in 1..=config.max_rounds {
        rounds = round;
        let mut load = vec![0u32; n];
        let mut next = informed.clone();
        // (origin of the envelope, whether it carries the news, sender, hops taken)
        let mut queue: VecDeque<(usize, bool, usize, u8)> = (0..n)
            .filter(|p| !dead[*p])
            .map(|p| (p, informed[p], p, 0))
            .collect();
        let mut seen: HashSet<(usize, usize)> = HashSet::new();
        while let Some((origin, carries, sender, hops)) = queue.pop_front() {
            let exclude = [&ids[origin], &ids[sender]];
            let targets = samplers[sender].draw(config.fanout, &exclude, &mut rng);
            for t in targets.chosen {
                let t = index[&t];
                if dead[t] || rng.random_bool(config.loss) {
                    continue;
                }
                load[t] += 1;
                if t != origin && seen.insert((origin, t)) {
                    next[t] |= carries;
                    if hops < config.ttl {
                        queue.push_back((origin, carries, t, hops + 1));
                    }
                }
            }
        }
        informed = next;
        max_load = max_load.max(load.iter().copied().max().unwrap_or(0));
        total_load += load.iter().map(|l| u64::from(*l)).sum::<u64>();
        let have = (0..n).filter(|p| informed[*p] && !dead[*p]).count();
        if rounds_to_99.is_none() && have * 100 >= live * 99 {
            rounds_to_99 = Some(round);
        }
        if have == live {
            rounds_to_100 = Some(round);
            break;
        }
    }
    SimRun {
        rounds_to_99,
        rounds_to_100,
        max_load,
        mean_load: total_load as f64 / (live * rounds).max(1) as f64,
    }
}

/// Many runs, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub runs: usize,
    /// Rounds to 99 %: median, 95th percentile, worst (`None`: some run never got there).
    pub to_99: [Option<usize>; 3],
    pub to_100: [Option<usize>; 3],
    /// The worst run's most envelopes to one peer in one round, and that over the mean.
    pub max_load: u32,
    pub max_over_mean: f64,
}

fn percentiles(mut xs: Vec<Option<usize>>) -> [Option<usize>; 3] {
    // `None` (never reached) sorts last, as the worst outcome.
    xs.sort_by_key(|x| x.unwrap_or(usize::MAX));
    let at = |q: f64| {
        let i = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len()) - 1;
        xs[i]
    };
    [at(0.5), at(0.95), xs.last().copied().flatten()]
}

pub fn summarise(config: &SimConfig, seeds: std::ops::Range<u64>) -> Summary {
    let runs: Vec<SimRun> = seeds.map(|s| run(config, s)).collect();
    Summary {
        runs: runs.len(),
        to_99: percentiles(runs.iter().map(|r| r.rounds_to_99).collect()),
        to_100: percentiles(runs.iter().map(|r| r.rounds_to_100).collect()),
        max_load: runs.iter().map(|r| r.max_load).max().unwrap_or(0),
        max_over_mean: runs
            .iter()
            .map(|r| f64::from(r.max_load) / r.mean_load.max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_deterministic_and_reach_every_live_peer() {
        let mut config = SimConfig::new(200, Weighting::Trust);
        config.loss = 0.1;
        config.dead = 0.1;
        let a = run(&config, 3);
        assert_eq!(a, run(&config, 3), "same seed, same run");
        assert!(a.rounds_to_100.is_some(), "{a:?}");
        assert!(a.rounds_to_99 <= a.rounds_to_100);
        // Every live peer pushes 3 a round, 10% lost, 10% to the dead: about 2.4 received each.
        assert!((2.0..2.8).contains(&a.mean_load), "{a:?}");
    }

    #[test]
    fn forwarding_spreads_faster_than_pushing_alone() {
        let push = SimConfig::new(300, Weighting::Uniform);
        let forward = SimConfig { ttl: 1, ..push };
        let p = summarise(&push, 0..5);
        let f = summarise(&forward, 0..5);
        assert!(f.to_100[0] < p.to_100[0], "{f:?} vs {p:?}");
    }
}
