//! The comparison metrics every kernel test and quality report uses.

/// Normalized mean squared error: mse(x, reference) / mse(reference, 0), as ggml's
/// test-backend-ops. 0 for identical outputs; 1 for an all-zero output.
pub fn nmse(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "nmse: length mismatch");
    let (mut err, mut norm) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(reference) {
        let d = a as f64 - b as f64;
        err += d * d;
        norm += (b as f64) * (b as f64);
    }
    if norm == 0.0 {
        return if err == 0.0 { 0.0 } else { f64::INFINITY };
    }
    err / norm
}

/// Cosine similarity of two vectors (1 = same direction).
pub fn cosine(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len(), "cosine: length mismatch");
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        xy += a as f64 * b as f64;
        xx += a as f64 * a as f64;
        yy += b as f64 * b as f64;
    }
    if xx == 0.0 || yy == 0.0 {
        return if xx == yy { 1.0 } else { 0.0 };
    }
    xy / (xx.sqrt() * yy.sqrt())
}

/// Relative L1: sum|x - ref| / sum|ref| (SageAttention's quality metric).
pub fn relative_l1(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "relative_l1: length mismatch");
    let (mut d, mut n) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(reference) {
        d += (a as f64 - b as f64).abs();
        n += (b as f64).abs();
    }
    if n == 0.0 { d } else { d / n }
}

/// Signal-to-quantization-noise ratio in dB.
pub fn sqnr_db(x: &[f32], reference: &[f32]) -> f64 {
    -10.0 * nmse(x, reference).log10()
}

/// PSNR in dB of images in [0, 255] (or any range whose peak is `peak`).
pub fn psnr_db(x: &[f32], reference: &[f32], peak: f64) -> f64 {
    assert_eq!(x.len(), reference.len(), "psnr: length mismatch");
    let mse = x.iter().zip(reference).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * (peak * peak / mse).log10()
}

/// Fréchet distance between Gaussians fitted to two sets of `dim`-wide feature rows (FID's
/// formula): ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½). The trace of the square root is the sum of
/// the square roots of the eigenvalues of Σa^½ Σb Σa^½, which is symmetric.
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (mu_a, cov_a) = mean_cov(a, dim);
    let (mu_b, cov_b) = mean_cov(b, dim);
    let sqrt_a = sym_sqrt(&cov_a, dim);
    let middle = matmul(&matmul(&sqrt_a, &cov_b, dim), &sqrt_a, dim);
    let tr_sqrt: f64 = sym_eigenvalues(&middle, dim).iter().map(|&l| l.max(0.0).sqrt()).sum();
    let trace = |m: &[f64]| (0..dim).map(|i| m[i * dim + i]).sum::<f64>();
    let mean_term: f64 = mu_a.iter().zip(&mu_b).map(|(x, y)| (x - y).powi(2)).sum();
    mean_term + trace(&cov_a) + trace(&cov_b) - 2.0 * tr_sqrt
}

fn mean_cov(rows: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() / dim;
    assert!(n >= 2 && rows.len() == n * dim, "frechet_distance: need at least two rows of {dim}");
    let mut mu = vec![0f64; dim];
    for r in rows.chunks(dim) {
        mu.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64 / n as f64);
    }
    let mut cov = vec![0f64; dim * dim];
    for r in rows.chunks(dim) {
        for i in 0..dim {
            let di = r[i] as f64 - mu[i];
            for j in 0..dim {
                cov[i * dim + j] += di * (r[j] as f64 - mu[j]) / (n - 1) as f64;
            }
        }
    }
    (mu, cov)
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: (eigenvalues,
/// eigenvectors as columns). Stops when the off-diagonal norm is below 1e-15 of the matrix's
/// Frobenius norm (relative, so any scale converges alike), or after 60 sweeps (Jacobi
/// converges quadratically: ~10 sweeps for the covariances and Gram matrices used here).
pub(crate) fn sym_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..60 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        if off.sqrt() <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

fn sym_eigenvalues(m: &[f64], n: usize) -> Vec<f64> {
    sym_eigen(m, n).0
}

/// The PSD square root V diag(√λ) Vᵀ of a symmetric matrix (negative rounding noise → 0).
fn sym_sqrt(m: &[f64], n: usize) -> Vec<f64> {
    let (values, v) = sym_eigen(m, n);
    let mut out = vec![0f64; n * n];
    for k in 0..n {
        let s = values[k].max(0.0).sqrt();
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] += v[i * n + k] * s * v[j * n + k];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_distance_of_shifted_and_scaled_data() {
        // a uniform in [-1, 1)³ (covariance I/3); b = 2a + 3: ‖μ‖² = 27 and
        // Tr(Σ + 4Σ − 2·(4Σ²)^½) = Tr Σ = 1, so the distance is 28 up to sampling error.
        let dim = 3;
        let a = crate::synthetic::uniform(30000 * dim, 5, 1.0);
        let b: Vec<f32> = a.iter().map(|&x| 2.0 * x + 3.0).collect();
        let fd = frechet_distance(&a, &b, dim);
        assert!((fd - 28.0).abs() < 0.1, "{fd}");
        assert!(frechet_distance(&a, &a, dim).abs() < 1e-6);
        // A permutation of the coordinates: the same distribution, distance ≈ 0.
        let rotated: Vec<f32> = a.chunks(dim).flat_map(|r| [r[1], r[2], r[0]]).collect();
        assert!(frechet_distance(&a, &rotated, dim) < 0.01);
    }
}
