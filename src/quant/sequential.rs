//! `--method sequential`: GPTQ block after block, each block calibrated on the inputs the
//! already-quantized blocks before it produce, with a target that compensates their error.
//!
//! Plain ("parallel") GPTQ fits every layer to its float inputs X, so the errors of earlier
//! layers pile up unseen. Here a block's layers see X̃, their inputs in the model whose earlier
//! blocks are quantized, and the float output stays the target:
//!
//!   min ‖X·Wᵀ − X̃·Ŵᵀ‖²  =  ‖X̃·(W*ᵀ − Ŵᵀ)‖² + const,   W* = W·(C + λI)ᵀ·(H̃ + λI)⁻¹
//!
//! with H̃ = X̃ᵀX̃ and C = X̃ᵀX (both 2/n-scaled as GPTQ's H, λ its dampening). So GPTQ of the
//! compensated weight W* on H̃ solves the whole objective: the least-squares step re-targets the
//! float weight to the inputs it will really get, and GPTQ rounds that. This is GPTQ's
//! sequential mode plus the asymmetric term of GPTAQ (Li et al., 2025), and lowbit's
//! gradient-free stand-in for the block reconstruction of BRECQ / I&S-ViT, which would need
//! backpropagation through the block (lowbit computes no gradients).
//!
//! The quantized model of the calibration passes has quantized weights and float activations:
//! the compensation covers weight error; activation quantizers still see float inputs.
//! Cost: two forward passes (float and quantized) over the calibration set per block.

use std::collections::HashMap;

use super::calibrate::{Calibration, Layer, Model};
use super::gptq::{cholesky, Hessian};
use crate::formats::PackedMatrix;
use super::recipe::parallel_map;
use crate::{invalid, shape_err, Gpu, Result};

/// The running sum X̃ᵀX of paired input rows (quantized-path rows, float rows).
pub struct Cross {
    dim: usize,
    sum: Vec<f64>,
    samples: usize,
}

impl Cross {
    pub fn new(dim: usize) -> Cross {
        Cross { dim, sum: vec![0.0; dim * dim], samples: 0 }
    }

    /// Adds the outer products of paired rows `x_q[r]` and `x[r]` (both `dim` wide).
    pub fn add_rows(&mut self, x_q: &[f32], x: &[f32]) -> Result<()> {
        let d = self.dim;
        if d == 0 || x_q.len() != x.len() || !x.len().is_multiple_of(d) {
            shape_err!("cross product: {} and {} values are not paired rows of width {d}", x_q.len(), x.len());
        }
        let threads = if d * x.len() < (1 << 22) { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
        let per = d.div_ceil(threads);
        std::thread::scope(|scope| {
            for (t, out) in self.sum.chunks_mut(per * d).enumerate() {
                scope.spawn(move || {
                    let lo = t * per;
                    for (rq, r) in x_q.chunks(d).zip(x.chunks(d)) {
                        for (i, o) in out.chunks_mut(d).enumerate() {
                            let a = rq[lo + i] as f64;
                            if a != 0.0 {
                                o.iter_mut().zip(r).for_each(|(o, &b)| *o += a * b as f64);
                            }
                        }
                    }
                });
            }
        });
        self.samples += x.len() / d;
        Ok(())
    }

    /// C = 2·X̃ᵀX / n, row-major (row i: x̃_i against every x_j).
    pub fn matrix(&self) -> Vec<f64> {
        let k = 2.0 / self.samples.max(1) as f64;
        self.sum.iter().map(|v| v * k).collect()
    }
}

/// W* = W·(C + λI)ᵀ·(H̃ + λI)⁻¹ for the row-major `rows × cols` weight `w`: each row w_r becomes
/// (H̃ + λI)⁻¹·(C + λI)·w_r, λ = `damp` · mean(diag H̃) (GPTQ's dampening, which also pulls W*
/// towards W where the calibration rows say little).
pub fn compensate(w: &[f32], rows: usize, cols: usize, h_q: &Hessian, cross: &Cross, damp: f64) -> Result<Vec<f32>> {
    if w.len() != rows * cols || h_q.dim != cols || cross.dim != cols {
        shape_err!("compensate: a {rows}×{cols} weight with a {0}×{0} Hessian and a {1}×{1} cross product", h_q.dim, cross.dim);
    }
    let mut a = h_q.matrix();
    let mut b = cross.matrix();
    let lambda = damp * (0..cols).map(|i| a[i * cols + i]).sum::<f64>() / cols as f64;
    let lambda = if lambda > 0.0 { lambda } else { 1.0 };
    for i in 0..cols {
        a[i * cols + i] += lambda;
        b[i * cols + i] += lambda;
    }
    let Some(l) = cholesky(&a, cols) else { invalid!("compensate: the quantized inputs' Hessian is not positive definite") };
    let mut out = vec![0f32; w.len()];
    let mut v = vec![0f64; cols];
    for (row, dst) in w.chunks(cols).zip(out.chunks_mut(cols)) {
        // v = (C + λI)·w_r, then L·Lᵀ·x = v by two triangular solves.
        for (i, vi) in v.iter_mut().enumerate() {
            *vi = b[i * cols..(i + 1) * cols].iter().zip(row).map(|(c, &x)| c * x as f64).sum();
        }
        for i in 0..cols {
            let s: f64 = (0..i).map(|k| l[i * cols + k] * v[k]).sum();
            v[i] = (v[i] - s) / l[i * cols + i];
        }
        for i in (0..cols).rev() {
            let s: f64 = (i + 1..cols).map(|k| l[k * cols + i] * v[k]).sum();
            v[i] = (v[i] - s) / l[i * cols + i];
        }
        dst.iter_mut().zip(&v).for_each(|(d, &x)| *d = x as f32);
    }
    Ok(out)
}

/// Quantizes `layers` of `model` block after block with `quantize(layer, W*, H̃)`. Layers
/// outside the blocks go first (the patch embedding, which sees the image) or last (the head).
pub fn quantize(
    gpu: &Gpu,
    model: &Model,
    layers: &[Layer],
    calib: &Calibration,
    damp: f64,
    quantize: impl Fn(&Layer, &[f32], &Hessian) -> Result<PackedMatrix> + Sync,
) -> Result<HashMap<String, PackedMatrix>> {
    let stages = stages(&model.block_prefixes()?, layers);
    let mut quantized = model.weights.clone();
    let mut out = HashMap::new();
    for stage in stages {
        let mut sums: HashMap<&str, (Hessian, Cross)> = stage.iter().map(|l| (l.key.as_str(), (Hessian::new(l.cols()), Cross::new(l.cols())))).collect();
        model.paired_inputs(gpu, &model.weights, &quantized, calib, &stage, |l, x, x_q| {
            let (h, c) = sums.get_mut(l.key.as_str()).unwrap();
            h.add_rows(x_q)?;
            c.add_rows(x_q, x)
        })?;
        let packed = parallel_map(&stage, |l| {
            let (h, c) = &sums[l.key.as_str()];
            let target = compensate(&model.weights.tensors[&l.key].data, l.rows(), l.cols(), h, c, damp)?;
            quantize(l, &target, h).map_err(|e| crate::Error::Invalid(format!("{}: {e}", l.key)))
        });
        for (l, m) in stage.iter().zip(packed) {
            let m = m?;
            quantized.tensors.get_mut(&l.key).unwrap().data = m.dequantize();
            out.insert(l.key.clone(), m);
        }
    }
    Ok(out)
}

/// `layers` grouped by block in forward order: those before every block (patch embedding),
/// one group per block prefix, then the rest (the head).
fn stages<'a>(prefixes: &[String], layers: &'a [Layer]) -> Vec<Vec<&'a Layer>> {
    let mut groups: Vec<Vec<&Layer>> = vec![Vec::new(); prefixes.len() + 2];
    for l in layers {
        let block = prefixes.iter().position(|p| l.key.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.')));
        let at = match block {
            Some(i) => i + 1,
            None if l.key.starts_with("patch_embed") => 0,
            None => prefixes.len() + 1,
        };
        groups[at].push(l);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::uniform;

    #[test]
    fn compensated_weights_refit_the_float_outputs_from_perturbed_inputs() {
        let (rows, cols, n) = (6, 10, 400);
        let w = uniform(rows * cols, 1, 1.0);
        let x = uniform(n * cols, 2, 1.0);
        // The quantized path's inputs: the float ones with a systematic error (each channel
        // scaled, as an earlier layer's rounding of a scale would) plus a little noise.
        let gain = uniform(cols, 4, 0.3);
        let x_q: Vec<f32> = x.iter().zip(uniform(n * cols, 3, 0.02)).enumerate().map(|(i, (a, e))| a * (1.0 + gain[i % cols]) + e).collect();
        let (mut h, mut c) = (Hessian::new(cols), Cross::new(cols));
        h.add_rows(&x_q).unwrap();
        c.add_rows(&x_q, &x).unwrap();
        let out_err = |wt: &[f32]| -> f64 {
            let mut e = 0f64;
            for (xr, xqr) in x.chunks(cols).zip(x_q.chunks(cols)) {
                for (wr, wtr) in w.chunks(cols).zip(wt.chunks(cols)) {
                    let y: f64 = wr.iter().zip(xr).map(|(a, b)| (*a * *b) as f64).sum();
                    let yq: f64 = wtr.iter().zip(xqr).map(|(a, b)| (*a * *b) as f64).sum();
                    e += (y - yq).powi(2);
                }
            }
            e
        };
        let star = compensate(&w, rows, cols, &h, &c, 1e-6).unwrap();
        // W* is the least-squares solution: it beats W itself, and any nudge of it.
        assert!(out_err(&star) < 0.05 * out_err(&w), "{} vs {}", out_err(&star), out_err(&w));
        for i in [0, 17, 59] {
            let mut nudged = star.clone();
            nudged[i] += 0.01;
            assert!(out_err(&nudged) > out_err(&star));
        }
        // Unperturbed inputs: W* = W up to the dampening.
        let (mut h0, mut c0) = (Hessian::new(cols), Cross::new(cols));
        h0.add_rows(&x).unwrap();
        c0.add_rows(&x, &x).unwrap();
        let same = compensate(&w, rows, cols, &h0, &c0, 0.01).unwrap();
        assert!(same.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-4), "{same:?}");
        assert!(c0.add_rows(&x[..cols], &x[..2 * cols]).is_err());
    }

    #[test]
    fn stages_follow_the_forward_order() {
        let layer = |key: &str| Layer { key: key.into(), shape: vec![2, 2], node: key.into(), encoder: false };
        let layers: Vec<Layer> = ["blocks.10.mlp.fc1.weight", "blocks.1.attn.qkv.weight", "head.weight", "patch_embed.proj.weight", "blocks.1.mlp.fc2.weight"].map(layer).into();
        let prefixes: Vec<String> = (0..11).map(|n| format!("blocks.{n}")).collect();
        let keys: Vec<Vec<&str>> = stages(&prefixes, &layers).iter().map(|g| g.iter().map(|l| l.key.as_str()).collect()).collect();
        assert_eq!(keys, vec![vec!["patch_embed.proj.weight"], vec!["blocks.1.attn.qkv.weight", "blocks.1.mlp.fc2.weight"], vec!["blocks.10.mlp.fc1.weight"], vec!["head.weight"]]);
    }
}
