//! Static activation quantizers: the kernel against its CPU reference (native and fallback
//! paths, odd lengths), properties of the quantizers themselves, the post-softmax variant of
//! attention, and the calibration methods (RepQ-ViT's reparameterization, SmoothQuant,
//! NoisyQuant, the log/twin quantizers) on synthetic cases where the papers say they help.

mod common;

use common::{assert_nmse, gpus, random, F32_NMSE};
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::act_quant::{act_quant, act_quant_noise, example_quantizers, noise_reference, ActQuantizer};
use lowbit::kernels::attention::{attention_quantized, attention_quantized_reference, realistic_qkv, AttentionParams};

// The kernel against its reference on every quantizer and odd lengths: src/ops_check
// (`act_quant` cases), run by tests/ops.rs under every plan.

#[test]
fn noise_kernel_matches_reference() {
    for (path, gpu) in gpus() {
        let (rows, ch) = (13, 37);
        let x = random(rows * ch, 5, 2.0);
        let noise = random(ch, 6, 0.1);
        let q = ActQuantizer::Uniform { bits: 4, scale: 0.27, zero: 8.0 };
        let t = Tensor::from_f32(gpu, &[rows, ch], &x).unwrap();
        let nt = Tensor::from_f32(gpu, &[ch], &noise).unwrap();
        let mut enc = gpu.encoder();
        act_quant_noise(gpu, &mut enc, &t, &nt, &q).unwrap();
        gpu.submit(enc).unwrap();
        assert_nmse(&format!("{path} noisy"), &t.to_vec_f32(gpu).unwrap(), &noise_reference(&x, &noise, &q), F32_NMSE);
    }
}

#[test]
fn bad_input_is_refused() {
    let gpu = common::gpu();
    let t = Tensor::from_f32(gpu, &[4], &[1.0; 4]).unwrap();
    let mut enc = gpu.encoder();
    let bad = [
        ActQuantizer::Uniform { bits: 4, scale: 0.0, zero: 0.0 },
        ActQuantizer::Uniform { bits: 4, scale: 1.0, zero: 16.0 },
        ActQuantizer::Uniform { bits: 4, scale: 1.0, zero: 0.5 },
        ActQuantizer::Log2 { bits: 1, delta: 1.0 },
        ActQuantizer::Log2 { bits: 4, delta: f32::NAN },
        ActQuantizer::AdaLog { bits: 4, q: 0, r: 37, scale: 1.0 },
        ActQuantizer::Sulq { bits: 4, eta: -1.0, m: 0.0, delta: 0.1 },
    ];
    for q in bad {
        assert!(act_quant(gpu, &mut enc, &t, &q).is_err(), "{q:?}");
    }
    let q = ActQuantizer::Log2 { bits: 4, delta: 1.0 };
    let ints = Tensor::from_u32(gpu, &[4], &[1; 4]).unwrap();
    assert!(act_quant(gpu, &mut enc, &ints, &q).is_err(), "u32 tensor");
    let empty = Tensor::zeros(gpu, &[0], DType::F32);
    if let Ok(e) = empty {
        assert!(act_quant(gpu, &mut enc, &e, &q).is_err(), "empty tensor");
    }
    let x = Tensor::from_f32(gpu, &[2, 4], &[1.0; 8]).unwrap();
    let noise = Tensor::from_f32(gpu, &[3], &[0.0; 3]).unwrap();
    assert!(act_quant_noise(gpu, &mut enc, &x, &noise, &q).is_err(), "noise length");
}

// ---- properties of the quantizers ----

#[test]
fn log2_reproduces_powers_of_two() {
    let q = ActQuantizer::Log2 { bits: 4, delta: 1.0 };
    for k in 0..16 {
        let x = 2f32.powi(-k);
        assert_eq!(q.apply(x), x, "2^-{k}");
    }
    assert_eq!(q.apply(2f32.powi(-17)), 0.0, "below the last level");
    assert_eq!(q.apply(0.0), 0.0);
    let s = ActQuantizer::LogSqrt2 { bits: 5, delta: 1.0 };
    for k in 0..31 {
        let x = 2f64.powf(-k as f64 / 2.0) as f32;
        assert!((s.apply(x) - x).abs() <= 1e-7 * x, "√2^-{k}: {} vs {x}", s.apply(x));
    }
}

#[test]
fn uniform_has_at_most_2_pow_bits_levels() {
    let x = random(20000, 9, 3.0);
    for bits in [2, 4, 6, 8] {
        let q = ActQuantizer::Uniform { bits, scale: 6.0 / ((1 << bits) - 1) as f32, zero: ((1 << bits) / 2) as f32 };
        let mut levels: Vec<u32> = q.reference(&x).iter().map(|v| v.to_bits()).collect();
        levels.sort();
        levels.dedup();
        assert!(levels.len() <= 1 << bits, "{bits} bits: {} levels", levels.len());
        assert!(levels.len() >= (1 << bits) / 2, "{bits} bits: only {} levels used", levels.len());
    }
}

#[test]
fn error_shrinks_with_bits() {
    let x = random(5000, 11, 2.0);
    let probs: Vec<f32> = random(5000, 12, 1.0).iter().map(|v| (v * 5.0 - 5.0).exp()).collect();
    let mut last = [f64::INFINITY; 3];
    for bits in [3, 4, 6, 8] {
        let top = ((1 << bits) - 1) as f32;
        let u = ActQuantizer::Uniform { bits, scale: 4.0 / top, zero: (top / 2.0).round() };
        let l = ActQuantizer::LogSqrt2 { bits, delta: 1.0 };
        let s = ActQuantizer::Sulq { bits, eta: 0.01, m: (0.01f32).log2(), delta: ((1.01f32).log2() - (0.01f32).log2()) / top };
        let errs = [
            lowbit::metrics::nmse(&u.reference(&x), &x),
            lowbit::metrics::nmse(&l.reference(&probs), &probs),
            lowbit::metrics::nmse(&s.reference(&probs), &probs),
        ];
        // A log grid's resolution is fixed by its base: more bits only reach smaller values, so
        // its error stops shrinking once the range covers the data.
        for (i, e) in errs.iter().enumerate() {
            let ok = if i == 1 { *e <= last[i] } else { *e < last[i] };
            assert!(ok, "quantizer {i}: {bits} bits error {e} not below {}", last[i]);
        }
        last = errs;
    }
}

#[test]
fn quantizers_round_trip_through_json() {
    for q in example_quantizers() {
        let text = serde_json::to_string(&q).unwrap();
        let back: ActQuantizer = serde_json::from_str(&text).unwrap();
        assert_eq!(back, q, "{text}");
        assert!(text.contains(&format!("\"kind\":\"{}\"", q.kind())), "{text}");
    }
}

// ---- attention with a post-softmax quantizer ----

#[test]
fn quantized_attention_matches_reference() {
    for (path, gpu) in gpus() {
        for (p, pq) in [
            (AttentionParams::new(2, 37, 2, 16), ActQuantizer::LogSqrt2 { bits: 4, delta: 1.0 }),
            (AttentionParams::new(1, 21, 3, 12).causal(true), ActQuantizer::Uniform { bits: 6, scale: 1.0 / 63.0, zero: 0.0 }),
            (AttentionParams::new(1, 19, 2, 64), ActQuantizer::TwinUniform { bits: 4, lo: 0.01, hi: 1.0 / 7.0, gelu: false }),
            (AttentionParams::new(1, 9, 1, 8), ActQuantizer::AdaLog { bits: 4, q: 30, r: 37, scale: 1.0 }),
        ] {
            let qkv = realistic_qkv(&p, 4);
            let t = Tensor::from_f32(gpu, &p.qkv_shape(), &qkv).unwrap();
            let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32).unwrap();
            let mut enc = gpu.encoder();
            attention_quantized(gpu, &mut enc, &t, &out, p, &pq).unwrap();
            gpu.submit(enc).unwrap();
            let want = attention_quantized_reference(&qkv, &p, &pq).unwrap();
            assert_nmse(&format!("{path} attention {} T={}", pq.kind(), p.tokens), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            // The quantizer really acts: the result differs from exact attention.
            let exact = lowbit::kernels::attention::attention_reference(&qkv, &p).unwrap();
            assert!(lowbit::metrics::nmse(&want, &exact) > 1e-7, "{path} {pq:?} changed nothing");
        }
    }
}

// ---- calibration methods on synthetic cases ----

use lowbit::quant::act_calib::{prepare, ActMethods};
use lowbit::quant::actq::{fit, output_sse, per_channel, Kind};
use lowbit::quant::calibrate::{Calibration, Model};
use lowbit::quant::repq::repq_map;
use lowbit::quant::{noisy, smooth};

fn sse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
}

/// Post-LayerNorm-like activations: a few channels with large offsets and spreads (the
/// per-channel outliers RepQ-ViT and SmoothQuant are about).
fn outlier_channels(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let r = random(rows * cols, seed, 1.0);
    r.iter().enumerate().map(|(i, v)| {
        let c = i % cols;
        let (spread, offset) = if c % 7 == 3 { (12.0, 5.0) } else { (0.5, 0.1 * (c % 5) as f32) };
        v * spread + offset
    }).collect()
}

#[test]
fn repq_beats_a_plain_per_tensor_grid_on_outlier_channels() {
    let (rows, cols) = (512, 48);
    let x = outlier_channels(rows, cols, 21);
    let plain = fit(Kind::Uniform, 4, &x).unwrap();
    let plain_err = sse(&plain.reference(&x), &x);
    let (map, scale, zero) = repq_map(&per_channel(&x, cols, 4).unwrap());
    let q = ActQuantizer::Uniform { bits: 4, scale, zero };
    // Quantize the reparameterized values per tensor, then map back to compare.
    let back: Vec<f32> = map.apply(&x).iter().enumerate().map(|(i, &v)| map.r[i % cols] * (q.apply(v) - map.b[i % cols])).collect();
    let repq_err = sse(&back, &x);
    eprintln!("per-tensor {plain_err:.3e}, RepQ {repq_err:.3e}");
    assert!(repq_err < 0.25 * plain_err, "RepQ {repq_err} vs per-tensor {plain_err}");
}

#[test]
fn smoothquant_beats_no_smoothing_on_outlier_channels() {
    let (rows, cols, out) = (256, 48, 32);
    let x = outlier_channels(rows, cols, 22);
    let w = random(out * cols, 23, 0.2);
    let map = smooth::search(&x, &w, cols, 4, 4, true).unwrap().expect("smoothing helps here");
    let plain = smooth::output_error(&x, &w, cols, None, 4, 4).unwrap();
    let smoothed = smooth::output_error(&x, &w, cols, Some(&map), 4, 4).unwrap();
    eprintln!("no smoothing {plain:.3e}, SmoothQuant-b {smoothed:.3e}");
    assert!(smoothed < 0.5 * plain);
    // For a consumer without a bias: a scale only, which still takes the outliers' range.
    let scale_only = smooth::search(&x, &w, cols, 4, 4, false).unwrap().expect("smoothing helps here");
    assert!(scale_only.b.iter().all(|&b| b == 0.0));
    assert!(smooth::output_error(&x, &w, cols, Some(&scale_only), 4, 4).unwrap() < 0.5 * plain);
}

#[test]
fn noisyquant_cancels_coherent_rounding_error() {
    // Every channel sits 0.4 steps above a level: plain rounding errs the same way in every
    // channel, and an averaging layer adds those errors up; the noise decorrelates them.
    let (rows, cols) = (64, 96);
    let plain = ActQuantizer::Uniform { bits: 4, scale: 0.1, zero: 0.0 };
    let x: Vec<f32> = random(rows * cols, 31, 0.004).iter().enumerate().map(|(i, v)| 0.1 * ((i % cols) % 8) as f32 + 0.04 + v).collect();
    let w = vec![1.0 / cols as f32; 4 * cols];
    let found = noisy::search(&x, &w, cols, &plain, 5).unwrap().expect("noise helps here");
    let before = output_sse(&plain.reference(&x), &x, &w, cols);
    let shifted: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + found.noise[i % cols]).collect();
    let after_hat: Vec<f32> = shifted.iter().enumerate().map(|(i, &v)| found.quantizer.apply(v) - found.noise[i % cols]).collect();
    let after = output_sse(&after_hat, &x, &w, cols);
    eprintln!("plain {before:.3e}, NoisyQuant {after:.3e}");
    assert!(after < 0.5 * before);
    // The bias absorbs −N·W, so the float layer is unchanged.
    let mut bias = vec![0.5f32; 4];
    noisy::fold_bias(&mut bias, &w, &found.noise);
    let n_w: f32 = found.noise.iter().map(|n| n / cols as f32).sum();
    assert!((bias[0] - (0.5 - n_w)).abs() < 1e-6);
}

#[test]
fn log_and_twin_quantizers_beat_uniform_on_attention_output() {
    let p = AttentionParams::new(1, 65, 4, 16);
    let qkv = realistic_qkv(&p, 8);
    let exact = lowbit::kernels::attention::attention_reference(&qkv, &p).unwrap();
    // Probabilities to calibrate on: the attention of the same input.
    let probs = softmax_rows(&qkv, &p);
    let err = |kind| {
        let q = fit(kind, 4, &probs).unwrap();
        lowbit::metrics::nmse(&attention_quantized_reference(&qkv, &p, &q).unwrap(), &exact)
    };
    let uniform = err(Kind::Uniform);
    for kind in [Kind::LogSqrt2, Kind::Twin { gelu: false }, Kind::AdaLog] {
        let e = err(kind);
        eprintln!("{kind:?}: attention nmse {e:.3e} (uniform {uniform:.3e})");
        assert!(e < uniform, "{kind:?}");
    }
    // AdaLog's search contains log2 (q = r): it never fits worse.
    let mse = |kind| {
        let q = fit(kind, 4, &probs).unwrap();
        sse(&q.reference(&probs), &probs)
    };
    assert!(mse(Kind::AdaLog) <= mse(Kind::Log2));
}

fn softmax_rows(qkv: &[f32], p: &AttentionParams) -> Vec<f32> {
    let (t, hd) = (p.tokens, p.heads * p.head_dim);
    let mut out = Vec::new();
    for h in 0..p.heads {
        for i in 0..t {
            let q = &qkv[i * 3 * hd + h * p.head_dim..][..p.head_dim];
            let s: Vec<f64> = (0..t).map(|j| {
                let k = &qkv[j * 3 * hd + hd + h * p.head_dim..][..p.head_dim];
                q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * p.scale as f64
            }).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = s.iter().map(|v| (v - m).exp()).sum();
            out.extend(s.iter().map(|v| ((v - m).exp() / l) as f32));
        }
    }
    out
}

/// Seeded random images for the fixture ViT.
fn fixture_calibration(model: &Model, n: usize) -> Calibration {
    let lowbit::quant::calibrate::Family::Classifier(lowbit::models::ClassifierConfig::Vit(cfg)) = &model.family else { panic!("a ViT") };
    let (h, w) = cfg.preprocess.input_size;
    let pixels = random(n * 3 * h * w, 77, 1.5);
    Calibration { images: Some((pixels, [n, 3, h, w])), tokens: None, source: "random".into() }
}

#[test]
fn reparameterized_float_model_equals_the_original() {
    let gpu = common::gpu();
    let model = Model::load(&common::fixture_dir("vit_tiny_test")).unwrap();
    let calib = fixture_calibration(&model, 4);
    let reference = model.outputs(gpu, &model.weights, &calib).unwrap();
    for act in [ActMethods { repq: true, ..Default::default() }, ActMethods { smooth: true, ..Default::default() }] {
        let prepared = prepare(gpu, &model, &calib, 4, 4, act, 0).unwrap();
        assert_ne!(prepared.weights.tensors["blocks.0.norm1.weight"].data, model.weights.tensors["blocks.0.norm1.weight"].data, "{act:?} folded nothing");
        let got = model.outputs(gpu, &prepared.weights, &calib).unwrap();
        let cos = lowbit::metrics::cosine(&got, &reference);
        eprintln!("{act:?}: cosine {cos:.8}");
        assert!(cos >= 0.99999, "{act:?}: cosine {cos}");
        // One quantizer per block Linear input and one per attention.
        assert_eq!(prepared.points.len(), 5 * 2, "{:?}", prepared.points.iter().map(|p| &p.node).collect::<Vec<_>>());
    }
}

#[test]
fn adalog_post_gelu_shift_is_folded_into_fc2_bias() {
    let gpu = common::gpu();
    let model = Model::load(&common::fixture_dir("vit_tiny_test")).unwrap();
    let calib = fixture_calibration(&model, 4);
    let act = ActMethods { softmax: Some(Kind::AdaLog), gelu: Some(Kind::AdaLog), ..Default::default() };
    let prepared = prepare(gpu, &model, &calib, 4, 4, act, 0).unwrap();
    let mut shifted = 0;
    for p in &prepared.points {
        let Some(key) = &p.noise else { continue };
        // Only fc2 (post-GELU) inputs get a shift, and it comes with the AdaLog quantizer.
        assert!(p.node.ends_with("mlp.fc2") && matches!(p.quantizer, ActQuantizer::AdaLog { bits: 4, .. }), "{p:?}");
        let shift = &prepared.weights.tensors[key].data;
        assert!(shift.iter().all(|&c| c == shift[0] && c > 0.0), "{shift:?}");
        // β' = β − W·c: the float function of fc2(x + c) is fc2(x).
        let w = &model.weights.tensors[&format!("{}.weight", p.node)];
        let (old, new) = (&model.weights.tensors[&format!("{}.bias", p.node)].data, &prepared.weights.tensors[&format!("{}.bias", p.node)].data);
        for (r, row) in w.data.chunks(w.shape[1]).enumerate() {
            let wc: f64 = row.iter().zip(shift).map(|(a, c)| (*a * *c) as f64).sum();
            assert!((new[r] as f64 - (old[r] as f64 - wc)).abs() < 1e-4 * (1.0 + wc.abs()), "row {r}: {} vs {} − {wc}", new[r], old[r]);
        }
        shifted += 1;
    }
    // At 4 bits the shifted log grid beats the uniform one on both blocks of the fixture.
    assert_eq!(shifted, 2, "{:?}", prepared.points);
    // At 8 bits the uniform grid stays (fc2 then runs in the integer kernel).
    let eight = prepare(gpu, &model, &calib, 8, 4, act, 0).unwrap();
    assert!(eight.points.iter().all(|p| p.noise.is_none() && (p.node.ends_with(".attn") || matches!(p.quantizer, ActQuantizer::Uniform { .. }))), "{:?}", eight.points);
}

#[test]
fn vit_refuses_bad_quantizer_descriptions() {
    let gpu = common::gpu();
    let model = Model::load(&common::fixture_dir("vit_tiny_test")).unwrap();
    let lowbit::quant::calibrate::Family::Classifier(lowbit::models::ClassifierConfig::Vit(cfg)) = &model.family else { panic!("a ViT") };
    let with = |list: serde_json::Value| {
        let mut w = model.weights.clone();
        let desc = serde_json::json!({ "tensors": {}, "activation_quantizers": list });
        w.metadata.insert("quantization".into(), desc.to_string());
        lowbit::models::VisionTransformer::new(gpu, cfg, &w, lowbit::formats::WeightFormat::F32)
    };
    let good = serde_json::json!([{"node": "blocks.0.attn", "kind": "log_sqrt2", "bits": 4, "delta": 1.0}]);
    assert!(with(good).is_ok());
    for (bad, why) in [
        (serde_json::json!([{"node": "blocks.9.attn", "kind": "log2", "bits": 4, "delta": 1.0}]), "not a block"),
        (serde_json::json!([{"node": "blocks.0.attn", "kind": "log2", "bits": 40, "delta": 1.0}]), "bits"),
        (serde_json::json!([{"node": "blocks.0.attn", "kind": "cubic", "bits": 4}]), "cubic"),
        (serde_json::json!([{"node": "blocks.0.mlp.fc1", "kind": "uniform", "bits": 4, "scale": 0.1, "zero": 3.0, "noise": "missing.tensor"}]), "missing.tensor"),
    ] {
        let err = match with(bad) {
            Ok(_) => panic!("{why}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(why), "{why}: {err}");
    }
}
