//! Figures for benchmark reports, defined once so that a p99 means the same in every bench.

use std::cmp::Ordering;

/// The `p` quantile (`p` from 0 to 1) of `sorted` (ascending), by nearest rank: the sample at
/// index `round(p × (n − 1))`. No samples give NaN, which a JSON report shows as `null`: a
/// missing figure, not a made-up one.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Sorted by whichever comparison the caller likes; NaNs, which compare to nothing, pass.
    debug_assert!(
        sorted.is_sorted_by(|a, b| a.partial_cmp(b) != Some(Ordering::Greater)),
        "percentile takes sorted samples"
    );
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    // `as usize` saturates: a p below 0 (or NaN) is the first sample; `min` caps one above 1.
    let i = (last as f64 * p).round() as usize;
    sorted[i.min(last)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        #[track_caller]
        fn check(sorted: &[f64], p: f64, expect: f64) {
            assert_eq!(percentile(sorted, p), expect, "p{p} of {sorted:?}");
        }
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 3.0);
        check(&hundred, 0.5, 51.0); // index 49.5 rounds away from zero
        check(&hundred, 0.95, 95.0); // index 94.05
        check(&hundred, 0.99, 99.0); // index 98.01
        check(&[10.0, 20.0], 0.5, 20.0);
        check(&[7.0], 0.99, 7.0);
        check(&[1.0, 2.0, 3.0], 0.0, 1.0);
        check(&[1.0, 2.0, 3.0], 1.0, 3.0);
        check(&[1.0, 2.0, 3.0], 1.5, 3.0);
        check(&[1.0, 2.0, 3.0], -1.0, 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
