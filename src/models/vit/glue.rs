//! Glue kernels of the ViT forward pass (`shaders/vit_glue.wgsl`): building the token sequence,
//! LayerScale fused into the residual add, picking a token, pooling over tokens, per-head
//! query/key LayerNorms and the distilled heads' average. Each has a CPU reference below.

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
    prefix: u32,
    mode: u32,
    eps: u32,
    pad: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["vit_glue"], [], "Params", [n, tokens, dim, prefix, mode, eps]);

impl Params {
    fn new(n: u32, tokens: usize, dim: usize) -> Params {
        Params { n, tokens: tokens as u32, dim: dim as u32, prefix: 0, mode: 0, eps: 0, pad: [0; 2] }
    }
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

/// `out` [B, K+P, D] = concat(prefix [K, D] (or one token [D]), patches [B, P, D]) along
/// tokens, plus `pos` [K+P, D] (timm's `_pos_embed`; for `no_embed_class` the prefix rows of
/// `pos` are zero, which adds exactly nothing).
pub fn embed_tokens(gpu: &Gpu, enc: &mut Encoder, patches: &Tensor, prefix: &Tensor, pos: &Tensor, out: &Tensor) -> Result<()> {
    embed_tokens_with(gpu, enc, patches, prefix, None, pos, out)
}

/// `embed_tokens` with `k` prefix tokens read from `prefix` (`Some(0)`: none; `prefix` is then
/// any placeholder, since an empty buffer cannot be bound).
pub fn embed_tokens_with(gpu: &Gpu, enc: &mut Encoder, patches: &Tensor, prefix: &Tensor, k: Option<usize>, pos: &Tensor, out: &Tensor) -> Result<()> {
    check_f32("embed_tokens", &[patches, prefix, pos, out])?;
    let &[b, p, d] = &patches.shape[..] else { shape_err!("embed_tokens: patches must be [B, P, D], got {:?}", patches.shape) };
    let k = match k {
        Some(k) => k,
        None if prefix.shape[..] == [d] => 1,
        None => match prefix.shape[..] {
            [k, pd] if pd == d => k,
            _ => shape_err!("embed_tokens prefix tokens: expected [K, {d}], got {:?}", prefix.shape),
        },
    };
    if k > 0 && prefix.numel() != k * d {
        shape_err!("embed_tokens prefix tokens: expected {k}×{d} values, got {:?}", prefix.shape);
    }
    pos.expect_shape("embed_tokens pos_embed", &[p + k, d])?;
    out.expect_shape("embed_tokens out", &[b, p + k, d])?;
    let mut params = Params::new(count("embed_tokens", out.numel())?, p + k, d);
    params.prefix = k as u32;
    run(gpu, enc, "embed_tokens", &[], params, &[&patches.buffer, &prefix.buffer, &pos.buffer, &out.buffer])
}

/// `residual += gamma ⊙ x` over the last dimension (LayerScale, then the residual add).
pub fn layer_scale_add(gpu: &Gpu, enc: &mut Encoder, residual: &Tensor, x: &Tensor, gamma: &Tensor) -> Result<()> {
    check_f32("layer_scale_add", &[residual, x, gamma])?;
    let d = *x.shape.last().unwrap_or(&0);
    gamma.expect_shape("layer_scale_add gamma", &[d])?;
    residual.expect_shape("layer_scale_add residual", &x.shape)?;
    let p = Params::new(count("layer_scale_add", x.numel())?, 0, d);
    run(gpu, enc, "layer_scale_add", &["LAYER_SCALE"], p, &[&x.buffer, &gamma.buffer, &residual.buffer])
}

/// `out` [B, D] = `x` [B, T, D] at token 0.
pub fn take_token(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor) -> Result<()> {
    take_token_at(gpu, enc, x, 0, out)
}

/// `out` [B, D] = `x` [B, T, D] at token `index`.
pub fn take_token_at(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, index: usize, out: &Tensor) -> Result<()> {
    check_f32("take_token", &[x, out])?;
    let &[b, t, d] = &x.shape[..] else { shape_err!("take_token: input must be [B, T, D], got {:?}", x.shape) };
    out.expect_shape("take_token out", &[b, d])?;
    if index >= t {
        shape_err!("take_token: token {index} of {t}");
    }
    let mut p = Params::new(count("take_token", b * d)?, t, d);
    p.prefix = index as u32;
    run(gpu, enc, "take_token", &["TAKE_TOKEN"], p, &[&x.buffer, &out.buffer])
}

/// timm's reducing `global_pool` kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Avg = 0,
    Max = 1,
    /// (max + mean) / 2.
    AvgMax = 2,
}

/// `out` [B, D] = `kind` of `x` [B, T, D] over tokens `skip..T` (timm's `global_pool_nlc`,
/// `skip` = the prefix tokens, or 0 with `pool_include_prefix`).
pub fn pool_tokens(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, skip: usize, kind: PoolKind, out: &Tensor) -> Result<()> {
    check_f32("pool_tokens", &[x, out])?;
    let &[b, t, d] = &x.shape[..] else { shape_err!("pool_tokens: input must be [B, T, D], got {:?}", x.shape) };
    out.expect_shape("pool_tokens out", &[b, d])?;
    if skip >= t {
        shape_err!("pool_tokens: no tokens left to pool after skipping {skip} of {t}");
    }
    let mut p = Params::new(count("pool_tokens", b * d)?, t, d);
    (p.prefix, p.mode) = (skip as u32, kind as u32);
    run(gpu, enc, "pool_tokens", &["POOL"], p, &[&x.buffer, &out.buffer])
}

/// LayerNorm (eps `eps`) over head_dim of every query and key head of `qkv` [.., 3·H·hd], in
/// place; `affine` [4, hd] holds q_norm's weight and bias, then k_norm's.
pub fn qk_norm(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, heads: usize, affine: &Tensor, eps: f32) -> Result<()> {
    check_f32("qk_norm", &[qkv, affine])?;
    let width = *qkv.shape.last().unwrap_or(&0);
    if heads == 0 || !width.is_multiple_of(3 * heads) || width == 0 {
        shape_err!("qk_norm: qkv width {width} is not 3 × {heads} heads");
    }
    let hd = width / (3 * heads);
    affine.expect_shape("qk_norm affine", &[4, hd])?;
    let rows = qkv.numel() / width;
    let mut p = Params::new(count("qk_norm", rows * 2 * heads)?, heads, hd);
    p.eps = eps.to_bits();
    run(gpu, enc, "qk_norm", &["QK_NORM"], p, &[&affine.buffer, &qkv.buffer])
}

/// `acc = (acc + x) / 2`.
pub fn half_sum(gpu: &Gpu, enc: &mut Encoder, acc: &Tensor, x: &Tensor) -> Result<()> {
    check_f32("half_sum", &[acc, x])?;
    acc.expect_shape("half_sum accumulator", &x.shape)?;
    let p = Params::new(count("half_sum", x.numel())?, 0, 1);
    run(gpu, enc, "half_sum", &["HALF_SUM"], p, &[&x.buffer, &acc.buffer])
}

/// CPU references of the kernels above, on row-major slices.
pub mod reference {
    /// `prefix` holds K tokens (K·d values, K may be 0).
    pub fn embed_tokens(patches: &[f32], b: usize, p: usize, d: usize, prefix: &[f32], pos: &[f32]) -> Vec<f32> {
        let k = prefix.len();
        let mut out = Vec::with_capacity(b * (p * d + k));
        for bi in 0..b {
            out.extend(prefix.iter().zip(&pos[..k]).map(|(c, q)| c + q));
            let rows = &patches[bi * p * d..(bi + 1) * p * d];
            out.extend(rows.iter().zip(&pos[k..]).map(|(x, q)| x + q));
        }
        out
    }

    pub fn layer_scale_add(residual: &[f32], x: &[f32], gamma: &[f32]) -> Vec<f32> {
        let d = gamma.len();
        residual.iter().zip(x).enumerate().map(|(i, (r, v))| r + gamma[i % d] * v).collect()
    }

    pub fn take_token(x: &[f32], b: usize, t: usize, d: usize) -> Vec<f32> {
        take_token_at(x, b, t, d, 0)
    }

    pub fn take_token_at(x: &[f32], b: usize, t: usize, d: usize, index: usize) -> Vec<f32> {
        (0..b).flat_map(|bi| x[(bi * t + index) * d..(bi * t + index + 1) * d].to_vec()).collect()
    }

    /// Pooling in f64 (the kernel sums in f32).
    pub fn pool_tokens(x: &[f32], b: usize, t: usize, d: usize, skip: usize, kind: super::PoolKind) -> Vec<f32> {
        let mut out = Vec::with_capacity(b * d);
        for bi in 0..b {
            for di in 0..d {
                let vals = (skip..t).map(|ti| x[(bi * t + ti) * d + di] as f64);
                let mean = vals.clone().sum::<f64>() / (t - skip) as f64;
                let top = vals.fold(f64::NEG_INFINITY, f64::max);
                out.push(match kind {
                    super::PoolKind::Avg => mean,
                    super::PoolKind::Max => top,
                    super::PoolKind::AvgMax => 0.5 * (top + mean),
                } as f32);
            }
        }
        out
    }

    /// `qk_norm` on a copy of `qkv` (rows of 3·heads·hd).
    pub fn qk_norm(qkv: &[f32], heads: usize, affine: &[f32], eps: f32) -> Vec<f32> {
        let hd = affine.len() / 4;
        let mut out = qkv.to_vec();
        for row in out.chunks_mut(3 * heads * hd) {
            for s in 0..2 {
                let (w, bias) = (&affine[2 * s * hd..(2 * s + 1) * hd], &affine[(2 * s + 1) * hd..(2 * s + 2) * hd]);
                for h in 0..heads {
                    let v = &mut row[(s * heads + h) * hd..(s * heads + h + 1) * hd];
                    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / hd as f64;
                    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / hd as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for j in 0..hd {
                        v[j] = ((v[j] as f64 - mean) * inv * w[j] as f64 + bias[j] as f64) as f32;
                    }
                }
            }
        }
        out
    }
}
