//! 2-D convolution as an implicit GEMM over packed weights of any `WeightFormat`, and timm's
//! PatchEmbed (the same kernel writing tokens). CPU adapters run `shaders/conv.wgsl` (register
//! tiles, no workgroup memory); GPUs run its `conv2d_workgroup` (WORKGROUP) on the workgroup-tiled
//! core the GEMM uses, with the tile the launch table picks (`matmul::Plan::for_rows`).

use super::matmul::{self, Variant};
use super::gpu_matrix::{GpuMatrix, RowLayout};
use super::launch;
use super::{params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("conv");
/// The register tile of one invocation (fixed in the shader): output channels × pixels of a row.
const CHANNELS_PER_LANE: u32 = 8;
const PIXELS_PER_LANE: usize = 4;

/// Zero padding on each side of the input, in pixels. PyTorch's `padding=p` pads every side by
/// `p`; taming's `Downsample` pads only the bottom and right (`F.pad(x, (0, 1, 0, 1))`) before
/// a stride-2 conv, which is `Padding { top: 0, left: 0, bottom: 1, right: 1 }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides (`nn.Conv2d(..., padding=p)`).
    pub fn same(p: usize) -> Padding {
        Padding { top: p, left: p, bottom: p, right: p }
    }

    /// Output height and width of a `kernel` conv with `stride` over an `h`×`w` input, as
    /// PyTorch computes them (floor division); an error if the padded input is smaller than
    /// the kernel.
    pub fn output_size(&self, h: usize, w: usize, kernel: (usize, usize), stride: usize) -> Result<(usize, usize)> {
        let (kh, kw) = kernel;
        let (ph, pw) = (h + self.top + self.bottom, w + self.left + self.right);
        if ph < kh || pw < kw || stride == 0 {
            shape_err!("conv2d: {h}×{w} input (padding {self:?}) is smaller than the {kh}×{kw} kernel");
        }
        Ok(((ph - kh) / stride + 1, (pw - kw) / stride + 1))
    }
}

/// A convolution layer on the GPU: `weight` [Cout, Cin·kh·kw] (PyTorch order), bias, geometry.
#[derive(Clone)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: Padding,
    pub format: WeightFormat,
    cols: usize,
    row_words: usize,
    groups: usize,
    weights: GpuMatrix,
    bias: wgpu::Buffer,
    weight_bytes: usize,
    /// The workgroup-tiled GPU kernel runs (weights row-major); else conv.wgsl's CPU kernel
    /// (weights interleaved in tiles of `CHANNELS_PER_LANE` rows).
    tiled: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    k: u32,
    row_words: u32,
    groups: u32,
    group_size: u32,
    co_base: u32,
    co_count: u32,
    blocks_x: u32,
    blocks: u32,
    pixels: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["conv"], ["FMT_Q8"], "Params", [cin, h, w, cout, ho, wo, kh, kw, stride, pad_top, pad_left, k, row_words, groups, group_size, co_base, co_count, blocks_x, blocks, pixels]);

impl Conv2d {
    /// Uploads `weight` (rows = output channels, cols = Cin·kh·kw) and `bias` (None = zeros),
    /// split by output channels over as many bindings as `gpu.max_binding_size()` requires.
    /// `padding` pads all four sides alike; see `with_padding` for other paddings.
    pub fn new(gpu: &Gpu, weight: &PackedMatrix, bias: Option<&[f32]>, kernel: (usize, usize), stride: usize, padding: usize) -> Result<Conv2d> {
        Self::with_padding(gpu, weight, bias, kernel, stride, Padding::same(padding))
    }

    /// As `new`, with a different padding on each side (e.g. taming's `Downsample`).
    pub fn with_padding(gpu: &Gpu, weight: &PackedMatrix, bias: Option<&[f32]>, kernel: (usize, usize), stride: usize, padding: Padding) -> Result<Conv2d> {
        let (kh, kw) = kernel;
        if kh == 0 || kw == 0 || stride == 0 {
            invalid!("conv2d: kernel {kernel:?} and stride {stride} must be non-zero");
        }
        if !weight.cols.is_multiple_of(kh * kw) {
            shape_err!("conv2d: weight has {} columns, not a multiple of the {kh}×{kw} kernel", weight.cols);
        }
        let cout = weight.rows;
        let bias = match bias {
            Some(b) if b.len() != cout => shape_err!("conv2d: bias has {} values for {cout} output channels", b.len()),
            Some(b) => b.to_vec(),
            None => vec![0.0; cout],
        };
        let tiled = matches!(launch::for_class(gpu.class).linear.gemm, Variant::GemmWorkgroup { .. });
        let layout = if tiled { RowLayout::RowMajor { align: 1 } } else { RowLayout::Interleaved { tile: CHANNELS_PER_LANE as usize } };
        let weights = GpuMatrix::upload(gpu, weight, layout, "conv weights")?;
        Ok(Conv2d {
            in_channels: weight.cols / (kh * kw),
            out_channels: cout,
            kernel,
            stride,
            padding,
            format: weight.format,
            cols: weight.cols,
            row_words: weight.row_words,
            groups: weight.groups,
            weights,
            bias: gpu.upload(bytemuck::cast_slice(&bias), "conv bias")?,
            weight_bytes: weight.bytes(),
            tiled,
        })
    }

    /// Output height and width for an `h`×`w` input.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.padding.output_size(h, w, self.kernel, self.stride)
    }

    /// Bytes of packed weights (data, scales, zero points) one forward pass reads.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn defines(&self, tokens: bool) -> Vec<&'static str> {
        let mut d = self.format.wgsl_defines();
        if tokens {
            d.push("TOKENS");
        }
        d
    }

    /// Records the dispatches; `x` [B, Cin, H, W] and `out` already checked by the caller.
    fn record(&self, gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor, tokens: bool) -> Result<()> {
        let &[b, _, h, w] = &x.shape[..] else { unreachable!() };
        let (ho, wo) = self.output_size(h, w)?;
        let mut defines = self.defines(tokens);
        let pixels = b * ho * wo;
        if pixels > u32::MAX as usize || self.cols > u32::MAX as usize {
            shape_err!("conv2d: {pixels} output pixels of {} taps exceed the kernel's 32-bit indices", self.cols);
        }
        let (kh, kw) = self.kernel;
        // The GPU kernel's tile for this many output pixels (its GEMM rows); the CPU kernel's
        // fixed register tile otherwise.
        let (pipe, lanes, rows_per_group, tile_n) = if self.tiled {
            let plan = launch::for_class(gpu.class).linear;
            let Variant::GemmWorkgroup { bm, bn, tm, tn } = plan.for_rows(pixels.max(plan.gemv_max_m + 1)) else {
                invalid!("conv2d: the launch table gives no workgroup tile for {pixels} pixels");
            };
            let t = matmul::WorkgroupTile::new(gpu, self.format, bm, bn, tm, tn)?;
            let consts = [("WG", t.invocations as f64), ("BM", bm as f64), ("BN", bn as f64), ("BK", t.bk as f64), ("TM", tm as f64), ("TN", tn as f64)];
            defines.push("WORKGROUP");
            (gpu.pipeline(&SHADER, "conv2d_workgroup", &defines, &consts)?, 0, bm, bn)
        } else {
            let lanes: u32 = 64;
            (gpu.pipeline(&SHADER, "conv2d", &defines, &[("WG", lanes as f64)])?, lanes, 0, CHANNELS_PER_LANE)
        };
        let blocks_x = wo.div_ceil(PIXELS_PER_LANE);
        let blocks = b * ho * blocks_x;
        for part in &self.weights.blocks {
            let p = Params {
                cin: self.in_channels as u32,
                h: h as u32,
                w: w as u32,
                cout: self.out_channels as u32,
                ho: ho as u32,
                wo: wo as u32,
                kh: kh as u32,
                kw: kw as u32,
                stride: self.stride as u32,
                pad_top: self.padding.top as u32,
                pad_left: self.padding.left as u32,
                k: self.cols as u32,
                row_words: self.row_words as u32,
                groups: self.groups as u32,
                group_size: self.format.group_size(self.cols) as u32,
                co_base: part.rows.start as u32,
                co_count: part.rows.len() as u32,
                blocks_x: blocks_x as u32,
                blocks: blocks as u32,
                pixels: pixels as u32,
            };
            let mut buffers = vec![&*x.buffer, &self.bias, &*out.buffer, &part.data];
            buffers.extend(part.scales.iter());
            buffers.extend(part.zeros.iter());
            let channel_groups = (part.rows.len() as u32).div_ceil(tile_n);
            let grid = if self.tiled {
                [channel_groups, (pixels as u32).div_ceil(rows_per_group), 1]
            } else {
                [(blocks as u32).div_ceil(lanes), channel_groups, 1]
            };
            gpu.dispatch(enc, &pipe, params(&p), &buffers, grid)?;
        }
        Ok(())
    }

    fn check_input(&self, what: &str, x: &Tensor, out: &Tensor) -> Result<(usize, usize, usize)> {
        x.expect_dtype(what, DType::F32)?;
        out.expect_dtype(what, DType::F32)?;
        let &[b, c, h, w] = &x.shape[..] else {
            shape_err!("{what}: input must be [B, C, H, W], got {:?}", x.shape);
        };
        if c != self.in_channels {
            shape_err!("{what}: input has {c} channels, the layer expects {}", self.in_channels);
        }
        let (ho, wo) = self.output_size(h, w)?;
        if std::sync::Arc::ptr_eq(&x.buffer, &out.buffer) {
            invalid!("{what}: input and output must be different tensors");
        }
        Ok((b, ho, wo))
    }
}

/// `out` [B, Cout, Ho, Wo] = conv(x [B, Cin, H, W]) + bias.
pub fn conv2d(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, conv: &Conv2d, out: &Tensor) -> Result<()> {
    let (b, ho, wo) = conv.check_input("conv2d", x, out)?;
    out.expect_shape("conv2d out", &[b, conv.out_channels, ho, wo])?;
    conv.record(gpu, enc, x, out, false)
}

/// timm's PatchEmbed: a conv with kernel = stride = patch and no padding, written as tokens
/// `out` [B, (H/p)·(W/p), D] (row-major patches, as `flatten(2).transpose(1, 2)`).
pub fn patch_embed(gpu: &Gpu, enc: &mut Encoder, image: &Tensor, conv: &Conv2d, out: &Tensor) -> Result<()> {
    let (kh, kw) = conv.kernel;
    if kh != kw || conv.stride != kh || conv.padding != Padding::default() {
        invalid!("patch_embed: needs a square kernel equal to the stride and no padding, got kernel {:?} stride {} padding {:?}", conv.kernel, conv.stride, conv.padding);
    }
    let (b, ho, wo) = conv.check_input("patch_embed", image, out)?;
    let (h, w) = (image.shape[2], image.shape[3]);
    if h % kh != 0 || w % kw != 0 {
        shape_err!("patch_embed: image {h}×{w} is not a whole number of {kh}×{kw} patches");
    }
    out.expect_shape("patch_embed out", &[b, ho * wo, conv.out_channels])?;
    conv.record(gpu, enc, image, out, true)
}

/// CPU reference in f64: `weight` row-major [Cout, Cin·kh·kw] (dequantized), NCHW in and out.
pub fn conv2d_reference(x: &[f32], shape: [usize; 4], weight: &[f32], bias: &[f32], kernel: (usize, usize), stride: usize, padding: usize) -> Vec<f32> {
    conv2d_reference_padded(x, shape, weight, bias, kernel, stride, Padding::same(padding))
}

/// `conv2d_reference` with a different padding on each side.
pub fn conv2d_reference_padded(x: &[f32], shape: [usize; 4], weight: &[f32], bias: &[f32], kernel: (usize, usize), stride: usize, padding: Padding) -> Vec<f32> {
    let [b, cin, h, w] = shape;
    let (kh, kw) = kernel;
    let cout = bias.len();
    let (ho, wo) = padding.output_size(h, w, kernel, stride).expect("conv2d_reference: input smaller than the kernel");
    let mut out = Vec::with_capacity(b * cout * ho * wo);
    for bi in 0..b {
        for co in 0..cout {
            let wrow = &weight[co * cin * kh * kw..(co + 1) * cin * kh * kw];
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[co] as f64;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let iy = (oy * stride + ky) as isize - padding.top as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * stride + kx) as isize - padding.left as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((bi * cin + ci) * h + iy as usize) * w + ix as usize];
                                acc += wrow[(ci * kh + ky) * kw + kx] as f64 * xv as f64;
                            }
                        }
                    }
                    out.push(acc as f32);
                }
            }
        }
    }
    out
}

/// [B, D, Ho, Wo] → [B, Ho·Wo, D], the token order `patch_embed` writes.
pub fn to_tokens(x: &[f32], b: usize, d: usize, pixels: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for c in 0..d {
            for t in 0..pixels {
                out[(bi * pixels + t) * d + c] = x[(bi * d + c) * pixels + t];
            }
        }
    }
    out
}

pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let full = size == BenchSize::Full;
    let (ch, hw) = if full { (512, 32) } else { (48, 9) };
    let mut cases = Vec::new();
    let q4 = WeightFormat::Q4 { group: 32, zero_point: false };
    let q8 = WeightFormat::Q8 { group: None };
    for (name, k, pad, fmt) in [("conv3x3", 3, 1, WeightFormat::F32), ("conv3x3", 3, 1, q8), ("conv3x3", 3, 1, q4), ("conv1x1", 1, 0, WeightFormat::F32)] {
        let cols = ch * k * k;
        let w: Vec<f32> = (0..ch * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05).collect();
        let conv = Conv2d::new(gpu, &PackedMatrix::quantize(&w, ch, cols, fmt)?, None, (k, k), 1, pad)?;
        let x = Tensor::from_f32(gpu, &[1, ch, hw, hw], &vec![0.5; ch * hw * hw])?;
        let out = Tensor::zeros(gpu, &[1, ch, hw, hw], DType::F32)?;
        cases.push(BenchCase {
            kernel: name.into(),
            format: fmt.name(),
            shape: format!("{ch}->{ch} {hw}x{hw}"),
            bytes: conv.weight_bytes() as u64,
            flops: 2 * (ch * cols * hw * hw) as u64,
            step: Box::new(move |gpu, enc| conv2d(gpu, enc, &x, &conv, &out)),
        });
    }
    // ViT-B/16 at 224: 3×16×16 patches to 768 dims.
    let (img, patch, dim) = if full { (224, 16, 768) } else { (32, 16, 40) };
    let cols = 3 * patch * patch;
    let w: Vec<f32> = (0..dim * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05).collect();
    let conv = Conv2d::new(gpu, &PackedMatrix::quantize(&w, dim, cols, WeightFormat::F32)?, None, (patch, patch), patch, 0)?;
    let x = Tensor::from_f32(gpu, &[1, 3, img, img], &vec![0.5; 3 * img * img])?;
    let tokens = (img / patch) * (img / patch);
    let out = Tensor::zeros(gpu, &[1, tokens, dim], DType::F32)?;
    cases.push(BenchCase {
        kernel: "patch_embed".into(),
        format: "f32".into(),
        shape: format!("3x{img}x{img} p{patch} -> {tokens}x{dim}"),
        bytes: conv.weight_bytes() as u64,
        flops: 2 * (dim * cols * tokens) as u64,
        step: Box::new(move |gpu, enc| patch_embed(gpu, enc, &x, &conv, &out)),
    });
    Ok(cases)
}
