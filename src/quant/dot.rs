//! Dot products for the quantizer's CPU arithmetic: GPTQ's factorizations, SmoothQuant's
//! output errors, the mixed-precision Hessian proxy. Sixteen running sums (one sum waits on
//! each add: four times slower at n = 1536, fc2 of a ViT-S), in AVX registers where the CPU
//! has them, since the portable build stops at SSE2. The sums and their order are the same
//! either way (no fused multiply-adds), so results do not depend on the CPU. And the f64
//! matrix product (`gemm`) for XᵀX and the rotation decisions' output errors.

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

/// C[m×n] += A[m×k]·B[k×n] in f64, each operand given as (values, row stride, column stride)
/// and C's rows `ldc` apart: `matrixmultiply`'s blocked, threaded kernel, bounds-checked. Call
/// it from one thread at a time: its workers spin when products run side by side in our own
/// threads (measured in the CPU ViT: 540 K context switches in one pass).
pub fn gemm(m: usize, k: usize, n: usize, a: (&[f64], usize, usize), b: (&[f64], usize, usize), c: &mut [f64], ldc: usize) {
    if m * n * k == 0 {
        return;
    }
    let last = |(_, rs, cs): (&[f64], usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(a, m, k) < a.0.len() && last(b, k, n) < b.0.len() && (m - 1) * ldc + n <= c.len() && n <= ldc, "gemm: operands too small for {m}×{k}·{k}×{n}");
    // SAFETY: every element the strides reach was bounds-checked above, and C is exclusive.
    unsafe {
        matrixmultiply::dgemm(m, k, n, 1.0, a.0.as_ptr(), a.1 as isize, a.2 as isize, b.0.as_ptr(), b.1 as isize, b.2 as isize, 1.0, c.as_mut_ptr(), ldc as isize, 1);
    }
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

    #[test]
    fn gemm_adds_the_strided_product() {
        // A = Xᵀ of a row-major X [5×3] (strides 1, 3), B row-major [5×2] inside rows of 4,
        // C [3×2] inside rows of 6 at an offset, holding ones beforehand.
        let (m, k, n) = (3, 5, 2);
        let x: Vec<f64> = (0..k * m).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * 4).map(|i| (i as f64 * 0.71).cos()).collect();
        let mut c = vec![1.0; 2 + (m - 1) * 6 + n];
        gemm(m, k, n, (&x, 1, m), (&b, 4, 1), &mut c[2..], 6);
        for i in 0..m {
            for j in 0..n {
                let want = 1.0 + (0..k).map(|r| x[r * m + i] * b[r * 4 + j]).sum::<f64>();
                assert!((c[2 + i * 6 + j] - want).abs() < 1e-12, "{i},{j}: {} vs {want}", c[2 + i * 6 + j]);
            }
        }
        assert_eq!(c[..2], [1.0, 1.0]);
        assert!(std::panic::catch_unwind(|| gemm(m, k, n, (&x[1..], 1, m), (&b, 4, 1), &mut [0.0; 6], 2)).is_err());
    }
}
