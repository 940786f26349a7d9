//! Summary math shared by the demo and the scheduler benchmark: Jain's fairness index, shares of
//! engine time, entitlements per policy and latency percentiles.

use crate::driver::Policy;

/// Jain's fairness index `(Σx)² / (n·Σx²)` of `xs`: 1 when all are equal, `1/n` when one takes
/// everything. `None` when empty or when every value is zero (fairness is undefined).
pub fn jain_index(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return None;
    }
    let sum: f64 = xs.iter().sum();
    let sum_sq: f64 = xs.iter().map(|x| x * x).sum();
    if sum_sq <= 0.0 {
        return None;
    }
    Some(sum * sum / (xs.len() as f64 * sum_sq))
}

/// Each value's fraction of the total (all zero when the total is zero).
pub fn shares(values: &[u64]) -> Vec<f64> {
    let total: u128 = values.iter().map(|&v| u128::from(v)).sum();
    values
        .iter()
        .map(|&v| {
            if total == 0 {
                0.0
            } else {
                v as f64 / total as f64
            }
        })
        .collect()
}

/// The fraction of device time each vGPU is entitled to under `policy` when every vGPU is
/// created and `weights` are the type weights: `1/N` for equal-share (and for best-effort when
/// all are busy), `w/Σw` for fixed-share.
pub fn entitlements(policy: Policy, weights: &[u32]) -> Vec<f64> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    match policy {
        Policy::FixedShare => {
            let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
            weights
                .iter()
                .map(|&w| f64::from(w.max(1)) / total as f64)
                .collect()
        }
        Policy::BestEffort | Policy::EqualShare => vec![1.0 / n as f64; n],
    }
}

/// Jain's index of shares normalized by entitlement (`share / entitled`), so a weighted split that
/// matches its weights scores 1. Entries with a zero entitlement are skipped.
pub fn weighted_jain(shares: &[f64], entitled: &[f64]) -> Option<f64> {
    let xs: Vec<f64> = shares
        .iter()
        .zip(entitled)
        .filter(|(_, &e)| e > 0.0)
        .map(|(&s, &e)| s / e)
        .collect();
    jain_index(&xs)
}

/// The largest `|share − entitled|` (a fraction, not percent).
pub fn max_share_error(shares: &[f64], entitled: &[f64]) -> f64 {
    shares
        .iter()
        .zip(entitled)
        .map(|(s, e)| (s - e).abs())
        .fold(0.0, f64::max)
}

/// The `p`-th percentile (nearest rank, 0..=100) of `samples`, sorting them in place; 0 when
/// empty.
pub fn percentile_sorting(samples: &mut [u64], p: u32) -> u64 {
    samples.sort_unstable();
    percentile_sorted(samples, p)
}

/// The `p`-th percentile (nearest rank, 0..=100) of already sorted `sorted`; 0 when empty.
pub fn percentile_sorted(sorted: &[u64], p: u32) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank: ceil(p/100 · n), 1-based.
    let n = sorted.len() as u64;
    let rank = (u64::from(p.min(100)) * n).div_ceil(100).max(1);
    let index = usize::try_from(rank - 1).unwrap_or(usize::MAX);
    sorted.get(index).or(sorted.last()).copied().unwrap_or(0)
}

/// Worst-case queue wait of a vGPU that just became ready: every other vGPU may run one slice
/// first, plus the longest non-preemptible chunk (taken as 1 ms).
pub fn wait_bound_ns(other_slices_us: &[u32]) -> u64 {
    other_slices_us
        .iter()
        .map(|&us| u64::from(us) * 1000)
        .sum::<u64>()
        .saturating_add(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn jain_extremes_and_known_values() {
        assert!(close(jain_index(&[1.0, 1.0, 1.0, 1.0]).unwrap(), 1.0));
        assert!(close(jain_index(&[5.0, 0.0, 0.0, 0.0]).unwrap(), 0.25));
        // (1+2)² / (2·(1+4)) = 9/10.
        assert!(close(jain_index(&[1.0, 2.0]).unwrap(), 0.9));
        // Scale invariant.
        assert!(close(
            jain_index(&[3.0, 6.0]).unwrap(),
            jain_index(&[1.0, 2.0]).unwrap()
        ));
        assert_eq!(jain_index(&[]), None);
        assert_eq!(jain_index(&[0.0, 0.0]), None);
        assert_eq!(jain_index(&[f64::NAN, 1.0]), None);
        assert_eq!(jain_index(&[-1.0, 1.0]), None);
    }

    #[test]
    fn shares_and_entitlements() {
        let s = shares(&[100, 300, 0, 600]);
        assert!(close(s[0], 0.1) && close(s[1], 0.3) && close(s[2], 0.0) && close(s[3], 0.6));
        assert_eq!(shares(&[0, 0]), vec![0.0, 0.0]);
        assert!(close(shares(&[u64::MAX, u64::MAX])[0], 0.5));

        let fixed = entitlements(Policy::FixedShare, &[1, 1, 2, 4]);
        assert_eq!(fixed, vec![0.125, 0.125, 0.25, 0.5]);
        let equal = entitlements(Policy::EqualShare, &[1, 1, 2, 4]);
        assert_eq!(equal, vec![0.25; 4]);
        assert!(entitlements(Policy::BestEffort, &[]).is_empty());
        // Weight 0 counts as 1, as in the scheduler.
        assert_eq!(entitlements(Policy::FixedShare, &[0, 1]), vec![0.5, 0.5]);
    }

    #[test]
    fn weighted_jain_and_error() {
        let entitled = entitlements(Policy::FixedShare, &[1, 2, 4]);
        let exact = [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0];
        assert!(close(weighted_jain(&exact, &entitled).unwrap(), 1.0));
        assert!(max_share_error(&exact, &entitled) < 1e-12);
        // An equal split under 1:2:4 weights is unfair and off by 4/7 − 1/3.
        let equal = [1.0 / 3.0; 3];
        assert!(weighted_jain(&equal, &entitled).unwrap() < 0.8);
        assert!(close(
            max_share_error(&equal, &entitled),
            4.0 / 7.0 - 1.0 / 3.0
        ));
        assert_eq!(weighted_jain(&[0.5], &[0.0]), None);
    }

    #[test]
    fn percentiles_and_bound() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile_sorting(&mut v, 50), 50);
        assert_eq!(percentile_sorted(&v, 99), 99);
        assert_eq!(percentile_sorted(&v, 100), 100);
        assert_eq!(percentile_sorted(&v, 0), 1);
        assert_eq!(percentile_sorted(&[], 99), 0);
        assert_eq!(percentile_sorted(&[7], 99), 7);
        assert_eq!(wait_bound_ns(&[2000, 2000, 2000]), 7_000_000);
        assert_eq!(wait_bound_ns(&[]), 1_000_000);
    }
}
