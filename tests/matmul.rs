mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::elementwise::Activation;
use lowbit::kernels::matmul::{self, linear, linear_reference, linear_with, QLinear, Variant};
use lowbit::kernels::BenchSize;
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::{Gpu, GpuOptions};

/// Runs one layer on the GPU (with `variant`, or the tuned choice) and returns the output.
fn run(gpu: &Gpu, layer: &QLinear, x: &[f32], m: usize, act: Option<Activation>, variant: Option<Variant>) -> Vec<f32> {
    let xt = Tensor::from_f32(gpu, &[m, layer.in_features()], x).unwrap();
    let out = Tensor::zeros(gpu, &[m, layer.out_features()], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    match variant {
        Some(v) => linear_with(gpu, &mut enc, layer, &xt, &out, act, v).unwrap(),
        None => linear(gpu, &mut enc, layer, &xt, &out, act).unwrap(),
    }
    gpu.submit(enc).unwrap();
    out.to_vec_f32(gpu).unwrap()
}

fn bound(fmt: WeightFormat) -> f64 {
    if fmt == WeightFormat::F32 { F32_NMSE } else { QUANT_NMSE }
}

/// Every format × GEMV/GEMM shapes × bias/GELU × native/fallback, with the tuned variants.
#[test]
fn every_format_matches_reference() {
    for (path, gpu) in gpus() {
        for fmt in WeightFormat::all() {
            for (k, n) in [(77, 13), (200, 37)] {
                let w = random(n * k, (k * 7 + n) as u64, 1.0);
                let packed = PackedMatrix::quantize(&w, n, k, fmt).unwrap();
                let bias = random(n, 99, 0.5);
                for (with_bias, act) in [(false, None), (true, Some(Activation::Gelu))] {
                    let b = with_bias.then_some(&bias[..]);
                    let layer = QLinear::new(gpu, &packed, b).unwrap();
                    for m in [1, 3, 197] {
                        let x = random(m * k, m as u64 + 5, 2.0);
                        let got = run(gpu, &layer, &x, m, act, None);
                        let want = linear_reference(&packed, b, &x, m, act);
                        let what = format!("{} {m}x{k}x{n} bias={with_bias} {act:?} {path}", fmt.name());
                        assert_nmse(&what, &got, &want, bound(fmt));
                    }
                }
            }
        }
    }
}

/// NMSE of a GPU result against the f64 reference on the same decoded weights: only the f32
/// summation order differs (relative error ~ √K · 2^-24 per output), so ~1e-12 is expected;
/// an output wrong by its own size would cost ~1/(M·N), far above this.
const SHARED_WEIGHTS_NMSE: f64 = 1e-10;

/// The GPU plan forced on this adapter (GEMV per subgroup team, workgroup-tiled GEMM with the
/// table's small, medium and large tiles): every format, M = 1, 3, 33, 197, 257 and 1100, K and N
/// multiples of no tile.
#[test]
fn gpu_plan_every_format_matches_reference() {
    for (path, gpu) in [("gpu-plan", gpu_plan()), ("gpu-plan fallback", gpu_plan_fallback())] {
        for fmt in WeightFormat::all() {
            let (k, n) = (200, 77);
            let packed = PackedMatrix::quantize(&random(n * k, 21, 1.0), n, k, fmt).unwrap();
            let bias = random(n, 22, 0.5);
            let layer = QLinear::new(gpu, &packed, Some(&bias)).unwrap();
            for (m, act) in [(1, None), (3, Some(Activation::Gelu)), (33, None), (197, None), (257, Some(Activation::Swish)), (1100, None)] {
                if m == 1100 && !matches!(fmt, WeightFormat::Q4 { .. } | WeightFormat::F16) {
                    continue;
                }
                let x = random(m * k, m as u64 + 23, 2.0);
                let variant = matmul::variant_for(gpu, m, n);
                let got = run(gpu, &layer, &x, m, act, None);
                let want = linear_reference(&packed, Some(&bias), &x, m, act);
                let what = format!("{} {m}x{k}x{n} {act:?} {} {path}", fmt.name(), variant.name());
                assert_nmse(&what, &got, &want, SHARED_WEIGHTS_NMSE);
            }
        }
    }
}

/// Every candidate variant (including the discrete-GPU ones) on lavapipe, so the table can
/// pick any of them. Q4 with zero points and FP4 g16 (scalar word path) cover the decoders.
#[test]
fn every_variant_matches_reference() {
    let formats = [
        WeightFormat::Q4 { group: 64, zero_point: true },
        WeightFormat::Fp4 { group: 16 },
        WeightFormat::Q8 { group: None },
    ];
    for (path, gpu) in gpus() {
        for fmt in formats {
            let (k, n, m) = (200, 45, 11);
            let packed = PackedMatrix::quantize(&random(n * k, 3, 1.0), n, k, fmt).unwrap();
            let bias = random(n, 4, 0.5);
            let layer = QLinear::new(gpu, &packed, Some(&bias)).unwrap();
            let x = random(m * k, 8, 1.0);
            let want = linear_reference(&packed, Some(&bias), &x, m, Some(Activation::Swish));
            for v in matmul::candidates(false).into_iter().chain(matmul::candidates(true)) {
                let got = run(gpu, &layer, &x, m, Some(Activation::Swish), Some(v));
                assert_nmse(&format!("{} {} {path}", fmt.name(), v.name()), &got, &want, QUANT_NMSE);
            }
        }
    }
}

/// A 4 KiB binding limit splits a modest matrix into several chunks; results still match.
#[test]
fn split_across_bindings() {
    let gpu = Gpu::with_options(&GpuOptions { max_binding_size: Some(4096), ..GpuOptions::from_env() }).unwrap();
    for fmt in [WeightFormat::F32, WeightFormat::Q4 { group: 32, zero_point: false }, WeightFormat::Q4 { group: 64, zero_point: true }] {
        let (k, n) = (300, 150);
        let packed = PackedMatrix::quantize(&random(n * k, 11, 1.0), n, k, fmt).unwrap();
        let bias = random(n, 12, 1.0);
        let layer = QLinear::new(&gpu, &packed, Some(&bias)).unwrap();
        assert!(layer.chunks() >= 3, "{}: only {} chunks", fmt.name(), layer.chunks());
        // x and out must fit one binding too, so few rows; the GEMM is forced.
        let gemm = Variant::GemmTiled { wg: 64, tm: 8, tn: 2 };
        let gemm_wg = Variant::GemmWorkgroup { bm: 16, bn: 64, tm: 2, tn: 4 };
        for (m, variant) in [(1, None), (3, None), (3, Some(gemm)), (3, Some(gemm_wg))] {
            let x = random(m * k, 13, 1.0);
            let want = linear_reference(&packed, Some(&bias), &x, m, None);
            let got = run(&gpu, &layer, &x, m, None, variant);
            let what = format!("split {} m={m} {variant:?} chunks={}", fmt.name(), layer.chunks());
            assert_nmse(&what, &got, &want, bound(fmt));
        }
    }
}

#[test]
fn leading_dims_are_flattened() {
    let gpu = gpu();
    let (k, n) = (64, 10);
    let packed = PackedMatrix::quantize(&random(n * k, 1, 1.0), n, k, WeightFormat::Q8 { group: Some(32) }).unwrap();
    let layer = QLinear::new(gpu, &packed, None).unwrap();
    let x = random(2 * 3 * k, 2, 1.0);
    let xt = Tensor::from_f32(gpu, &[2, 3, k], &x).unwrap();
    let out = Tensor::zeros(gpu, &[2, 3, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    linear(gpu, &mut enc, &layer, &xt, &out, None).unwrap();
    gpu.submit(enc).unwrap();
    assert_nmse("flattened", &out.to_vec_f32(gpu).unwrap(), &linear_reference(&packed, None, &x, 6, None), QUANT_NMSE);
}

#[test]
fn bad_input_is_an_error() {
    let gpu = gpu();
    let (k, n) = (64, 10);
    let packed = PackedMatrix::quantize(&random(n * k, 1, 1.0), n, k, WeightFormat::Ternary).unwrap();
    let layer = QLinear::new(gpu, &packed, None).unwrap();
    assert_eq!((layer.in_features(), layer.out_features(), layer.format()), (k, n, WeightFormat::Ternary));
    assert!(QLinear::new(gpu, &packed, Some(&[0.0; 3])).is_err(), "bias length");
    let mut enc = gpu.encoder();
    let x = Tensor::zeros(gpu, &[2, k + 1], DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &[2, n], DType::F32).unwrap();
    assert!(linear(gpu, &mut enc, &layer, &x, &out, None).is_err(), "K mismatch");
    let x = Tensor::zeros(gpu, &[2, k], DType::F32).unwrap();
    let bad_out = Tensor::zeros(gpu, &[2, n + 1], DType::F32).unwrap();
    assert!(linear(gpu, &mut enc, &layer, &x, &bad_out, None).is_err(), "out shape");
    let bad_out = Tensor::zeros(gpu, &[3, n], DType::F32).unwrap();
    assert!(linear(gpu, &mut enc, &layer, &x, &bad_out, None).is_err(), "out rows");
    let ids = Tensor::from_u32(gpu, &[2, k], &vec![0; 2 * k]).unwrap();
    assert!(linear(gpu, &mut enc, &layer, &ids, &out, None).is_err(), "dtype");
    let forced = Variant::GemmTiled { wg: 64, tm: 9, tn: 1 };
    assert!(linear_with(gpu, &mut enc, &layer, &x, &out, None, forced).is_err(), "tile too large");
}

#[test]
fn bench_cases_build_and_run() {
    let gpu = gpu();
    let mut cases = lowbit::kernels::matmul::bench_cases(gpu, BenchSize::Quick).unwrap();
    assert_eq!(cases.len(), 2 * WeightFormat::all().len());
    for c in cases.iter_mut().take(4) {
        let mut enc = gpu.encoder();
        (c.step)(gpu, &mut enc).unwrap();
        gpu.submit(enc).unwrap();
    }
    assert!(!matmul::tune_cases(gpu, BenchSize::Quick).unwrap().is_empty());
}
