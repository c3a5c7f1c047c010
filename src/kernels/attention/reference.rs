//! CPU references: exact attention in f64, and SageAttention reproducing the GPU's
//! quantization step by step (same f32 operations, same rounding) so the GPU kernel can be
//! checked tightly against it.

use half::f16;

use super::{AttentionParams, SageOptions};
use crate::kernels::act_quant::ActQuantizer;
use crate::{invalid, shape_err, Result};

fn check_len(qkv: &[f32], p: &AttentionParams) -> Result<()> {
    if p.batch == 0 || p.tokens == 0 || p.heads == 0 || p.head_dim == 0 {
        shape_err!("attention reference: zero-sized dimension in {p:?}");
    }
    let want: usize = p.qkv_shape().iter().product();
    if qkv.len() != want {
        shape_err!("attention reference: qkv has {} values, shape {:?} needs {want}", qkv.len(), p.qkv_shape());
    }
    Ok(())
}

/// Index of element `d` of head `h` of token `j`, part 0 (q), 1 (k) or 2 (v).
fn at(p: &AttentionParams, b: usize, j: usize, part: usize, h: usize, d: usize) -> usize {
    (b * p.tokens + j) * 3 * p.heads * p.head_dim + (part * p.heads + h) * p.head_dim + d
}

/// Softmax attention in f64 given a score function (already scaled) and the V values.
fn attend(p: &AttentionParams, score: impl Fn(usize, usize, usize, usize) -> f64, v: impl Fn(usize, usize, usize, usize) -> f64) -> Vec<f32> {
    let (t, hd) = (p.tokens, p.heads * p.head_dim);
    let mut out = vec![0f32; p.batch * t * hd];
    let mut s = vec![0f64; t];
    let mut acc = vec![0f64; p.head_dim];
    for b in 0..p.batch {
        for h in 0..p.heads {
            for i in 0..t {
                let keys = if p.causal { i + 1 } else { t };
                for (j, sj) in s[..keys].iter_mut().enumerate() {
                    *sj = score(b, h, i, j);
                }
                let m = s[..keys].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut l = 0.0;
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (j, &sj) in s[..keys].iter().enumerate() {
                    let w = (sj - m).exp();
                    l += w;
                    for (d, a) in acc.iter_mut().enumerate() {
                        *a += w * v(b, h, j, d);
                    }
                }
                let row = (b * t + i) * hd + h * p.head_dim;
                for (d, a) in acc.iter().enumerate() {
                    out[row + d] = (a / l) as f32;
                }
            }
        }
    }
    out
}

/// Exact attention (f64 accumulation), same layout and semantics as `attention`.
pub fn attention_reference(qkv: &[f32], p: &AttentionParams) -> Result<Vec<f32>> {
    check_len(qkv, p)?;
    let score = |b, h, i, j| {
        let dot: f64 = (0..p.head_dim).map(|d| qkv[at(p, b, i, 0, h, d)] as f64 * qkv[at(p, b, j, 1, h, d)] as f64).sum();
        dot * p.scale as f64
    };
    Ok(attend(p, score, |b, h, j, d| qkv[at(p, b, j, 2, h, d)] as f64))
}

/// `attention_quantized` on the CPU: scores, max and sum in f64, then each normalized
/// probability rounded to f32 and quantized by `pq` (`ActQuantizer::apply`), P̂·V in f64.
pub fn attention_quantized_reference(qkv: &[f32], p: &AttentionParams, pq: &ActQuantizer) -> Result<Vec<f32>> {
    check_len(qkv, p)?;
    pq.validate()?;
    let (t, hd) = (p.tokens, p.heads * p.head_dim);
    let mut out = vec![0f32; p.batch * t * hd];
    let mut s = vec![0f64; t];
    for b in 0..p.batch {
        for h in 0..p.heads {
            for i in 0..t {
                let keys = if p.causal { i + 1 } else { t };
                for (j, sj) in s[..keys].iter_mut().enumerate() {
                    let dot: f64 = (0..p.head_dim).map(|d| qkv[at(p, b, i, 0, h, d)] as f64 * qkv[at(p, b, j, 1, h, d)] as f64).sum();
                    *sj = dot * p.scale as f64;
                }
                let m = s[..keys].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = s[..keys].iter().map(|&x| (x - m).exp()).sum();
                let probs: Vec<f64> = s[..keys].iter().map(|&x| pq.apply(((x - m).exp() / l) as f32) as f64).collect();
                let row = (b * t + i) * hd + h * p.head_dim;
                for d in 0..p.head_dim {
                    let acc: f64 = probs.iter().enumerate().map(|(j, pj)| pj * qkv[at(p, b, j, 2, h, d)] as f64).sum();
                    out[row + d] = acc as f32;
                }
            }
        }
    }
    Ok(out)
}

/// int8 values (as i32) of one of Q or K, layout [B, H, T, D], and one scale per
/// (batch, head, block).
struct Quantized {
    values: Vec<i32>,
    scales: Vec<f32>,
    block: usize,
    n_blocks: usize,
}

/// Per-block int8 quantization of `x(b, h, j, d)`, exactly as `sage_quantize` does it.
fn quantize(p: &AttentionParams, block: usize, x: impl Fn(usize, usize, usize, usize) -> f32) -> Quantized {
    let (t, hd) = (p.tokens, p.head_dim);
    let n_blocks = t.div_ceil(block);
    let mut values = vec![0i32; p.batch * p.heads * t * hd];
    let mut scales = Vec::with_capacity(p.batch * p.heads * n_blocks);
    for b in 0..p.batch {
        for h in 0..p.heads {
            for blk in 0..n_blocks {
                let tokens = blk * block..((blk + 1) * block).min(t);
                let amax = tokens.clone().flat_map(|j| (0..hd).map(move |d| (j, d))).fold(0f32, |m, (j, d)| m.max(x(b, h, j, d).abs()));
                let inv = if amax > 0.0 { 127.0f32 / amax } else { 0.0 };
                for j in tokens {
                    for d in 0..hd {
                        let q = (x(b, h, j, d) * inv).round_ties_even().clamp(-127.0, 127.0);
                        values[((b * p.heads + h) * t + j) * hd + d] = q as i32;
                    }
                }
                scales.push(amax / 127.0);
            }
        }
    }
    Quantized { values, scales, block, n_blocks }
}

/// SageAttention on the CPU: smoothing, int8 quantization and score rescaling as the GPU does
/// them in f32, then softmax and P·V in f64 (with V rounded to f16 when `opts.pv_f16`). Pass
/// `opts.effective(gpu)` to match a GPU run.
pub fn sage_reference(qkv: &[f32], p: &AttentionParams, opts: &SageOptions) -> Result<Vec<f32>> {
    check_len(qkv, p)?;
    if opts.q_block == 0 || opts.k_block == 0 {
        invalid!("sage reference: q_block and k_block must be at least 1");
    }
    let (t, hd) = (p.tokens, p.head_dim);
    // Sequential f32 sum over tokens, divided by the count: the GPU's order exactly.
    let mut k_mean = vec![0f32; p.batch * p.heads * hd];
    for b in 0..p.batch {
        for h in 0..p.heads {
            for d in 0..hd {
                let sum = (0..t).fold(0f32, |s, j| s + qkv[at(p, b, j, 1, h, d)]);
                k_mean[(b * p.heads + h) * hd + d] = sum / t as f32;
            }
        }
    }
    let q = quantize(p, opts.q_block, |b, h, j, d| qkv[at(p, b, j, 0, h, d)] * p.scale);
    let k = quantize(p, opts.k_block, |b, h, j, d| qkv[at(p, b, j, 1, h, d)] - k_mean[(b * p.heads + h) * hd + d]);
    let row = |b: usize, h: usize, j: usize| ((b * p.heads + h) * t + j) * hd;
    let score = |b: usize, h: usize, i: usize, j: usize| {
        let (qi, kj) = (row(b, h, i), row(b, h, j));
        let dot: i32 = (0..hd).map(|d| q.values[qi + d] * k.values[kj + d]).sum();
        let bh = b * p.heads + h;
        let qs = q.scales[bh * q.n_blocks + i / q.block];
        let ks = k.scales[bh * k.n_blocks + j / k.block];
        (dot as f32 * qs * ks) as f64
    };
    let v = |b, h, j, d| {
        let x = qkv[at(p, b, j, 2, h, d)];
        if opts.pv_f16 { f16::from_f32(x).to_f64() } else { x as f64 }
    };
    Ok(attend(p, score, v))
}

/// Test and benchmark inputs shaped like a ViT's: Q and K of similar spread, plus a large
/// per-channel bias on K shared by all tokens (the outlier channels SageAttention's smoothing
/// is for). Deterministic in `seed`.
pub fn realistic_qkv(p: &AttentionParams, seed: u64) -> Vec<f32> {
    let mut rng = crate::synthetic::Rng::new(seed);
    let mut next = move || rng.next_f32();
    let hd = p.heads * p.head_dim;
    let bias: Vec<f32> = (0..hd).map(|_| 6.0 * next()).collect();
    let mut out = Vec::with_capacity(p.batch * p.tokens * 3 * hd);
    for _ in 0..p.batch * p.tokens {
        out.extend((0..hd).map(|_| 2.0 * next()));
        out.extend(bias.iter().map(|b| b + 2.0 * next()));
        out.extend((0..hd).map(|_| next()));
    }
    out
}
