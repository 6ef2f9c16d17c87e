//! Choosing a target per request: a weighted sampler over a precomputed
//! cumulative distribution (binary search per draw), Zipf weights, and a
//! small deterministic PRNG so that a seed reproduces a run's target sequence.

/// SplitMix64: tiny, fast, good enough to pick targets; deterministic per seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // 53 high bits → exactly representable fraction.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws an index in `0..len` with probability proportional to its weight.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Cumulative weights normalised so that the last entry is 1.
    cdf: Vec<f64>,
}

impl Sampler {
    /// A sampler over `weights`; `None` when empty, or when a weight is
    /// negative or not finite, or all are zero.
    pub fn weighted(weights: &[f64]) -> Option<Self> {
        if weights.is_empty() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return None;
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w;
                acc / total
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Some(Self { cdf })
    }

    /// Zipf over `n` ranks with exponent `s`: rank `k` (0-based) has weight
    /// `1 / (k + 1)^s`. `s = 0` is uniform.
    pub fn zipf(n: usize, s: f64) -> Option<Self> {
        if !s.is_finite() || s < 0.0 {
            return None;
        }
        let weights: Vec<f64> = (0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)).collect();
        Self::weighted(&weights)
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a sampler has at least one outcome.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        if self.cdf.len() == 1 {
            return 0;
        }
        let u = rng.next_f64();
        // First index whose cumulative weight exceeds u.
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(sampler: &Sampler, seed: u64, draws: usize) -> Vec<usize> {
        let mut rng = Rng::new(seed);
        let mut counts = vec![0; sampler.len()];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn zipf_rank_zero_most_frequent_and_decreasing() {
        let sampler = Sampler::zipf(10, 1.0).unwrap();
        let counts = histogram(&sampler, 7, 200_000);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        for pair in counts.windows(2) {
            assert!(pair[0] > pair[1], "not decreasing: {counts:?}");
        }
        // With s = 1 and n = 10, P(rank 0) = 1 / H(10) ≈ 0.341 and P(rank 1) ≈ 0.171.
        let p0 = counts[0] as f64 / 200_000.0;
        assert!((p0 - 0.3414).abs() < 0.01, "p0 = {p0}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((ratio - 2.0).abs() < 0.1, "ratio = {ratio}");
    }

    #[test]
    fn zipf_is_deterministic_per_seed() {
        let sampler = Sampler::zipf(300, 1.1).unwrap();
        assert_eq!(
            histogram(&sampler, 42, 10_000),
            histogram(&sampler, 42, 10_000)
        );
        assert_ne!(
            histogram(&sampler, 42, 10_000),
            histogram(&sampler, 43, 10_000)
        );
    }

    #[test]
    fn zero_exponent_is_uniform() {
        let sampler = Sampler::zipf(4, 0.0).unwrap();
        for c in histogram(&sampler, 1, 40_000) {
            assert!((9_000..11_000).contains(&c), "{c}");
        }
    }

    #[test]
    fn weights_are_respected_and_zero_weight_never_drawn() {
        let sampler = Sampler::weighted(&[3.0, 0.0, 1.0]).unwrap();
        let counts = histogram(&sampler, 5, 40_000);
        assert_eq!(counts[1], 0);
        let ratio = counts[0] as f64 / counts[2] as f64;
        assert!((ratio - 3.0).abs() < 0.2, "ratio = {ratio}");
    }

    #[test]
    fn bad_weights_refused() {
        assert!(Sampler::weighted(&[]).is_none());
        assert!(Sampler::weighted(&[0.0, 0.0]).is_none());
        assert!(Sampler::weighted(&[1.0, -1.0]).is_none());
        assert!(Sampler::weighted(&[f64::NAN]).is_none());
        assert!(Sampler::zipf(0, 1.0).is_none());
        assert!(Sampler::zipf(3, -1.0).is_none());
    }
}
