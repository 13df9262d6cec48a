//! Trust-weighted fanout: up to `fanout` distinct peers, never self, never a stale or `down`
//! peer, drawn without replacement with probability following their weight.
//!
//! A peer's weight is its trust, capped (so no peer is flooded however trusted it is), mixed
//! with a uniform share (so every live peer has a chance, however young):
//! `w = (1 - mix) * min(trust, cap) / Σ min(trust, cap) + mix / n`. Trust 0 counts as 0 in the
//! first term, never as a default. Sampling is Efraimidis–Spirakis (each candidate draws
//! `u^(1/w)`, the largest keys win), which gives exactly "pick one in proportion to weight, remove
//! it, repeat".

use mesh_types::{Health, PeerId, UnixMillis};
use rand::{Rng, RngExt as _};

/// A peer the round could push to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: PeerId,
    /// In [0, 1]; anything else (NaN, negative) counts as 0.
    pub trust: f64,
    pub last_seen_ms: UnixMillis,
    /// The health of our link to it, if we have one (`down` excludes it).
    pub link: Option<Health>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionConfig {
    pub fanout: usize,
    /// Peers not seen for longer than this are stale and skipped.
    pub stale_after_ms: u64,
    /// Share of the weight spread uniformly over eligible peers, in [0, 1].
    pub mix: f64,
    /// Trust above this counts as this much.
    pub trust_cap: f64,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            fanout: 3,
            stale_after_ms: 10 * 60 * 1000,
            mix: 0.1,
            trust_cap: 0.5,
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
    let capped = |c: &Candidate| {
        if c.trust.is_finite() && c.trust > 0.0 {
            c.trust.min(config.trust_cap)
        } else {
            0.0
        }
    };
    let total: f64 = live.iter().map(|c| capped(c)).sum();
    let n = live.len() as f64;
    let mix = config.mix.clamp(0.0, 1.0);
    // With no trust anywhere, the uniform share is all there is.
    let (mix, total) = if total > 0.0 {
        (mix, total)
    } else {
        (1.0, 1.0)
    };
    live.iter()
        .map(|c| (c.id.clone(), (1.0 - mix) * capped(c) / total + mix / n))
        .collect()
}

/// The first listing of each id wins: a duplicate in the input must not double a peer's chance.
fn dedup(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut seen = std::collections::HashSet::new();
    candidates.iter().filter(|c| seen.insert(&c.id)).collect()
}

/// Chooses `min(fanout, eligible)` distinct peers for a round.
pub fn select(
    candidates: &[Candidate],
    me: &PeerId,
    now_ms: UnixMillis,
    config: &SelectionConfig,
    rng: &mut impl Rng,
) -> Selection {
    let weighted = weights(candidates, me, now_ms, config);
    let eligible = weighted.len();
    let mut keyed: Vec<(f64, PeerId)> = weighted
        .into_iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(id, w)| {
            // u in (0, 1]; ln(u) / w orders like u^(1/w) without underflow for small w.
            let u: f64 = 1.0 - rng.random::<f64>();
            (u.ln() / w, id)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    Selection {
        chosen: keyed
            .into_iter()
            .take(config.fanout)
            .map(|(_, id)| id)
            .collect(),
        eligible,
    }
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
    fn weights_mix_cap_and_keep_zero_trust_at_the_uniform_share() {
        let config = SelectionConfig::default(); // mix 0.1, cap 0.5
        let cands = vec![peer("a", 0.0), peer("b", 0.25), peer("c", 0.9)];
        let w = weights(&cands, &me(), NOW, &config);
        let get = |n: &str| w.iter().find(|(id, _)| id.as_str() == n).unwrap().1;
        let total: f64 = w.iter().map(|(_, x)| x).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // c is capped at 0.5: b : c trust shares are 0.25 : 0.5.
        assert!(
            (get("a") - 0.1 / 3.0).abs() < 1e-12,
            "zero trust gets only the mix"
        );
        assert!((get("b") - (0.9 * 0.25 / 0.75 + 0.1 / 3.0)).abs() < 1e-12);
        assert!((get("c") - (0.9 * 0.5 / 0.75 + 0.1 / 3.0)).abs() < 1e-12);
        // No trust anywhere: uniform.
        let flat = weights(&[peer("x", 0.0), peer("y", f64::NAN)], &me(), NOW, &config);
        assert!(flat.iter().all(|(_, w)| (w - 0.5).abs() < 1e-12));
    }

    /// Chi-square critical value for 9 degrees of freedom at p = 0.001.
    const CHI2_9_P001: f64 = 27.877;

    #[test]
    fn first_picks_follow_the_weights_over_a_million_draws() {
        let config = SelectionConfig {
            trust_cap: 1.0,
            ..SelectionConfig::default()
        };
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
