//! Deterministic pseudo-random data for benchmarks, the demo and tests (xorshift64: no `rand`
//! dependency, the same numbers on every platform).

/// A xorshift64 stream of values in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` values in [-scale, scale).
pub fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() * scale).collect()
}

/// Activations like a transformer's: uniform in [-1, 1), every 37th channel (from channel 5)
/// four times larger, and from 3 rows on an all-zero second row (a per-token scale of 0). The
/// integer-activation kernels' checks and tests run on these.
pub fn outlier_activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = uniform(m * k, seed, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i % k % 37 == 5 {
            *v *= 4.0;
        }
    }
    if m >= 3 {
        x[k..2 * k].fill(0.0);
    }
    x
}
