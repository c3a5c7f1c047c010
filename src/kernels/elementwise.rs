//! Element-wise ops: GELU (erf form, as timm), QuickGELU (OpenAI CLIP's), GELU's tanh
//! approximation, swish (taming's nonlinearity), residual add, nearest-neighbour 2× upsampling
//! (taming's `Upsample`).

use super::{params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};
use crate::{shader, Encoder, Error, Gpu, Result};

const SHADER: Shader = shader!("elementwise");
const WG: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    Swish,
    /// `x · sigmoid(1.702 x)` (timm's `quick_gelu`, OpenAI CLIP towers).
    QuickGelu,
    /// `nn.GELU(approximate='tanh')` (timm's `gelu_tanh`).
    GeluTanh,
}

impl Activation {
    fn entry(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Swish => "swish",
            Activation::QuickGelu => "quick_gelu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }

    /// The define that fuses this activation into a Linear's store, where the kernels have one
    /// (the others run as a separate element-wise pass after the Linear).
    pub fn fused_define(self) -> Option<&'static str> {
        match self {
            Activation::Gelu => Some("ACT_GELU"),
            Activation::Swish => Some("ACT_SWISH"),
            Activation::QuickGelu | Activation::GeluTanh => None,
        }
    }

    /// CPU reference, in f64.
    pub fn reference(self, x: f32) -> f32 {
        let x = x as f64;
        (match self {
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Activation::Swish => x / (1.0 + (-x).exp()),
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::GeluTanh => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        }) as f32
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    w: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["elementwise"], [], "Params", [n, w]);

fn same_f32(what: &str, a: &Tensor, out: &Tensor) -> Result<u32> {
    a.expect_dtype(what, DType::F32)?;
    out.expect_dtype(what, DType::F32)?;
    if a.numel() != out.numel() {
        return Err(Error::Shape(format!("{what}: input {:?} and output {:?} differ in size", a.shape, out.shape)));
    }
    Ok(a.numel() as u32)
}

/// `out = act(x)`; `out` may be `x` itself only through `activate_inplace`.
pub fn activate(gpu: &Gpu, enc: &mut Encoder, act: Activation, x: &Tensor, out: &Tensor) -> Result<()> {
    let n = same_f32(act.entry(), x, out)?;
    let pipe = gpu.pipeline(&SHADER, act.entry(), &[], &[])?;
    gpu.dispatch(enc, &pipe, params(&Params { n, w: 0 }), &[&x.buffer, &out.buffer], gpu.grid(n.div_ceil(WG)))
}

/// `residual += x`.
pub fn add_inplace(gpu: &Gpu, enc: &mut Encoder, residual: &Tensor, x: &Tensor) -> Result<()> {
    let n = same_f32("add", x, residual)?;
    let pipe = gpu.pipeline(&SHADER, "add_inplace", &[], &[])?;
    gpu.dispatch(enc, &pipe, params(&Params { n, w: 0 }), &[&x.buffer, &residual.buffer], gpu.grid(n.div_ceil(WG)))
}

/// `out` [B, C, 2H, 2W] = `x` [B, C, H, W] with every pixel repeated 2×2.
pub fn upsample_nearest2x(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor) -> Result<()> {
    x.expect_dtype("upsample", DType::F32)?;
    out.expect_dtype("upsample", DType::F32)?;
    let &[b, c, h, w] = &x.shape[..] else {
        return Err(Error::Shape(format!("upsample: input must be [B, C, H, W], got {:?}", x.shape)));
    };
    out.expect_shape("upsample out", &[b, c, 2 * h, 2 * w])?;
    if u32::try_from(out.numel()).is_err() {
        return Err(Error::Invalid("upsample: output too large".into()));
    }
    let n = x.numel() as u32;
    let pipe = gpu.pipeline(&SHADER, "upsample_nearest2x", &[], &[])?;
    let p = Params { n, w: w as u32 };
    gpu.dispatch(enc, &pipe, params(&p), &[&x.buffer, &out.buffer], gpu.grid(n.div_ceil(WG)))
}

/// CPU reference of `upsample_nearest2x` for NCHW `x` of shape [B, C, H, W].
pub fn upsample_reference(x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let [_, _, h, w] = shape;
    let mut out = Vec::with_capacity(4 * x.len());
    for plane in x.chunks(h * w) {
        for oy in 0..2 * h {
            out.extend((0..2 * w).map(|ox| plane[(oy / 2) * w + ox / 2]));
        }
    }
    out
}

/// erf in f64 (fdlibm's, through `libm`: within an ulp, and a few times faster than a
/// series; the CPU ViT evaluates it for every hidden activation of a calibration pass).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let n = if size == BenchSize::Full { 197 * 3072 } else { 4099 };
    let x = Tensor::from_f32(gpu, &[n], &vec![0.5; n])?;
    let out = Tensor::zeros(gpu, &[n], DType::F32)?;
    let gelu = BenchCase {
        kernel: "gelu".into(),
        format: "f32".into(),
        shape: format!("{n}"),
        bytes: 4 * n as u64,
        flops: 20 * n as u64,
        step: Box::new(move |gpu, enc| activate(gpu, enc, Activation::Gelu, &x, &out)),
    };
    let shape = if size == BenchSize::Full { [1, 512, 32, 32] } else { [1, 8, 9, 7] };
    let n: usize = shape.iter().product();
    let x = Tensor::from_f32(gpu, &shape, &vec![0.5; n])?;
    let out = Tensor::zeros(gpu, &[shape[0], shape[1], 2 * shape[2], 2 * shape[3]], DType::F32)?;
    let upsample = BenchCase {
        kernel: "upsample2x".into(),
        format: "f32".into(),
        shape: format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]),
        bytes: 4 * n as u64,
        flops: 0,
        step: Box::new(move |gpu, enc| upsample_nearest2x(gpu, enc, &x, &out)),
    };
    Ok(vec![gelu, upsample])
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [(0.0, 0.0), (0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.0, 0.9999779095030014), (-1.5, -0.9661051464753108)] {
            assert!((super::erf(x) - want).abs() < 1e-12, "erf({x})");
        }
    }
}
