//! Linear layers (every weight format, through the graph and with every launch-table variant
//! forced) and the W8A8 Linear.

use crate::synthetic::outlier_activations as activations;
use std::sync::Arc;

use super::{dims, path_name, random, run_graph, run_kernel, Case};
use crate::gpu::{AdapterClass, DType, Tensor};
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::{linear_reference, linear_with, variant_for, QLinear};
use crate::graph::Linear;
use crate::kernels::launch;
use crate::kernels::matmul::Variant;
use crate::kernels::w8a8::{reference as w8a8_ref, W8A8Linear};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::Gpu;

/// K and N multiples of no tile, word or scale group (200 = 6¼ groups of 32, 77 output rows).
const K: usize = 200;
const N: usize = 77;

/// One row (a GEMV), a few rows (still GEMV), a ViT's 197 tokens (a GEMM).
const ROWS: [usize; 3] = [1, 3, 197];

fn activation_for(m: usize) -> Option<Activation> {
    match m {
        1 => None,
        3 => Some(Activation::Gelu),
        _ => Some(Activation::Swish),
    }
}

/// Random weights of one format, quantized; the reference decodes exactly these.
fn weights(fmt: WeightFormat) -> crate::Result<(PackedMatrix, Vec<f32>)> {
    let packed = PackedMatrix::quantize(&random(N * K, 21, 1.0), N, K, fmt)?;
    Ok((packed, random(N, 22, 0.5)))
}

/// Every variant of every row of the launch table, once each.
pub fn table_variants() -> Vec<Variant> {
    let mut out: Vec<Variant> = Vec::new();
    for class in [AdapterClass::Cpu, AdapterClass::Discrete, AdapterClass::Integrated] {
        let p = launch::for_class(class).linear;
        let all = [Some(p.gemv), Some(p.gemm), p.gemm_small.map(|(_, v)| v), p.gemm_large.map(|(_, v)| v)];
        for v in all.into_iter().flatten() {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let mut cases = Vec::new();
    // Through the graph op, with the variant this adapter's plan picks for the row count.
    for fmt in WeightFormat::all() {
        for m in ROWS {
            let act = activation_for(m);
            let variant = variant_for(gpu, m, N).name();
            let check = Box::new(move |gpu: &Gpu| {
                let (packed, bias) = weights(fmt)?;
                let layer = Linear::from(QLinear::new(gpu, &packed, Some(&bias))?);
                let x = random(m * K, m as u64 + 23, 2.0);
                let got = run_graph(gpu, &[(&[m, K], &x)], |g, v| g.linear("linear", &layer, v[0], act))?;
                Ok((got, linear_reference(&packed, Some(&bias), &x, m, act)))
            });
            cases.push(Case::new("linear", dims(&[m, K, N]), variant, fmt.name(), check));
        }
    }
    // Every launch-table variant forced, whichever row this adapter has.
    for v in table_variants() {
        let m = if v.is_gemv() { 3 } else { 197 };
        for fmt in WeightFormat::all() {
            let check = Box::new(move |gpu: &Gpu| {
                let (packed, bias) = weights(fmt)?;
                let layer = QLinear::new(gpu, &packed, Some(&bias))?;
                let x = random(m * K, m as u64 + 31, 2.0);
                let xt = Tensor::from_f32(gpu, &[m, K], &x)?;
                let out = Tensor::zeros(gpu, &[m, N], DType::F32)?;
                let act = Some(Activation::Gelu);
                let got = run_kernel(gpu, &out, |enc| linear_with(gpu, enc, &layer, &xt, &out, act, v))?;
                Ok((got, linear_reference(&packed, Some(&bias), &x, m, act)))
            });
            cases.push(Case::new("linear_with", dims(&[m, K, N]), v.name(), fmt.name(), check));
        }
    }
    cases.extend(w8a8_cases(gpu));
    cases
}


fn w8a8_cases(gpu: &Gpu) -> Vec<Case> {
    // K = 203: a partial last word of int8 codes.
    let k = 203;
    let mut cases = Vec::new();
    for m in ROWS {
        let gelu = m == 3;
        let run = move |gpu: &Gpu| -> crate::Result<(super::Got, Vec<f32>, Vec<f32>)> {
            let w = random(N * k, 41, 0.08);
            let bias = random(N, 42, 0.5);
            let packed = PackedMatrix::quantize(&w, N, k, WeightFormat::Q8 { group: None })?;
            let mut layer = W8A8Linear::new(gpu, &packed, Some(&bias))?;
            if gelu {
                layer = layer.with_gelu();
            }
            let layer = Arc::new(layer);
            let x = activations(m, k, 43 + m as u64);
            let got = run_graph(gpu, &[(&[m, k], &x)], |g, v| g.linear("w8a8", &Linear::Int8(layer.clone()), v[0], gelu.then_some(Activation::Gelu)))?;
            let (codes, scales) = w8a8_ref::quantize(&x, m, k)?;
            let exact = w8a8_ref::gemm(&codes, &scales, m, &packed, Some(&bias), gelu)?;
            // The unquantized layer, in f64.
            let float = (0..m * N)
                .map(|i| {
                    let (r, c) = (i / N, i % N);
                    let dot: f64 = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum();
                    let v = (dot + bias[c] as f64) as f32;
                    if gelu { Activation::Gelu.reference(v) } else { v }
                })
                .collect();
            Ok((got, exact, float))
        };
        let run = Arc::new(run);
        let shape = dims(&[m, k, N]);
        let r = run.clone();
        cases.push(
            Case::new("w8a8_linear", shape.clone(), path_name(gpu), "q8 a8", Box::new(move |gpu: &Gpu| r(gpu).map(|(g, e, _)| (g, e))))
                // The integer GEMM is exact; WGSL division may be 2.5 ULP off, which can move an
                // activation code sitting on a rounding tie by one.
                .bound(1e-8, "an int8 code at a rounding tie may differ by one (WGSL division is 2.5 ULP)"),
        );
        cases.push(
            Case::new("w8a8_linear", shape, path_name(gpu), "q8 a8 vs f32", Box::new(move |gpu: &Gpu| run(gpu).map(|(g, _, f)| (g, f))))
                .bound(5e-4, "int8 activations and int8 weights against the f32 layer"),
        );
    }
    cases
}
