//! Static activation fake-quantization: every element is quantized with fixed (calibrated)
//! parameters and dequantized again in place, so the f32 kernels that follow see exactly the
//! values an integer kernel would. This is how the W6A6 recipe, and the W4A8/W4A4 inputs the
//! integer kernel (`kernels::w4a8`, uniform grids only) cannot take, simulate their activations.
//!
//! The quantizers are those of the seed papers (docs/QUANTIZATION.md): per-tensor asymmetric
//! uniform; log2 and log√2 (RepQ-ViT's post-softmax); AdaLog's base 2^(q/r); I&S-ViT's
//! shift-uniform-log2 (SULQ); PTQ4ViT's twin uniform for post-softmax and post-GELU values.

use serde::{Deserialize, Serialize};

use super::{params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("act_quant");
const WG: u32 = 256;

/// One activation quantizer with its calibrated parameters. Serialized (tagged by `kind`) into
/// a checkpoint's quantization description.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActQuantizer {
    /// x̂ = (clamp(round(x/scale) + zero, 0, 2^bits−1) − zero)·scale.
    Uniform { bits: u32, scale: f32, zero: f32 },
    /// x̂ = Δ·2^−q, q = round(−log2(x/Δ)); x ≤ 0 and q ≥ 2^bits give 0.
    Log2 { bits: u32, delta: f32 },
    /// RepQ-ViT: q = round(−2·log2(x/Δ)), x̂ = Δ·2^−⌈q/2⌉·(1 + (√2−1)(q mod 2)).
    LogSqrt2 { bits: u32, delta: f32 },
    /// AdaLog: base 2^(q/r), i.e. x̂ = scale·2^(−code·q/r), code = round(−log2(x/scale)·r/q).
    #[serde(rename = "adalog")]
    AdaLog { bits: u32, q: u32, r: u32, scale: f32 },
    /// I&S-ViT SULQ: uniform on log2(x + η) over [m, m + δ·(2^bits−1)], x̂ = 2^(code·δ + m) − η.
    Sulq { bits: u32, eta: f32, m: f32, delta: f32 },
    /// PTQ4ViT twin uniform, bits−1 bits per range. Softmax: step `lo` for values up to
    /// lo·(2^(bits−1)−1), step `hi` above. GELU: step `lo` for negatives, `hi` for positives.
    #[serde(rename = "twin")]
    TwinUniform { bits: u32, lo: f32, hi: f32, gelu: bool },
}

/// The quantizer as the shaders' `AqParams` read it (shaders/act_quant.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AqParams {
    /// Also the shaders' pipeline constant (AQ_KIND, shaders/aq.wgsl) that selects the code.
    pub kind: u32,
    bits: u32,
    a: f32,
    b: f32,
    c: f32,
    d: f32,
    _p: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const AQ_PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(AqParams, ["act_quant"], [], "AqParams", [kind, bits, a, b, c, d]);

impl ActQuantizer {
    pub fn bits(&self) -> u32 {
        match *self {
            ActQuantizer::Uniform { bits, .. }
            | ActQuantizer::Log2 { bits, .. }
            | ActQuantizer::LogSqrt2 { bits, .. }
            | ActQuantizer::AdaLog { bits, .. }
            | ActQuantizer::Sulq { bits, .. }
            | ActQuantizer::TwinUniform { bits, .. } => bits,
        }
    }

    /// The `kind` of its JSON: "uniform", "log2", "log_sqrt2", "adalog", "sulq", "twin".
    pub fn kind(&self) -> &'static str {
        match self {
            ActQuantizer::Uniform { .. } => "uniform",
            ActQuantizer::Log2 { .. } => "log2",
            ActQuantizer::LogSqrt2 { .. } => "log_sqrt2",
            ActQuantizer::AdaLog { .. } => "adalog",
            ActQuantizer::Sulq { .. } => "sulq",
            ActQuantizer::TwinUniform { .. } => "twin",
        }
    }

    /// Refuses parameters the kernel cannot use (a checkpoint's JSON is not trusted).
    pub fn validate(&self) -> Result<()> {
        let bits = self.bits();
        if !(2..=16).contains(&bits) {
            invalid!("activation quantizer {self:?}: bits must be 2..=16");
        }
        let positive = |name: &str, v: f32| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                invalid!("activation quantizer {self:?}: {name} must be finite and > 0");
            }
            Ok(())
        };
        match *self {
            ActQuantizer::Uniform { scale, zero, .. } => {
                positive("scale", scale)?;
                if !(zero.is_finite() && zero.fract() == 0.0 && zero >= 0.0 && zero <= ((1u32 << bits) - 1) as f32) {
                    invalid!("activation quantizer {self:?}: zero must be an integer code in 0..2^bits");
                }
            }
            ActQuantizer::Log2 { delta, .. } | ActQuantizer::LogSqrt2 { delta, .. } => positive("delta", delta)?,
            ActQuantizer::AdaLog { q, r, scale, .. } => {
                positive("scale", scale)?;
                if q == 0 || r == 0 {
                    invalid!("activation quantizer {self:?}: q and r must be at least 1");
                }
            }
            ActQuantizer::Sulq { eta, m, delta, .. } => {
                positive("eta", eta)?;
                positive("delta", delta)?;
                if !m.is_finite() {
                    invalid!("activation quantizer {self:?}: m must be finite");
                }
            }
            ActQuantizer::TwinUniform { lo, hi, .. } => {
                positive("lo", lo)?;
                positive("hi", hi)?;
            }
        }
        Ok(())
    }

    pub fn shader_params(&self) -> AqParams {
        let p = |kind, a, b, c| AqParams { kind, bits: self.bits(), a, b, c, d: 0.0, _p: [0; 2] };
        match *self {
            ActQuantizer::Uniform { scale, zero, .. } => p(1, scale, zero, 0.0),
            ActQuantizer::Log2 { delta, .. } => p(2, delta, 0.0, 0.0),
            ActQuantizer::LogSqrt2 { delta, .. } => p(3, delta, 0.0, 0.0),
            ActQuantizer::AdaLog { q, r, scale, .. } => p(4, scale, q as f32 / r as f32, 0.0),
            ActQuantizer::Sulq { eta, m, delta, .. } => p(5, eta, m, delta),
            ActQuantizer::TwinUniform { lo, hi, gelu, .. } => p(if gelu { 7 } else { 6 }, lo, hi, 0.0),
        }
    }

    /// CPU reference of one element: the shader's f32 operations in the same order.
    pub fn apply(&self, v: f32) -> f32 {
        let top = ((1u32 << self.bits()) - 1) as f32;
        let half = ((1u32 << (self.bits() - 1)) - 1) as f32;
        match *self {
            ActQuantizer::Uniform { scale, zero, .. } => (((v / scale).round_ties_even() + zero).clamp(0.0, top) - zero) * scale,
            ActQuantizer::Log2 { delta, .. } | ActQuantizer::LogSqrt2 { delta, .. } | ActQuantizer::AdaLog { scale: delta, .. } => {
                if v <= 0.0 || v.is_nan() {
                    return 0.0;
                }
                let per = match *self {
                    ActQuantizer::Log2 { .. } => 1.0,
                    ActQuantizer::LogSqrt2 { .. } => 2.0,
                    _ => 1.0 / self.shader_params().b,
                };
                let code = (-(v / delta).log2() * per).round_ties_even();
                if code > top {
                    return 0.0;
                }
                let c = code.max(0.0) as i32;
                match *self {
                    ActQuantizer::Log2 { .. } => ldexp(delta, -c),
                    ActQuantizer::LogSqrt2 { .. } => ldexp(delta, -((c + 1) / 2)) * if c & 1 == 1 { std::f32::consts::SQRT_2 } else { 1.0 },
                    _ => delta * (-(c as f32) * self.shader_params().b).exp2(),
                }
            }
            ActQuantizer::Sulq { eta, m, delta, .. } => {
                let t = v + eta;
                let code = if t > 0.0 { ((t.log2() - m) / delta).round_ties_even().clamp(0.0, top) } else { 0.0 };
                (code * delta + m).exp2() - eta
            }
            ActQuantizer::TwinUniform { lo, hi, gelu: false, .. } => {
                let l = (v.max(0.0) / lo).round_ties_even();
                if l <= half {
                    l * lo
                } else {
                    (v / hi).round_ties_even().min(half) * hi
                }
            }
            ActQuantizer::TwinUniform { lo, hi, gelu: true, .. } => {
                if v < 0.0 {
                    (v / lo).round_ties_even().max(-half) * lo
                } else {
                    (v / hi).round_ties_even().min(half) * hi
                }
            }
        }
    }

    /// CPU reference over a slice.
    pub fn reference(&self, x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| self.apply(v)).collect()
    }
}

/// v·2^e, exact (as WGSL's ldexp) while the result is a normal f32.
fn ldexp(v: f32, e: i32) -> f32 {
    v * 2f32.powi(e)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    q: AqParams,
    n: u32,
    channels: u32,
    _p: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["act_quant"], [], "Params", [q, n, channels]);

fn check(x: &Tensor, q: &ActQuantizer) -> Result<u32> {
    x.expect_dtype("act_quant", DType::F32)?;
    q.validate()?;
    if x.numel() == 0 {
        shape_err!("act_quant: empty tensor {:?}", x.shape);
    }
    u32::try_from(x.numel()).map_err(|_| crate::Error::Invalid("act_quant: tensor too large".into()))
}

/// One of each quantizer kind, with parameters in the range calibration picks: the cases the
/// op checks (src/ops_check) and tests/act_quant.rs run.
pub fn example_quantizers() -> Vec<ActQuantizer> {
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

/// Inputs that reach every quantizer's ranges: softmax-like probabilities, GELU-like values,
/// small values and zeros, interleaved.
pub fn example_inputs(n: usize, seed: u64) -> Vec<f32> {
    crate::synthetic::uniform(n, seed, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| match i % 4 {
            0 => (v * 6.0 - 5.0).exp(),
            1 => v * 3.0,
            2 => v.abs() * 0.05,
            _ => if i % 7 == 0 { 0.0 } else { v - 0.1 },
        })
        .collect()
}

/// `x = Q(x)` in place.
pub fn act_quant(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, q: &ActQuantizer) -> Result<()> {
    let n = check(x, q)?;
    let pipe = gpu.pipeline(&SHADER, "act_quant", &[], &[("AQ_KIND", q.shader_params().kind as f64)])?;
    let p = Params { q: q.shader_params(), n, channels: 0, _p: [0; 2] };
    gpu.dispatch(enc, &pipe, params(&p), &[&x.buffer], gpu.grid(n.div_ceil(WG)))
}

/// `x = Q(x + noise)` in place, `noise` [channels] broadcast over the rows of x [..., channels]
/// (NoisyQuant).
pub fn act_quant_noise(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, noise: &Tensor, q: &ActQuantizer) -> Result<()> {
    let n = check(x, q)?;
    noise.expect_dtype("act_quant noise", DType::F32)?;
    let channels = *x.shape.last().unwrap_or(&0);
    if noise.numel() != channels || channels == 0 {
        shape_err!("act_quant: noise has {} values, the input's rows {:?} have {channels}", noise.numel(), x.shape);
    }
    let pipe = gpu.pipeline(&SHADER, "act_quant_noise", &[], &[("AQ_KIND", q.shader_params().kind as f64)])?;
    let p = Params { q: q.shader_params(), n, channels: channels as u32, _p: [0; 2] };
    gpu.dispatch(enc, &pipe, params(&p), &[&x.buffer, &noise.buffer], gpu.grid(n.div_ceil(WG)))
}

/// CPU reference of `act_quant_noise`.
pub fn noise_reference(x: &[f32], noise: &[f32], q: &ActQuantizer) -> Vec<f32> {
    x.chunks(noise.len()).flat_map(|row| row.iter().zip(noise).map(|(&v, &n)| q.apply(v + n))).collect()
}

pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    // A ViT-B fc2 input (197 tokens × 3072), the largest activation the recipes quantize.
    let n = if size == BenchSize::Full { 197 * 3072 } else { 4099 };
    let x = Tensor::from_f32(gpu, &[n], &crate::synthetic::uniform(n, 1, 1.0))?;
    let quantizers = [
        ActQuantizer::Uniform { bits: 8, scale: 1.0 / 127.0, zero: 128.0 },
        ActQuantizer::LogSqrt2 { bits: 4, delta: 1.0 },
    ];
    Ok(quantizers
        .into_iter()
        .map(|q| {
            let x = x.clone();
            BenchCase {
                kernel: "act_quant".into(),
                format: format!("{}{}", q.kind(), q.bits()),
                shape: format!("{n}"),
                bytes: 8 * n as u64,
                flops: 8 * n as u64,
                step: Box::new(move |gpu: &Gpu, enc: &mut Encoder| act_quant(gpu, enc, &x, &q)) as super::BenchStep,
            }
        })
        .collect())
}
