//! Row-wise normalizations: LayerNorm (timm's, eps 1e-6), GroupNorm (taming's `Normalize`, with
//! an optional fused swish) and softmax. One workgroup per row; see `shaders/norm.wgsl`.

use super::{launch, params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("norm");

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    channels_per_group: u32,
    pixels: u32,
    groups: u32,
    eps: f32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["norm"], [], "Params", [rows, n, channels_per_group, pixels, groups, eps]);

/// How rows map onto lanes on one class of adapter (a column of `kernels::launch`'s table).
#[derive(Clone, Copy, Debug)]
pub struct RowLanes {
    /// Most lanes per row: llvmpipe runs a workgroup on one thread, so a narrow one keeps the
    /// serial combine short; GPUs want enough lanes to hide memory latency on long GroupNorm
    /// rows.
    pub max_lanes: u32,
    /// A row per invocation (CPU adapters) when there are enough rows to fill the threads and
    /// the rows are short enough that one thread per row is not the critical path.
    pub row_per_lane: bool,
}

fn lanes(gpu: &Gpu, row_len: usize) -> u32 {
    (row_len.next_power_of_two() as u32).clamp(32, launch::for_class(gpu.class).norm.max_lanes)
}

/// Invocations per workgroup when each owns a row (CPU adapters): a couple of SIMD widths.
const ROWS_PER_WORKGROUP: u32 = 16;

/// Row per invocation where the launch table says so and it pays (see `RowLanes`); else a
/// workgroup per row. GroupNorm's few long rows always take the workgroup path.
fn row_per_lane(gpu: &Gpu, rows: u32, row_len: usize) -> bool {
    launch::for_class(gpu.class).norm.row_per_lane && rows >= 64 && row_len <= 4096
}

fn run(gpu: &Gpu, enc: &mut Encoder, entry: &str, defines: &[&str], p: Params, row_len: usize, buffers: &[&wgpu::Buffer]) -> Result<()> {
    let mut defines = defines.to_vec();
    let (wg, workgroups) = if entry != "group_norm" && row_per_lane(gpu, p.rows, row_len) {
        defines.push("ROW_PER_LANE");
        (ROWS_PER_WORKGROUP, p.rows.div_ceil(ROWS_PER_WORKGROUP))
    } else {
        if gpu.caps.subgroups {
            defines.push("SUBGROUPS");
        }
        (lanes(gpu, row_len), p.rows)
    };
    let pipe = gpu.pipeline(&SHADER, entry, &defines, &[("WG", wg as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), buffers, gpu.grid(workgroups))
}

fn check_f32(what: &str, tensors: &[&Tensor]) -> Result<()> {
    tensors.iter().try_for_each(|t| t.expect_dtype(what, DType::F32))
}

/// A buffer cannot be bound both read-only and writable in one dispatch.
fn check_distinct(what: &str, x: &Tensor, out: &Tensor) -> Result<()> {
    if std::sync::Arc::ptr_eq(&x.buffer, &out.buffer) {
        invalid!("{what}: input and output must be different tensors");
    }
    Ok(())
}

/// Splits `x` into (rows, last dim), requiring at least one dimension.
fn rows_and_width(what: &str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape.split_last() {
        Some((&c, rest)) if c > 0 => Ok((rest.iter().product(), c)),
        _ => shape_err!("{what}: input needs at least one non-empty dimension, got {:?}", x.shape),
    }
}

/// `out = (x − mean) / sqrt(var + eps) · weight + bias` over the last dimension of `x`.
pub fn layer_norm(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
    check_f32("layer_norm", &[x, weight, bias, out])?;
    let (rows, c) = rows_and_width("layer_norm", x)?;
    weight.expect_shape("layer_norm weight", &[c])?;
    bias.expect_shape("layer_norm bias", &[c])?;
    out.expect_shape("layer_norm out", &x.shape)?;
    check_distinct("layer_norm", x, out)?;
    if eps.is_nan() || eps <= 0.0 {
        invalid!("layer_norm: eps must be positive, got {eps}");
    }
    let p = Params { rows: rows as u32, n: c as u32, eps, ..Default::default() };
    run(gpu, enc, "layer_norm", &["AFFINE"], p, c, &[&x.buffer, &weight.buffer, &bias.buffer, &out.buffer])
}

/// GroupNorm over `x` [B, C, H, W] with `groups` groups and per-channel affine, optionally
/// followed by swish (`x · sigmoid(x)`, taming's `nonlinearity`).
#[allow(clippy::too_many_arguments)]
pub fn group_norm(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, out: &Tensor, fused_swish: bool) -> Result<()> {
    check_f32("group_norm", &[x, weight, bias, out])?;
    let &[b, c, h, w] = &x.shape[..] else {
        shape_err!("group_norm: input must be [B, C, H, W], got {:?}", x.shape);
    };
    if groups == 0 || c % groups != 0 {
        invalid!("group_norm: {c} channels are not divisible into {groups} groups");
    }
    weight.expect_shape("group_norm weight", &[c])?;
    bias.expect_shape("group_norm bias", &[c])?;
    out.expect_shape("group_norm out", &x.shape)?;
    check_distinct("group_norm", x, out)?;
    if eps.is_nan() || eps <= 0.0 {
        invalid!("group_norm: eps must be positive, got {eps}");
    }
    let cpg = c / groups;
    let p = Params {
        rows: (b * groups) as u32,
        n: (cpg * h * w) as u32,
        channels_per_group: cpg as u32,
        pixels: (h * w) as u32,
        groups: groups as u32,
        eps,
    };
    let defines: &[&str] = if fused_swish { &["AFFINE", "SWISH"] } else { &["AFFINE"] };
    run(gpu, enc, "group_norm", defines, p, cpg * h * w, &[&x.buffer, &weight.buffer, &bias.buffer, &out.buffer])
}

/// Row-wise softmax over the last dimension (max-subtracted). `out` may be `x` itself.
pub fn softmax(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor) -> Result<()> {
    check_f32("softmax", &[x, out])?;
    let (rows, c) = rows_and_width("softmax", x)?;
    out.expect_shape("softmax out", &x.shape)?;
    if std::sync::Arc::ptr_eq(&x.buffer, &out.buffer) {
        return softmax_inplace(gpu, enc, x);
    }
    let p = Params { rows: rows as u32, n: c as u32, ..Default::default() };
    run(gpu, enc, "softmax", &[], p, c, &[&x.buffer, &out.buffer])
}

/// Row-wise softmax of `x`, written over `x`.
pub fn softmax_inplace(gpu: &Gpu, enc: &mut Encoder, x: &Tensor) -> Result<()> {
    check_f32("softmax", &[x])?;
    let (rows, c) = rows_and_width("softmax", x)?;
    let p = Params { rows: rows as u32, n: c as u32, ..Default::default() };
    run(gpu, enc, "softmax", &["INPLACE"], p, c, &[&x.buffer])
}

/// CPU references, in f64.
pub mod reference {
    /// LayerNorm over rows of length `weight.len()`.
    pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
        let c = weight.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let (mean, rstd) = mean_rstd(row, eps);
            out.extend(row.iter().enumerate().map(|(i, &v)| ((v as f64 - mean) * rstd * weight[i] as f64 + bias[i] as f64) as f32));
        }
        out
    }

    /// GroupNorm over NCHW `x` of shape [B, C, H, W], optionally followed by swish.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(x: &[f32], shape: [usize; 4], groups: usize, weight: &[f32], bias: &[f32], eps: f32, swish: bool) -> Vec<f32> {
        let [_, c, h, w] = shape;
        let (cpg, hw) = (c / groups, h * w);
        let mut out = Vec::with_capacity(x.len());
        // (image, group) blocks are contiguous in NCHW.
        for (blk, block) in x.chunks(cpg * hw).enumerate() {
            let (mean, rstd) = mean_rstd(block, eps);
            for (i, &v) in block.iter().enumerate() {
                let ch = (blk % groups) * cpg + i / hw;
                let y = (v as f64 - mean) * rstd * weight[ch] as f64 + bias[ch] as f64;
                out.push((if swish { y / (1.0 + (-y).exp()) } else { y }) as f32);
            }
        }
        out
    }

    pub fn softmax(x: &[f32], c: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            out.extend(row.iter().map(|&v| ((v as f64 - m).exp() / sum) as f32));
        }
        out
    }

    /// A row's mean and 1/σ (population variance, `eps` inside the root), in f64.
    pub fn mean_rstd(v: &[f32], eps: f32) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, 1.0 / (var + eps as f64).sqrt())
    }
}

pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let full = size == BenchSize::Full;
    let (rows, c) = if full { (197, 768) } else { (13, 100) };
    let x = Tensor::from_f32(gpu, &[rows, c], &vec![0.5; rows * c])?;
    let (w, b) = (Tensor::from_f32(gpu, &[c], &vec![1.0; c])?, Tensor::zeros(gpu, &[c], DType::F32)?);
    let out = Tensor::zeros(gpu, &[rows, c], DType::F32)?;
    let ln = BenchCase {
        kernel: "layer_norm".into(),
        format: "f32".into(),
        shape: format!("{rows}x{c}"),
        bytes: 4 * (rows * c) as u64,
        flops: 8 * (rows * c) as u64,
        step: Box::new(move |gpu, enc| layer_norm(gpu, enc, &x, &w, &b, 1e-6, &out)),
    };
    let shape = if full { [1, 512, 32, 32] } else { [1, 64, 9, 7] };
    let n: usize = shape.iter().product();
    let x = Tensor::from_f32(gpu, &shape, &vec![0.5; n])?;
    let (w, b) = (Tensor::from_f32(gpu, &[shape[1]], &vec![1.0; shape[1]])?, Tensor::zeros(gpu, &[shape[1]], DType::F32)?);
    let out = Tensor::zeros(gpu, &shape, DType::F32)?;
    let gn = BenchCase {
        kernel: "group_norm".into(),
        format: "f32".into(),
        shape: format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]),
        bytes: 4 * n as u64,
        flops: 8 * n as u64,
        step: Box::new(move |gpu, enc| group_norm(gpu, enc, &x, 32, &w, &b, 1e-6, &out, true)),
    };
    // Attention scores of ViT-B: 12 heads × 197 queries × 197 keys.
    let (rows, c) = if full { (12 * 197, 197) } else { (31, 57) };
    let x = Tensor::from_f32(gpu, &[rows, c], &vec![0.5; rows * c])?;
    let out = Tensor::zeros(gpu, &[rows, c], DType::F32)?;
    let sm = BenchCase {
        kernel: "softmax".into(),
        format: "f32".into(),
        shape: format!("{rows}x{c}"),
        bytes: 4 * (rows * c) as u64,
        flops: 5 * (rows * c) as u64,
        step: Box::new(move |gpu, enc| softmax(gpu, enc, &x, &out)),
    };
    Ok(vec![ln, gn, sm])
}
