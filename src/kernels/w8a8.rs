//! W8A8 integer GEMM: activations quantized per token to int8 on the GPU (dynamic, absmax),
//! weights in Q8 per-channel format, products accumulated in i32 and rescaled once per output:
//! `out[m, n] = (Σ_k xq[m, k] · wq[n, k]) · sx[m] · sw[n] + bias[n]` (optionally GELU'd).
//!
//! Activation codes use the Q8 weight row layout (four int8 per u32, LSB first, rows padded
//! with zero codes to whole words). On upload the weight rows are further padded with zero
//! codes to whole vec4s, so the kernel fetches 16 weight codes per load: on lavapipe every
//! per-lane (non-uniform) load is a gather and these dominated the first version; 16-byte
//! loads made GEMV 4x faster. dot4I8Packed and the sign-extend fallback measure the same
//! there (lavapipe has no packed-dot instruction and lowers it to the same byte arithmetic).


use super::gpu_matrix::{GpuMatrix, RowLayout};
use super::{launch, params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("w8a8");
/// Output channels per invocation (the shader's vec4 of accumulators).
const TN: usize = 4;
/// Rows per invocation tile in the non-GEMV variant (the shader's TM).
const TM: usize = 4;
/// |Σ q·w| ≤ K · 127 · 128 (activation codes are within ±127, a foreign weight code may be
/// −128) must stay below i32::MAX.
pub const MAX_K: usize = (i32::MAX / (127 * 128)) as usize;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row_words: u32,
    out_stride: u32,
    col_offset: u32,
    w_vecs: u32,
    _pad: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["w8a8"], [], "Params", [rows, cols, row_words, out_stride, col_offset, w_vecs]);

/// Int8 activations on the GPU: `codes` [rows, ceil(cols/4)] packed words, `scales` [rows] f32.
/// Reusable scratch: `quantize_activations` overwrites it.
pub struct QuantizedActivations {
    pub rows: usize,
    pub cols: usize,
    pub row_words: usize,
    pub codes: Tensor,
    pub scales: Tensor,
}

impl QuantizedActivations {
    pub fn new(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            shape_err!("quantized activations of {rows}×{cols}: zero-sized");
        }
        let row_words = cols.div_ceil(4);
        let codes = Tensor::zeros(gpu, &[rows, row_words], DType::U32)?;
        let scales = Tensor::zeros(gpu, &[rows], DType::F32)?;
        Ok(QuantizedActivations { rows, cols, row_words, codes, scales })
    }

    /// Codes and scales back on the CPU (tests, debugging).
    pub fn read(&self, gpu: &Gpu) -> Result<(Vec<u32>, Vec<f32>)> {
        Ok((self.codes.to_vec_u32(gpu)?, self.scales.to_vec_f32(gpu)?))
    }
}

/// A Linear layer with Q8 per-channel weights, ready for `w8a8_linear`.
pub struct W8A8Linear {
    /// Output channels (N).
    pub rows: usize,
    /// Input features (K).
    pub cols: usize,
    /// Apply GELU (erf form) to the output.
    pub gelu: bool,
    /// vec4<u32> words (16 codes) per padded weight row on the GPU.
    w_vecs: usize,
    weights: GpuMatrix,
    /// (scale, bias) per output channel of each block of `weights`, as vec2<f32>.
    row_params: Vec<wgpu::Buffer>,
    weight_bytes: u64,
}

impl W8A8Linear {
    /// Uploads `w` (format `Q8 { group: None }`) and the optional bias, splitting the rows
    /// over several bindings when the matrix exceeds one.
    pub fn new(gpu: &Gpu, w: &PackedMatrix, bias: Option<&[f32]>) -> Result<Self> {
        if w.format != (WeightFormat::Q8 { group: None }) {
            invalid!("W8A8 needs Q8 weights with one scale per output channel (`q8`), got `{}`", w.format.name());
        }
        let (rows, cols) = (w.rows, w.cols);
        if rows == 0 || cols == 0 || w.row_words != cols.div_ceil(4) || w.data.len() != rows * w.row_words {
            shape_err!("packed Q8 matrix {rows}×{cols} has inconsistent data ({} words, {} per row)", w.data.len(), w.row_words);
        }
        if w.scales.len() * 2 < rows {
            shape_err!("packed Q8 matrix {rows}×{cols} has {} scale words", w.scales.len());
        }
        if cols > MAX_K {
            invalid!("W8A8 with K = {cols} could overflow the i32 accumulators (K ≤ {MAX_K})");
        }
        if let Some(b) = bias {
            if b.len() != rows {
                shape_err!("bias has {} values for {rows} output channels", b.len());
            }
        }
        // Rows padded with zero codes to whole vec4s so the kernels load 16 codes at a time.
        // The scales travel in `row_params`, with the bias, not as the format's packed scales.
        let weights = GpuMatrix::upload_codes(gpu, w, RowLayout::RowMajor { align: 4 }, "w8a8 weights")?;
        let row_params = weights
            .blocks
            .iter()
            .map(|block| {
                let params: Vec<f32> = block.rows.clone().flat_map(|r| [w.scale(r, 0), bias.map_or(0.0, |b| b[r])]).collect();
                gpu.upload(bytemuck::cast_slice(&params), "w8a8 scales+bias")
            })
            .collect::<Result<_>>()?;
        let w_vecs = weights.stride / 4;
        let weight_bytes = 4 * (w.data.len() + w.scales.len()) as u64;
        Ok(W8A8Linear { rows, cols, gelu: false, w_vecs, weights, row_params, weight_bytes })
    }

    /// The same layer with GELU fused into the output.
    pub fn with_gelu(mut self) -> Self {
        self.gelu = true;
        self
    }

    /// Bytes of packed weights and scales one GEMM streams.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// Rows of a tensor whose last dimension must be `last` (leading dimensions are flattened).
fn rows_of(what: &str, t: &Tensor, last: usize) -> Result<usize> {
    t.expect_dtype(what, DType::F32)?;
    if t.shape.last() != Some(&last) {
        shape_err!("{what}: expected last dimension {last}, got shape {:?}", t.shape);
    }
    Ok(t.numel() / last)
}

/// Per-token int8 quantization of `x` [.., K] into `out` (scale = max|x_row| / 127,
/// q = round(x / scale) with ties to even, clamped to ±127; an all-zero row gets scale 0 and
/// zero codes). Activations must be finite: a NaN or infinity makes that row's codes undefined.
pub fn quantize_activations(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &QuantizedActivations) -> Result<()> {
    let rows = rows_of("w8a8 quantize input", x, out.cols)?;
    if rows != out.rows {
        shape_err!("w8a8 quantize: input has {rows} rows, the quantized buffer {}", out.rows);
    }
    let p = Params {
        rows: rows as u32,
        cols: out.cols as u32,
        row_words: out.row_words as u32,
        out_stride: 0,
        col_offset: 0,
        w_vecs: 0,
        _pad: [0; 2],
    };
    let pipe = gpu.pipeline(&SHADER, "quantize", &["QUANTIZE"], &[("WG", launch(gpu).quantize_wg as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), &[&x.buffer, &out.codes.buffer, &out.scales.buffer], gpu.grid(rows as u32))
}

/// W8A8's workgroup shapes on one class of adapter (a column of `kernels::launch`'s table).
/// On CPU adapters one thread runs a whole workgroup: a single SIMD batch of 8 lanes quantizes
/// a row fastest (3x faster than 64 lanes), and a GEMM workgroup of 32 rows reuses its weight
/// columns (in cache) over many rows.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    /// Lanes per row in `quantize`.
    pub quantize_wg: usize,
    /// Lanes in `gemm`; each covers TN output channels.
    pub gemm_wg: usize,
    /// Activation rows one `gemm` workgroup covers.
    pub rows_per_wg: usize,
    /// `gemm_workgroup`'s int8 tiles for many rows, few rows (up to 64): (BM, BN, RM, RN).
    pub tiles: Option<[(u32, u32, u32, u32); 2]>,
}

impl Tiles {
    /// The GPU rows: the float GEMM's workgroup tiles (`kernels::launch`), on int8 words.
    pub const GPU: Tiles = Tiles { quantize_wg: 64, gemm_wg: 64, rows_per_wg: TM, tiles: Some([(64, 64, 4, 4), (16, 64, 2, 4)]) };
}

/// Code words of K one `gemm_workgroup` stage holds (64 codes).
const STAGE_WORDS: u32 = 16;

fn launch(gpu: &Gpu) -> Tiles {
    launch::for_class(gpu.class).w8a8
}

/// `out [M, N] = dequant(xq · Wᵀ) + bias` (then GELU if the layer has it).
pub fn w8a8_linear(gpu: &Gpu, enc: &mut Encoder, layer: &W8A8Linear, xq: &QuantizedActivations, out: &Tensor) -> Result<()> {
    if xq.cols != layer.cols {
        shape_err!("w8a8: activations have K = {}, the layer {}", xq.cols, layer.cols);
    }
    let m = rows_of("w8a8 output", out, layer.rows)?;
    if m != xq.rows {
        shape_err!("w8a8: output has {m} rows, the activations {}", xq.rows);
    }
    let gemv = xq.rows < TM;
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
    let Tiles { gemm_wg: wg, rows_per_wg, tiles, .. } = launch(gpu);
    // The kernel, and the output channels × activation rows one workgroup covers.
    let (pipe, (cols_per_group, rows_per_group)) = match (tiles, gemv) {
        // GPUs: int8 tiles in workgroup memory.
        (Some([large, small]), false) => {
            let (bm, bn, rm, rn) = if m <= 64 { small } else { large };
            let wg = (bm / rm) * (bn / rn);
            let consts = [("WG", wg as f64), ("BM", bm as f64), ("BN", bn as f64), ("BKW", STAGE_WORDS as f64), ("RM", rm as f64), ("RN", rn as f64)];
            (gpu.pipeline(&SHADER, "gemm_workgroup", &defines, &consts)?, (bn as usize, bm as usize))
        }
        _ => {
            let rows_per_wg = if gemv { rows_per_wg } else { rows_per_wg.div_ceil(TM) * TM };
            let consts = [("WG", wg as f64), ("ROWS_PER_WG", rows_per_wg as f64)];
            (gpu.pipeline(&SHADER, "gemm", &defines, &consts)?, (wg * TN, rows_per_wg))
        }
    };
    for (part, row_params) in layer.weights.blocks.iter().zip(&layer.row_params) {
        let p = Params {
            rows: m as u32,
            cols: part.rows.len() as u32,
            row_words: xq.row_words as u32,
            out_stride: layer.rows as u32,
            col_offset: part.rows.start as u32,
            w_vecs: layer.w_vecs as u32,
            _pad: [0; 2],
        };
        let groups = [part.rows.len().div_ceil(cols_per_group) as u32, m.div_ceil(rows_per_group) as u32, 1];
        let buffers = [&*xq.codes.buffer, &*xq.scales.buffer, &part.data, row_params, &*out.buffer];
        gpu.dispatch(enc, &pipe, params(&p), &buffers, groups)?;
    }
    Ok(())
}

/// Quantizes `x` into `scratch`, then runs the layer: the usual W8A8 Linear.
pub fn w8a8_forward(
    gpu: &Gpu,
    enc: &mut Encoder,
    layer: &W8A8Linear,
    x: &Tensor,
    scratch: &QuantizedActivations,
    out: &Tensor,
) -> Result<()> {
    quantize_activations(gpu, enc, x, scratch)?;
    w8a8_linear(gpu, enc, layer, scratch, out)
}

/// CPU references with exactly the kernels' arithmetic.
pub mod reference {
    use crate::kernels::elementwise::Activation;
    use crate::formats::PackedMatrix;
    use crate::{shape_err, Result};

    /// Per-token quantization: (packed codes [rows, ceil(cols/4)], scales [rows]).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        if rows == 0 || cols == 0 || x.len() != rows * cols {
            shape_err!("quantize reference: {} values for {rows}×{cols}", x.len());
        }
        let row_words = cols.div_ceil(4);
        let mut codes = vec![0u32; rows * row_words];
        let mut scales = vec![0f32; rows];
        for (r, row) in x.chunks(cols).enumerate() {
            let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            scales[r] = scale;
            if scale > 0.0 {
                for (k, &v) in row.iter().enumerate() {
                    // WGSL's round() is round-half-to-even.
                    let q = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i32;
                    codes[r * row_words + k / 4] |= (q as u32 & 0xff) << (8 * (k % 4));
                }
            }
        }
        Ok((codes, scales))
    }

    /// Sign-extended int8 codes of a packed row-major matrix.
    fn unpack(words: &[u32], rows: usize, cols: usize) -> Vec<i8> {
        let row_words = cols.div_ceil(4);
        (0..rows)
            .flat_map(|r| (0..cols).map(move |k| (words[r * row_words + k / 4] >> (8 * (k % 4))) as u8 as i8))
            .collect()
    }

    /// The integer GEMM on quantized activations: i64 dot products, rescaled in f64.
    pub fn gemm(
        codes: &[u32],
        scales: &[f32],
        rows: usize,
        w: &PackedMatrix,
        bias: Option<&[f32]>,
        gelu: bool,
    ) -> Result<Vec<f32>> {
        let (k, n) = (w.cols, w.rows);
        if codes.len() != rows * k.div_ceil(4) || scales.len() != rows {
            shape_err!("gemm reference: activations don't match {rows}×{k}");
        }
        let xq = unpack(codes, rows, k);
        let wq = unpack(&w.data, n, k);
        let mut out = Vec::with_capacity(rows * n);
        for m in 0..rows {
            let xr = &xq[m * k..(m + 1) * k];
            for c in 0..n {
                let dot: i64 = xr.iter().zip(&wq[c * k..(c + 1) * k]).map(|(&a, &b)| a as i64 * b as i64).sum();
                let v = (dot as f64 * scales[m] as f64 * w.scale(c, 0) as f64 + bias.map_or(0.0, |b| b[c] as f64)) as f32;
                out.push(if gelu { Activation::Gelu.reference(v) } else { v });
            }
        }
        Ok(out)
    }
}

/// GEMM cases over pre-quantized activations (M×K×N); the quantization step is its own case.
pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let shapes: &[(usize, usize, usize)] = match size {
        BenchSize::Full => &[(1, 4096, 4096), (1, 768, 3072), (197, 768, 2304), (197, 4096, 4096)],
        BenchSize::Quick => &[(1, 256, 384), (13, 200, 64)],
    };
    let format = format!("w8a8-{}", if gpu.caps.packed_dot { "dot4" } else { "fallback" });
    let mut cases = Vec::new();
    for &(m, k, n) in shapes {
        let w = PackedMatrix::quantize(&crate::synthetic::uniform(n * k, 1, 0.05), n, k, WeightFormat::Q8 { group: None })?;
        let layer = W8A8Linear::new(gpu, &w, Some(&crate::synthetic::uniform(n, 2, 0.1)))?;
        let x = Tensor::from_f32(gpu, &[m, k], &crate::synthetic::uniform(m * k, 3, 1.0))?;
        let xq = QuantizedActivations::new(gpu, m, k)?;
        let mut enc = gpu.encoder();
        quantize_activations(gpu, &mut enc, &x, &xq)?;
        gpu.submit(enc)?;
        let out = Tensor::zeros(gpu, &[m, n], DType::F32)?;
        cases.push(BenchCase {
            kernel: "w8a8_gemm".into(),
            format: format.clone(),
            shape: format!("{m}x{k}x{n}"),
            bytes: layer.weight_bytes(),
            flops: 2 * (m * n * k) as u64,
            step: Box::new(move |gpu, enc| w8a8_linear(gpu, enc, &layer, &xq, &out)),
        });
        if m > 1 {
            let xq = QuantizedActivations::new(gpu, m, k)?;
            cases.push(BenchCase {
                kernel: "w8a8_quantize".into(),
                format: "f32-int8".into(),
                shape: format!("{m}x{k}"),
                bytes: 4 * (m * k) as u64,
                flops: 3 * (m * k) as u64,
                step: Box::new(move |gpu, enc| quantize_activations(gpu, enc, &x, &xq)),
            });
        }
    }
    Ok(cases)
}
