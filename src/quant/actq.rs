//! Static activation quantizers' calibration (the checkpoint entries are
//! `models::packed::QuantPoint`s): given samples of the
//! values one quantizer will see, pick its parameters by minimizing the squared error on them
//! (the MSE observer of FQ-ViT/RepQ-ViT; PTQ4ViT's Hessian-weighted metric would need
//! gradients, which lowbit does not compute).
//!
//! Where the quantizers sit (docs/QUANTIZATION.md): the inputs of every block's `attn.qkv`,
//! `attn.proj`, `mlp.fc1` and `mlp.fc2` (the last one post-GELU), and the post-softmax
//! probabilities inside `attn`.

use crate::kernels::act_quant::ActQuantizer;
use crate::{invalid, Error, Result};

/// What kind of quantizer a point gets, before calibration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Uniform,
    Log2,
    LogSqrt2,
    AdaLog,
    Sulq,
    /// PTQ4ViT twin uniform; `gelu` picks the signed variant.
    Twin { gelu: bool },
}

/// Samples per quantizer kept for the searches (evenly spaced over what calibration saw).
pub const MAX_SAMPLES: usize = 40_000;

/// Every `step`-th value so that at most `max` remain.
pub fn thin(x: &[f32], max: usize) -> Vec<f32> {
    let step = x.len().div_ceil(max).max(1);
    x.iter().step_by(step).copied().collect()
}

fn sse(q: &ActQuantizer, x: &[f32]) -> f64 {
    x.iter().map(|&v| (q.apply(v) - v) as f64).map(|e| e * e).sum()
}

/// The candidate with the least squared error on `x`.
fn best(x: &[f32], candidates: impl IntoIterator<Item = ActQuantizer>) -> Result<ActQuantizer> {
    let mut out: Option<(f64, ActQuantizer)> = None;
    for q in candidates {
        if q.validate().is_err() {
            continue;
        }
        let e = sse(&q, x);
        if out.as_ref().is_none_or(|(b, _)| e < *b) {
            out = Some((e, q));
        }
    }
    out.map(|o| o.1).ok_or_else(|| Error::Invalid("activation calibration: no usable quantizer for these values".into()))
}

/// The `p`-quantile of sorted values.
fn quantile(sorted: &[f32], p: f64) -> f32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Calibrates a quantizer of `kind` at `bits` on the sample `x`.
pub fn fit(kind: Kind, bits: u32, x: &[f32]) -> Result<ActQuantizer> {
    if x.is_empty() || x.iter().any(|v| !v.is_finite()) {
        invalid!("activation calibration: {} samples, or some not finite", x.len());
    }
    let x = thin(x, MAX_SAMPLES);
    let mut sorted = x.clone();
    sorted.sort_by(f32::total_cmp);
    let top = ((1u32 << bits) - 1) as f32;
    let half = ((1u32 << (bits - 1)) - 1) as f32;
    let max = sorted[sorted.len() - 1].max(1e-12);
    // Δ candidates of the log quantizers: the max and a few steps of 2^(1/8) below it.
    let deltas = || (0..=16).map(move |i| max * 2f32.powf(-i as f32 / 8.0));
    match kind {
        Kind::Uniform => best(&x, uniform_candidates(&sorted, bits)),
        Kind::Log2 => best(&x, deltas().map(|delta| ActQuantizer::Log2 { bits, delta })),
        Kind::LogSqrt2 => best(&x, deltas().map(|delta| ActQuantizer::LogSqrt2 { bits, delta })),
        // AdaLog's r = 37 with the base exponent q/r searched (q = 37 is log2); coarse on the
        // scale first, then every q at the best scale.
        Kind::AdaLog => {
            let r = 37;
            let coarse = best(&x, deltas().flat_map(|scale| [18, 26, 37, 52, 74].map(|q| ActQuantizer::AdaLog { bits, q, r, scale })))?;
            let ActQuantizer::AdaLog { scale, .. } = coarse else { unreachable!() };
            best(&x, (4..=80).map(|q| ActQuantizer::AdaLog { bits, q, r, scale }))
        }
        // SULQ: η from I&S-ViT's grid (above −min so log2(x + η) exists), the log range from
        // the smallest value to a clipped top.
        Kind::Sulq => {
            let min = sorted[0];
            let etas = [0.001f32, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
            let mut cands = Vec::new();
            for eta in etas.into_iter().map(|e| e + (-min).max(0.0)) {
                let m = (min + eta).max(1e-30).log2();
                for clip in [1.0f32, 0.9, 0.8, 0.7] {
                    let hi = (max * clip + eta).log2();
                    cands.push(ActQuantizer::Sulq { bits, eta, m, delta: ((hi - m) / top).max(1e-6) });
                }
            }
            best(&x, cands)
        }
        // Softmax: the coarse range covers [0, max]; the fine range's step is 2^−i of it.
        Kind::Twin { gelu: false } => {
            let hi = max / half;
            best(&x, (1..20).map(|i| ActQuantizer::TwinUniform { bits, lo: hi * 2f32.powi(-i), hi, gelu: false }))
        }
        // GELU: the negative range is at least −0.17; the positive range's top is searched.
        Kind::Twin { gelu: true } => {
            let lo = (-sorted[0]).max(1e-6) / half;
            best(&x, (0..=20).map(|i| ActQuantizer::TwinUniform { bits, lo, hi: max * (1.0 - 0.04 * i as f32) / half, gelu: true }))
        }
    }
}

/// Asymmetric per-tensor grids from percentile ranges (both tails clipped by 0 … 1%), then
/// shrunk by a few ratios.
fn uniform_candidates(sorted: &[f32], bits: u32) -> Vec<ActQuantizer> {
    let top = ((1u32 << bits) - 1) as f32;
    let tails = [0.0, 1e-5, 1e-4, 1e-3, 1e-2];
    let mut out = Vec::new();
    for &lo_p in &tails {
        for &hi_p in &tails {
            let (lo, hi) = (quantile(sorted, lo_p).min(0.0), quantile(sorted, 1.0 - hi_p).max(0.0));
            for ratio in [1.0f32, 0.9, 0.8] {
                out.push(uniform(bits, lo * ratio, hi * ratio, top));
            }
        }
    }
    out
}

/// The uniform grid whose codes 0 and 2^bits−1 land near `lo` and `hi` (zero exact).
pub fn uniform(bits: u32, lo: f32, hi: f32, top: f32) -> ActQuantizer {
    let scale = ((hi - lo) / top).max(1e-8);
    let zero = (-lo / scale).round().clamp(0.0, top);
    ActQuantizer::Uniform { bits, scale, zero }
}

/// Per-channel (scale, zero) of values laid out [rows, channels]: each channel's own MSE-best
/// uniform grid (RepQ-ViT's post-LayerNorm quantizer before reparameterization).
pub fn per_channel(x: &[f32], channels: usize, bits: u32) -> Result<Vec<(f32, f32)>> {
    if channels == 0 || !x.len().is_multiple_of(channels) || x.is_empty() {
        invalid!("per-channel calibration: {} values in rows of {channels}", x.len());
    }
    let rows = x.len() / channels;
    let step = rows.div_ceil(4096).max(1);
    (0..channels)
        .map(|c| {
            let col: Vec<f32> = (0..rows).step_by(step).map(|r| x[r * channels + c]).collect();
            match fit(Kind::Uniform, bits, &col)? {
                ActQuantizer::Uniform { scale, zero, .. } => Ok((scale, zero)),
                _ => unreachable!(),
            }
        })
        .collect()
}

/// ‖(x̂ − x)·Wᵀ‖² over the rows of x [rows, cols]: the error a Linear with weight w [out, cols]
/// sees from an input quantizer.
pub fn output_sse(x_hat: &[f32], x: &[f32], w: &[f32], cols: usize) -> f64 {
    let mut sse = 0f64;
    let mut diff = vec![0f64; cols];
    for (xh, xr) in x_hat.chunks(cols).zip(x.chunks(cols)) {
        diff.iter_mut().zip(xh.iter().zip(xr)).for_each(|(d, (a, b))| *d = *a as f64 - *b as f64);
        for row in w.chunks(cols) {
            let e: f64 = row.iter().zip(&diff).map(|(w, d)| *w as f64 * d).sum();
            sse += e * e;
        }
    }
    sse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_never_lose_to_the_naive_parameters_of_their_kind() {
        let x: Vec<f32> = crate::synthetic::uniform(5000, 3, 1.0).iter().map(|v| (v * 6.0 - 6.0).exp()).collect();
        let max = x.iter().fold(0f32, |m, v| m.max(*v));
        let min = x.iter().fold(1f32, |m, v| m.min(*v));
        let m = (min + 0.001).log2();
        let naive = [
            (Kind::Uniform, ActQuantizer::Uniform { bits: 4, scale: max / 15.0, zero: 0.0 }),
            (Kind::Log2, ActQuantizer::Log2 { bits: 4, delta: max }),
            (Kind::LogSqrt2, ActQuantizer::LogSqrt2 { bits: 4, delta: max }),
            (Kind::AdaLog, ActQuantizer::AdaLog { bits: 4, q: 37, r: 37, scale: max }),
            (Kind::Sulq, ActQuantizer::Sulq { bits: 4, eta: 0.001, m, delta: ((max + 0.001).log2() - m) / 15.0 }),
            (Kind::Twin { gelu: false }, ActQuantizer::TwinUniform { bits: 4, lo: max / 7.0 / 8.0, hi: max / 7.0, gelu: false }),
        ];
        for (kind, q0) in naive {
            let q = fit(kind, 4, &x).unwrap();
            assert!(sse(&q, &x) <= sse(&q0, &x) * (1.0 + 1e-9), "{kind:?}: {q:?} vs {q0:?}");
        }
        assert!(fit(Kind::Uniform, 4, &[]).is_err());
        assert!(fit(Kind::Uniform, 4, &[f32::NAN]).is_err());
    }
}
