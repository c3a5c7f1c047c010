//! SVDQuant's low-rank branch (Li et al., 2024): after smoothing has moved the activations'
//! outliers into the weights, a rank-R branch `up · down` (kept in f32) absorbs the weight
//! matrix's largest singular directions, so only the residual `W − up·down`, with a much smaller
//! range, is quantized to 4 bits. The Linear then computes `x·downᵀ·upᵀ + Q(x)·R̂ᵀ`
//! (`kernels::w4a8::LowRank`).
//!
//! The top-R subspace comes from subspace iteration on W·Wᵀ with a few extra columns, then a
//! Rayleigh–Ritz step (a Jacobi eigensolver on the small projected matrix): the best rank-R
//! approximation in Frobenius norm up to the iteration's convergence, in f64, deterministic.

use crate::{invalid, Result};

/// Extra columns carried by the iteration (they speed up convergence of the R-th direction).
const OVERSAMPLE: usize = 8;
/// Subspace iterations: the error of the R-th direction shrinks as (σ_{R+p+1}/σ_R)^(2·iters).
const ITERS: usize = 12;

/// The low-rank branch of `w` [rows, cols]: (up [rows, rank] with orthonormal columns,
/// down [rank, cols] = upᵀ·w), so that up·down is w's projection on its top-`rank` left
/// singular vectors.
pub fn low_rank(w: &[f32], rows: usize, cols: usize, rank: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if rank == 0 || rank > rows.min(cols) {
        invalid!("low-rank branch of rank {rank}: a {rows}×{cols} matrix takes 1 to {}", rows.min(cols));
    }
    if w.len() != rows * cols || w.iter().any(|v| !v.is_finite()) {
        invalid!("low-rank branch: {} values (want {rows}×{cols}), or some not finite", w.len());
    }
    let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let p = (rank + OVERSAMPLE).min(rows);
    // Q [rows, p], column-major (column j at q[j * rows..]), from fixed pseudo-random values.
    let mut q: Vec<f64> = crate::synthetic::uniform(rows * p, 0x5d5, 1.0).into_iter().map(f64::from).collect();
    orthonormalize(&mut q, rows, p);
    for _ in 0..ITERS {
        let b = project(&wd, rows, cols, &q, p); // Qᵀ W [p, cols]
        // Q ← orth(W · (Qᵀ W)ᵀ) = orth(W Wᵀ Q).
        for j in 0..p {
            for r in 0..rows {
                q[j * rows + r] = (0..cols).map(|c| wd[r * cols + c] * b[j * cols + c]).sum();
            }
        }
        orthonormalize(&mut q, rows, p);
    }
    // Rayleigh–Ritz: the eigenvectors of (QᵀW)(QᵀW)ᵀ rotate Q onto the singular directions.
    let b = project(&wd, rows, cols, &q, p);
    let mut c = vec![0f64; p * p];
    for i in 0..p {
        for j in 0..p {
            c[i * p + j] = (0..cols).map(|k| b[i * cols + k] * b[j * cols + k]).sum();
        }
    }
    let (vals, vecs) = crate::metrics::sym_eigen(&c, p);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut up = vec![0f32; rows * rank];
    let mut down = vec![0f32; rank * cols];
    for (t, &e) in order.iter().take(rank).enumerate() {
        // Column t of up = Q · v_e; row t of down = v_eᵀ · B.
        for r in 0..rows {
            up[r * rank + t] = (0..p).map(|j| q[j * rows + r] * vecs[j * p + e]).sum::<f64>() as f32;
        }
        for k in 0..cols {
            down[t * cols + k] = (0..p).map(|j| vecs[j * p + e] * b[j * cols + k]).sum::<f64>() as f32;
        }
    }
    Ok((up, down))
}

/// Qᵀ W for column-major Q [rows, p]: [p, cols] row-major.
fn project(w: &[f64], rows: usize, cols: usize, q: &[f64], p: usize) -> Vec<f64> {
    let mut b = vec![0f64; p * cols];
    for j in 0..p {
        for r in 0..rows {
            let qj = q[j * rows + r];
            if qj != 0.0 {
                b[j * cols..(j + 1) * cols].iter_mut().zip(&w[r * cols..(r + 1) * cols]).for_each(|(o, v)| *o += qj * v);
            }
        }
    }
    b
}

/// Modified Gram–Schmidt (twice, for stability) on the columns of column-major q [rows, p]; a
/// column that vanishes (rank-deficient input) is replaced by a unit vector orthogonal to the rest.
fn orthonormalize(q: &mut [f64], rows: usize, p: usize) {
    for j in 0..p {
        for _ in 0..2 {
            for i in 0..j {
                let d: f64 = (0..rows).map(|r| q[i * rows + r] * q[j * rows + r]).sum();
                for r in 0..rows {
                    q[j * rows + r] -= d * q[i * rows + r];
                }
            }
        }
        let n: f64 = (0..rows).map(|r| q[j * rows + r].powi(2)).sum::<f64>().sqrt();
        if n > 1e-300 {
            q[j * rows..(j + 1) * rows].iter_mut().for_each(|v| *v /= n);
        } else {
            // A standard basis vector, orthogonalized against the previous columns.
            q[j * rows..(j + 1) * rows].fill(0.0);
            q[j * rows + j % rows] = 1.0;
            if j > 0 {
                orthonormalize_one(q, rows, j);
            }
        }
    }
}

fn orthonormalize_one(q: &mut [f64], rows: usize, j: usize) {
    for i in 0..j {
        let d: f64 = (0..rows).map(|r| q[i * rows + r] * q[j * rows + r]).sum();
        for r in 0..rows {
            q[j * rows + r] -= d * q[i * rows + r];
        }
    }
    let n: f64 = (0..rows).map(|r| q[j * rows + r].powi(2)).sum::<f64>().sqrt().max(1e-300);
    q[j * rows..(j + 1) * rows].iter_mut().for_each(|v| *v /= n);
}

/// `w − up · down`: what is left for the 4-bit codes.
pub fn residual(w: &[f32], rows: usize, cols: usize, up: &[f32], down: &[f32], rank: usize) -> Vec<f32> {
    let mut out = w.to_vec();
    for r in 0..rows {
        for c in 0..cols {
            let lr: f64 = (0..rank).map(|t| up[r * rank + t] as f64 * down[t * cols + c] as f64).sum();
            out[r * cols + c] = (w[r * cols + c] as f64 - lr) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_low_rank_matrix_and_keeps_its_largest_directions() {
        let (rows, cols, true_rank) = (37, 23, 3);
        let a = crate::synthetic::uniform(rows * true_rank, 1, 1.0);
        let b = crate::synthetic::uniform(true_rank * cols, 2, 1.0);
        let noise = crate::synthetic::uniform(rows * cols, 3, 1e-4);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| (0..true_rank).map(|t| a[i / cols * true_rank + t] * b[t * cols + i % cols]).sum::<f32>() + noise[i])
            .collect();
        let (up, down) = low_rank(&w, rows, cols, true_rank).unwrap();
        let res = residual(&w, rows, cols, &up, &down, true_rank);
        // What is left is the noise (energy ~3e-9 per value), not the rank-3 signal (~1).
        let left = res.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / res.len() as f64;
        assert!(left < 1e-8, "residual energy {left}");
        // Columns of up are orthonormal.
        for i in 0..true_rank {
            for j in 0..true_rank {
                let d: f64 = (0..rows).map(|r| up[r * true_rank + i] as f64 * up[r * true_rank + j] as f64).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5, "{i},{j}: {d}");
            }
        }
        // A larger rank never leaves more behind.
        let err = |k: usize| {
            let (u, d) = low_rank(&w, rows, cols, k).unwrap();
            residual(&w, rows, cols, &u, &d, k).iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
        };
        assert!(err(2) > err(3) && err(3) >= err(5));
        assert!(low_rank(&w, rows, cols, 0).is_err());
        assert!(low_rank(&w, rows, cols, 24).is_err());
    }
}
