//! The buckets of calls' total times that `cpub stats` takes its
//! percentiles from: each execution chunk stores how many of its records
//! fell in each bucket (migration 0019), so a window's percentiles add up
//! chunks instead of splitting every record.
//!
//! A time in microseconds below 32 is a bucket of its own; above, each power
//! of two has 16 buckets of equal width: a bucket is at most 1/16 of its
//! lower bound wide, so a percentile interpolated inside its bucket is
//! within 6.25 % of the exact one (in practice far closer). The same rule
//! in SQL is `execution_total_bucket` (migration 0019), for the records of
//! chunks split at a window's edges; a test checks that both agree.

/// Values below this are buckets of their own (1 µs wide).
const EXACT_BELOW: u64 = 32;

/// How many buckets there are: `bucket(u64::MAX)` is the last.
pub const BUCKETS: usize = 976;

/// The bucket of `us` microseconds: 0–31 for 0–31 µs, then 16 per power of
/// two, up to 975 for the largest `u64`.
pub fn bucket(us: u64) -> u16 {
    if us < EXACT_BELOW {
        return us as u16;
    }
    // The highest set bit, at least 5 here.
    let e = 63 - us.leading_zeros();
    let m = (us >> (e - 4)) & 15;
    // At most 16 × 60 + 15.
    (16 * (e - 3) + m as u32) as u16
}

/// The values bucket `b` holds: its lowest, and how many.
pub fn bounds(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < EXACT_BELOW {
        return (b, 1);
    }
    let e = b / 16 + 3;
    let m = b % 16;
    ((16 + m) << (e - 4), 1 << (e - 4))
}

/// The `q`-quantile (0 to 1) of the values counted in `buckets` ((bucket,
/// count) in bucket order), as `percentile_cont` computes it over the
/// values themselves: the values at ranks ⌊q × (n − 1)⌋ and the one after,
/// interpolated linearly; each value taken as if a bucket's values were
/// spread evenly over it. `None` when nothing is counted.
pub fn quantile(buckets: &[(u16, u64)], q: f64) -> Option<f64> {
    let n: u64 = buckets.iter().map(|&(_, c)| c).sum();
    if n == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let below = rank.floor() as u64;
    let low = value_at(buckets, below.min(n - 1));
    let high = value_at(buckets, (below + 1).min(n - 1));
    Some(low + (high - low) * (rank - below as f64))
}

/// The value of rank `k` (from 0, below the count) among the values
/// counted in `buckets`.
fn value_at(buckets: &[(u16, u64)], k: u64) -> f64 {
    let mut before = 0u64;
    for &(b, count) in buckets {
        if k < before + count {
            let (low, width) = bounds(b);
            if width == 1 {
                return low as f64;
            }
            // The bucket's `count` values spread evenly over it.
            let at = ((k - before) as f64 + 0.5) / count as f64;
            return low as f64 + width as f64 * at;
        }
        before += count;
    }
    // Not reached: `k` is below the count. The last value there is.
    buckets.last().map_or(0.0, |&(b, _)| {
        let (low, width) = bounds(b);
        (low + width - 1) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bounds_of_its_bucket_in_order() {
        let mut values: Vec<u64> = (0..5_000).collect();
        values.extend((0..64).flat_map(|s| {
            let p = 1u64 << s;
            [p - 1, p, p + 1, p.saturating_mul(3) / 2]
        }));
        values.push(u64::MAX);
        values.sort_unstable();
        let mut last = 0;
        for v in values {
            let b = bucket(v);
            let (low, width) = bounds(b);
            assert!(low <= v && v - low < width, "{v} in {b}: {low} + {width}");
            assert!(b >= last, "{v}: bucket {b} after {last}");
            assert!(width == 1 || width * 16 <= low, "{b}: {low} + {width}");
            last = b;
        }
        assert_eq!(usize::from(bucket(u64::MAX)), BUCKETS - 1);
        assert_eq!(
            (bucket(31), bucket(32), bucket(33), bucket(34)),
            (31, 32, 32, 33)
        );
    }

    #[test]
    fn quantiles_rank_as_percentile_cont_within_a_bucket() {
        // Exact buckets: as percentile_cont over 1..=10 and over 700, 780.
        let small: Vec<(u16, u64)> = (1..=10).map(|v| (bucket(v), 1)).collect();
        assert_eq!(quantile(&small, 0.0), Some(1.0));
        assert_eq!(quantile(&small, 0.5), Some(5.5));
        assert_eq!(quantile(&small, 1.0), Some(10.0));
        let two = [(bucket(700), 1), (bucket(780), 1)];
        let p95 = quantile(&two, 0.95).unwrap();
        assert!((p95 - 776.0).abs() <= 776.0 / 16.0, "{p95}");
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[(40, 0)], 0.5), None);
        // 1,000 values spread over 1 ms to 2 ms: within 1/16 of the exact.
        let mut counts = std::collections::BTreeMap::<u16, u64>::new();
        for v in 1_000..2_000u64 {
            *counts.entry(bucket(v)).or_default() += 1;
        }
        let counts: Vec<(u16, u64)> = counts.into_iter().collect();
        for (q, exact) in [(0.5, 1_499.5), (0.95, 1_949.05), (0.99, 1_989.01)] {
            let got = quantile(&counts, q).unwrap();
            assert!(
                (got - exact).abs() <= exact / 16.0,
                "{q}: {got} against {exact}"
            );
        }
    }
}
