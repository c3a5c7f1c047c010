//! W4A8 and W4A4 integer Linears: 4-bit group-wise weights (`q4gG`, symmetric) times int8 or
//! int4 activation codes, with exact i32 dot products inside each scale group of K, scaled
//! once per group in f32 (`shaders/w4a8.wgsl` gives the formula):
//!
//! - activations are quantized on the GPU just before the GEMM, either per token (dynamic:
//!   symmetric absmax like W8A8, or asymmetric min/max with a zero point per row) or with a
//!   static uniform quantizer calibrated by `lowbit quantize` (any width 2..=8; ≤ 4 bits are
//!   stored 8 codes per word), NoisyQuant's noise added first;
//! - the weights' 4-bit codes are unpacked to int8 in registers and multiplied with
//!   `dot4I8Packed` where the adapter has it (sign-extended bytes otherwise);
//! - SVDQuant's low-rank branch (`LowRank`): `t = x · downᵀ` by the f32 Linear kernel, then the
//!   GEMM's epilogue adds `t · upᵀ`, so the branch costs one small extra dispatch.
//!
//! The per-group scales are f16 as the q4 format stores them. QServe's two-level scales (one
//! int8 multiplier per group, one f32 scale per channel) would keep a whole row in one i32 sum,
//! but cannot represent the f16 group scales that checkpoints already hold exactly.

use super::gpu_matrix::{GpuMatrix, RowLayout};
use super::matmul::{linear, QLinear};
use super::{launch, params, BenchCase, BenchSize};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::gpu::{DType, Shader, Tensor};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("w4a8");
/// Output channels per invocation (the shader's vec4 of accumulators).
const TN: usize = 4;
/// Rows per invocation tile outside GEMV (the shader's TM).
const TM: usize = 4;
/// Int8 words of K one `gemm_workgroup` stage holds (64 codes: two weight vec4s).
const STAGE_WORDS: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    x_vecs: u32,
    out_stride: u32,
    col_offset: u32,
    w_vecs: u32,
    groups: u32,
    group_vecs: u32,
    scale: f32,
    zero: f32,
    top: f32,
    offset: f32,
    rank: u32,
    _pad: [u32; 3],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout =
    crate::params_layout!(Params, ["w4a8"], [], "Params", [rows, cols, x_vecs, out_stride, col_offset, w_vecs, groups, group_vecs, scale, zero, top, offset, rank]);

/// How a layer's input becomes integer codes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActInput {
    /// Per token, computed on the GPU for every input, bits 2..=8. Symmetric: scale =
    /// max|x_row| / qmax, qmax = 2^(bits−1) − 1 (127 at 8 bits: W8A8's quantizer; 7 at 4
    /// bits). With `zero_point`: scale = (max − min) / (2^bits − 1) over the row's range
    /// widened to hold 0, zero = round(−min / scale): a one-sided row (post-GELU, post-ReLU)
    /// gets all 2^bits codes instead of the half a symmetric grid spends on its sign.
    PerToken { bits: u32, zero_point: bool },
    /// A calibrated uniform quantizer (`ActQuantizer::Uniform`): code = clamp(round(x / scale)
    /// + zero, 0, 2^bits − 1), value (code − zero) · scale.
    Static { bits: u32, scale: f32, zero: f32 },
}

impl ActInput {
    /// Bits per stored activation code: 4 (eight per word) or 8 (four per word).
    pub fn storage_bits(&self) -> u32 {
        match *self {
            ActInput::Static { bits, .. } | ActInput::PerToken { bits, .. } if bits <= 4 => 4,
            _ => 8,
        }
    }

    /// The largest code magnitude of a symmetric per-token quantizer (2^(bits−1) − 1).
    pub fn per_token_max(bits: u32) -> f32 {
        ((1u32 << (bits - 1)) - 1) as f32
    }

    /// The largest code of the quantizer, as the shader's `top`: 2^(bits−1) − 1 for symmetric
    /// per-token codes, 2^bits − 1 for codes with a zero point.
    pub fn top(&self) -> f32 {
        match *self {
            ActInput::PerToken { bits, zero_point: false } => Self::per_token_max(bits),
            ActInput::PerToken { bits, .. } | ActInput::Static { bits, .. } => ((1u32 << bits) - 1) as f32,
        }
    }

    fn validate(&self) -> Result<()> {
        if let ActInput::PerToken { bits, .. } = *self {
            if !(2..=8).contains(&bits) {
                invalid!("per-token integer activations of {bits} bits: the W4A8/W4A4 kernel takes 2 to 8");
            }
        }
        if let ActInput::Static { bits, scale, zero } = *self {
            if !(2..=8).contains(&bits) {
                invalid!("integer activations of {bits} bits: the W4A8/W4A4 kernel takes 2 to 8");
            }
            if !(scale.is_finite() && scale > 0.0) {
                invalid!("integer activations: scale {scale} must be finite and > 0");
            }
            if !(zero.fract() == 0.0 && zero >= 0.0 && zero <= ((1u32 << bits) - 1) as f32) {
                invalid!("integer activations: zero {zero} must be an integer code in 0..2^{bits}");
            }
        }
        Ok(())
    }
}

/// SVDQuant's low-rank branch W ≈ up · down, computed in f32 beside the 4-bit residual.
pub struct LowRank {
    pub rank: usize,
    down: QLinear,
    /// This branch's `up` [N, rank] rows of each weight block.
    up: Vec<wgpu::Buffer>,
}

/// A Linear with 4-bit group-wise weights and integer activations.
pub struct W4Linear {
    /// Output channels (N).
    pub rows: usize,
    /// Input features (K).
    pub cols: usize,
    pub act: ActInput,
    /// Apply GELU (erf form) to the output.
    pub gelu: bool,
    /// NoisyQuant: added to every input row before quantizing (the bias already holds −W·noise).
    noise: Option<Tensor>,
    low_rank: Option<LowRank>,
    /// QuaRot: the input is rotated by the block-diagonal Hadamard matrix of this block size
    /// before quantizing (the weights were stored as W·H).
    hadamard: Option<usize>,
    /// vec4<u32> words (32 codes) per padded weight row.
    w_vecs: usize,
    groups: usize,
    group_vecs: usize,
    weights: GpuMatrix,
    /// Per block: (scale, Σ codes) per channel and group; the bias per channel.
    group_params: Vec<wgpu::Buffer>,
    biases: Vec<wgpu::Buffer>,
    weight_bytes: u64,
}

impl W4Linear {
    /// Uploads `w` (format `q4gG` without zero points) and the optional bias.
    pub fn new(gpu: &Gpu, w: &PackedMatrix, bias: Option<&[f32]>, act: ActInput) -> Result<Self> {
        let WeightFormat::Q4 { group, zero_point: false } = w.format else {
            invalid!("W4A8/W4A4 need symmetric 4-bit group-wise weights (`q4g32`, `q4g64`, `q4g128`), got `{}`", w.format.name());
        };
        act.validate()?;
        let (rows, cols) = (w.rows, w.cols);
        if rows == 0 || cols == 0 || w.row_words != cols.div_ceil(8) || w.data.len() != rows * w.row_words {
            shape_err!("packed q4 matrix {rows}×{cols} has inconsistent data ({} words, {} per row)", w.data.len(), w.row_words);
        }
        let groups = cols.div_ceil(group);
        if w.groups != groups || w.scales.len() * 2 < rows * groups {
            shape_err!("packed q4 matrix {rows}×{cols} has {} groups and {} scale words", w.groups, w.scales.len());
        }
        if let Some(b) = bias {
            if b.len() != rows {
                shape_err!("bias has {} values for {rows} output channels", b.len());
            }
        }
        let codes = PackedMatrix { scales: Vec::new(), zeros: Vec::new(), ..w.clone() };
        let weights = GpuMatrix::upload(gpu, &codes, RowLayout::RowMajor { align: 4 }, "w4 weights")?;
        let mut group_params = Vec::new();
        let mut biases = Vec::new();
        for block in &weights.blocks {
            let gp: Vec<f32> = block.rows.clone().flat_map(|r| (0..groups).flat_map(move |g| [w.scale(r, g), code_sum(w, r, g, group) as f32])).collect();
            group_params.push(gpu.upload(bytemuck::cast_slice(&gp), "w4 group scales")?);
            let b: Vec<f32> = block.rows.clone().map(|r| bias.map_or(0.0, |b| b[r])).collect();
            biases.push(gpu.upload(bytemuck::cast_slice(&b), "w4 bias")?);
        }
        Ok(W4Linear {
            rows,
            cols,
            act,
            gelu: false,
            noise: None,
            low_rank: None,
            hadamard: None,
            w_vecs: weights.stride / 4,
            groups,
            group_vecs: group / 32,
            weights,
            group_params,
            biases,
            weight_bytes: 4 * (w.data.len() + w.scales.len()) as u64,
        })
    }

    /// The same layer with GELU fused into the output.
    pub fn with_gelu(mut self) -> Self {
        self.gelu = true;
        self
    }

    /// Adds NoisyQuant's `noise` [K] to the input before quantizing.
    pub fn with_noise(mut self, noise: Tensor) -> Result<Self> {
        if noise.numel() != self.cols || noise.dtype != DType::F32 {
            shape_err!("noise has {} values, the layer takes {} f32 inputs", noise.numel(), self.cols);
        }
        self.noise = Some(noise);
        Ok(self)
    }

    /// Adds SVDQuant's low-rank branch `up [N, rank] · down [rank, K]` (f32) to the output.
    pub fn with_low_rank(mut self, gpu: &Gpu, down: &[f32], up: &[f32], rank: usize) -> Result<Self> {
        if rank == 0 || rank > self.rows.min(self.cols) {
            invalid!("low-rank branch of rank {rank}: a {}×{} layer takes 1 to {}", self.rows, self.cols, self.rows.min(self.cols));
        }
        if down.len() != rank * self.cols || up.len() != self.rows * rank {
            shape_err!("low-rank branch: down has {} values (want {rank}×{}), up {} (want {}×{rank})", down.len(), self.cols, up.len(), self.rows);
        }
        let down = QLinear::new(gpu, &PackedMatrix::quantize(down, rank, self.cols, WeightFormat::F32)?, None)?;
        let up = self.weights.blocks.iter().map(|b| gpu.upload(bytemuck::cast_slice(&up[b.rows.start * rank..b.rows.end * rank]), "low-rank up")).collect::<Result<_>>()?;
        self.low_rank = Some(LowRank { rank, down, up });
        Ok(self)
    }

    /// Rotates each input row by the normalized Hadamard matrix of `block` before quantizing
    /// (`kernels::hadamard`): the layer's weights must have been stored as W·H.
    pub fn with_hadamard(mut self, block: usize) -> Result<Self> {
        if self.noise.is_some() || self.low_rank.is_some() {
            invalid!("Hadamard rotation: not combined with NoisyQuant noise or a low-rank branch (both read the unrotated input)");
        }
        super::hadamard::reference(&[], self.cols, block)?;
        self.hadamard = Some(block);
        Ok(self)
    }

    pub fn hadamard(&self) -> Option<usize> {
        self.hadamard
    }

    pub fn rank(&self) -> Option<usize> {
        self.low_rank.as_ref().map(|l| l.rank)
    }

    /// Bytes of packed weights and scales one GEMM streams.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// Σ of the signed codes (code − 8) of group `g` of row `r`, over real columns only.
fn code_sum(w: &PackedMatrix, r: usize, g: usize, group: usize) -> i32 {
    (g * group..((g + 1) * group).min(w.cols)).map(|c| w.code(r, c) as i32 - 8).sum()
}

/// Integer activation codes on the GPU, in the kernel's layout (see the shader), and per row
/// (scale, dz): the value of signed code c is (c + dz) · scale. Reusable scratch.
pub struct IntActivations {
    pub rows: usize,
    pub cols: usize,
    pub storage_bits: u32,
    /// vec4 words per row.
    pub x_vecs: usize,
    pub codes: Tensor,
    /// [rows, 2]: (scale, dz) per row.
    pub scales: Tensor,
}

impl IntActivations {
    pub fn new(gpu: &Gpu, rows: usize, cols: usize, storage_bits: u32) -> Result<Self> {
        if rows == 0 || cols == 0 {
            shape_err!("integer activations of {rows}×{cols}: zero-sized");
        }
        let x_vecs = cols.div_ceil(32) * if storage_bits == 4 { 1 } else { 2 };
        let codes = Tensor::zeros(gpu, &[rows, 4 * x_vecs], DType::U32)?;
        let scales = Tensor::zeros(gpu, &[rows, 2], DType::F32)?;
        Ok(IntActivations { rows, cols, storage_bits, x_vecs, codes, scales })
    }

}

/// What `w4_forward` writes between its dispatches.
pub struct W4Scratch {
    pub x: IntActivations,
    /// x · downᵀ of the low-rank branch.
    pub t: Option<Tensor>,
    /// The rotated input (`W4Linear::with_hadamard`).
    pub rotated: Option<Tensor>,
}

impl W4Scratch {
    /// Scratch for `layer`'s input of `rows` rows (and the low-rank branch's `t`, if any).
    pub fn new(gpu: &Gpu, layer: &W4Linear, rows: usize) -> Result<W4Scratch> {
        let x = IntActivations::new(gpu, rows, layer.cols, layer.act.storage_bits())?;
        let t = layer.low_rank.as_ref().map(|l| Tensor::zeros(gpu, &[rows, l.rank], DType::F32)).transpose()?;
        let rotated = layer.hadamard.map(|_| Tensor::zeros(gpu, &[rows, layer.cols], DType::F32)).transpose()?;
        Ok(W4Scratch { x, t, rotated })
    }
}

fn rows_of(what: &str, t: &Tensor, last: usize) -> Result<usize> {
    t.expect_dtype(what, DType::F32)?;
    if t.shape.last() != Some(&last) {
        shape_err!("{what}: expected last dimension {last}, got shape {:?}", t.shape);
    }
    Ok(t.numel() / last)
}

/// W4A8 shares W8A8's column of the launch table (`kernels::launch`): the same quantize lanes,
/// GEMM lanes, rows per workgroup and workgroup tiles; only the weight staging differs. Not
/// tuned for W4A8 separately: no alternative has been timed yet, on lavapipe or a GPU.
fn tiles(gpu: &Gpu) -> super::w8a8::Tiles {
    launch::for_class(gpu.class).w8a8
}

/// Quantizes `x` [.., K] into `out` with `act` (and `noise` added first, when given).
pub fn quantize_activations(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, act: ActInput, noise: Option<&Tensor>, out: &IntActivations) -> Result<()> {
    act.validate()?;
    let rows = rows_of("w4 quantize input", x, out.cols)?;
    if rows != out.rows || act.storage_bits() != out.storage_bits {
        shape_err!("w4 quantize: input has {rows} rows of {}-bit codes, the buffer {} of {}", act.storage_bits(), out.rows, out.storage_bits);
    }
    let (scale, zero, bits) = match act {
        ActInput::PerToken { bits, .. } => (0.0, 0.0, bits),
        ActInput::Static { bits, scale, zero } => (scale, zero, bits),
    };
    let p = Params {
        rows: rows as u32,
        cols: out.cols as u32,
        x_vecs: out.x_vecs as u32,
        scale,
        zero,
        top: act.top(),
        offset: (1u32 << (bits - 1)) as f32,
        ..bytemuck::Zeroable::zeroed()
    };
    let mut defines = vec!["QUANTIZE"];
    if let ActInput::PerToken { zero_point, .. } = act {
        defines.push("DYNAMIC");
        if !zero_point {
            defines.push("SYMMETRIC");
        }
    }
    if out.storage_bits == 4 {
        defines.push("A4");
    }
    let mut buffers = vec![&*x.buffer];
    if let Some(n) = noise {
        if n.numel() != out.cols {
            shape_err!("w4 quantize: noise has {} values for rows of {}", n.numel(), out.cols);
        }
        defines.push("NOISE");
        buffers.push(&n.buffer);
    }
    buffers.extend([&*out.codes.buffer, &*out.scales.buffer]);
    let pipe = gpu.pipeline(&SHADER, "quantize", &defines, &[("WG", tiles(gpu).quantize_wg as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), &buffers, gpu.grid(rows as u32))
}

/// `out [M, N] = dequant(xq · Wᵀ) + bias (+ t · upᵀ)`, then GELU if the layer has it. `t` is the
/// low-rank branch's `x · downᵀ` and must be given exactly when the layer has one.
pub fn w4_gemm(gpu: &Gpu, enc: &mut Encoder, layer: &W4Linear, xq: &IntActivations, t: Option<&Tensor>, out: &Tensor) -> Result<()> {
    if xq.cols != layer.cols || xq.storage_bits != layer.act.storage_bits() {
        shape_err!("w4 gemm: activations are {}-bit with K = {}, the layer takes {}-bit with K = {}", xq.storage_bits, xq.cols, layer.act.storage_bits(), layer.cols);
    }
    let m = rows_of("w4 gemm output", out, layer.rows)?;
    if m != xq.rows {
        shape_err!("w4 gemm: output has {m} rows, the activations {}", xq.rows);
    }
    let rank = match (&layer.low_rank, t) {
        (Some(l), Some(t)) if t.shape == [m, l.rank] => l.rank,
        (None, None) => 0,
        _ => shape_err!("w4 gemm: the low-rank input does not match the layer's branch"),
    };
    let gemv = m < TM;
    let mut defines = Vec::new();
    if gpu.caps.packed_dot {
        defines.push("PACKED_DOT");
    }
    if layer.gelu {
        defines.push("GELU");
    }
    if gemv {
        defines.push("GEMV");
    }
    if rank > 0 {
        defines.push("LOW_RANK");
    }
    if xq.storage_bits == 4 {
        defines.push("A4");
    }
    let launch = tiles(gpu);
    // The kernel, and the output channels × activation rows one workgroup covers.
    let (pipe, (cols_per_group, rows_per_group)) = match (launch.tiles, gemv) {
        // GPUs: W8A8's int8 tiles (the weights unpacked while staged).
        (Some([large, small]), false) => {
            let (bm, bn, rm, rn) = if m <= 64 { small } else { large };
            let wg = (bm / rm) * (bn / rn);
            let consts = [("WG", wg as f64), ("BM", bm as f64), ("BN", bn as f64), ("BKW", STAGE_WORDS as f64), ("RM", rm as f64), ("RN", rn as f64)];
            (gpu.pipeline(&SHADER, "gemm_workgroup", &defines, &consts)?, (bn as usize, bm as usize))
        }
        _ => {
            let rows_per_wg = if gemv { launch.rows_per_wg } else { launch.rows_per_wg.div_ceil(TM) * TM };
            let consts = [("WG", launch.gemm_wg as f64), ("ROWS_PER_WG", rows_per_wg as f64)];
            (gpu.pipeline(&SHADER, "gemm", &defines, &consts)?, (launch.gemm_wg * TN, rows_per_wg))
        }
    };
    for (i, part) in layer.weights.blocks.iter().enumerate() {
        let p = Params {
            rows: m as u32,
            cols: part.rows.len() as u32,
            x_vecs: xq.x_vecs as u32,
            out_stride: layer.rows as u32,
            col_offset: part.rows.start as u32,
            w_vecs: layer.w_vecs as u32,
            groups: layer.groups as u32,
            group_vecs: layer.group_vecs as u32,
            rank: rank as u32,
            ..bytemuck::Zeroable::zeroed()
        };
        let groups = [part.rows.len().div_ceil(cols_per_group) as u32, m.div_ceil(rows_per_group) as u32, 1];
        let mut buffers = vec![&*xq.codes.buffer, &*xq.scales.buffer, &part.data, &layer.group_params[i], &layer.biases[i], &*out.buffer];
        if let (Some(l), Some(t)) = (&layer.low_rank, t) {
            buffers.extend([&*t.buffer, &l.up[i]]);
        }
        gpu.dispatch(enc, &pipe, params(&p), &buffers, groups)?;
    }
    Ok(())
}

/// The whole Linear: the low-rank branch's down projection (f32), the input's quantization,
/// then the integer GEMM with the branch's up projection in its epilogue.
pub fn w4_forward(gpu: &Gpu, enc: &mut Encoder, layer: &W4Linear, x: &Tensor, scratch: &W4Scratch, out: &Tensor) -> Result<()> {
    if let (Some(l), Some(t)) = (&layer.low_rank, &scratch.t) {
        linear(gpu, enc, &l.down, x, t, None)?;
    }
    let x = match (layer.hadamard, &scratch.rotated) {
        (Some(block), Some(r)) => {
            super::hadamard::rotate(gpu, enc, x, r, block)?;
            r
        }
        (None, _) => x,
        (Some(_), None) => shape_err!("w4 forward: the layer rotates its input but the scratch has no buffer for it"),
    };
    quantize_activations(gpu, enc, x, layer.act, layer.noise.as_ref(), &scratch.x)?;
    w4_gemm(gpu, enc, layer, &scratch.x, scratch.t.as_ref(), out)
}

pub mod reference;

/// GEMM cases over pre-quantized activations (M×K×N), beside W8A8's: per-token int8
/// activations (W4A8) and static 4-bit ones (W4A4), q4g32 weights.
pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let shapes: &[(usize, usize, usize)] = match size {
        BenchSize::Full => &[(1, 4096, 4096), (1, 768, 3072), (197, 768, 2304), (197, 4096, 4096)],
        BenchSize::Quick => &[(1, 256, 384), (13, 200, 64)],
    };
    let dot = if gpu.caps.packed_dot { "dot4" } else { "fallback" };
    let mut cases = Vec::new();
    for &(m, k, n) in shapes {
        let w = PackedMatrix::quantize(&crate::synthetic::uniform(n * k, 1, 0.05), n, k, WeightFormat::Q4 { group: 32, zero_point: false })?;
        let bias = crate::synthetic::uniform(n, 2, 0.1);
        let x = Tensor::from_f32(gpu, &[m, k], &crate::synthetic::uniform(m * k, 3, 1.0))?;
        for (kernel, act) in [("w4a8_gemm", ActInput::PerToken { bits: 8, zero_point: false }), ("w4a4_gemm", ActInput::Static { bits: 4, scale: 1.0 / 7.0, zero: 8.0 })] {
            let layer = W4Linear::new(gpu, &w, Some(&bias), act)?;
            let xq = IntActivations::new(gpu, m, k, act.storage_bits())?;
            let mut enc = gpu.encoder();
            quantize_activations(gpu, &mut enc, &x, act, None, &xq)?;
            gpu.submit(enc)?;
            let out = Tensor::zeros(gpu, &[m, n], DType::F32)?;
            cases.push(BenchCase {
                kernel: kernel.into(),
                format: format!("q4g32-{dot}"),
                shape: format!("{m}x{k}x{n}"),
                bytes: layer.weight_bytes(),
                flops: 2 * (m * n * k) as u64,
                step: Box::new(move |gpu, enc| w4_gemm(gpu, enc, &layer, &xq, None, &out)),
            });
        }
    }
    Ok(cases)
}
