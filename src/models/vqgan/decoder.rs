//! taming-transformers' VQGAN decoder (`VQModel.decode_code`), built from a checkpoint with
//! taming's key names and run as a planned graph:
//!
//! tokens [B, h, w] → `quantize.embedding` gather → NCHW [B, embed_dim, h, w] →
//! post_quant_conv (1×1) → `decoder.`: conv_in → mid (ResnetBlock, AttnBlock, ResnetBlock) →
//! for each level from the deepest: num_res_blocks+1 ResnetBlocks (each followed by an
//! AttnBlock at the `attn_resolutions`), then nearest ×2 + conv except at level 0 →
//! GroupNorm + swish → conv_out → image [B, out_ch, h·2^(L−1), w·2^(L−1)] (raw, ≈[−1, 1]).

use std::path::Path;
use std::sync::OnceLock;

use super::blocks::{attn_block, resnet, to_nchw, AttnBlock, Flavor, Loader, ResnetBlock, GN_EPS, GROUPS};
use super::{TokenGrid, VqganConfig};
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Norm, Plan};
use crate::kernels::conv::Conv2d;
use crate::kernels::vq::Codebook;
use crate::models::weights::Weights;
use crate::formats::WeightFormat;
use crate::{invalid, Gpu, Result};

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

impl VqganDecoder {
    /// Builds the decoder from checkpoint tensors (taming's `VQModel` state dict; encoder and
    /// loss tensors are ignored), packing conv and Linear weights in `format`
    /// (`WeightFormat::F32` reproduces taming's numbers).
    pub fn new(gpu: &Gpu, config: &VqganConfig, w: &Weights, format: WeightFormat) -> Result<VqganDecoder> {
        let c = config;
        let dd = &c.ddconfig;
        let l = Loader { gpu, w, format };
        let codes = w.get("quantize.embedding.weight", &[c.n_embed, c.embed_dim])?;
        let codebook = Codebook::new(gpu, codes, c.n_embed, c.embed_dim, c.metric())?;
        let post_quant_conv = l.conv("post_quant_conv", c.embed_dim, dd.z_channels, 1)?;
        let levels = dd.ch_mult.len();
        let mut ch = c.level_channels(levels - 1);
        let conv_in = l.conv("decoder.conv_in", dd.z_channels, ch, 3)?;
        let f = c.flavor;
        let mid = (l.resnet(&f.mid("decoder", 0), ch, ch)?, l.attn(&f.mid("decoder", 1), ch)?, l.resnet(&f.mid("decoder", 2), ch, ch)?);
        let mut up: Vec<Level> = Vec::with_capacity(levels);
        let mut res = c.latent_resolution();
        for level in (0..levels).rev() {
            let p = f.level("decoder", level, levels);
            let out = c.level_channels(level);
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for i in 0..=dd.num_res_blocks {
                blocks.push(l.resnet(&format!("{p}.{}.{i}", f.blocks()), ch, out)?);
                ch = out;
                if dd.attn_resolutions.contains(&res) {
                    attns.push(l.attn(&format!("{p}.attn.{i}"), ch)?);
                }
            }
            // Blocks the config does not account for mean the config is for another model.
            for extra in [format!("{p}.{}.{}.norm1.weight", f.blocks(), dd.num_res_blocks + 1), format!("{p}.attn.{}.norm.weight", attns.len())] {
                if w.contains(&extra) {
                    invalid!("checkpoint {} has {extra}, which the config (num_res_blocks, attn_resolutions) does not describe", w.source);
                }
            }
            let upsample = if level == 0 {
                None
            } else {
                res *= 2;
                let key = format!("{p}.upsample.conv");
                if !dd.resamp_with_conv && w.contains(&format!("{key}.weight")) {
                    invalid!("config says resamp_with_conv: false (upsampling without a conv), but checkpoint {} has {key}.weight: set resamp_with_conv: true", w.source);
                }
                Some(if dd.resamp_with_conv { Some(l.conv(&key, ch, ch, 3)?) } else { None })
            };
            up.insert(0, Level { blocks, attns, upsample });
        }
        // One level more than ch_mult describes: taming numbers it `levels`, LlamaGen (counting
        // from the deepest) too, which is level 0 of a model one level deeper.
        let extra = match f {
            Flavor::Taming => f.level("decoder", levels, levels + 1),
            Flavor::LlamaGen => f.level("decoder", 0, levels + 1),
        };
        if w.contains(&format!("{extra}.{}.0.norm1.weight", f.blocks())) {
            invalid!("checkpoint {} has more than the configured {levels} decoder levels (ch_mult)", w.source);
        }
        let norm_out = l.norm("decoder.norm_out", ch)?;
        let conv_out = l.conv("decoder.conv_out", ch, dd.out_ch, 3)?;
        Ok(VqganDecoder { config: c.clone(), format, codebook, post_quant_conv, conv_in, mid, up, norm_out, conv_out })
    }

    /// Loads `path`: a folder with `model.safetensors` and `config.yaml`, or a `.safetensors`
    /// file with `config.yaml` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VqganDecoder> {
        let (weights_path, config_path) = VqganConfig::resolve(path, config)?;
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

    /// `decode` with at most `images_per_pass` images per planned run; every pass but a
    /// smaller last one reuses the same plan (buffers and bind groups).
    pub fn decode_in_passes(&self, gpu: &Gpu, tokens: &TokenGrid, images_per_pass: usize) -> Result<Tensor> {
        tokens.check(self.config.n_embed)?;
        if images_per_pass == 0 {
            invalid!("vqgan decode: images_per_pass must be at least 1");
        }
        let [b, h, w] = tokens.shape();
        let ids: Vec<u32> = tokens.ids.iter().map(|&id| id as u32).collect();
        let per_pass = images_per_pass.min(b);
        let plan = self.plan(gpu, per_pass, h, w)?;
        if per_pass == b {
            plan.set_input(gpu, 0, &ids)?;
            return Ok(plan.run(gpu)?.remove(0));
        }
        let image = Tensor::zeros(gpu, &self.image_shape(tokens.shape()), DType::F32)?;
        let image_bytes = (image.numel() / b * 4) as u64;
        let mut last: Option<Plan> = None;
        for first in (0..b).step_by(per_pass) {
            let n = per_pass.min(b - first);
            let plan = if n == per_pass { &plan } else { last.insert(self.plan(gpu, n, h, w)?) };
            plan.set_input(gpu, 0, &ids[first * h * w..(first + n) * h * w])?;
            let mut enc = gpu.encoder();
            let part = plan.record(gpu, &mut enc)?.remove(0);
            enc.raw().copy_buffer_to_buffer(&part.buffer, 0, &image.buffer, first as u64 * image_bytes, Some(n as u64 * image_bytes));
            gpu.submit(enc)?;
            // The next pass rewrites the plan's input: wait until this one has read it.
            gpu.wait()?;
        }
        Ok(image)
    }

    /// The decode of `batch` token grids of `h`×`w`, planned: input 0 is the ids (u32,
    /// range-checked by the caller), output 0 the image.
    pub fn plan(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch, h, w)?)
    }

    /// The decode as a graph; node names are the checkpoint's.
    pub fn graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        let (b, e) = (batch, self.config.embed_dim);
        let mut g = Graph::new();
        let ids = g.input(&[b, h, w], DType::U32);
        let codebook = self.codebook.clone();
        // The kernel's out-of-range flag; ids were checked on the CPU, so nobody reads it.
        let flag = OnceLock::new();
        let codes = g.node("quantize.embedding", "gather", &[ids], &[b, h * w, e], DType::F32, move |gpu, enc, i, out| {
            if flag.get().is_none() {
                let _ = flag.set(gpu.upload_u32(&[u32::MAX], "gather flag")?);
            }
            let ids = i[0].reshape(&[b, h * w])?;
            codebook.gather_checked(gpu, enc, &ids, out, flag.get().unwrap())
        });
        let z = to_nchw(&mut g, "quantize", codes, (h, w))?;
        let z = g.conv2d("post_quant_conv", &self.post_quant_conv, z)?;
        let mut x = g.conv2d("decoder.conv_in", &self.conv_in, z)?;
        x = resnet(&mut g, &self.mid.0, x)?;
        x = attn_block(&mut g, &self.mid.1, x)?;
        x = resnet(&mut g, &self.mid.2, x)?;
        let levels = self.up.len();
        for (l, level) in self.up.iter().enumerate().rev() {
            for (i, block) in level.blocks.iter().enumerate() {
                x = resnet(&mut g, block, x)?;
                if let Some(a) = level.attns.get(i) {
                    x = attn_block(&mut g, a, x)?;
                }
            }
            if let Some(conv) = &level.upsample {
                let p = self.config.flavor.level("decoder", l, levels);
                x = g.upsample2x(&format!("{p}.upsample"), x)?;
                if let Some(conv) = conv {
                    x = g.conv2d(&format!("{p}.upsample.conv"), conv, x)?;
                }
            }
        }
        let x = g.group_norm("decoder.norm_out", x, &self.norm_out, GROUPS, GN_EPS, true)?;
        let image = g.conv2d("decoder.conv_out", &self.conv_out, x)?;
        g.output(image);
        Ok(g)
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
}
