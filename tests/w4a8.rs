//! The W4A8/W4A4 integer Linear (`kernels::w4a8`) on lavapipe: activation codes bit for bit
//! against the CPU reference, the GEMM under every kernel plan on odd shapes (integer dots are
//! exact, so only the f32 scaling order differs), and bad input refused with a clear error.

mod common;
use common::*;
use lowbit::synthetic::outlier_activations as activations;
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::w4a8::reference;
use lowbit::kernels::w4a8::{quantize_activations, w4_forward, ActInput, IntActivations, W4Linear, W4Scratch};
use lowbit::Gpu;

const Q4G64: WeightFormat = WeightFormat::Q4 { group: 64, zero_point: false };


const ACTS: [ActInput; 6] = [
    ActInput::PerToken { bits: 8, zero_point: false },
    ActInput::Static { bits: 8, scale: 6.0 / 255.0, zero: 121.0 },
    ActInput::Static { bits: 4, scale: 1.6 / 15.0, zero: 7.0 },
    // W4A4 with dynamic per-token int4 codes (`--method dynamic`).
    ActInput::PerToken { bits: 4, zero_point: false },
    // The same with a zero point per row (`--method dynamic,asymmetric`).
    ActInput::PerToken { bits: 4, zero_point: true },
    ActInput::PerToken { bits: 8, zero_point: true },
];

fn quantize_on_gpu(gpu: &Gpu, x: &[f32], m: usize, k: usize, act: ActInput, noise: Option<&[f32]>) -> IntActivations {
    let xt = Tensor::from_f32(gpu, &[m, k], x).unwrap();
    let xq = IntActivations::new(gpu, m, k, act.storage_bits()).unwrap();
    let noise = noise.map(|n| Tensor::from_f32(gpu, &[k], n).unwrap());
    let mut enc = gpu.encoder();
    quantize_activations(gpu, &mut enc, &xt, act, noise.as_ref(), &xq).unwrap();
    gpu.submit(enc).unwrap();
    xq
}

#[test]
fn activation_codes_match_the_reference() {
    for (path, gpu) in gpus() {
        for (m, k) in [(1, 77), (3, 200), (197, 384)] {
            for act in ACTS {
                let x = activations(m, k, (m * k) as u64);
                let noise = random(k, 9, 0.05);
                let noise = (m == 3).then_some(&noise[..]);
                let xq = quantize_on_gpu(gpu, &x, m, k, act, noise);
                let got = reference::unpack(&xq.codes.to_vec_u32(gpu).unwrap(), m, k, act.storage_bits());
                let (want, want_scales) = reference::quantize(&x, m, k, act, noise).unwrap();
                // WGSL lets division be 2.5 ULP off (lavapipe is exact): a code may differ by one
                // where x/scale sits on a rounding tie, nowhere else.
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if g != w {
                        let v = x[i] + noise.map_or(0.0, |n| n[i % k]);
                        let t = v / want_scales[i / k][0];
                        assert!((*g as i32 - *w as i32).abs() == 1 && ((t.abs().fract() - 0.5).abs() < 1e-3), "{path} {act:?} {m}×{k} [{i}]: {g} vs {w}");
                    }
                }
                let scales = xq.scales.to_vec_f32(gpu).unwrap();
                for (s, w) in scales.chunks(2).zip(&want_scales) {
                    assert!((s[0] - w[0]).abs() <= 1e-6 * w[0].abs(), "{path} {act:?}: scale {} vs {}", s[0], w[0]);
                    assert_eq!(s[1], w[1], "{path} {act:?}: zero-point shift");
                }
            }
        }
    }
}

/// (scale, dz) per row, as `IntActivations::scales` holds them.
fn row_scales(flat: &[f32]) -> Vec<[f32; 2]> {
    flat.chunks(2).map(|c| [c[0], c[1]]).collect()
}

/// The whole layer (quantize + GEMM + low-rank branch) against the reference fed the GPU's own
/// codes, so the check is the GEMM's arithmetic alone.
fn check_layer(path: &str, gpu: &Gpu, m: usize, k: usize, n: usize, act: ActInput, rank: usize) {
    let x = activations(m, k, 5 + m as u64);
    let w = PackedMatrix::quantize(&random(n * k, 6, 0.08), n, k, Q4G64).unwrap();
    let bias = random(n, 7, 0.5);
    let (down, up) = (random(rank * k, 8, 0.1), random(n * rank, 9, 0.1));
    let mut layer = W4Linear::new(gpu, &w, Some(&bias), act).unwrap();
    if rank > 0 {
        layer = layer.with_low_rank(gpu, &down, &up, rank).unwrap();
    }
    let scratch = W4Scratch::new(gpu, &layer, m).unwrap();
    let xt = Tensor::from_f32(gpu, &[m, k], &x).unwrap();
    let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    w4_forward(gpu, &mut enc, &layer, &xt, &scratch, &out).unwrap();
    gpu.submit(enc).unwrap();
    let codes = reference::unpack(&scratch.x.codes.to_vec_u32(gpu).unwrap(), m, k, act.storage_bits());
    let scales = row_scales(&scratch.x.scales.to_vec_f32(gpu).unwrap());
    let low_rank = (rank > 0).then(|| reference::LowRankRef { rank, down: &down, up: &up, x: &x });
    let want = reference::gemm(&codes, &scales, m, &w, Some(&bias), false, low_rank).unwrap();
    assert_nmse(&format!("{path} {m}×{k}×{n} {act:?} rank {rank}"), &out.to_vec_f32(gpu).unwrap(), &want, 1e-10);
}

#[test]
fn layer_matches_the_reference_under_every_plan_on_odd_shapes() {
    for (path, gpu) in all_plans() {
        // GEMV (one row, K a partial 64-group), a few rows, and a GEMM tile with a ragged edge.
        check_layer(path, gpu, 1, 1155, 97, ACTS[0], 0);
        check_layer(path, gpu, 3, 1155, 97, ACTS[2], 7);
        check_layer(path, gpu, 21, 200, 261, ACTS[1], 16);
        check_layer(path, gpu, 21, 200, 261, ACTS[3], 0);
        // Zero points per row: every row's own dz in both GEMMs.
        check_layer(path, gpu, 1, 1155, 97, ACTS[4], 0);
        check_layer(path, gpu, 21, 200, 261, ACTS[4], 0);
        check_layer(path, gpu, 70, 200, 261, ACTS[5], 5);
    }
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let gpu = gpu();
    let w = random(8 * 64, 1, 0.1);
    let err = |r: lowbit::Result<W4Linear>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let q8 = PackedMatrix::quantize(&w, 8, 64, WeightFormat::Q8 { group: None }).unwrap();
    assert!(err(W4Linear::new(gpu, &q8, None, ActInput::PerToken { bits: 8, zero_point: false })).contains("q4g32"));
    let q4z = PackedMatrix::quantize(&w, 8, 64, WeightFormat::Q4 { group: 32, zero_point: true }).unwrap();
    assert!(err(W4Linear::new(gpu, &q4z, None, ActInput::PerToken { bits: 8, zero_point: false })).contains("symmetric"));
    let q4 = PackedMatrix::quantize(&w, 8, 64, WeightFormat::Q4 { group: 32, zero_point: false }).unwrap();
    assert!(err(W4Linear::new(gpu, &q4, None, ActInput::Static { bits: 9, scale: 0.1, zero: 0.0 })).contains("2 to 8"));
    assert!(err(W4Linear::new(gpu, &q4, None, ActInput::Static { bits: 8, scale: 0.0, zero: 0.0 })).contains("scale"));
    assert!(err(W4Linear::new(gpu, &q4, None, ActInput::Static { bits: 4, scale: 0.1, zero: 16.0 })).contains("zero"));
    assert!(err(W4Linear::new(gpu, &q4, Some(&[0.0; 3]), ActInput::PerToken { bits: 8, zero_point: false })).contains("bias"));
    assert!(err(W4Linear::new(gpu, &q4, None, ActInput::PerToken { bits: 1, zero_point: false })).contains("2 to 8"));
    let layer = || W4Linear::new(gpu, &q4, None, ActInput::PerToken { bits: 8, zero_point: false }).unwrap();
    assert!(err(layer().with_low_rank(gpu, &[], &[], 0)).contains("rank 0"));
    assert!(err(layer().with_low_rank(gpu, &vec![0.0; 9 * 64], &[0.0; 72], 9)).contains("1 to 8"));
    assert!(err(layer().with_noise(Tensor::from_f32(gpu, &[3], &[0.0; 3]).unwrap())).contains("noise"));
    // Activations of the wrong width are refused by the GEMM, not read past their end.
    let l = layer();
    let xq = IntActivations::new(gpu, 2, 32, 8).unwrap();
    let out = Tensor::zeros(gpu, &[2, 8], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    assert!(lowbit::kernels::w4a8::w4_gemm(gpu, &mut enc, &l, &xq, None, &out).is_err());
}

#[test]
fn hadamard_rotation_matches_the_reference_and_keeps_the_product() {
    use lowbit::kernels::hadamard;
    for (path, gpu) in gpus() {
        // ViT widths (96 → blocks of 32, 384 → 128), a power of two, and an odd width (no-op).
        for (m, k) in [(3, 96), (5, 384), (2, 1024), (4, 77)] {
            let block = hadamard::block_for(k);
            let x = activations(m, k, (m + k) as u64);
            let xt = Tensor::from_f32(gpu, &[m, k], &x).unwrap();
            let out = Tensor::zeros(gpu, &[m, k], DType::F32).unwrap();
            let mut enc = gpu.encoder();
            hadamard::rotate(gpu, &mut enc, &xt, &out, block).unwrap();
            gpu.submit(enc).unwrap();
            let want = hadamard::reference(&x, k, block).unwrap();
            assert_nmse(&format!("{path} hadamard {m}×{k} block {block}"), &out.to_vec_f32(gpu).unwrap(), &want, 1e-12);
            // Orthogonal: rotating twice gives x back.
            let back = hadamard::reference(&want, k, block).unwrap();
            assert_nmse("H·H·x = x", &back, &x, 1e-12);
        }
    }
    // The whole rotated layer: (W·H) quantized times the GPU-quantized H·x, against the reference
    // fed the same codes, and close to the unrotated f32 product x·Wᵀ.
    let gpu = gpu();
    let (m, k, n) = (7, 384, 40);
    let x = activations(m, k, 11);
    let w = random(n * k, 12, 0.08);
    let wh = hadamard::reference(&w, k, hadamard::block_for(k)).unwrap();
    let packed = PackedMatrix::quantize(&wh, n, k, Q4G64).unwrap();
    let layer = W4Linear::new(gpu, &packed, None, ActInput::PerToken { bits: 8, zero_point: false }).unwrap().with_hadamard(hadamard::block_for(k)).unwrap();
    let scratch = W4Scratch::new(gpu, &layer, m).unwrap();
    let xt = Tensor::from_f32(gpu, &[m, k], &x).unwrap();
    let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    w4_forward(gpu, &mut enc, &layer, &xt, &scratch, &out).unwrap();
    gpu.submit(enc).unwrap();
    let got = out.to_vec_f32(gpu).unwrap();
    let codes = reference::unpack(&scratch.x.codes.to_vec_u32(gpu).unwrap(), m, k, 8);
    let want = reference::gemm(&codes, &row_scales(&scratch.x.scales.to_vec_f32(gpu).unwrap()), m, &packed, None, false, None).unwrap();
    assert_nmse("rotated w4a8 layer", &got, &want, 1e-10);
    // Against x · Ŵᵀ in f32, Ŵ the stored 4-bit weights rotated back ((Ŵ·H)·H = Ŵ): what is
    // left is the int8 per-token activation error of the rotated x.
    let back = hadamard::reference(&packed.dequantize(), k, hadamard::block_for(k)).unwrap();
    let exact: Vec<f32> = (0..m * n).map(|i| (0..k).map(|c| x[i / n * k + c] * back[i % n * k + c]).sum()).collect();
    assert_nmse("rotated w4a8 layer vs f32 x·Ŵᵀ", &got, &exact, 1e-3);
    // Refused: a block that does not divide the width, and rotation beside noise.
    assert!(W4Linear::new(gpu, &packed, None, ActInput::PerToken { bits: 8, zero_point: false }).unwrap().with_hadamard(256).is_err());
}
