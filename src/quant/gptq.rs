//! GPTQ (Frantar et al., ICLR 2023; `gptq.py` of the reference code): quantize a layer's weight
//! columns one at a time and push each column's rounding error onto the columns not yet
//! quantized, weighted by the inverse Hessian of the layer's output error, H = 2·XᵀX/n over
//! the calibration inputs X. The output error ‖XWᵀ − XŴᵀ‖² is what it minimizes, so inputs that
//! are correlated (as every real layer's are) let later columns cancel earlier errors.
//!
//! As in the reference: dead inputs (H_ii = 0) get H_ii = 1 and a zero weight; dampening
//! λ = 1% of mean(diag H); the upper Cholesky factor of H⁻¹ drives the updates; columns go in
//! blocks of 128 with the update to later blocks applied once per block ("lazy batch"); with
//! act-order the columns go by decreasing H_ii. Group parameters are fixed up front from the
//! original weights (the reference's `static_groups`), because our groups are contiguous
//! columns of the stored row: act-order must not reshuffle which columns share a scale.

use super::rtn::{encode, decode, group_params, Choice, Group};
use super::clip;
use super::dot::{dot, gemm};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, shape_err, Result};

/// The running sum XᵀX of one layer's inputs (rows of width `dim`).
#[derive(Clone, Debug)]
pub struct Hessian {
    pub dim: usize,
    /// XᵀX's upper triangle (and parts of the lower, never read) while accumulating;
    /// `matrix` mirrors it.
    sum: Vec<f64>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(dim: usize) -> Hessian {
        Hessian { dim, sum: vec![0.0; dim * dim], samples: 0 }
    }

    /// Adds input rows (row-major, `dim` wide): XᵀX in f64 through `matrixmultiply`'s
    /// blocked, threaded kernel (call it from one thread at a time), in column panels that
    /// reach down only to the diagonal, so about half of the lower triangle is skipped.
    pub fn add_rows(&mut self, x: &[f32]) -> Result<()> {
        let d = self.dim;
        if d == 0 || !x.len().is_multiple_of(d) {
            shape_err!("hessian: {} values are not rows of width {d}", x.len());
        }
        const PANEL: usize = 128;
        // 1024 rows at a time bound the f64 copy (12 MB at d = 1536).
        for chunk in x.chunks(1024 * d) {
            let rows = chunk.len() / d;
            let x64: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
            for j0 in (0..d).step_by(PANEL) {
                let j1 = (j0 + PANEL).min(d);
                // sum[0..j1, j0..j1] += X[:, 0..j1]ᵀ · X[:, j0..j1]
                gemm(j1, rows, j1 - j0, (&x64, 1, d), (&x64[j0..], d, 1), &mut self.sum[j0..], d);
            }
        }
        self.samples += x.len() / d;
        Ok(())
    }

    /// The Hessian of the rotated inputs H·x (`kernels::hadamard`, blocks of `block`): R·S·R
    /// for the symmetric orthogonal R, from the full symmetric sum.
    pub fn rotated(&self, block: usize) -> Result<Hessian> {
        let d = self.dim;
        if block == 0 || !d.is_multiple_of(block) {
            shape_err!("hessian of width {d}: rotation blocks of {block} do not divide it");
        }
        let mut full = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                full[i * d + j] = self.sum[i * d + j];
                full[j * d + i] = self.sum[i * d + j];
            }
        }
        let norm = 1.0 / (block as f64).sqrt();
        // S·R (each row rotated), then R·(S·R): the result is symmetric, so rotating the rows
        // of its transpose and transposing back is rotating its columns.
        crate::kernels::hadamard::rotate_in_place(&mut full, block, norm);
        let mut t = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                t[j * d + i] = full[i * d + j];
            }
        }
        crate::kernels::hadamard::rotate_in_place(&mut t, block, norm);
        Ok(Hessian { dim: d, sum: t, samples: self.samples })
    }

    /// H = 2·XᵀX / n, full and symmetric.
    pub fn matrix(&self) -> Vec<f64> {
        let (d, k) = (self.dim, 2.0 / self.samples.max(1) as f64);
        let mut h = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                h[i * d + j] = self.sum[i * d + j] * k;
                h[j * d + i] = h[i * d + j];
            }
        }
        h
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// Columns per lazy-update block.
    pub block: usize,
    /// Dampening as a fraction of mean(diag H).
    pub damp: f64,
    pub act_order: bool,
    /// Choose each group's range by the clipping search instead of absmax.
    pub clip: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { block: 128, damp: 0.01, act_order: true, clip: false }
    }
}

/// Lower Cholesky factor of a symmetric positive definite `n×n` matrix, or None.
pub(super) fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = a[i * n + j] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) from one factorization: with P the reversal
/// permutation and P·H·P = L̃L̃ᵀ, H = R·Rᵀ for the upper R = P·L̃·P, so H⁻¹ = R⁻ᵀR⁻¹ and
/// U = R⁻¹ = P·L̃⁻¹·P (upper, positive diagonal: the factor is unique). Forming H⁻¹ and
/// factoring it again, as the reference does, costs about twice the n³ work and squares the
/// condition number on the way.
fn inverse_cholesky_upper(h: &[f64], n: usize) -> Option<Vec<f64>> {
    let reversed: Vec<f64> = (0..n * n).map(|i| h[(n - 1 - i / n) * n + (n - 1 - i % n)]).collect();
    let l = cholesky(&reversed, n)?;
    // L̃⁻¹ by forward substitution, column by column: column c of L̃⁻¹ is column n-1-c of U
    // read from the bottom up.
    let mut u = vec![0.0; n * n];
    let mut col = vec![0.0; n];
    for c in 0..n {
        col[c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s = dot(&l[i * n + c..i * n + i], &col[c..i]);
            col[i] = -s / l[i * n + i];
        }
        for i in c..n {
            u[(n - 1 - i) * n + (n - 1 - c)] = col[i];
        }
    }
    Some(u)
}

/// GPTQ's codes for the row-major `rows × cols` weight `w` given the layer's input Hessian.
pub fn choose(w: &[f32], rows: usize, cols: usize, format: WeightFormat, hessian: &Hessian, opts: GptqOptions) -> Result<Choice> {
    super::rtn::check_format(format)?;
    if rows == 0 || cols == 0 || w.len() != rows * cols {
        shape_err!("gptq: {} values for a {rows}×{cols} matrix", w.len());
    }
    if hessian.dim != cols {
        shape_err!("gptq: the Hessian is {0}×{0} but the matrix has {cols} columns", hessian.dim);
    }
    if hessian.samples == 0 {
        invalid!("gptq: no calibration inputs reached this layer");
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        invalid!("gptq: weight value {} at index {i} is not finite", w[i]);
    }
    let gs = format.group_size(cols);
    let groups = cols.div_ceil(gs);
    let mut h = hessian.matrix();
    let mut wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            (0..rows).for_each(|r| wf[r * cols + i] = 0.0);
        }
    }
    // Static groups: parameters from the (dead-zeroed) original weights.
    let params: Vec<Group> = (0..rows * groups)
        .map(|i| {
            let (r, g) = (i / groups, i % groups);
            let vals: Vec<f32> = (g * gs..((g + 1) * gs).min(cols)).map(|c| wf[r * cols + c] as f32).collect();
            if opts.clip { clip::best_group(format, &vals) } else { group_params(format, &vals, 1.0) }
        })
        .collect();
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    let mut hp: Vec<f64> = (0..cols * cols).map(|i| h[perm[i / cols] * cols + perm[i % cols]]).collect();
    let mut wp: Vec<f64> = (0..rows * cols).map(|i| wf[(i / cols) * cols + perm[i % cols]]).collect();
    let mean_diag = (0..cols).map(|i| hp[i * cols + i]).sum::<f64>() / cols as f64;
    // More dampening until H is numerically positive definite (the reference just fails).
    let mut damp = opts.damp.max(1e-6);
    let u = loop {
        for i in 0..cols {
            hp[i * cols + i] += damp * mean_diag;
        }
        if let Some(u) = inverse_cholesky_upper(&hp, cols) {
            break u;
        }
        for i in 0..cols {
            hp[i * cols + i] -= damp * mean_diag;
        }
        damp *= 10.0;
        if damp > 10.0 {
            invalid!("gptq: the calibration Hessian is not positive definite even with heavy dampening");
        }
    };
    let mut codes = vec![0u32; rows * cols];
    let block = opts.block.max(1);
    let mut err = vec![0f64; rows * block];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        for i in i1..i2 {
            let col = perm[i];
            let d = u[i * cols + i];
            for r in 0..rows {
                let g = params[r * groups + col / gs];
                let v = wp[r * cols + i];
                let code = encode(format, v as f32, g);
                codes[r * cols + col] = code;
                let e = (v - decode(format, code, g) as f64) / d;
                err[r * block + (i - i1)] = e;
                let row = &mut wp[r * cols..(r + 1) * cols];
                row[i + 1..i2].iter_mut().zip(&u[i * cols + i + 1..i * cols + i2]).for_each(|(x, &hij)| *x -= e * hij);
            }
        }
        // The block's errors reach the later columns in one product, four rows at a time so
        // that each row of U streams from cache once per four rows.
        for (w4, e4) in wp.chunks_mut(4 * cols).zip(err.chunks(4 * block)) {
            let n = w4.len() / cols;
            for k in 0..i2 - i1 {
                let urow = &u[(i1 + k) * cols + i2..(i1 + k + 1) * cols];
                let e: [f64; 4] = std::array::from_fn(|q| if q < n { e4[q * block + k] } else { 0.0 });
                if n == 4 {
                    let (a, rest) = w4.split_at_mut(cols);
                    let (b, rest) = rest.split_at_mut(cols);
                    let (c, d) = rest.split_at_mut(cols);
                    for ((((x0, x1), x2), x3), &h) in a[i2..].iter_mut().zip(&mut b[i2..]).zip(&mut c[i2..]).zip(&mut d[i2..]).zip(urow) {
                        *x0 -= e[0] * h;
                        *x1 -= e[1] * h;
                        *x2 -= e[2] * h;
                        *x3 -= e[3] * h;
                    }
                } else {
                    for (q, row) in w4.chunks_mut(cols).enumerate() {
                        row[i2..].iter_mut().zip(urow).for_each(|(x, &h)| *x -= e[q] * h);
                    }
                }
            }
        }
    }
    Ok(Choice { format, rows, cols, codes, groups: params })
}

pub fn gptq(w: &[f32], rows: usize, cols: usize, format: WeightFormat, hessian: &Hessian, opts: GptqOptions) -> Result<PackedMatrix> {
    choose(w, rows, cols, format, hessian, opts)?.pack()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_is_xtx() {
        // Wider than a panel and taller than a chunk, neither a multiple.
        let (d, n) = (131, 1030);
        let x = crate::synthetic::uniform(n * d, 5, 1.0);
        let mut hs = Hessian::new(d);
        hs.add_rows(&x[..7 * d]).unwrap();
        hs.add_rows(&x[7 * d..]).unwrap();
        assert_eq!(hs.samples, n);
        let h = hs.matrix();
        for i in 0..d {
            for j in 0..d {
                let want = 2.0 * (0..n).map(|r| x[r * d + i] as f64 * x[r * d + j] as f64).sum::<f64>() / n as f64;
                assert!((h[i * d + j] - want).abs() <= 1e-12 * want.abs().max(1.0), "{i},{j}: {} vs {want}", h[i * d + j]);
            }
        }
        assert!(hs.add_rows(&x[..d + 1]).is_err());
    }

    #[test]
    fn inverse_cholesky_is_right() {
        for n in [1, 5, 37] {
            let x = crate::synthetic::uniform(40 * n, 3, 1.0);
            let mut hs = Hessian::new(n);
            hs.add_rows(&x).unwrap();
            let h = hs.matrix();
            let u = inverse_cholesky_upper(&h, n).unwrap();
            // Upper with a positive diagonal and UᵀU·H = I: the Cholesky factor of H⁻¹.
            for i in 0..n {
                assert!(u[i * n + i] > 0.0, "n={n}: diagonal {i} is {}", u[i * n + i]);
                assert!((0..i).all(|j| u[i * n + j] == 0.0), "n={n}: row {i} has values below the diagonal");
            }
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|k| (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum::<f64>() * h[k * n + j]).sum();
                    assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "n={n} {i},{j}: {v}");
                }
            }
        }
    }
}
