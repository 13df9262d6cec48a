//! Per-peer gossip rate limits derived from trust: a peer may send us, and we send it, at most
//! `min + trust × (max − min)` envelopes a minute, with bursts of half a minute's worth (at
//! least a round's fanout and its forwards). The sender enforces it per target, the receiver per
//! sender; what is over the limit is refused with `rate_limited` and audited, never dropped
//! silently.

use mesh_types::rate::Quota;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Envelopes a minute for a peer with trust 0 (a newcomer must still be heard).
    pub min_per_minute: f64,
    /// Envelopes a minute for a peer with trust 1.
    pub max_per_minute: f64,
    /// The smallest burst.
    pub min_burst: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            min_per_minute: 12.0,
            max_per_minute: 120.0,
            min_burst: 8.0,
        }
    }
}

/// The quota for a peer with `trust` (anything outside [0, 1], or NaN, counts as 0).
pub fn quota(trust: f64, config: &RateConfig) -> Quota {
    let t = if trust.is_finite() {
        trust.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let per_minute = config.min_per_minute + t * (config.max_per_minute - config.min_per_minute);
    Quota::new(per_minute / 60.0, (per_minute / 2.0).max(config.min_burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_types::rate::Keyed;
    use std::time::Duration;

    #[test]
    fn more_trust_buys_more_envelopes_and_zero_trust_still_some() {
        let c = RateConfig::default();
        let (low, high) = (quota(0.0, &c), quota(1.0, &c));
        assert!((low.rate() * 60.0 - 12.0).abs() < 1e-9);
        assert!((high.rate() * 60.0 - 120.0).abs() < 1e-9);
        assert_eq!((low.burst(), high.burst()), (8.0, 60.0));
        assert_eq!(quota(f64::NAN, &c), low);
        assert_eq!(quota(7.0, &c), high);
        // A burst's worth passes, the next is refused, and a token comes back in 5 s at trust 0.
        let mut k: Keyed<&str> = Keyed::new(low);
        for _ in 0..8 {
            assert!(k.check_with(&"p", low, Duration::ZERO).is_ok());
        }
        assert_eq!(
            k.check_with(&"p", low, Duration::ZERO),
            Err(Duration::from_secs(5))
        );
    }
}
