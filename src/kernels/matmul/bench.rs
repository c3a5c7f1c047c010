//! `linear`'s benchmark cases, and the candidates `lowbit bench kernels --tune` times.

use std::sync::Arc;

use super::{linear_with, QLinear, Variant};
use crate::gpu::{AdapterClass, DType, Tensor};
use crate::kernels::{BenchCase, BenchSize};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{Gpu, Result};

/// Deterministic values in [-1, 1) for benchmarks (no rand dependency).
pub(crate) fn bench_weights(cols: usize, rows: usize) -> Vec<f32> {
    crate::synthetic::uniform(rows * cols, (rows * 31 + cols) as u64, 1.0)
}

/// Working set of the GEMV benchmarks on GPUs: five times the L2 of the largest current GPUs
/// (an H100 has 50 MB), so the figure is a DRAM figure.
const BENCH_STREAM_BYTES: usize = 256 << 20;

/// Shapes are M×K×N (rows of x, in_features, out_features): GEMV 1×4096×4096 and 1×768×3072,
/// GEMM 197×768×2304 (ViT-B qkv) and 197×4096×4096, for every format.
pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let shapes: &[(&str, usize, usize, usize)] = match size {
        BenchSize::Full => &[("gemv", 1, 4096, 4096), ("gemv", 1, 768, 3072), ("gemm", 197, 768, 2304), ("gemm", 197, 4096, 4096)],
        BenchSize::Quick => &[("gemv", 1, 256, 320), ("gemm", 33, 256, 320)],
    };
    let mut cases = vec![];
    for fmt in WeightFormat::all() {
        let mut packed: Vec<((usize, usize), PackedMatrix)> = vec![];
        for &(kernel, m, k, n) in shapes {
            if !packed.iter().any(|(s, _)| *s == (k, n)) {
                packed.push(((k, n), PackedMatrix::quantize(&bench_weights(k, n), n, k, fmt)?));
            }
            let w = &packed.iter().find(|(s, _)| *s == (k, n)).unwrap().1;
            // A GEMV reads each weight once, so a matrix that fits the GPU's L2 cache would be
            // timed at cache speed. Steps rotate over enough copies to stream ≥ 256 MiB, the
            // way a real model's layers follow one another. (CPU adapters are timed like
            // ggml's test-backend-ops, on one matrix: their caches are what a small model sees.)
            let streamed = kernel == "gemv" && size == BenchSize::Full && gpu.adapter_class != AdapterClass::Cpu;
            let copies = if streamed { (BENCH_STREAM_BYTES / w.bytes()).clamp(1, 128) } else { 1 };
            let layers = (0..copies).map(|_| QLinear::new(gpu, w, None)).collect::<Result<Vec<_>>>()?;
            let x = Tensor::from_f32(gpu, &[m, k], &bench_weights(k, m))?;
            let out = Tensor::zeros(gpu, &[m, n], DType::F32)?;
            let variant = super::variant_for(gpu, m, n);
            let mut next = 0;
            cases.push(BenchCase {
                kernel: kernel.into(),
                format: fmt.name(),
                shape: format!("{m}x{k}x{n}"),
                bytes: w.bytes() as u64,
                flops: 2 * (m * k * n) as u64,
                step: Box::new(move |gpu, enc| {
                    next = (next + 1) % layers.len();
                    linear_with(gpu, enc, &layers[next], &x, &out, None, variant)
                }),
            });
        }
    }
    Ok(cases)
}

/// Alternatives worth timing on any adapter: GEMV variants when `gemm` is false, else GEMM.
pub fn candidates(gemm: bool) -> Vec<Variant> {
    if gemm {
        let mut v = vec![];
        for wg in [32, 64] {
            for (tm, tn) in [(2, 4), (4, 2), (4, 4), (8, 4), (2, 8), (4, 8)] {
                v.push(Variant::GemmTiled { wg, tm, tn });
            }
        }
        v.extend([(16, 64, 2, 4), (32, 64, 4, 4), (64, 64, 4, 4), (64, 64, 8, 4), (64, 128, 4, 8), (128, 128, 8, 8)].map(
            |(bm, bn, tm, tn)| Variant::GemmWorkgroup { bm, bn, tm, tn },
        ));
        v
    } else {
        let mut v = vec![];
        for wg in [32, 64, 128] {
            for rows in [2, 4, 8, 16] {
                v.push(Variant::GemvRows { wg, rows });
            }
        }
        v.extend([(64, 8), (128, 32), (256, 32), (256, 64), (256, 256)].map(|(wg, team)| Variant::GemvCoop { wg, team }));
        v.extend([(128, 32), (256, 32), (256, 64)].map(|(wg, team)| Variant::GemvWide { wg, team }));
        v
    }
}

/// One benchmark per candidate on the headline format (Q4, group 32): GEMV 1×4096×4096 and
/// GEMM 197×4096×4096 (small shapes for `Quick`).
pub fn tune_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<(String, BenchCase)>> {
    let (k, n, m) = if size == BenchSize::Full { (4096, 4096, 197) } else { (256, 320, 33) };
    let fmt = WeightFormat::Q4 { group: 32, zero_point: false };
    let w = bench_weights(k, n);
    let packed = PackedMatrix::quantize(&w, n, k, fmt)?;
    let layer = Arc::new(QLinear::new(gpu, &packed, None)?);
    let mut cases = vec![];
    for gemm in [false, true] {
        let rows = if gemm { m } else { 1 };
        let x = Tensor::from_f32(gpu, &[rows, k], &bench_weights(k, rows))?;
        let out = Tensor::zeros(gpu, &[rows, n], DType::F32)?;
        for v in candidates(gemm) {
            let (layer, x, out) = (layer.clone(), x.clone(), out.clone());
            let case = BenchCase {
                kernel: if gemm { "gemm" } else { "gemv" }.into(),
                format: fmt.name(),
                shape: format!("{rows}x{k}x{n}"),
                bytes: packed.bytes() as u64,
                flops: 2 * (rows * k * n) as u64,
                step: Box::new(move |gpu, enc| linear_with(gpu, enc, &layer, &x, &out, None, v)),
            };
            cases.push((v.name(), case));
        }
    }
    Ok(cases)
}
