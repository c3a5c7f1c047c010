//! Swin's kernels (`shaders/swin_glue.wgsl`): a row gather driven by index tables (window
//! partition with the cyclic shift, its inverse, patch merging) and window attention with an
//! additive bias (relative positions plus the shifted-window mask). CPU references below, and
//! the index tables themselves, which are plain arithmetic on the token grid.

use crate::gpu::{DType, Shader, Tensor};
use crate::kernels::params;
use crate::{shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("swin_glue");
const WG: u32 = 64;
/// The attention kernel's accumulator length (`MAX_HEAD_DIM` in the shader).
pub const MAX_HEAD_DIM: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    tokens: u32,
    heads: u32,
    dim: u32,
    bias_windows: u32,
    scale: u32,
    pad: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["swin_glue"], [], "Params", [n, tokens, heads, dim, bias_windows, scale]);

fn count(what: &str, n: usize) -> Result<u32> {
    match u32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => shape_err!("{what}: {n} elements"),
    }
}

fn run(gpu: &Gpu, enc: &mut Encoder, entry: &str, define: &[&str], p: Params, buffers: &[&wgpu::Buffer]) -> Result<()> {
    let pipe = gpu.pipeline(&SHADER, entry, define, &[("WG", WG as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), buffers, gpu.grid(p.n.div_ceil(WG)))
}

/// Per image of the batch, `out` row k = `x` row `idx[k]`, rows `dim` wide: `x` [B, Tin, dim],
/// `out` [B, Tout, dim] (or any shapes with those rows), `idx` u32 [Tout] into 0..Tin.
pub fn gather_rows(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, idx: &Tensor, out: &Tensor) -> Result<()> {
    x.expect_dtype("gather_rows input", DType::F32)?;
    out.expect_dtype("gather_rows output", DType::F32)?;
    let dim = *x.shape.last().unwrap_or(&0);
    let per_out = idx.numel();
    let bad = dim == 0 || per_out == 0 || !out.numel().is_multiple_of(dim * per_out);
    let batch = if bad { 0 } else { out.numel() / (dim * per_out) };
    if bad || batch == 0 || !x.numel().is_multiple_of(dim * batch) {
        shape_err!("gather_rows: {:?} rows of {dim} into {:?} through {per_out} indices per image", x.shape, out.shape);
    }
    let per_in = x.numel() / (dim * batch);
    let p = Params { n: count("gather_rows", out.numel())?, dim: dim as u32, tokens: per_out as u32, heads: per_in as u32, ..Default::default() };
    run(gpu, enc, "gather_rows", &["GATHER"], p, &[&x.buffer, &idx.buffer, &out.buffer])
}

/// Window attention: `qkv` [B·nW, N, 3·H·hd] (timm's fused qkv of each window), `bias`
/// [nW_bias, H, N, N] added to the scaled scores (window b uses b % nW_bias), `out`
/// [B·nW, N, H·hd].
pub fn window_attention(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, bias: &Tensor, heads: usize, out: &Tensor) -> Result<()> {
    for (what, t) in [("qkv", qkv), ("bias", bias), ("out", out)] {
        t.expect_dtype(&format!("window_attention {what}"), DType::F32)?;
    }
    let &[windows, n, w3] = &qkv.shape[..] else { shape_err!("window_attention: qkv must be [windows, N, 3·C], got {:?}", qkv.shape) };
    if heads == 0 || !w3.is_multiple_of(3 * heads) {
        shape_err!("window_attention: qkv width {w3} is not 3 × {heads} heads × head_dim");
    }
    let hd = w3 / (3 * heads);
    if hd > MAX_HEAD_DIM {
        shape_err!("window_attention: head_dim {hd} is above the kernel's {MAX_HEAD_DIM}");
    }
    let &[nw, bh, bn, bn2] = &bias.shape[..] else { shape_err!("window_attention: bias must be [nW, H, N, N], got {:?}", bias.shape) };
    if (bh, bn, bn2) != (heads, n, n) || nw == 0 || !windows.is_multiple_of(nw) {
        shape_err!("window_attention: bias {:?} does not fit {windows} windows of {n} tokens and {heads} heads", bias.shape);
    }
    out.expect_shape("window_attention out", &[windows, n, heads * hd])?;
    let scale = (hd as f32).powf(-0.5);
    let p = Params {
        n: count("window_attention", windows * heads * n)?,
        tokens: n as u32,
        heads: heads as u32,
        dim: hd as u32,
        bias_windows: nw as u32,
        scale: scale.to_bits(),
        pad: [0; 2],
    };
    run(gpu, enc, "window_attention", &[], p, &[&qkv.buffer, &bias.buffer, &out.buffer])
}

/// Index tables on an H×W token grid (row-major, one image; batches repeat them).
pub mod index {
    /// Windows of `ws`×`ws` after rolling the grid by −`shift` (timm's `torch.roll` then
    /// `window_partition`): entry k of window w, token t is the source token.
    pub fn partition(h: usize, w: usize, ws: usize, shift: usize) -> Vec<u32> {
        let (nh, nw) = (h / ws, w / ws);
        let mut out = Vec::with_capacity(h * w);
        for wy in 0..nh {
            for wx in 0..nw {
                for i in 0..ws {
                    for j in 0..ws {
                        let (y, x) = ((wy * ws + i + shift) % h, (wx * ws + j + shift) % w);
                        out.push((y * w + x) as u32);
                    }
                }
            }
        }
        out
    }

    /// The inverse of `partition`: grid token p ← its place among the windows.
    pub fn reverse(h: usize, w: usize, ws: usize, shift: usize) -> Vec<u32> {
        let forward = partition(h, w, ws, shift);
        let mut out = vec![0u32; forward.len()];
        for (k, &src) in forward.iter().enumerate() {
            out[src as usize] = k as u32;
        }
        out
    }

    /// Patch merging's rows: output token (y, x) of the H/2×W/2 grid takes, in order, the
    /// tokens (2y, 2x), (2y+1, 2x), (2y, 2x+1), (2y+1, 2x+1) (timm's reshape/permute order).
    pub fn merge(h: usize, w: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(h * w);
        for y in 0..h / 2 {
            for x in 0..w / 2 {
                for (dy, dx) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    out.push(((2 * y + dy) * w + 2 * x + dx) as u32);
                }
            }
        }
        out
    }

}

/// CPU references of the kernels above.
pub mod reference {
    /// `gather_rows` over `batch` images.
    pub fn gather_rows(x: &[f32], dim: usize, idx: &[u32], batch: usize) -> Vec<f32> {
        let per_in = x.len() / (dim * batch);
        (0..batch).flat_map(|b| idx.iter().flat_map(move |&i| x[(b * per_in + i as usize) * dim..][..dim].to_vec())).collect()
    }

    pub fn window_attention(qkv: &[f32], windows: usize, n: usize, heads: usize, bias: &[f32], bias_windows: usize) -> Vec<f32> {
        let width = qkv.len() / (windows * n * 3);
        let hd = width / heads;
        let scale = (hd as f64).powf(-0.5);
        let mut out = vec![0f32; windows * n * width];
        for b in 0..windows {
            for h in 0..heads {
                for i in 0..n {
                    let q = &qkv[(b * n + i) * 3 * width + h * hd..][..hd];
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let k = &qkv[(b * n + j) * 3 * width + width + h * hd..][..hd];
                            let dot: f64 = q.iter().zip(k).map(|(a, c)| *a as f64 * *c as f64).sum();
                            dot * scale + bias[(((b % bias_windows) * heads + h) * n + i) * n + j] as f64
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let l: f64 = e.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (0..n).map(|j| e[j] * qkv[(b * n + j) * 3 * width + 2 * width + h * hd + d] as f64).sum();
                        out[(b * n + i) * width + h * hd + d] = (v / l) as f32;
                    }
                }
            }
        }
        out
    }
}
