//! Layout glue of the VQGAN decoder (`shaders/vqgan_glue.wgsl`): tokens [B, T, C] → NCHW
//! [B, C, H, W], plain or added into the output (the AttnBlock residual). CPU reference below.

use crate::gpu::{DType, Shader, Tensor};
use crate::kernels::params;
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("vqgan_glue");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    tokens: u32,
    channels: u32,
    pad: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["vqgan_glue"], [], "Params", [n, tokens, channels]);

/// `out` [B, C, H, W] = (or += with `add`) `x` [B, H·W, C] transposed.
pub fn tokens_to_nchw(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor, add: bool) -> Result<()> {
    x.expect_dtype("tokens_to_nchw input", DType::F32)?;
    out.expect_dtype("tokens_to_nchw output", DType::F32)?;
    let &[b, c, h, w] = &out.shape[..] else { shape_err!("tokens_to_nchw: output must be [B, C, H, W], got {:?}", out.shape) };
    x.expect_shape("tokens_to_nchw input", &[b, h * w, c])?;
    if std::sync::Arc::ptr_eq(&x.buffer, &out.buffer) {
        invalid!("tokens_to_nchw: input and output must be different tensors");
    }
    let n = match u32::try_from(out.numel()) {
        Ok(n) if n > 0 => n,
        _ => shape_err!("tokens_to_nchw: {} elements", out.numel()),
    };
    let p = Params { n, tokens: (h * w) as u32, channels: c as u32, pad: 0 };
    let defines: &[&str] = if add { &["ADD"] } else { &[] };
    let pipe = gpu.pipeline(&SHADER, "tokens_to_nchw", defines, &[("WG", WG as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), &[&x.buffer, &out.buffer], gpu.grid(n.div_ceil(WG)))
}

/// CPU reference: [B, T, C] → [B, C, T].
pub fn tokens_to_nchw_reference(x: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for ci in 0..c {
                out[(bi * c + ci) * t + ti] = x[(bi * t + ti) * c + ci];
            }
        }
    }
    out
}
