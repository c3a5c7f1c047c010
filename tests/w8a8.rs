mod common;
use common::*;
use lowbit::synthetic::outlier_activations as activations;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::w8a8::{quantize_activations, reference, w8a8_forward, w8a8_linear, QuantizedActivations, W8A8Linear};
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::{Gpu, GpuOptions};

const Q8: WeightFormat = WeightFormat::Q8 { group: None };


fn quantize_on_gpu(gpu: &Gpu, x: &[f32], m: usize, k: usize) -> QuantizedActivations {
    let xt = Tensor::from_f32(gpu, &[m, k], x).unwrap();
    let xq = QuantizedActivations::new(gpu, m, k).unwrap();
    let mut enc = gpu.encoder();
    quantize_activations(gpu, &mut enc, &xt, &xq).unwrap();
    gpu.submit(enc).unwrap();
    xq
}

#[test]
fn activation_quantization_matches_cpu_exactly() {
    for (path, gpu) in gpus() {
        for (m, k) in [(1, 77), (3, 200), (197, 768), (2, 5000)] {
            let x = activations(m, k, (m * k) as u64);
            let xq = quantize_on_gpu(gpu, &x, m, k);
            let (codes, scales) = xq.read(gpu).unwrap();
            let (want_codes, want_scales) = reference::quantize(&x, m, k).unwrap();
            // WGSL lets division be off by 2.5 ULP (lavapipe is exact, NVIDIA is not), so a code
            // may differ by one where x/scale sits on a rounding tie; nowhere else.
            let code = |words: &[u32], i: usize| (words[i / 4] >> (8 * (i % 4))) as u8 as i8 as i32;
            let row_words = k.div_ceil(4);
            for r in 0..m {
                for c in 0..k {
                    let (got, want) = (code(&codes[r * row_words..], c), code(&want_codes[r * row_words..], c));
                    if got != want {
                        let t = x[r * k + c] / want_scales[r];
                        let near_tie = (t.abs().fract() - 0.5).abs() < 1e-3;
                        assert!((got - want).abs() == 1 && near_tie, "{path} {m}×{k} ({r},{c}): code {got} vs {want} (x/scale {t})");
                    }
                }
            }
            for (r, (s, w)) in scales.iter().zip(&want_scales).enumerate() {
                assert!((s - w).abs() <= 1e-6 * w.abs(), "{path} {m}×{k} row {r}: scale {s} vs {w}");
            }
            if m > 2 {
                assert_eq!(scales[1], 0.0, "all-zero row gets scale 0");
            }
            // Codes are real: the row maximum maps to ±127.
            assert!(codes.iter().any(|&w| (0..4).any(|j| (w >> (8 * j)) as u8 as i8 == 127 || (w >> (8 * j)) as u8 as i8 == -127)));
        }
    }
}

/// Runs the full W8A8 forward and checks it against the integer reference and the f32 matmul.
fn check_gemm(path: &str, gpu: &Gpu, m: usize, k: usize, n: usize, gelu: bool) {
    let x = activations(m, k, 7 + m as u64);
    let w = random(n * k, 11 + n as u64, 0.08);
    let bias = random(n, 13, 0.5);
    let packed = PackedMatrix::quantize(&w, n, k, Q8).unwrap();
    let mut layer = W8A8Linear::new(gpu, &packed, Some(&bias)).unwrap();
    if gelu {
        layer = layer.with_gelu();
    }
    let xt = Tensor::from_f32(gpu, &[m, k], &x).unwrap();
    let scratch = QuantizedActivations::new(gpu, m, k).unwrap();
    let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    w8a8_forward(gpu, &mut enc, &layer, &xt, &scratch, &out).unwrap();
    gpu.submit(enc).unwrap();
    let got = out.to_vec_f32(gpu).unwrap();
    let what = format!("{path} {m}×{k}×{n}{}", if gelu { " gelu" } else { "" });

    let (codes, scales) = scratch.read(gpu).unwrap();
    let exact = reference::gemm(&codes, &scales, m, &packed, Some(&bias), gelu).unwrap();
    assert_nmse(&format!("{what} vs integer reference"), &got, &exact, F32_NMSE);

    // Against the unquantized layer (f64 accumulation).
    let float: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let dot: f64 = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum();
            let v = (dot + bias[c] as f64) as f32;
            if gelu { lowbit::kernels::elementwise::Activation::Gelu.reference(v) } else { v }
        })
        .collect();
    assert_nmse(&format!("{what} vs f32 matmul"), &got, &float, QUANT_NMSE);
}

#[test]
fn gemm_matches_references_on_odd_shapes() {
    for (path, gpu) in all_plans() {
        for (m, k, n) in [(1, 77, 13), (3, 200, 64), (197, 768, 13), (5, 768, 64), (197, 77, 64)] {
            check_gemm(path, gpu, m, k, n, false);
        }
        check_gemm(path, gpu, 3, 200, 13, true);
    }
}

#[test]
fn weights_split_over_bindings() {
    // 200 bytes per weight row and 4 KiB bindings: 20 output channels per part, 4 parts.
    let gpu = Gpu::with_options(&GpuOptions { max_binding_size: Some(4096), ..GpuOptions::from_env() }).unwrap();
    check_gemm("split", &gpu, 3, 200, 64, false);
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let (m, k, n) = (3, 40, 8);
    let w = random(n * k, 1, 1.0);
    let packed = PackedMatrix::quantize(&w, n, k, Q8).unwrap();
    let layer = W8A8Linear::new(gpu, &packed, None).unwrap();

    // Weights that are not Q8 per channel, or a bias of the wrong length.
    for f in [WeightFormat::Q8 { group: Some(8) }, WeightFormat::Q4 { group: 32, zero_point: false }, WeightFormat::F32] {
        let p = PackedMatrix::quantize(&w, n, k, f).unwrap();
        assert!(W8A8Linear::new(gpu, &p, None).is_err(), "{f:?}");
    }
    assert!(W8A8Linear::new(gpu, &packed, Some(&[0.0; 7])).is_err());
    // K so long that K · 127² could overflow the i32 accumulators.
    let long_k = lowbit::kernels::w8a8::MAX_K + 1;
    let long = PackedMatrix::quantize(&vec![0.5; long_k], 1, long_k, Q8).unwrap();
    assert!(W8A8Linear::new(gpu, &long, None).is_err());
    assert!(QuantizedActivations::new(gpu, 0, k).is_err());

    let x = Tensor::from_f32(gpu, &[m, k], &random(m * k, 2, 1.0)).unwrap();
    let xq = QuantizedActivations::new(gpu, m, k).unwrap();
    let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    // Wrong K, wrong row count, wrong output width, wrong dtype.
    let xq_wrong_k = QuantizedActivations::new(gpu, m, k + 1).unwrap();
    assert!(quantize_activations(gpu, &mut enc, &x, &xq_wrong_k).is_err());
    assert!(quantize_activations(gpu, &mut enc, &x, &QuantizedActivations::new(gpu, m + 1, k).unwrap()).is_err());
    assert!(w8a8_linear(gpu, &mut enc, &layer, &xq_wrong_k, &out).is_err());
    assert!(w8a8_linear(gpu, &mut enc, &layer, &xq, &Tensor::zeros(gpu, &[m, n + 1], DType::F32).unwrap()).is_err());
    assert!(w8a8_linear(gpu, &mut enc, &layer, &xq, &Tensor::zeros(gpu, &[m + 1, n], DType::F32).unwrap()).is_err());
    let ids = Tensor::zeros(gpu, &[m, k], DType::U32).unwrap();
    assert!(quantize_activations(gpu, &mut enc, &ids, &xq).is_err());
    // The valid calls still work after the rejected ones.
    quantize_activations(gpu, &mut enc, &x, &xq).unwrap();
    w8a8_linear(gpu, &mut enc, &layer, &xq, &out).unwrap();
    gpu.submit(enc).unwrap();
    assert!(out.to_vec_f32(gpu).unwrap().iter().any(|&v| v != 0.0));
}

#[test]
fn every_shader_variant_validates() {
    let source = include_str!("../shaders/w8a8.wgsl");
    let flags = lowbit::gpu::shader_flags(source);
    assert!(flags.iter().any(|f| f == "PACKED_DOT"), "{flags:?}");
    for mask in 0..1u32 << flags.len() {
        let on: Vec<&str> = flags.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, f)| f.as_str()).collect();
        let src = lowbit::gpu::preprocess(source, &on).unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{on:?}: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{on:?}: {e:?}"));
    }
}

#[test]
fn tiny_k_and_batched_input() {
    for (path, gpu) in all_plans() {
        check_gemm(path, gpu, 2, 3, 5, false);
        check_gemm(path, gpu, 9, 17, 300, true);
    }
    // [batch, tokens, K] activations flatten to rows.
    let gpu = gpu();
    let (b, t, k, n) = (2, 3, 20, 6);
    let x = random(b * t * k, 5, 1.0);
    let packed = PackedMatrix::quantize(&random(n * k, 6, 0.1), n, k, Q8).unwrap();
    let layer = W8A8Linear::new(gpu, &packed, None).unwrap();
    let xt = Tensor::from_f32(gpu, &[b, t, k], &x).unwrap();
    let scratch = QuantizedActivations::new(gpu, b * t, k).unwrap();
    let out = Tensor::zeros(gpu, &[b, t, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    w8a8_forward(gpu, &mut enc, &layer, &xt, &scratch, &out).unwrap();
    gpu.submit(enc).unwrap();
    let (codes, scales) = reference::quantize(&x, b * t, k).unwrap();
    let want = reference::gemm(&codes, &scales, b * t, &packed, None, false).unwrap();
    assert_nmse("batched", &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
}

/// dot4I8Packed reaches the hardware: naga's SPIR-V for `gemm_workgroup` holds OpSDot when the
/// device has the integer dot-product capabilities (wgpu enables them on Vulkan devices with
/// VK_KHR_shader_integer_dot_product), and a polyfill without them. Runs without a GPU.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn packed_dot_becomes_opsdot_in_spirv() {
    use naga::back::spv::{self, Capability};
    let text = lowbit::gpu::preprocess(include_str!("../shaders/w8a8.wgsl"), &["PACKED_DOT"]).unwrap();
    let module = naga::front::wgsl::parse_str(&text).unwrap();
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all()).validate(&module).unwrap();
    let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((naga::ShaderStage::Compute, "gemm_workgroup")), &Default::default()).unwrap();
    // Opcodes of every instruction after the 5-word header.
    let opcodes = |caps: &[Capability]| -> Vec<u32> {
        let options = spv::Options {
            lang_version: (1, 3),
            capabilities: Some(caps.iter().copied().chain([Capability::Shader]).collect()),
            ..Default::default()
        };
        let pipeline = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "gemm_workgroup".into() };
        let words = spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap();
        let (mut ops, mut i) = (vec![], 5);
        while i < words.len() {
            ops.push(words[i] & 0xffff);
            i += (words[i] >> 16).max(1) as usize;
        }
        ops
    };
    const OP_SDOT: u32 = 4450;
    assert!(opcodes(&[Capability::DotProduct, Capability::DotProductInput4x8BitPacked]).contains(&OP_SDOT));
    assert!(!opcodes(&[]).contains(&OP_SDOT), "without the capability naga must polyfill");
}
