//! taming-transformers' VQGAN decoder (`VQModel.decode_code`), built from a checkpoint with
//! taming's key names and run as one command encoder per decode:
//!
//! tokens [B, h, w] → `quantize.embedding` gather → NCHW [B, embed_dim, h, w] →
//! post_quant_conv (1×1) → `decoder.`: conv_in → mid (ResnetBlock, AttnBlock, ResnetBlock) →
//! for each level from the deepest: num_res_blocks+1 ResnetBlocks (each followed by an
//! AttnBlock at the `attn_resolutions`), then nearest ×2 + conv except at level 0 →
//! GroupNorm + swish → conv_out → image [B, out_ch, h·2^(L−1), w·2^(L−1)] (raw, ≈[−1, 1]).
//!
//! GroupNorm + swish run as one fused kernel; the AttnBlock's q, k, v 1×1 convs run as one
//! conv writing tokens [B, T, 3C] (the attention kernel's fused-qkv layout, one head of width C,
//! scale C^-0.5 as taming), and proj_out as a Linear on tokens whose result is transposed
//! back and added to the residual in one pass.

mod config;
mod tokens;

pub use config::{DdConfig, VqganConfig};
pub use tokens::TokenGrid;

use std::path::Path;

use super::vqgan_glue::tokens_to_nchw;
use super::weights::Weights;
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::{attention, AttentionParams};
use crate::kernels::conv::{conv2d, patch_embed, Conv2d};
use crate::kernels::elementwise::{add_inplace, upsample_nearest2x};
use crate::kernels::matmul::{linear, QLinear};
use crate::kernels::norm::group_norm;
use crate::kernels::vq::{Codebook, Metric};
use crate::quant::{PackedMatrix, WeightFormat};
use crate::{invalid, shape_err, Encoder, Error, Gpu, Result};

/// taming's `Normalize`: GroupNorm(32 groups, eps 1e-6).
const GROUPS: usize = 32;
const GN_EPS: f32 = 1e-6;

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    /// `nin_shortcut` (1×1) where the block changes the channel count.
    shortcut: Option<Conv2d>,
}

struct AttnBlock {
    norm: Norm,
    /// q, k, v stacked as one 1×1 conv with 3C outputs.
    qkv: Conv2d,
    proj_out: QLinear,
}

struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// Nearest ×2 then this conv (None: level 0, or `resamp_with_conv: false` → plain ×2).
    upsample: Option<Option<Conv2d>>,
}

pub struct VqganDecoder {
    pub config: VqganConfig,
    /// The packed format of every conv and Linear.
    pub format: WeightFormat,
    codebook: Codebook,
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    /// Indexed like taming's `decoder.up[level]` (level 0 = full resolution).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv2d,
}

/// Reads and uploads the checkpoint's tensors under one prefix, packing matrices in `format`.
struct Loader<'a> {
    gpu: &'a Gpu,
    w: &'a Weights,
    format: WeightFormat,
}

impl Loader<'_> {
    fn norm(&self, prefix: &str, c: usize) -> Result<Norm> {
        let up = |key: &str| Tensor::from_f32(self.gpu, &[c], self.w.get(&format!("{prefix}.{key}"), &[c])?);
        Ok(Norm { weight: up("weight")?, bias: up("bias")? })
    }

    fn matrix(&self, key: &str, data: &[f32], rows: usize, cols: usize) -> Result<PackedMatrix> {
        PackedMatrix::quantize(data, rows, cols, self.format).map_err(|e| Error::Invalid(format!("{key}: {e}")))
    }

    /// An `nn.Conv2d(cin, cout, k, padding=k/2)` with bias.
    fn conv(&self, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
        let key = format!("{prefix}.weight");
        let weight = self.matrix(&key, self.w.get(&key, &[cout, cin, k, k])?, cout, cin * k * k)?;
        Conv2d::new(self.gpu, &weight, Some(self.w.get(&format!("{prefix}.bias"), &[cout])?), (k, k), 1, k / 2)
    }

    fn resnet(&self, prefix: &str, cin: usize, cout: usize) -> Result<ResnetBlock> {
        if self.w.contains(&format!("{prefix}.conv_shortcut.weight")) {
            invalid!("checkpoint {}: {prefix}.conv_shortcut (3×3 shortcut) is not supported", self.w.source);
        }
        Ok(ResnetBlock {
            norm1: self.norm(&format!("{prefix}.norm1"), cin)?,
            conv1: self.conv(&format!("{prefix}.conv1"), cin, cout, 3)?,
            norm2: self.norm(&format!("{prefix}.norm2"), cout)?,
            conv2: self.conv(&format!("{prefix}.conv2"), cout, cout, 3)?,
            shortcut: if cin != cout { Some(self.conv(&format!("{prefix}.nin_shortcut"), cin, cout, 1)?) } else { None },
        })
    }

    fn attn(&self, prefix: &str, c: usize) -> Result<AttnBlock> {
        let mut weight = Vec::with_capacity(3 * c * c);
        let mut bias = Vec::with_capacity(3 * c);
        for part in ["q", "k", "v"] {
            weight.extend_from_slice(self.w.get(&format!("{prefix}.{part}.weight"), &[c, c, 1, 1])?);
            bias.extend_from_slice(self.w.get(&format!("{prefix}.{part}.bias"), &[c])?);
        }
        let qkv = Conv2d::new(self.gpu, &self.matrix(&format!("{prefix}.q/k/v"), &weight, 3 * c, c)?, Some(&bias), (1, 1), 1, 0)?;
        let key = format!("{prefix}.proj_out.weight");
        let proj = self.matrix(&key, self.w.get(&key, &[c, c, 1, 1])?, c, c)?;
        Ok(AttnBlock {
            norm: self.norm(&format!("{prefix}.norm"), c)?,
            qkv,
            proj_out: QLinear::new(self.gpu, &proj, Some(self.w.get(&format!("{prefix}.proj_out.bias"), &[c])?))?,
        })
    }
}

impl VqganDecoder {
    /// Builds the decoder from checkpoint tensors (taming's `VQModel` state dict; encoder and
    /// loss tensors are ignored), packing conv and Linear weights in `format`
    /// (`WeightFormat::F32` reproduces taming's numbers).
    pub fn new(gpu: &Gpu, config: &VqganConfig, w: &Weights, format: WeightFormat) -> Result<VqganDecoder> {
        let c = config;
        let dd = &c.ddconfig;
        let l = Loader { gpu, w, format };
        let codes = w.get("quantize.embedding.weight", &[c.n_embed, c.embed_dim])?;
        let codebook = Codebook::new(gpu, codes, c.n_embed, c.embed_dim, Metric::L2)?;
        let post_quant_conv = l.conv("post_quant_conv", c.embed_dim, dd.z_channels, 1)?;
        let levels = dd.ch_mult.len();
        let mut ch = c.level_channels(levels - 1);
        let conv_in = l.conv("decoder.conv_in", dd.z_channels, ch, 3)?;
        let mid = (
            l.resnet("decoder.mid.block_1", ch, ch)?,
            l.attn("decoder.mid.attn_1", ch)?,
            l.resnet("decoder.mid.block_2", ch, ch)?,
        );
        let mut up: Vec<Level> = Vec::with_capacity(levels);
        let mut res = c.latent_resolution();
        for level in (0..levels).rev() {
            let p = format!("decoder.up.{level}");
            let out = c.level_channels(level);
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for i in 0..=dd.num_res_blocks {
                blocks.push(l.resnet(&format!("{p}.block.{i}"), ch, out)?);
                ch = out;
                if dd.attn_resolutions.contains(&res) {
                    attns.push(l.attn(&format!("{p}.attn.{i}"), ch)?);
                }
            }
            // Blocks the config does not account for mean the config is for another model.
            for extra in [format!("{p}.block.{}.norm1.weight", dd.num_res_blocks + 1), format!("{p}.attn.{}.norm.weight", attns.len())] {
                if w.contains(&extra) {
                    invalid!("checkpoint {} has {extra}, which the config (num_res_blocks, attn_resolutions) does not describe", w.source);
                }
            }
            let upsample = if level == 0 {
                None
            } else {
                res *= 2;
                Some(if dd.resamp_with_conv { Some(l.conv(&format!("{p}.upsample.conv"), ch, ch, 3)?) } else { None })
            };
            up.insert(0, Level { blocks, attns, upsample });
        }
        if w.contains(&format!("decoder.up.{levels}.block.0.norm1.weight")) {
            invalid!("checkpoint {} has more than the configured {levels} decoder levels (ch_mult)", w.source);
        }
        let norm_out = l.norm("decoder.norm_out", ch)?;
        let conv_out = l.conv("decoder.conv_out", ch, dd.out_ch, 3)?;
        Ok(VqganDecoder { config: c.clone(), format, codebook, post_quant_conv, conv_in, mid, up, norm_out, conv_out })
    }

    /// Loads `path`: a folder with `model.safetensors` and `config.yaml`, or a `.safetensors`
    /// file with `config.yaml` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VqganDecoder> {
        let (weights_path, config_path) = crate::models::weights::resolve_checkpoint(path, config, "config.yaml")?;
        let cfg = VqganConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Image shape [B, out_ch, H, W] for a token grid [B, h, w].
    pub fn image_shape(&self, tokens: [usize; 3]) -> [usize; 4] {
        let s = self.config.upscale();
        [tokens[0], self.config.ddconfig.out_ch, tokens[1] * s, tokens[2] * s]
    }

    /// Decodes a token grid; ids are range-checked on the CPU before anything runs. Batches
    /// whose activations would outgrow a storage binding run a few images per pass.
    pub fn decode(&self, gpu: &Gpu, tokens: &TokenGrid) -> Result<Tensor> {
        let per_image = self.activation_bytes(tokens.height, tokens.width);
        let fit = (gpu.max_binding_size() / per_image.max(1) as u64) as usize;
        self.decode_in_passes(gpu, tokens, fit.max(1))
    }

    /// `decode` with at most `images_per_pass` images per command encoder; each pass is waited
    /// for, so its activations are freed before the next one allocates.
    pub fn decode_in_passes(&self, gpu: &Gpu, tokens: &TokenGrid, images_per_pass: usize) -> Result<Tensor> {
        tokens.check(self.config.n_embed)?;
        if images_per_pass == 0 {
            invalid!("vqgan decode: images_per_pass must be at least 1");
        }
        let [b, h, w] = tokens.shape();
        let rows: Vec<u32> = tokens.ids.iter().map(|&id| id as u32).collect();
        let pass = |gpu: &Gpu, first: usize, n: usize| -> Result<(Tensor, Encoder)> {
            let ids = Tensor::from_u32(gpu, &[n, h, w], &rows[first * h * w..(first + n) * h * w])?;
            let mut enc = gpu.encoder();
            // Ids were checked above: the GPU-side check needs no readback.
            let (image, _checked_on_cpu) = self.record(gpu, &mut enc, &ids)?;
            Ok((image, enc))
        };
        if images_per_pass >= b {
            let (image, enc) = pass(gpu, 0, b)?;
            gpu.submit(enc)?;
            return Ok(image);
        }
        let image = Tensor::zeros(gpu, &self.image_shape(tokens.shape()), DType::F32)?;
        let image_bytes = (image.numel() / b * 4) as u64;
        for first in (0..b).step_by(images_per_pass) {
            let n = images_per_pass.min(b - first);
            let (part, mut enc) = pass(gpu, first, n)?;
            enc.inner.copy_buffer_to_buffer(&part.buffer, 0, &image.buffer, first as u64 * image_bytes, Some(n as u64 * image_bytes));
            gpu.submit(enc)?;
            gpu.wait()?;
        }
        Ok(image)
    }

    /// Bytes of the largest activation tensor one image needs for an `h`×`w` token grid (each
    /// tensor must fit one storage binding).
    pub fn activation_bytes(&self, h: usize, w: usize) -> usize {
        let c = &self.config;
        let levels = self.up.len();
        let (top, latent) = (c.level_channels(levels - 1), h * w);
        // Codes and z at the latent size; the mid AttnBlock's qkv [T, 3C].
        let mut most = latent * c.embed_dim.max(c.ddconfig.z_channels).max(3 * top);
        for (l, level) in self.up.iter().enumerate() {
            let pixels = latent << (2 * (levels - 1 - l));
            // A level's first block reads the channels of the level above (upsampled here).
            let channels = c.level_channels(l).max(c.level_channels((l + 1).min(levels - 1)));
            let attn = if level.attns.is_empty() { 1 } else { 3 };
            most = most.max(pixels * channels * attn);
        }
        4 * most
    }

    /// Records the decode of GPU-resident ids [B, h, w] (u32 or i32) into `enc`. Out-of-range
    /// ids decode as zero vectors and are reported by the returned check once `enc` has run.
    pub fn record(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor) -> Result<(Tensor, crate::kernels::vq::IdCheck)> {
        let &[b, h, w] = &ids.shape[..] else { shape_err!("vqgan: tokens must be [B, h, w], got {:?}", ids.shape) };
        let e = self.config.embed_dim;
        let zeros = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32);
        let codes = zeros(&[b, h, w, e])?;
        let check = self.codebook.gather(gpu, enc, ids, &codes)?;
        let z = zeros(&[b, e, h, w])?;
        tokens_to_nchw(gpu, enc, &codes.reshape(&[b, h * w, e])?, &z, false)?;
        let z = self.conv(gpu, enc, &self.post_quant_conv, &z)?;
        let mut x = self.conv(gpu, enc, &self.conv_in, &z)?;
        x = self.resnet(gpu, enc, &self.mid.0, &x)?;
        self.attn(gpu, enc, &self.mid.1, &x)?;
        x = self.resnet(gpu, enc, &self.mid.2, &x)?;
        for level in self.up.iter().rev() {
            for (i, block) in level.blocks.iter().enumerate() {
                x = self.resnet(gpu, enc, block, &x)?;
                if let Some(a) = level.attns.get(i) {
                    self.attn(gpu, enc, a, &x)?;
                }
            }
            if let Some(conv) = &level.upsample {
                let [b, c, h, w] = dims(&x);
                let big = zeros(&[b, c, 2 * h, 2 * w])?;
                upsample_nearest2x(gpu, enc, &x, &big)?;
                x = match conv {
                    Some(conv) => self.conv(gpu, enc, conv, &big)?,
                    None => big,
                };
            }
        }
        let normed = self.group_norm(gpu, enc, &self.norm_out, &x, true)?;
        Ok((self.conv(gpu, enc, &self.conv_out, &normed)?, check))
    }

    fn conv(&self, gpu: &Gpu, enc: &mut Encoder, conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
        let [b, _, h, w] = dims(x);
        let (ho, wo) = conv.output_size(h, w)?;
        let out = Tensor::zeros(gpu, &[b, conv.out_channels, ho, wo], DType::F32)?;
        conv2d(gpu, enc, x, conv, &out)?;
        Ok(out)
    }

    fn group_norm(&self, gpu: &Gpu, enc: &mut Encoder, norm: &Norm, x: &Tensor, swish: bool) -> Result<Tensor> {
        let out = Tensor::zeros(gpu, &x.shape, DType::F32)?;
        group_norm(gpu, enc, x, GROUPS, &norm.weight, &norm.bias, GN_EPS, &out, swish)?;
        Ok(out)
    }

    /// norm1 → swish → conv1 → norm2 → swish → conv2, plus the (projected) input.
    fn resnet(&self, gpu: &Gpu, enc: &mut Encoder, blk: &ResnetBlock, x: &Tensor) -> Result<Tensor> {
        let h = self.group_norm(gpu, enc, &blk.norm1, x, true)?;
        let h = self.conv(gpu, enc, &blk.conv1, &h)?;
        let h = self.group_norm(gpu, enc, &blk.norm2, &h, true)?;
        let out = self.conv(gpu, enc, &blk.conv2, &h)?;
        let shortcut = match &blk.shortcut {
            Some(nin) => self.conv(gpu, enc, nin, x)?,
            None => x.clone(),
        };
        add_inplace(gpu, enc, &out, &shortcut)?;
        Ok(out)
    }

    /// `x += proj_out(softmax(q·kᵀ·C^-0.5)·v)` with q, k, v from GroupNorm(x), in place.
    fn attn(&self, gpu: &Gpu, enc: &mut Encoder, blk: &AttnBlock, x: &Tensor) -> Result<()> {
        let [b, c, h, w] = dims(x);
        let t = h * w;
        let normed = self.group_norm(gpu, enc, &blk.norm, x, false)?;
        let qkv = Tensor::zeros(gpu, &[b, t, 3 * c], DType::F32)?;
        patch_embed(gpu, enc, &normed, &blk.qkv, &qkv)?;
        let heads = Tensor::zeros(gpu, &[b, t, c], DType::F32)?;
        attention(gpu, enc, &qkv, &heads, AttentionParams::new(b, t, 1, c))?;
        let proj = Tensor::zeros(gpu, &[b, t, c], DType::F32)?;
        linear(gpu, enc, &blk.proj_out, &heads, &proj, None)?;
        tokens_to_nchw(gpu, enc, &proj, x, true)
    }
}

/// [B, C, H, W] of an activation the decoder itself allocated.
fn dims(x: &Tensor) -> [usize; 4] {
    [x.shape[0], x.shape[1], x.shape[2], x.shape[3]]
}
