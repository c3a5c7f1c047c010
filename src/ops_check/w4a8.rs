//! The W4A8/W4A4 integer Linear (`kernels::w4a8`): the GEMM alone on the reference's codes
//! (integer dots are exact, so only f32 scaling order differs), the whole layer through the
//! graph (its own quantizer, NoisyQuant noise, SVDQuant's low-rank branch), and the layer
//! against the simulated path it replaces (fake-quantized input × dequantized weights in f32).

use std::sync::Arc;

use super::{dims, path_name, random, run_graph, run_kernel, Case, Got};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::gpu::{DType, Tensor};
use crate::graph::Linear;
use crate::kernels::act_quant::ActQuantizer;
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::linear_reference;
use crate::kernels::w4a8::reference::{self as w4_ref, LowRankRef};
use crate::kernels::w4a8::{w4_gemm, ActInput, IntActivations, W4Linear};
use crate::{Gpu, Result};

/// K = 200: six whole groups of 32 and a partial one (and a partial 128-group); N = 77.
const K: usize = 200;
const N: usize = 77;

/// Activations with outlier channels and (from 3 rows on) an all-zero row.
fn activations(m: usize, seed: u64) -> Vec<f32> {
    let mut x = random(m * K, seed, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        if i % K % 37 == 5 {
            *v *= 4.0;
        }
    }
    if m >= 3 {
        x[K..2 * K].fill(0.0);
    }
    x
}

/// The activation inputs checked: per-token int8 and int4, symmetric and with a zero point per
/// row, static 8-bit and 4-bit with a zero point that is not the code offset, and a 3-bit one
/// (stored as nibbles).
fn acts() -> [(&'static str, ActInput); 7] {
    [
        ("a8 per-token", ActInput::PerToken { bits: 8, zero_point: false }),
        ("a4 per-token", ActInput::PerToken { bits: 4, zero_point: false }),
        ("a8 per-token asym", ActInput::PerToken { bits: 8, zero_point: true }),
        ("a4 per-token asym", ActInput::PerToken { bits: 4, zero_point: true }),
        ("a8 static", ActInput::Static { bits: 8, scale: 6.0 / 255.0, zero: 121.0 }),
        ("a4 static", ActInput::Static { bits: 4, scale: 1.6 / 15.0, zero: 7.0 }),
        ("a3 static", ActInput::Static { bits: 3, scale: 1.5 / 7.0, zero: 3.0 }),
    ]
}

fn weights(group: usize) -> Result<(PackedMatrix, Vec<f32>)> {
    let w = PackedMatrix::quantize(&random(N * K, 51, 0.1), N, K, WeightFormat::Q4 { group, zero_point: false })?;
    Ok((w, random(N, 52, 0.5)))
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let mut cases = Vec::new();
    // The GEMM alone, on the reference's codes: every product is the same integer.
    for (name, act) in acts() {
        for m in [1, 197] {
            let check = Box::new(move |gpu: &Gpu| {
                let (w, bias) = weights(32)?;
                let x = activations(m, 61 + m as u64);
                let (codes, scales) = w4_ref::quantize(&x, m, K, act, None)?;
                let layer = W4Linear::new(gpu, &w, Some(&bias), act)?;
                let xq = IntActivations::new(gpu, m, K, act.storage_bits())?;
                let packed = w4_ref::pack(&codes, m, K, act.storage_bits());
                let xq = IntActivations { codes: Tensor::from_u32(gpu, &[m, 4 * xq.x_vecs], &packed)?, scales: Tensor::from_f32(gpu, &[m, 2], scales.as_flattened())?, ..xq };
                let out = Tensor::zeros(gpu, &[m, N], DType::F32)?;
                let got = run_kernel(gpu, &out, |enc| w4_gemm(gpu, enc, &layer, &xq, None, &out))?;
                Ok((got, w4_ref::gemm(&codes, &scales, m, &w, Some(&bias), false, None)?))
            });
            cases.push(Case::new("w4_gemm", dims(&[m, K, N]), path_name(gpu), format!("q4g32 {name}"), check));
        }
    }
    // The whole layer through the graph: 3 rows (GEMV) with GELU and NoisyQuant noise, 197
    // rows with a rank-5 low-rank branch; q4g128 for the per-token case (a partial group).
    for (name, act) in acts() {
        for m in [3, 197] {
            let group = if matches!(act, ActInput::PerToken { bits: 8, .. }) { 128 } else { 32 };
            let run = Arc::new(move |gpu: &Gpu| -> Result<(Got, Vec<f32>, Vec<f32>)> {
                let (w, bias) = weights(group)?;
                let x = activations(m, 71 + m as u64);
                let gelu = m == 3;
                let noise = random(K, 72, 0.05);
                let (down, up, rank) = (random(5 * K, 73, 0.1), random(N * 5, 74, 0.1), 5);
                let mut layer = W4Linear::new(gpu, &w, Some(&bias), act)?;
                if gelu {
                    layer = layer.with_gelu().with_noise(Tensor::from_f32(gpu, &[K], &noise)?)?;
                } else {
                    layer = layer.with_low_rank(gpu, &down, &up, rank)?;
                }
                let layer = Linear::Int4(Arc::new(layer));
                let got = run_graph(gpu, &[(&[m, K], &x)], |g, v| g.linear("w4", &layer, v[0], gelu.then_some(Activation::Gelu)))?;
                let noise = gelu.then_some(&noise[..]);
                let (codes, scales) = w4_ref::quantize(&x, m, K, act, noise)?;
                let low_rank = (!gelu).then(|| LowRankRef { rank, down: &down, up: &up, x: &x });
                let exact = w4_ref::gemm(&codes, &scales, m, &w, Some(&bias), gelu, low_rank)?;
                // The simulated path: the input fake-quantized in f32, dequantized weights.
                let simulated = match act {
                    ActInput::Static { bits, scale, zero } if !gelu => {
                        let q = ActQuantizer::Uniform { bits, scale, zero };
                        let xq: Vec<f32> = x.iter().map(|&v| q.apply(v)).collect();
                        let base = linear_reference(&w, Some(&bias), &xq, m, None);
                        let lr = w4_ref::gemm(&vec![0; m * K], &vec![[0.0; 2]; m], m, &w, None, false, low_rank_of(rank, &down, &up, &x))?;
                        base.iter().zip(lr).map(|(a, b)| a + b).collect()
                    }
                    _ => exact.clone(),
                };
                Ok((got, exact, simulated))
            });
            let (shape, format) = (dims(&[m, K, N]), format!("q4g{group} {name}{}", if m == 3 { " gelu noise" } else { " rank5" }));
            let r = run.clone();
            cases.push(
                Case::new("w4_linear", shape.clone(), path_name(gpu), format.clone(), Box::new(move |gpu: &Gpu| r(gpu).map(|(g, e, _)| (g, e))))
                    .bound(1e-8, "an activation code at a rounding tie may differ by one (WGSL division is 2.5 ULP)"),
            );
            if matches!(act, ActInput::Static { .. }) && m == 197 {
                cases.push(
                    Case::new("w4_linear", shape, path_name(gpu), format!("{format} vs simulated"), Box::new(move |gpu: &Gpu| run(gpu).map(|(g, _, s)| (g, s))))
                        .bound(1e-8, "the f32 simulation sums x̂·ŵ in another order; a code at a rounding tie may differ by one"),
                );
            }
        }
    }
    cases
}

fn low_rank_of<'a>(rank: usize, down: &'a [f32], up: &'a [f32], x: &'a [f32]) -> Option<LowRankRef<'a>> {
    Some(LowRankRef { rank, down, up, x })
}
