//! Glue kernels of the ViT forward pass (`shaders/vit_glue.wgsl`): building the token sequence,
//! LayerScale fused into the residual add, and picking the class token. Each has a CPU
//! reference below.

use crate::gpu::{DType, Shader, Tensor};
use crate::kernels::params;
use crate::{shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("vit_glue");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    tokens: u32,
    dim: u32,
    pad: u32,
}

fn check_f32(what: &str, tensors: &[&Tensor]) -> Result<()> {
    tensors.iter().try_for_each(|t| t.expect_dtype(what, DType::F32))
}

fn run(gpu: &Gpu, enc: &mut Encoder, entry: &str, define: &[&str], p: Params, buffers: &[&wgpu::Buffer]) -> Result<()> {
    let pipe = gpu.pipeline(&SHADER, entry, define, &[("WG", WG as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), buffers, gpu.grid(p.n.div_ceil(WG)))
}

fn count(what: &str, n: usize) -> Result<u32> {
    match u32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => shape_err!("{what}: {n} elements"),
    }
}

/// `out` [B, 1+P, D] = concat(cls [D], patches [B, P, D]) along tokens, plus `pos` [1+P, D]
/// (timm's `_pos_embed` with a class token and no register tokens).
pub fn embed_tokens(gpu: &Gpu, enc: &mut Encoder, patches: &Tensor, cls: &Tensor, pos: &Tensor, out: &Tensor) -> Result<()> {
    check_f32("embed_tokens", &[patches, cls, pos, out])?;
    let &[b, p, d] = &patches.shape[..] else { shape_err!("embed_tokens: patches must be [B, P, D], got {:?}", patches.shape) };
    cls.expect_shape("embed_tokens cls token", &[d])?;
    pos.expect_shape("embed_tokens pos_embed", &[p + 1, d])?;
    out.expect_shape("embed_tokens out", &[b, p + 1, d])?;
    let p = Params { n: count("embed_tokens", out.numel())?, tokens: (p + 1) as u32, dim: d as u32, pad: 0 };
    run(gpu, enc, "embed_tokens", &[], p, &[&patches.buffer, &cls.buffer, &pos.buffer, &out.buffer])
}

/// `residual += gamma ⊙ x` over the last dimension (LayerScale, then the residual add).
pub fn layer_scale_add(gpu: &Gpu, enc: &mut Encoder, residual: &Tensor, x: &Tensor, gamma: &Tensor) -> Result<()> {
    check_f32("layer_scale_add", &[residual, x, gamma])?;
    let d = *x.shape.last().unwrap_or(&0);
    gamma.expect_shape("layer_scale_add gamma", &[d])?;
    residual.expect_shape("layer_scale_add residual", &x.shape)?;
    let p = Params { n: count("layer_scale_add", x.numel())?, tokens: 0, dim: d as u32, pad: 0 };
    run(gpu, enc, "layer_scale_add", &["LAYER_SCALE"], p, &[&x.buffer, &gamma.buffer, &residual.buffer])
}

/// `out` [B, D] = `x` [B, T, D] at token 0.
pub fn take_token(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor) -> Result<()> {
    check_f32("take_token", &[x, out])?;
    let &[b, t, d] = &x.shape[..] else { shape_err!("take_token: input must be [B, T, D], got {:?}", x.shape) };
    out.expect_shape("take_token out", &[b, d])?;
    let p = Params { n: count("take_token", b * d)?, tokens: t as u32, dim: d as u32, pad: 0 };
    run(gpu, enc, "take_token", &["TAKE_TOKEN"], p, &[&x.buffer, &out.buffer])
}

/// CPU references of the kernels above, on row-major slices.
pub mod reference {
    pub fn embed_tokens(patches: &[f32], b: usize, p: usize, d: usize, cls: &[f32], pos: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(b * (p + 1) * d);
        for bi in 0..b {
            out.extend(cls.iter().zip(&pos[..d]).map(|(c, q)| c + q));
            let rows = &patches[bi * p * d..(bi + 1) * p * d];
            out.extend(rows.iter().zip(&pos[d..]).map(|(x, q)| x + q));
        }
        out
    }

    pub fn layer_scale_add(residual: &[f32], x: &[f32], gamma: &[f32]) -> Vec<f32> {
        let d = gamma.len();
        residual.iter().zip(x).enumerate().map(|(i, (r, v))| r + gamma[i % d] * v).collect()
    }

    pub fn take_token(x: &[f32], b: usize, t: usize, d: usize) -> Vec<f32> {
        (0..b).flat_map(|bi| x[bi * t * d..bi * t * d + d].to_vec()).collect()
    }
}
