mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::elementwise::Activation;
use lowbit::kernels::matmul::{linear, linear_reference, linear_with, QLinear};
use lowbit::kernels::tuning::{self, Variant};
use lowbit::kernels::BenchSize;
use lowbit::quant::{PackedMatrix, WeightFormat};
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
            for v in tuning::candidates(false).into_iter().chain(tuning::candidates(true)) {
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
        for (m, variant) in [(1, None), (3, None), (3, Some(gemm))] {
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
    assert!(!tuning::tune_cases(gpu, BenchSize::Quick).unwrap().is_empty());
}

/// Timings on this adapter: `cargo test --test matmul -- --ignored --nocapture timings`.
/// LOWBIT_TUNE=1 times every candidate variant instead of the benchmark table.
#[test]
#[ignore]
fn timings() {
    let gpu = gpu();
    let size = if std::env::var("LOWBIT_QUICK").is_ok() { BenchSize::Quick } else { BenchSize::Full };
    let filter = std::env::var("LOWBIT_FILTER").unwrap_or_default();
    let cases: Vec<(String, lowbit::kernels::BenchCase)> = if std::env::var("LOWBIT_TUNE").is_ok() {
        tuning::tune_cases(gpu, size).unwrap()
    } else {
        lowbit::kernels::matmul::bench_cases(gpu, size).unwrap().into_iter().map(|c| (String::new(), c)).collect()
    };
    for (name, mut c) in cases {
        let label = format!("{} {} {} {name}", c.kernel, c.format, c.shape);
        if !label.contains(&filter) {
            continue;
        }
        let (ms, clock) = gpu.time_step(5, |enc| (c.step)(gpu, enc)).unwrap();
        // The machine is shared: CPU time spent (all lavapipe threads) over the 2 cores is
        // a steadier estimate of the uncontended time than the wall clock.
        let reps = (400.0 / ms).clamp(2.0, 50.0) as usize;
        let mut enc = gpu.encoder();
        for _ in 0..reps {
            (c.step)(gpu, &mut enc).unwrap();
        }
        let t0 = cpu_ms();
        gpu.submit(enc).unwrap();
        gpu.wait().unwrap();
        let cpu = (cpu_ms() - t0) / reps as f64 / 2.0;
        eprintln!(
            "{label:48} {ms:8.3} ms {:6.2} GB/s {:6.2} GFLOP/s ({clock:?}) | cpu/2 {cpu:8.3} ms {:6.2} GB/s {:6.2} GFLOP/s",
            c.bytes as f64 / ms / 1e6,
            c.flops as f64 / ms / 1e6,
            c.bytes as f64 / cpu / 1e6,
            c.flops as f64 / cpu / 1e6
        );
    }
}

/// User + system CPU time of this process (all threads), in ms, from /proc/self/stat.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after_name.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // Fields 14 and 15 of the file (utime, stime) in 100 Hz ticks; `f` starts at field 3.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10.0
}

/// A/B of kernel variants on the headline Q4 shapes, interleaved so shared-machine noise hits
/// all alike: `cargo test --release --test matmul -- --ignored --nocapture variants_ab`.
#[test]
#[ignore]
fn variants_ab() {
    let gpu = gpu();
    let (k, n) = (4096, 4096);
    let filter = std::env::var("LOWBIT_FILTER").unwrap_or_default();
    for fmt in [WeightFormat::Q4 { group: 32, zero_point: false }, WeightFormat::Q4 { group: 128, zero_point: false }] {
        let packed = PackedMatrix::quantize(&random(n * k, 1, 1.0), n, k, fmt).unwrap();
        let layer = QLinear::new(gpu, &packed, None).unwrap();
        for gemm in [false, true] {
            let m = if gemm { 197 } else { 1 };
            let variants: Vec<Variant> = tuning::candidates(gemm).into_iter().filter(|v| !matches!(v, Variant::GemvCoop { .. })).collect();
            let label = format!("{} {m}x{k}x{n}", fmt.name());
            if !label.contains(&filter) {
                continue;
            }
            let x = Tensor::from_f32(gpu, &[m, k], &random(m * k, 2, 1.0)).unwrap();
            let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
            let mut times = vec![vec![]; variants.len()];
            for _ in 0..if gemm { 1 } else { 3 } {
                for (t, &v) in times.iter_mut().zip(&variants) {
                    // CPU time of all lavapipe threads over the 2 cores: steadier than the
                    // wall clock on a shared machine.
                    let reps = if m == 1 { 100 } else { 1 };
                    let mut enc = gpu.encoder();
                    for _ in 0..reps {
                        linear_with(gpu, &mut enc, &layer, &x, &out, None, v).unwrap();
                    }
                    let t0 = cpu_ms();
                    gpu.submit(enc).unwrap();
                    gpu.wait().unwrap();
                    t.push((cpu_ms() - t0) / reps as f64 / 2.0);
                }
            }
            for (t, v) in times.iter_mut().zip(&variants) {
                t.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let ms = t[t.len() / 2];
                let name = v.name();
                eprintln!("{label:24} {name:24} {ms:8.3} ms {:6.2} GB/s {:6.2} GFLOP/s", packed.bytes() as f64 / ms / 1e6, 2.0 * (m * k * n) as f64 / ms / 1e6);
            }
        }
    }
}

/// deit_tiny's Linear shapes in f32, f16 and q8 with the table's variant, CPU time per call:
/// `cargo test --release --test matmul -- --ignored --nocapture deit_shapes`.
#[test]
#[ignore]
fn deit_shapes() {
    let gpu = gpu();
    for (k, n) in [(192, 576), (192, 768), (768, 192)] {
        for fmt in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8 { group: None }, WeightFormat::Q4 { group: 32, zero_point: false }] {
            let m = 197;
            let packed = PackedMatrix::quantize(&random(n * k, 1, 1.0), n, k, fmt).unwrap();
            let layer = QLinear::new(gpu, &packed, None).unwrap();
            let x = Tensor::from_f32(gpu, &[m, k], &random(m * k, 2, 1.0)).unwrap();
            let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
            let mut t = vec![];
            for _ in 0..5 {
                let reps = 10;
                let mut enc = gpu.encoder();
                for _ in 0..reps {
                    linear(gpu, &mut enc, &layer, &x, &out, None).unwrap();
                }
                let t0 = cpu_ms();
                gpu.submit(enc).unwrap();
                gpu.wait().unwrap();
                t.push((cpu_ms() - t0) / reps as f64 / 2.0);
            }
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let ms = t[2];
            eprintln!("{m}x{k}x{n} {:8} {ms:8.3} ms {:6.2} GFLOP/s", fmt.name(), 2.0 * (m * k * n) as f64 / ms / 1e6);
        }
    }
}
