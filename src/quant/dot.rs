//! Dot products for the quantizer's CPU arithmetic: GPTQ's factorizations, SmoothQuant's
//! output errors, the mixed-precision Hessian proxy. Sixteen running sums (one sum waits on
//! each add: four times slower at n = 1536, fc2 of a ViT-S), in AVX registers where the CPU
//! has them, since the portable build stops at SSE2. The sums and their order are the same
//! either way (no fused multiply-adds), so results do not depend on the CPU.

use std::ops::{Add, Mul};

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_avx(a, b) };
    }
    lanes(a, b)
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_f32_avx(a, b) };
    }
    lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f64], b: &[f64]) -> f64 {
    lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_f32_avx(a: &[f32], b: &[f32]) -> f32 {
    lanes(a, b)
}

#[inline(always)]
fn lanes<T: Copy + Default + Add<Output = T> + Mul<Output = T>>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 16;
    let mut acc = [T::default(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::default(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = acc[l] + acc[l + width];
        }
    }
    acc[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_match_the_plain_sum() {
        for n in [0, 1, 15, 16, 17, 100, 1537] {
            let a: Vec<f64> = (0..n).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 104729) % 11) as f64 - 5.0).collect();
            // Small integers: every partial sum is exact, so any order gives the plain sum.
            let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), want, "n={n}");
            assert_eq!(lanes(&a, &b), want, "n={n}");
            let (af, bf): (Vec<f32>, Vec<f32>) = (a.iter().map(|&v| v as f32).collect(), b.iter().map(|&v| v as f32).collect());
            assert_eq!(dot_f32(&af, &bf), want as f32, "n={n}");
        }
    }
}
