//! Static activation quantizers: the kernel against its CPU reference (native and fallback
//! paths, odd lengths), properties of the quantizers themselves, the post-softmax variant of
//! attention, and the calibration methods (RepQ-ViT's reparameterization, SmoothQuant,
//! NoisyQuant, the log/twin quantizers) on synthetic cases where the papers say they help.

mod common;

use common::{assert_nmse, gpus, random, F32_NMSE};
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::act_quant::{act_quant, act_quant_noise, noise_reference, ActQuantizer};
use lowbit::kernels::attention::{attention_quantized, attention_quantized_reference, realistic_qkv, AttentionParams};

/// One of each quantizer, parameters in the range calibration picks.
fn quantizers() -> Vec<ActQuantizer> {
    vec![
        ActQuantizer::Uniform { bits: 4, scale: 0.31, zero: 7.0 },
        ActQuantizer::Uniform { bits: 8, scale: 0.013, zero: 100.0 },
        ActQuantizer::Log2 { bits: 4, delta: 0.9 },
        ActQuantizer::LogSqrt2 { bits: 3, delta: 1.0 },
        ActQuantizer::LogSqrt2 { bits: 6, delta: 0.7 },
        ActQuantizer::AdaLog { bits: 4, q: 23, r: 37, scale: 0.8 },
        ActQuantizer::Sulq { bits: 4, eta: 0.2, m: -2.3, delta: 0.21 },
        ActQuantizer::TwinUniform { bits: 6, lo: 0.002, hi: 1.0 / 31.0, gelu: false },
        ActQuantizer::TwinUniform { bits: 4, lo: 0.03, hi: 0.4, gelu: true },
    ]
}

/// Inputs that exercise every range: softmax-like probabilities, GELU-like values, zeros.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let r = random(n, seed, 1.0);
    r.iter()
        .enumerate()
        .map(|(i, &v)| match i % 4 {
            0 => (v * 6.0 - 5.0).exp(),
            1 => v * 3.0,
            2 => v.abs() * 0.05,
            _ => if i % 7 == 0 { 0.0 } else { v - 0.1 },
        })
        .collect()
}

#[test]
fn kernel_matches_reference_on_odd_lengths() {
    for (path, gpu) in gpus() {
        for (k, q) in quantizers().into_iter().enumerate() {
            for n in [1usize, 257, 4099] {
                let x = inputs(n, 3 + k as u64);
                let t = Tensor::from_f32(gpu, &[n], &x).unwrap();
                let mut enc = gpu.encoder();
                act_quant(gpu, &mut enc, &t, &q).unwrap();
                gpu.submit(enc).unwrap();
                let want = q.reference(&x);
                let got = t.to_vec_f32(gpu).unwrap();
                if want.iter().all(|v| *v == 0.0) {
                    assert!(got.iter().all(|v| *v == 0.0), "{path} {q:?} n={n}");
                } else {
                    assert_nmse(&format!("{path} {} n={n}", q.kind()), &got, &want, F32_NMSE);
                }
            }
        }
    }
}

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
    for q in quantizers() {
        let text = serde_json::to_string(&q).unwrap();
        let back: ActQuantizer = serde_json::from_str(&text).unwrap();
        assert_eq!(back, q, "{text}");
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
            assert_nmse(&format!("{path} attention {} T={}", pq.kind(), p.tokens), &out.to_vec_f32(gpu).unwrap(), &want, 1e-6);
            // The quantizer really acts: the result differs from exact attention.
            let exact = lowbit::kernels::attention::attention_reference(&qkv, &p).unwrap();
            assert!(lowbit::metrics::nmse(&want, &exact) > 1e-7, "{path} {pq:?} changed nothing");
        }
    }
}
