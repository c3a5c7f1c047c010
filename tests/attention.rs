mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::attention::*;
use lowbit::metrics::{cosine, relative_l1};
use lowbit::Gpu;

fn run(gpu: &Gpu, p: AttentionParams, data: &[f32], sage: Option<SageOptions>) -> Vec<f32> {
    let qkv = Tensor::from_f32(gpu, &p.qkv_shape(), data).unwrap();
    let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
    let mut enc = gpu.encoder();
    match sage {
        None => attention(gpu, &mut enc, &qkv, &out, p).unwrap(),
        Some(opts) => sage_attention(gpu, &mut enc, &qkv, &out, p, opts).unwrap(),
    }
    gpu.submit(enc).unwrap();
    out.to_vec_f32(gpu).unwrap()
}

/// The shapes: ViT-sized heads with odd token counts, the VQGAN single-head block,
/// and a causal case.
fn shapes() -> Vec<AttentionParams> {
    vec![
        AttentionParams::new(2, 197, 3, 64),
        AttentionParams::new(1, 7, 2, 64),
        AttentionParams::new(1, 50, 1, 36),
        AttentionParams::new(1, 256, 1, 512),
        AttentionParams::new(2, 61, 2, 64).causal(true),
    ]
}

#[test]
fn f32_attention_matches_reference() {
    for (path, gpu) in gpus() {
        for (n, p) in shapes().into_iter().enumerate() {
            let data = random(p.qkv_shape().iter().product(), 10 + n as u64, 2.0);
            let got = run(gpu, p, &data, None);
            let want = attention_reference(&data, &p).unwrap();
            assert_nmse(&format!("f32 {p:?} {path}"), &got, &want, F32_NMSE);
        }
    }
}

#[test]
fn f32_attention_custom_scale() {
    let gpu = gpu();
    let p = AttentionParams { scale: 0.5, ..AttentionParams::new(1, 19, 2, 16) };
    let data = random(p.qkv_shape().iter().product(), 3, 1.0);
    assert_nmse("scale 0.5", &run(gpu, p, &data, None), &attention_reference(&data, &p).unwrap(), F32_NMSE);
}

#[test]
fn sage_matches_its_reference_and_exact_attention() {
    for (path, gpu) in gpus() {
        for (n, p) in shapes().into_iter().enumerate() {
            let data = realistic_qkv(&p, 20 + n as u64);
            let opts = SageOptions { q_block: 64, k_block: 32, ..Default::default() };
            let got = run(gpu, p, &data, Some(opts));
            let own = sage_reference(&data, &p, &opts.effective(gpu)).unwrap();
            let exact = attention_reference(&data, &p).unwrap();
            let what = format!("sage {p:?} {path} (pv_f16 {})", opts.effective(gpu).pv_f16);
            // The f32 P·V path reproduces the reference's arithmetic; f16 P·V rounds P too.
            // f32 P·V: the f32 bound (NVIDIA's exp and division differ from the CPU's in the last bits).
            let own_bound = if opts.effective(gpu).pv_f16 { 1e-6 } else { F32_NMSE };
            assert_nmse(&format!("{what} vs sage reference"), &got, &own, own_bound);
            assert_nmse(&format!("{what} vs exact"), &got, &exact, QUANT_NMSE);
            let (cos, l1) = (cosine(&got, &exact), relative_l1(&got, &exact));
            eprintln!("{what}: cosine {cos:.6}, relative L1 {l1:.4e}");
            assert!(cos >= 0.999, "{what}: cosine {cos}");
            assert!(l1 <= 0.03, "{what}: relative L1 {l1}");
        }
    }
}

/// The forced GPU plan on this adapter, with and without its optional features: attention
/// runs the flash kernel there.
fn flash_gpus() -> [(&'static str, &'static Gpu); 2] {
    [("gpu-plan", gpu_plan()), ("gpu-plan fallback", gpu_plan_fallback())]
}

/// Odd shapes for flash: 1 and 5 tokens (one partial tile), 197 and 257 (partial last query
/// and key tiles), every head-width class (D4 16/32/64/128, exact and not: 100 and 300 leave a
/// team member with fewer or no channel quads), batch 3, causal on and off.
fn flash_shapes() -> Vec<AttentionParams> {
    vec![
        AttentionParams::new(1, 1, 1, 8),
        AttentionParams::new(3, 5, 3, 36),
        AttentionParams::new(1, 5, 12, 8).causal(true),
        AttentionParams::new(1, 5, 1, 512),
        AttentionParams::new(3, 197, 12, 64),
        AttentionParams::new(1, 197, 3, 64).causal(true),
        AttentionParams::new(3, 257, 1, 36).causal(true),
        AttentionParams::new(1, 257, 3, 8),
        AttentionParams::new(1, 37, 2, 100),
        AttentionParams::new(2, 40, 2, 128).causal(true),
        AttentionParams::new(1, 50, 1, 256),
        AttentionParams::new(1, 29, 1, 300).causal(true),
        AttentionParams::new(1, 256, 1, 512),
        AttentionParams::new(3, 256, 1, 512).causal(true),
    ]
}

/// Exact flash vs the f64 reference. Only f32 rounding differs (products, sums over D and over
/// keys, exp): relative errors of a few 1e-7 per output, NMSE 2e-14 to 1.6e-13 measured on
/// lavapipe over `flash_shapes`; the bound leaves ~6× for other GPUs' exp and summation order.
const FLASH_NMSE: f64 = 1e-12;

#[test]
fn flash_attention_matches_reference() {
    for (path, gpu) in flash_gpus() {
        assert_eq!(kernel_for(gpu), AttentionKernel::Flash, "{path}");
        for (n, p) in flash_shapes().into_iter().enumerate() {
            let data = random(p.qkv_shape().iter().product(), 40 + n as u64, 2.0);
            let got = run(gpu, p, &data, None);
            let want = attention_reference(&data, &p).unwrap();
            assert_nmse(&format!("flash f32 {p:?} {path}"), &got, &want, FLASH_NMSE);
        }
    }
}

#[test]
fn flash_sage_matches_its_reference_and_exact_attention() {
    for (path, gpu) in flash_gpus() {
        for (n, p) in flash_shapes().into_iter().enumerate() {
            let data = realistic_qkv(&p, 60 + n as u64);
            // Blocks that do not divide the tiles nor the token counts, then the defaults.
            for opts in [SageOptions { q_block: 48, k_block: 20, ..Default::default() }, SageOptions::default()] {
                let got = run(gpu, p, &data, Some(opts));
                let eff = opts.effective(gpu);
                let own = sage_reference(&data, &p, &eff).unwrap();
                let exact = attention_reference(&data, &p).unwrap();
                let what = format!("flash sage {p:?} {path} blocks {}/{} (pv_f16 {})", opts.q_block, opts.k_block, eff.pv_f16);
                // As the per-query sage kernel: f32 P·V repeats the reference's arithmetic
                // (in f32), f16 P·V rounds each P too.
                let own_bound = if eff.pv_f16 { 1e-6 } else { F32_NMSE };
                assert_nmse(&format!("{what} vs sage reference"), &got, &own, own_bound);
                assert_nmse(&format!("{what} vs exact"), &got, &exact, QUANT_NMSE);
            }
        }
    }
}

#[test]
fn flash_bad_inputs_are_errors() {
    let gpu = gpu_plan();
    let p = AttentionParams::new(1, 8, 2, 16);
    let qkv = Tensor::zeros(gpu, &p.qkv_shape(), DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let wrong_qkv = Tensor::zeros(gpu, &[1, 8, 95], DType::F32).unwrap();
    assert!(flash_attention(gpu, &mut enc, &wrong_qkv, &out, p).is_err());
    assert!(sage_attention(gpu, &mut enc, &wrong_qkv, &out, p, SageOptions::default()).is_err());
    assert!(flash_attention(gpu, &mut enc, &qkv, &qkv, p).is_err());
    for bad in [AttentionParams::new(1, 8, 2, 18), AttentionParams::new(1, 8, 1, 1024), AttentionParams { scale: f32::INFINITY, ..p }] {
        assert!(flash_attention(gpu, &mut enc, &qkv, &out, bad).is_err(), "{bad:?}");
    }
    gpu.submit(enc).unwrap();
}

/// The GPU-class mapping (one query per invocation, 64 per workgroup) on this adapter too.
#[test]
fn gpu_layout_matches_reference() {
    let gpu = gpu();
    let narrow = Layout { workgroup: 64, wide: false };
    for p in [AttentionParams::new(1, 97, 2, 64), AttentionParams::new(1, 40, 1, 128).causal(true)] {
        let data = realistic_qkv(&p, 5);
        let qkv = Tensor::from_f32(gpu, &p.qkv_shape(), &data).unwrap();
        let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
        let mut enc = gpu.encoder();
        attention_with_layout(gpu, &mut enc, &qkv, &out, p, narrow).unwrap();
        gpu.submit(enc).unwrap();
        let exact = attention_reference(&data, &p).unwrap();
        assert_nmse(&format!("f32 narrow {p:?}"), &out.to_vec_f32(gpu).unwrap(), &exact, F32_NMSE);
        let opts = SageOptions { layout: Some(narrow), ..Default::default() };
        let got = run(gpu, p, &data, Some(opts));
        let own = sage_reference(&data, &p, &opts.effective(gpu)).unwrap();
        assert_nmse(&format!("sage narrow {p:?}"), &got, &own, 1e-6);
    }
    let mut enc = gpu.encoder();
    let p = AttentionParams::new(1, 8, 1, 16);
    let qkv = Tensor::zeros(gpu, &p.qkv_shape(), DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
    assert!(attention_with_layout(gpu, &mut enc, &qkv, &out, p, Layout { workgroup: 0, wide: true }).is_err());
}

/// The number the benchmark reports: sage vs exact on ViT-B's attention shape.
#[test]
fn sage_quality_on_benchmark_shape() {
    for (path, gpu) in gpus() {
        let q = quality(gpu, SageOptions::default()).unwrap();
        eprintln!("sage quality 197x12x64 {path} (pv_f16 {}): {q:?}", SageOptions::default().effective(gpu).pv_f16);
        assert!(q.cosine >= 0.999 && q.relative_l1 < 0.03 && q.nmse <= QUANT_NMSE, "{path}: {q:?}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let p = AttentionParams::new(1, 8, 2, 16);
    let qkv = Tensor::zeros(gpu, &p.qkv_shape(), DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let wrong_qkv = Tensor::zeros(gpu, &[1, 8, 95], DType::F32).unwrap();
    assert!(attention(gpu, &mut enc, &wrong_qkv, &out, p).is_err());
    assert!(sage_attention(gpu, &mut enc, &wrong_qkv, &out, p, SageOptions::default()).is_err());
    let wrong_out = Tensor::zeros(gpu, &[1, 8, 33], DType::F32).unwrap();
    assert!(attention(gpu, &mut enc, &qkv, &wrong_out, p).is_err());
    let ints = Tensor::zeros(gpu, &p.qkv_shape(), DType::U32).unwrap();
    assert!(attention(gpu, &mut enc, &ints, &out, p).is_err());
    assert!(attention(gpu, &mut enc, &qkv, &qkv, p).is_err());
    for bad in [
        AttentionParams::new(0, 8, 2, 16),
        AttentionParams::new(1, 8, 2, 18),
        AttentionParams::new(1, 8, 1, 1024),
        AttentionParams { scale: f32::NAN, ..p },
    ] {
        assert!(attention(gpu, &mut enc, &qkv, &out, bad).is_err(), "{bad:?}");
    }
    let zero_block = SageOptions { q_block: 0, ..Default::default() };
    assert!(sage_attention(gpu, &mut enc, &qkv, &out, p, zero_block).is_err());
    assert!(attention_reference(&[0.0; 5], &p).is_err());
    gpu.submit(enc).unwrap();
}

#[test]
fn quick_bench_cases_run() {
    for (path, gpu) in all_plans() {
        let cases = bench_cases(gpu, lowbit::kernels::BenchSize::Quick).unwrap();
        assert_eq!(cases.len(), if gpu.caps.f16 { 3 } else { 2 }, "{path}");
        for mut case in cases {
            assert!(case.bytes > 0 && case.flops > 0);
            let mut enc = gpu.encoder();
            (case.step)(gpu, &mut enc).unwrap();
            gpu.submit(enc).unwrap();
            gpu.wait().unwrap();
        }
    }
}
