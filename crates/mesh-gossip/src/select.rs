//! Trust-weighted fanout: up to `fanout` distinct peers, never self, never a stale or `down`
//! peer, drawn without replacement with probability following their weight.
//!
//! A peer's weight is its share of the eligible peers' trust, capped at `max_share` times the
//! uniform share (the excess goes to the others in proportion, so no peer is flooded however
//! trusted it is), mixed with a uniform share (so every live peer has a chance, however young):
//! `w = (1 - mix) * capped_share + mix / n`, never above `max_share / n`. Trust 0 counts as 0
//! in the first term, never as a default. Sampling is Efraimidis–Spirakis (each candidate draws
//! `u^(1/w)`, the largest keys win), which gives exactly "pick one in proportion to weight,
//! remove it, repeat".

use mesh_types::{Health, PeerId, UnixMillis};
use rand::{Rng, RngExt as _};

/// A peer the round could push to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: PeerId,
    /// In [0, 1]; anything else (NaN, negative) counts as 0.
    pub trust: f64,
    pub last_seen_ms: UnixMillis,
    /// The peer's health as far as the link graph knows: its best link's (`down` only when
    /// every link it has is down; that excludes it), `None` when it has no link yet.
    pub link: Option<Health>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionConfig {
    pub fanout: usize,
    /// Peers not seen for longer than this are stale and skipped.
    pub stale_after_ms: u64,
    /// Share of the weight spread uniformly over eligible peers, in [0, 1].
    pub mix: f64,
    /// No peer's weight exceeds this many times the uniform share `1 / n` (1 or more).
    pub max_share: f64,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            fanout: 3,
            stale_after_ms: 10 * 60 * 1000,
            // Both measured by the simulation (docs/BENCHMARKS.md, gossip): with the skew of
            // trust over a real link graph, a smaller mix starves the least trusted peers
            // (99 % coverage took 10-11 rounds at 0.1 with loss) and a larger cap lets hubs
            // take up to 9x the mean load.
            mix: 0.4,
            max_share: 3.0,
        }
    }
}

/// The peers chosen, best key first, and how many were eligible.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub chosen: Vec<PeerId>,
    pub eligible: usize,
}

fn eligible(c: &Candidate, me: &PeerId, now_ms: UnixMillis, config: &SelectionConfig) -> bool {
    &c.id != me
        && c.link != Some(Health::Down)
        && now_ms.saturating_sub(c.last_seen_ms) <= config.stale_after_ms
}

fn trust_of(c: &Candidate) -> f64 {
    if c.trust.is_finite() && c.trust > 0.0 {
        c.trust
    } else {
        0.0
    }
}

/// Shares of `trust` (summing to at most 1), none above `cap`: the excess of a capped peer is
/// given to the uncapped ones in proportion to their trust (water-filling). What cannot be given
/// (every peer with trust is capped) is left out; the caller spreads it uniformly.
fn capped_shares(trust: &[f64], cap: f64) -> Vec<f64> {
    let mut capped = vec![false; trust.len()];
    loop {
        let fixed = capped.iter().filter(|c| **c).count() as f64 * cap;
        let free: f64 = trust
            .iter()
            .zip(&capped)
            .filter(|(_, c)| !**c)
            .map(|(t, _)| t)
            .sum();
        let scale = if free > 0.0 {
            (1.0 - fixed).max(0.0) / free
        } else {
            0.0
        };
        let mut changed = false;
        for (t, c) in trust.iter().zip(capped.iter_mut()) {
            if !*c && t * scale > cap {
                *c = true;
                changed = true;
            }
        }
        if !changed {
            return trust
                .iter()
                .zip(&capped)
                .map(|(t, c)| if *c { cap } else { t * scale })
                .collect();
        }
    }
}

/// The selection weights of the eligible candidates (summing to 1), in their order.
pub fn weights(
    candidates: &[Candidate],
    me: &PeerId,
    now_ms: UnixMillis,
    config: &SelectionConfig,
) -> Vec<(PeerId, f64)> {
    let live: Vec<&Candidate> = dedup(candidates)
        .into_iter()
        .filter(|c| eligible(c, me, now_ms, config))
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let n = live.len() as f64;
    let trust: Vec<f64> = live.iter().map(|c| trust_of(c)).collect();
    // With no trust anywhere, the uniform share is all there is.
    let mix = if trust.iter().any(|t| *t > 0.0) {
        config.mix.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let shares = capped_shares(&trust, config.max_share.max(1.0) / n);
    let unplaced = (1.0 - shares.iter().sum::<f64>()).max(0.0);
    live.iter()
        .zip(shares)
        .map(|(c, share)| {
            let w = (1.0 - mix) * share + (mix + (1.0 - mix) * unplaced) / n;
            (c.id.clone(), w)
        })
        .collect()
}

/// The first listing of each id wins: a duplicate in the input must not double a peer's chance.
fn dedup(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut seen = std::collections::HashSet::new();
    candidates.iter().filter(|c| seen.insert(&c.id)).collect()
}

/// One peer's view of the candidates, weighed once and drawn from many times (a round's
/// forwards, a simulation's thousands of rounds).
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Eligible peers with a weight above zero and the reciprocal of that weight.
    weighted: Vec<(PeerId, f64)>,
    eligible: usize,
}

impl Sampler {
    pub fn new(
        candidates: &[Candidate],
        me: &PeerId,
        now_ms: UnixMillis,
        config: &SelectionConfig,
    ) -> Self {
        let all = weights(candidates, me, now_ms, config);
        let eligible = all.len();
        Sampler {
            weighted: all
                .into_iter()
                .filter(|(_, w)| *w > 0.0)
                .map(|(id, w)| (id, 1.0 / w))
                .collect(),
            eligible,
        }
    }

    pub fn eligible(&self) -> usize {
        self.eligible
    }

    /// Up to `fanout` distinct peers, skipping any in `exclude` (a forward skips whoever sent
    /// it and its origin).
    pub fn draw(&self, fanout: usize, exclude: &[&PeerId], rng: &mut impl Rng) -> Selection {
        let mut keyed: Vec<(f64, &PeerId)> = self
            .weighted
            .iter()
            .filter(|(id, _)| !exclude.contains(&id))
            .map(|(id, inv_w)| {
                // u in (0, 1]; ln(u) / w orders like u^(1/w) without underflow for small w.
                let u: f64 = 1.0 - rng.random::<f64>();
                (u.ln() * inv_w, id)
            })
            .collect();
        let take = fanout.min(keyed.len());
        if take > 0 && take < keyed.len() {
            keyed.select_nth_unstable_by(take - 1, |a, b| b.0.total_cmp(&a.0));
            keyed.truncate(take);
        }
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        Selection {
            chosen: keyed
                .into_iter()
                .take(take)
                .map(|(_, id)| id.clone())
                .collect(),
            eligible: self.eligible,
        }
    }
}

/// Chooses `min(fanout, eligible)` distinct peers for a round.
pub fn select(
    candidates: &[Candidate],
    me: &PeerId,
    now_ms: UnixMillis,
    config: &SelectionConfig,
    rng: &mut impl Rng,
) -> Selection {
    Sampler::new(candidates, me, now_ms, config).draw(config.fanout, &[], rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW: UnixMillis = 1_800_000_000_000;

    fn peer(name: &str, trust: f64) -> Candidate {
        Candidate {
            id: PeerId::new(name).unwrap(),
            trust,
            last_seen_ms: NOW,
            link: Some(Health::Up),
        }
    }

    fn me() -> PeerId {
        PeerId::new("me").unwrap()
    }

    #[test]
    fn never_self_never_twice_and_min_of_fanout_and_eligible() {
        let mut rng = StdRng::seed_from_u64(1);
        let config = SelectionConfig::default();
        for n in 0..8 {
            let mut cands: Vec<Candidate> = (0..n)
                .map(|i| peer(&format!("p{i}"), 0.1 * i as f64))
                .collect();
            cands.push(peer("me", 1.0));
            if n > 0 {
                cands.push(cands[0].clone()); // listed twice
            }
            for _ in 0..200 {
                let s = select(&cands, &me(), NOW, &config, &mut rng);
                assert_eq!(s.eligible, n);
                assert_eq!(s.chosen.len(), n.min(3));
                assert!(!s.chosen.contains(&me()));
                let mut unique = s.chosen.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), s.chosen.len(), "{:?}", s.chosen);
            }
        }
    }

    #[test]
    fn stale_and_down_peers_are_never_chosen() {
        let mut rng = StdRng::seed_from_u64(2);
        let config = SelectionConfig::default();
        let mut stale = peer("stale", 1.0);
        stale.last_seen_ms = NOW - config.stale_after_ms - 1;
        let mut down = peer("down", 1.0);
        down.link = Some(Health::Down);
        let mut unlinked = peer("unlinked", 0.2);
        unlinked.link = None;
        let cands = vec![stale, down, unlinked, peer("up", 0.2)];
        for _ in 0..1000 {
            let s = select(&cands, &me(), NOW, &config, &mut rng);
            assert_eq!(s.eligible, 2);
            for id in &s.chosen {
                assert!(["unlinked", "up"].contains(&id.as_str()), "{id}");
            }
        }
    }

    #[test]
    fn weights_mix_and_keep_zero_trust_at_the_uniform_share() {
        let config = SelectionConfig {
            mix: 0.1,
            ..SelectionConfig::default()
        }; // the cap (3/3) cannot bind for 3
        let cands = vec![peer("a", 0.0), peer("b", 0.25), peer("c", 0.75)];
        let w = weights(&cands, &me(), NOW, &config);
        let get = |n: &str| w.iter().find(|(id, _)| id.as_str() == n).unwrap().1;
        let total: f64 = w.iter().map(|(_, x)| x).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(
            (get("a") - 0.1 / 3.0).abs() < 1e-12,
            "zero trust gets only the mix"
        );
        assert!((get("b") - (0.9 * 0.25 + 0.1 / 3.0)).abs() < 1e-12);
        assert!((get("c") - (0.9 * 0.75 + 0.1 / 3.0)).abs() < 1e-12);
        // No trust anywhere: uniform.
        let flat = weights(&[peer("x", 0.0), peer("y", f64::NAN)], &me(), NOW, &config);
        assert!(flat.iter().all(|(_, w)| (w - 0.5).abs() < 1e-12));
    }

    #[test]
    fn no_weight_exceeds_the_cap_and_the_excess_goes_in_proportion() {
        let config = SelectionConfig {
            mix: 0.1,
            max_share: 4.0,
            ..SelectionConfig::default()
        }; // at most 4 / n
        // One peer holding almost all trust among 20.
        let mut cands = vec![peer("big", 1.0)];
        cands.extend((0..19).map(|i| peer(&format!("p{i}"), 0.001 * f64::from(i + 1))));
        let w = weights(&cands, &me(), NOW, &config);
        let total: f64 = w.iter().map(|(_, x)| x).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let cap = 4.0 / 20.0;
        assert!(w.iter().all(|(_, x)| *x <= cap + 1e-12), "{w:?}");
        assert!(
            (w[0].1 - (0.9 * cap + 0.1 / 20.0)).abs() < 1e-12,
            "the big peer's trust share sits at the cap"
        );
        // The others keep their trust ratios in the capped term: p1 has twice p0's trust.
        let excess = |i: usize| w[i].1 - 0.1 / 20.0;
        assert!((excess(2) / excess(1) - 2.0).abs() < 1e-9);
        // Random trust vectors: never above the cap, always summing to one.
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..200 {
            let n = rng.random_range(1..40);
            let cands: Vec<Candidate> = (0..n)
                .map(|i| peer(&format!("r{i}"), rng.random::<f64>().powi(6)))
                .collect();
            let w = weights(&cands, &me(), NOW, &config);
            let total: f64 = w.iter().map(|(_, x)| x).sum();
            assert!((total - 1.0).abs() < 1e-9, "{total}");
            let cap = (4.0 / n as f64).max(1.0 / n as f64);
            assert!(w.iter().all(|(_, x)| *x <= cap + 1e-12));
        }
    }

    #[test]
    fn a_sampler_excludes_whom_it_is_told() {
        let cands: Vec<Candidate> = (0..5).map(|i| peer(&format!("p{i}"), 0.5)).collect();
        let sampler = Sampler::new(&cands, &me(), NOW, &SelectionConfig::default());
        let mut rng = StdRng::seed_from_u64(10);
        let (p0, p1) = (PeerId::new("p0").unwrap(), PeerId::new("p1").unwrap());
        for _ in 0..500 {
            let s = sampler.draw(3, &[&p0, &p1], &mut rng);
            assert_eq!(s.chosen.len(), 3);
            assert!(!s.chosen.contains(&p0) && !s.chosen.contains(&p1));
        }
        assert_eq!(sampler.draw(9, &[&p0], &mut rng).chosen.len(), 4);
    }

    /// Chi-square critical value for 9 degrees of freedom at p = 0.001.
    const CHI2_9_P001: f64 = 27.877;

    #[test]
    fn first_picks_follow_the_weights_over_a_million_draws() {
        let config = SelectionConfig::default();
        let cands: Vec<Candidate> = (1..=10)
            .map(|i| peer(&format!("p{i}"), f64::from(i) / 10.0))
            .collect();
        let w = weights(&cands, &me(), NOW, &config);
        let mut rng = StdRng::seed_from_u64(3);
        let draws = 1_000_000;
        let mut counts = vec![0u64; w.len()];
        for _ in 0..draws {
            let s = select(&cands, &me(), NOW, &config, &mut rng);
            let first = w.iter().position(|(id, _)| *id == s.chosen[0]).unwrap();
            counts[first] += 1;
        }
        let chi2: f64 = w
            .iter()
            .zip(&counts)
            .map(|((_, p), &o)| {
                let e = p * f64::from(draws);
                (o as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 < CHI2_9_P001,
            "chi-square {chi2:.2} over 9 degrees of freedom: {counts:?}"
        );
    }

    #[test]
    fn twice_the_trust_is_picked_about_twice_as_often() {
        let config = SelectionConfig {
            mix: 0.0,
            fanout: 1,
            ..SelectionConfig::default()
        };
        let cands = vec![peer("low", 0.2), peer("high", 0.4), peer("other", 0.4)];
        let mut rng = StdRng::seed_from_u64(4);
        let (mut low, mut high) = (0u32, 0u32);
        for _ in 0..200_000 {
            match select(&cands, &me(), NOW, &config, &mut rng).chosen[0].as_str() {
                "low" => low += 1,
                "high" => high += 1,
                _ => {}
            }
        }
        let ratio = f64::from(high) / f64::from(low);
        assert!((1.9..2.1).contains(&ratio), "high/low = {ratio:.3}");
    }
}
