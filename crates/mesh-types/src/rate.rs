//! Token buckets, sans-IO: `rate` tokens a second, at most `burst` saved up, with the time
//! passed in (a `Duration` since any fixed start). The proxy limits requests with them and the
//! workers limit gossip per peer (mesh-gossip derives those quotas from trust).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// A bucket's rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    rate: f64,
    burst: f64,
}

impl Quota {
    /// `rate` tokens a second (more than 0), at most `burst` (1 or more) saved up.
    pub fn new(rate: f64, burst: f64) -> Self {
        Quota {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                f64::MIN_POSITIVE
            },
            burst: if burst.is_finite() {
                burst.max(1.0)
            } else {
                1.0
            },
        }
    }

    /// `per_second` tokens a second, at most `burst` saved up (each at least 1), for constants.
    pub const fn per_second_const(per_second: u32, burst: u32) -> Self {
        let rate = if per_second == 0 { 1 } else { per_second };
        let burst = if burst == 0 { 1 } else { burst };
        Quota {
            rate: rate as f64,
            burst: burst as f64,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// `per_second` a second, with bursts of twice that.
    pub fn per_second(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Quota {
            rate,
            burst: 2.0 * rate,
        }
    }

    /// A full bucket, as of `now`.
    pub fn bucket(&self, now: Duration) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    /// Takes a token from `bucket`, or says how long until one is there.
    pub fn take(&self, bucket: &mut Bucket, now: Duration) -> Result<(), Duration> {
        let elapsed = now.saturating_sub(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now.max(bucket.at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Whether `bucket` would be full by `now`: it then says nothing a new bucket would not.
    fn is_full(&self, bucket: &Bucket, now: Duration) -> bool {
        bucket.tokens + now.saturating_sub(bucket.at).as_secs_f64() * self.rate >= self.burst
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Duration,
}

/// One bucket per key. Buckets that have refilled are dropped (a new one would be the same), so
/// memory follows the clients active in the last few seconds, not every client ever seen.
#[derive(Debug)]
pub struct Keyed<K> {
    quota: Quota,
    /// Each key's bucket and the quota it was last checked with.
    buckets: HashMap<K, (Quota, Bucket)>,
    /// Prune when the map reaches this size (doubled after each prune that frees little).
    prune_at: usize,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(quota: Quota) -> Self {
        Keyed {
            quota,
            buckets: HashMap::new(),
            prune_at: 1024,
        }
    }

    /// Takes a token from `key`'s bucket under the default quota.
    pub fn check(&mut self, key: &K, now: Duration) -> Result<(), Duration> {
        self.check_with(key, self.quota, now)
    }

    /// Takes a token from `key`'s bucket under `quota` (per-key quotas, such as ones derived
    /// from a peer's trust; a changed quota applies to the tokens saved so far).
    pub fn check_with(&mut self, key: &K, quota: Quota, now: Duration) -> Result<(), Duration> {
        if self.buckets.len() >= self.prune_at {
            self.buckets.retain(|_, (q, b)| !q.is_full(b, now));
            self.prune_at = (self.buckets.len() * 2).max(1024);
        }
        let (q, bucket) = self
            .buckets
            .entry(key.clone())
            .or_insert_with(|| (quota, quota.bucket(now)));
        *q = quota;
        bucket.tokens = bucket.tokens.min(quota.burst);
        quota.take(bucket, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let q = Quota::per_second(2);
        let mut b = q.bucket(Duration::ZERO);
        for _ in 0..4 {
            assert!(
                q.take(&mut b, Duration::ZERO).is_ok(),
                "burst of twice the rate"
            );
        }
        assert_eq!(
            q.take(&mut b, Duration::ZERO),
            Err(Duration::from_millis(500))
        );
        assert!(q.take(&mut b, Duration::from_millis(500)).is_ok());
        assert!(q.take(&mut b, Duration::from_millis(500)).is_err());
        // A long rest saves up no more than the burst.
        let later = Duration::from_secs(60);
        let taken = (0..10).filter(|_| q.take(&mut b, later).is_ok()).count();
        assert_eq!(taken, 4);
    }

    #[test]
    fn idle_keys_are_forgotten_only_once_refilled() {
        let mut k = Keyed::new(Quota::per_second(1));
        for i in 0..1024u32 {
            assert!(k.check(&i, Duration::ZERO).is_ok());
        }
        assert_eq!(k.len(), 1024);
        // Every bucket has one of two tokens left: not full yet, nothing is dropped.
        assert!(k.check(&5000, Duration::ZERO).is_ok());
        assert_eq!(k.len(), 1025);
        // A second later they are full again and go; only the live one stays.
        for i in 0..2048u32 {
            let _ = k.check(&(10_000 + i), 3 * S);
        }
        assert!(k.len() < 2048 + 1, "{}", k.len());
        assert!(k.check(&10_000, 3 * S).is_ok());
    }

    #[test]
    fn per_key_quotas_apply_to_their_own_key() {
        let mut k: Keyed<&str> = Keyed::new(Quota::per_second(100));
        let slow = Quota::new(0.5, 1.0);
        assert!(k.check_with(&"slow", slow, Duration::ZERO).is_ok());
        assert_eq!(
            k.check_with(&"slow", slow, Duration::ZERO),
            Err(Duration::from_secs(2))
        );
        assert!(k.check(&"fast", Duration::ZERO).is_ok());
        // Lowering a quota caps what was saved under the old one.
        let mut k: Keyed<&str> = Keyed::new(Quota::per_second(100));
        assert!(k.check(&"p", Duration::ZERO).is_ok());
        assert!(k.check_with(&"p", slow, Duration::ZERO).is_ok());
        assert!(k.check_with(&"p", slow, Duration::ZERO).is_err());
    }
}
