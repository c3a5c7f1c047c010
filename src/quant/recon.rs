//! `--method recon`: block reconstruction (BRECQ, Li et al. 2021; the second stage of I&S-ViT).
//! GPTQ rounds each Linear to keep that Linear's output; a ViT block's output also passes
//! through attention's softmax, GELU and LayerNorm, and its four Linears' errors can cancel or
//! pile up there. Here the rounding of all four is chosen together, against the block's output:
//!
//!   min over rounding  ‖block(X̃; Ŵ) − block(X; W)‖²
//!
//! with X̃ the block's inputs in the model whose earlier blocks are already quantized (so their
//! error is compensated, as in `sequential`) and X, W the float model's. The rounding is
//! AdaRound's (Nagel et al. 2020): each weight is base + h(V) on its group's grid, h a rectified
//! sigmoid of a free variable V, optimized by Adam through the CPU backward pass
//! (`CpuVit::block_weight_grads`), with a regularizer that pushes every h to 0 or 1 as its
//! exponent β anneals from 20 to 2. The result is rounded (h ≥ ½) and kept only where it beats
//! the start on the whole calibration set.
//!
//! The start is the codes the other methods chose (GPTQ's, clip's): each weight may stay there
//! or move one step towards its float value, so reconstruction refines them. The grids (group
//! scales and zero points) stay as chosen (learning them too, as I&S-ViT does, measured no
//! better: docs/QUANTIZATION.md). Q8, Q4 and ternary layers get variables; FP4's grid is not
//! uniform, so such layers keep their codes. What the W4A8/W4A4 kernel does to a Linear's input
//! (QuaRot's rotation, the per-token quantizer, passed straight through by the backward pass)
//! is part of the block (`InputMap`), and so is the simulated post-softmax quantizer; the
//! static quantizers of Linear inputs are not. While optimizing, each quantized input value
//! takes its float value instead with probability ½, drawn afresh every step (QDrop, Wei et al.
//! 2022): the straight-through gradient is exact on those values, and the rounding fits the
//! weights rather than the activation rounding of the calibration images (measured: W4A4 +0.5
//! dB mean over the fixtures against always quantized; docs/QUANTIZATION.md). Cost: per block
//! and step one forward and backward pass over `batch` images on the CPU.

use std::collections::HashMap;

use super::calibrate::{pick, Calibration, Family, Model, Progress};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::kernels::act_quant::ActQuantizer;
use crate::models::vit::backprop::{CpuVit, InputMap, BLOCK_LINEARS};
use crate::models::ClassifierConfig;
use crate::{invalid, Error, Result};

/// AdaRound's stretch of the sigmoid: h = clamp(σ(V)·(ζ − γ) + γ, 0, 1) reaches 0 and 1.
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;
/// Iterations before the rounding regularizer starts, as a share of all.
const WARMUP: f32 = 0.2;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Adam steps per block.
    pub iters: usize,
    /// Calibration images per step.
    pub batch: usize,
    pub lr: f32,
    /// The regularizer's weight against the reconstruction error (which starts at 1).
    pub lambda: f32,
    /// QDrop: the share of quantized Linear inputs that take their float value in each
    /// optimization step (0: always quantized).
    pub qdrop: f32,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { iters: DEFAULT_ITERS, batch: 8, lr: 0.3, lambda: 0.01, qdrop: 0.5, seed: 0 }
    }
}

/// Steps per block when `--recon-iters` is not given.
pub const DEFAULT_ITERS: usize = 200;

/// Calibration images when `--calib-count` is not given. With 32, the rounding fit those
/// images and lost up to 1.8 dB on new ones (`massive`, W4A8); with 128 it gained on every
/// fixture at W4A8 and W4A4 (docs/QUANTIZATION.md). Each step still sees `batch` of them, so
/// here more images cost only the per-block evaluation passes; the recipe's calibration pass
/// grows too (a ViT-S: 26 minutes in all instead of 20, BENCHMARKS.md).
pub const CALIB_COUNT: usize = 128;

/// What reconstruction did to one block, errors as mean squared error per output value over
/// the calibration set.
#[derive(Clone, Debug)]
pub struct BlockReport {
    pub block: usize,
    pub start: f64,
    /// The error after reconstruction (the start's, when it was not better and so not kept).
    pub end: f64,
    /// Whether the reconstruction replaced the start.
    pub applied: bool,
    /// Weights whose code changed (0 unless applied).
    pub codes_changed: usize,
}

/// One Linear's rounding: per weight value = (base + h(V) − zero)·scale, with Adam's state.
struct Rounding {
    cols: usize,
    group_size: usize,
    groups: usize,
    /// Per (row, group), row-major: the grid as chosen.
    scale: Vec<f32>,
    zero: Vec<f32>,
    /// Per weight.
    base: Vec<f32>,
    v: Vec<f32>,
    adam: Adam,
}

/// Adam's moments for a vector of variables.
struct Adam {
    m: Vec<f32>,
    s: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Adam {
        Adam { m: vec![0.0; n], s: vec![0.0; n] }
    }

    /// Step `t` (from 1) of `x` down the gradient `g`.
    fn step(&mut self, x: &mut [f32], g: &[f32], t: usize, lr: f32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for (i, x) in x.iter_mut().enumerate() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.s[i] = b2 * self.s[i] + (1.0 - b2) * g[i] * g[i];
            *x -= lr * (self.m[i] / c1) / ((self.s[i] / c2).sqrt() + eps);
        }
    }
}

fn rectified(v: f32) -> (f32, f32) {
    let sig = 1.0 / (1.0 + (-v).exp());
    let raw = sig * (ZETA - GAMMA) + GAMMA;
    // The slope is taken inside the clamp and at its ends, so a start at exactly 0 or 1 moves.
    let slope = if (0.0..=1.0).contains(&raw) { sig * (1.0 - sig) * (ZETA - GAMMA) } else { 0.0 };
    (raw.clamp(0.0, 1.0), slope)
}

/// V with rectified(V) = h.
fn inverse(h: f32) -> f32 {
    let sig = (h - GAMMA) / (ZETA - GAMMA);
    (sig / (1.0 - sig)).ln()
}

/// The code range of a format with a uniform grid, in the units `code_of` works in.
fn code_range(format: WeightFormat) -> Option<(f32, f32)> {
    match format {
        WeightFormat::Q8 { .. } => Some((-127.0, 127.0)),
        WeightFormat::Q4 { .. } => Some((0.0, 15.0)),
        WeightFormat::Ternary => Some((0.0, 2.0)),
        _ => None,
    }
}

/// A stored code as a number on the grid (Q8 stores i8 bit patterns).
fn code_of(format: WeightFormat, code: u32) -> f32 {
    match format {
        WeightFormat::Q8 { .. } => code as u8 as i8 as f32,
        _ => code as f32,
    }
}

fn stored(format: WeightFormat, q: f32) -> u32 {
    match format {
        WeightFormat::Q8 { .. } => (q as i32 as u32) & 0xff,
        _ => q as u32,
    }
}

impl Rounding {
    /// Variables for `packed` around the float weight `w`: each weight between its code and
    /// the neighbour towards w.
    fn new(packed: &PackedMatrix, w: &[f32]) -> Option<Rounding> {
        let (lo, hi) = code_range(packed.format)?;
        let (rows, cols) = (packed.rows, packed.cols);
        let group_size = packed.format.group_size(cols).max(1);
        let groups = cols.div_ceil(group_size);
        let scale: Vec<f32> = (0..rows * groups).map(|g| packed.scale(g / groups, g % groups)).collect();
        let zero: Vec<f32> = (0..rows * groups).map(|g| packed.zero(g / groups, g % groups)).collect();
        let (mut base, mut v) = (Vec::with_capacity(w.len()), Vec::with_capacity(w.len()));
        for row in 0..rows {
            for col in 0..cols {
                let g = row * groups + col / group_size;
                let q = code_of(packed.format, packed.code(row, col));
                let x = if scale[g] > 0.0 { w[row * cols + col] / scale[g] + zero[g] } else { q };
                let b = (if x < q { q - 1.0 } else { q }).clamp(lo, hi - 1.0);
                base.push(b);
                v.push(inverse(q - b));
            }
        }
        Some(Rounding { cols, group_size, groups, scale, zero, base, adam: Adam::new(v.len()), v })
    }

    fn group(&self, i: usize) -> usize {
        i / self.cols * self.groups + i % self.cols / self.group_size
    }

    fn soft(&self) -> Vec<f32> {
        (0..self.v.len()).map(|i| (self.base[i] + rectified(self.v[i]).0 - self.zero[self.group(i)]) * self.scale[self.group(i)]).collect()
    }

    fn hard_codes(&self) -> Vec<f32> {
        self.v.iter().zip(&self.base).map(|(&v, &b)| b + if rectified(v).0 >= 0.5 { 1.0 } else { 0.0 }).collect()
    }

    fn hard(&self) -> Vec<f32> {
        self.hard_codes().iter().enumerate().map(|(i, q)| (q - self.zero[self.group(i)]) * self.scale[self.group(i)]).collect()
    }

    /// One Adam step from the gradient of the reconstruction error with respect to the soft
    /// weights, plus `lambda`·mean(1 − |2h − 1|^β) (β = None: no regularizer yet).
    fn step(&mut self, grad: &[f32], t: usize, lr: f32, lambda: f32, beta: Option<f32>) {
        let per = lambda / self.v.len() as f32;
        let dv: Vec<f32> = (0..self.v.len())
            .map(|i| {
                let (h, slope) = rectified(self.v[i]);
                let mut dh = grad[i] * self.scale[self.group(i)];
                if let Some(beta) = beta {
                    let u = 2.0 * h - 1.0;
                    dh -= per * beta * u.abs().powf(beta - 1.0) * u.signum() * 2.0;
                }
                dh * slope
            })
            .collect();
        self.adam.step(&mut self.v, &dv, t, lr);
    }
}

/// Block `block` over the rows `x` in passes of `batch` images.
fn block_outputs(vit: &CpuVit, block: usize, linears: [&[f32]; 4], x: &[f32], per_image: usize, batch: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(x.len());
    for xs in x.chunks(batch * per_image) {
        out.extend(vit.run_block(block, linears, xs)?.0);
    }
    Ok(out)
}

/// Σ (y − target)².
fn squared_error(y: &[f32], target: &[f32]) -> f64 {
    y.iter().zip(target).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
}

/// The four Linears' weights: a layer's own where it has them, else `fallback`'s.
fn linears<'w>(own: &'w [Option<Vec<f32>>], fallback: &'w [Vec<f32>]) -> [&'w [f32]; 4] {
    std::array::from_fn(|i| own[i].as_deref().unwrap_or(&fallback[i]))
}

/// What the quantized model does inside its blocks beyond the weights, by graph node: the
/// W4A8/W4A4 kernel's maps of Linear inputs (`blocks.3.mlp.fc1`) and the post-softmax
/// quantizers (`blocks.3.attn`).
#[derive(Clone, Debug, Default)]
pub struct QuantizedBlocks {
    pub inputs: HashMap<String, InputMap>,
    pub attention: HashMap<String, ActQuantizer>,
}

/// Reconstructs every block of the ViT `model` in order, rewriting the codes of its Linears in
/// `packed` (keyed by weight name; the patch embedding's codes are read for the quantized
/// model's inputs, the head is left alone). `maps` say what else the quantized model does in
/// its blocks; their rotations also apply to the float model, whose rotated layers hold W·H.
pub fn reconstruct(model: &Model, calib: &Calibration, packed: &mut HashMap<&str, &mut PackedMatrix>, maps: &QuantizedBlocks, opts: Options, progress: &Progress) -> Result<Vec<BlockReport>> {
    let Family::Classifier(ClassifierConfig::Vit(c)) = &model.family else {
        invalid!("method recon differentiates a ViT-family classifier's blocks on the CPU; this model is not one (no Swin or VQGAN backward pass yet)");
    };
    let Some((pixels, _)) = &calib.images else { invalid!("method recon needs calibration images") };
    let rotations: HashMap<String, InputMap> = maps.inputs.iter().map(|(k, m)| (k.clone(), InputMap { quant: None, ..*m })).collect();
    let float_vit = CpuVit::new(c, &model.weights)?.with_input_maps(&rotations)?;
    let mut vit = CpuVit::new(c, &model.weights)?.with_input_maps(&maps.inputs)?.with_attention_quantizers(&maps.attention)?;
    let per_image = c.tokens() * c.embed_dim;
    let images = calib.count();
    let mut x = float_vit.embed(pixels)?;
    // The quantized model's first block sees the quantized patch embedding's tokens.
    let mut x_q = match packed.get("patch_embed.proj.weight") {
        Some(p) => {
            let w = p.dequantize();
            CpuVit::new(c, &model.weights)?.with_patch_weight(&w)?.embed(pixels)?
        }
        None => x.clone(),
    };
    let mut reports = Vec::with_capacity(vit.depth());
    for block in 0..vit.depth() {
        let keys: Vec<String> = BLOCK_LINEARS.iter().map(|l| format!("blocks.{block}.{l}.weight")).collect();
        let float: Vec<&[f32]> = keys.iter().map(|k| model.weights.tensors[k].data.as_slice()).collect();
        let float = [float[0], float[1], float[2], float[3]];
        let target = block_outputs(&float_vit, block, float, &x, per_image, opts.batch)?;
        let start: Vec<Vec<f32>> = keys.iter().zip(float).map(|(k, w)| packed.get(k.as_str()).map_or_else(|| w.to_vec(), |p| p.dequantize())).collect();
        let mut rounding: Vec<Option<Rounding>> = keys.iter().zip(float).map(|(k, w)| packed.get(k.as_str()).and_then(|p| Rounding::new(p, w))).collect();
        let start_out = block_outputs(&vit, block, [&start[0], &start[1], &start[2], &start[3]], &x_q, per_image, opts.batch)?;
        let start_err = squared_error(&start_out, &target);
        let values = target.len() as f64;
        if rounding.iter().all(Option::is_none) {
            // Nothing to round here (FP4 or float layers): the block stays as it is.
            reports.push(BlockReport { block, start: start_err / values, end: start_err / values, applied: false, codes_changed: 0 });
            (x, x_q) = (target, start_out);
            progress.tick();
            continue;
        }
        let norm = (start_err / values).max(f64::MIN_POSITIVE) as f32;
        let warmup = (WARMUP * opts.iters as f32) as usize;
        for t in 0..opts.iters {
            let seed = opts.seed ^ ((block as u64) << 32) ^ t as u64;
            let chosen = pick(images, opts.batch.min(images), seed);
            let xs: Vec<f32> = chosen.iter().flat_map(|&i| x_q[i * per_image..(i + 1) * per_image].iter().copied()).collect();
            let ts: Vec<f32> = chosen.iter().flat_map(|&i| target[i * per_image..(i + 1) * per_image].iter().copied()).collect();
            let soft: Vec<Option<Vec<f32>>> = rounding.iter().map(|r| r.as_ref().map(Rounding::soft)).collect();
            let w4 = linears(&soft, &start);
            vit.set_qdrop(Some(opts.qdrop).filter(|&p| p > 0.0), seed);
            let (y, cache) = vit.run_block(block, w4, &xs)?;
            vit.set_qdrop(None, 0);
            // d/dy of Σ(y − t)² / (values · start's mean error): the error starts near 1.
            let k = 2.0 / (y.len() as f32 * norm);
            let dy: Vec<f32> = y.iter().zip(&ts).map(|(a, b)| k * (a - b)).collect();
            let grads = vit.block_weight_grads(block, w4, &cache, &dy)?;
            let beta = (t >= warmup).then(|| {
                let f = (t - warmup) as f32 / (opts.iters - warmup).max(1) as f32;
                20.0 + (2.0 - 20.0) * f
            });
            for (r, g) in rounding.iter_mut().zip(&grads) {
                if let Some(r) = r {
                    r.step(g, t + 1, opts.lr, opts.lambda, beta);
                }
            }
        }
        let hard: Vec<Option<Vec<f32>>> = rounding.iter().map(|r| r.as_ref().map(Rounding::hard)).collect();
        let end_out = block_outputs(&vit, block, linears(&hard, &start), &x_q, per_image, opts.batch)?;
        let end_err = squared_error(&end_out, &target);
        let applied = end_err < start_err;
        let mut codes_changed = 0;
        if applied {
            for (key, r) in keys.iter().zip(&rounding) {
                let (Some(r), Some(p)) = (r, packed.get_mut(key.as_str())) else { continue };
                let codes: Vec<u32> = r.hard_codes().into_iter().map(|q| stored(p.format, q)).collect();
                codes_changed += codes.iter().enumerate().filter(|&(i, &c)| c != p.code(i / p.cols, i % p.cols)).count();
                let zeros: Vec<u32> = if matches!(p.format, WeightFormat::Q4 { zero_point: true, .. }) { r.zero.iter().map(|&z| z as u32).collect() } else { Vec::new() };
                **p = PackedMatrix::from_codes(p.format, p.rows, p.cols, &codes, &r.scale, &zeros).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
            }
        }
        x_q = if applied { end_out } else { start_out };
        reports.push(BlockReport { block, start: start_err / values, end: end_err.min(start_err) / values, applied, codes_changed });
        x = target;
        progress.tick();
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::rtn;
    use crate::synthetic::uniform;

    #[test]
    fn the_rectified_sigmoid_reaches_both_ends_and_inverts() {
        for h in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let (back, slope) = rectified(inverse(h));
            assert!((back - h).abs() < 1e-5, "{h} -> {back}");
            assert!(slope > 0.0, "a start at {h} can move");
        }
        assert_eq!(rectified(10.0), (1.0, 0.0));
        assert_eq!(rectified(-10.0), (0.0, 0.0));
    }

    /// The variables start exactly at the packed codes, for every format with a uniform grid,
    /// and any setting of them stays on the grid: a code within the format's range, one step
    /// at most from the start, towards the float weight.
    #[test]
    fn rounding_starts_at_the_codes_and_stays_on_the_grid() {
        let (rows, cols) = (5, 70);
        let w = uniform(rows * cols, 11, 0.8);
        for format in [WeightFormat::Q4 { group: 32, zero_point: false }, WeightFormat::Q4 { group: 32, zero_point: true }, WeightFormat::Q8 { group: None }, WeightFormat::Ternary] {
            let packed = rtn::rtn(&w, rows, cols, format).unwrap();
            let mut r = Rounding::new(&packed, &w).expect("a uniform grid");
            assert_eq!(r.hard(), packed.dequantize(), "{format:?}");
            let start = r.hard_codes();
            // Every variable flipped to the other side of ½.
            r.v.iter_mut().for_each(|v| *v = -*v);
            let (lo, hi) = code_range(format).unwrap();
            for (i, (&q, &q0)) in r.hard_codes().iter().zip(&start).enumerate() {
                assert!((lo..=hi).contains(&q) && (q - q0).abs() <= 1.0, "{format:?} [{i}]: {q0} -> {q}");
                let g = r.group(i);
                let toward = w[i] / r.scale[g] + r.zero[g] - q0;
                assert!(q == q0 || (q - q0) * toward >= 0.0 || q0 == lo || q0 == hi, "{format:?} [{i}]: {q0} -> {q}, float at {toward:+}");
            }
            let codes: Vec<u32> = r.hard_codes().into_iter().map(|q| stored(format, q)).collect();
            assert!(codes.iter().all(|&c| code_of(format, c) >= lo && code_of(format, c) <= hi));
        }
        let fp4 = rtn::rtn(&w, rows, cols, WeightFormat::Fp4 { group: 32 }).unwrap();
        assert!(Rounding::new(&fp4, &w).is_none(), "FP4's grid is not uniform");
    }
}
