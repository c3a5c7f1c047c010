//! taming-transformers' VQGAN encoder side (`VQModel.encode`): image → tokens.
//!
//! image [B, in_channels, H, W] (in [−1, 1]) → `encoder.`: conv_in → for each level:
//! num_res_blocks ResnetBlocks (each followed by an AttnBlock at the `attn_resolutions`), then
//! `Downsample` (pad right/bottom by one, 3×3 stride-2 conv) except at the last level → mid
//! (ResnetBlock, AttnBlock, ResnetBlock) → GroupNorm + swish → conv_out → quant_conv (1×1,
//! written as tokens [B, h·w, embed_dim]) → nearest codebook entry by L2 → ids [B, h, w].

use std::path::Path;

use super::blocks::{attn_block, resnet, AttnBlock, Loader, ResnetBlock, GN_EPS, GROUPS};
use super::{TokenGrid, VqganConfig};
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Norm, Plan};
use crate::kernels::conv::{Conv2d, Padding};
use crate::kernels::vq::Codebook;
use crate::models::weights::Weights;
use crate::formats::WeightFormat;
use crate::{invalid, shape_err, Gpu, Result};

struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// taming's `Downsample(with_conv=True)`; None at the last level.
    downsample: Option<Conv2d>,
}

pub struct VqganEncoder {
    pub config: VqganConfig,
    pub format: WeightFormat,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    norm_out: Norm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
    codebook: Codebook,
}

impl VqganEncoder {
    /// Builds the encoder from a taming `VQModel` state dict (decoder and loss tensors are
    /// ignored), packing conv weights in `format`.
    pub fn new(gpu: &Gpu, config: &VqganConfig, w: &Weights, format: WeightFormat) -> Result<VqganEncoder> {
        let c = config;
        let dd = &c.ddconfig;
        if dd.double_z {
            invalid!("vqgan encoder: double_z (a KL autoencoder's mean and variance) is not a VQ encoder");
        }
        if !dd.resamp_with_conv {
            invalid!("vqgan encoder: resamp_with_conv: false (average-pool downsampling) is not supported");
        }
        let l = Loader { gpu, w, format };
        let f = c.flavor;
        let levels = dd.ch_mult.len();
        let mut ch = dd.ch;
        let conv_in = l.conv("encoder.conv_in", dd.in_channels, ch, 3)?;
        let mut res = dd.resolution;
        let mut down = Vec::with_capacity(dd.ch_mult.len());
        for (level, &mult) in dd.ch_mult.iter().enumerate() {
            let p = f.level("encoder", level, levels);
            let out = dd.ch * mult;
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for i in 0..dd.num_res_blocks {
                blocks.push(l.resnet(&format!("{p}.{}.{i}", f.blocks()), ch, out)?);
                ch = out;
                if dd.attn_resolutions.contains(&res) {
                    attns.push(l.attn(&format!("{p}.attn.{i}"), ch)?);
                }
            }
            let extra = format!("{p}.attn.{}.norm.weight", attns.len());
            if w.contains(&extra) {
                invalid!("checkpoint {} has {extra}, which the config (resolution {}, attn_resolutions {:?}) does not describe", w.source, dd.resolution, dd.attn_resolutions);
            }
            if w.contains(&format!("{p}.{}.{}.norm1.weight", f.blocks(), dd.num_res_blocks)) {
                invalid!("checkpoint {} has more blocks at {p} than num_res_blocks = {}", w.source, dd.num_res_blocks);
            }
            let downsample = if level + 1 < levels {
                res /= 2;
                let key = format!("{p}.downsample.conv");
                // F.pad(x, (0, 1, 0, 1)) then a 3×3 stride-2 conv without padding.
                Some(l.conv_padded(&key, ch, ch, 3, 2, Padding { top: 0, left: 0, bottom: 1, right: 1 })?)
            } else {
                None
            };
            down.push(Level { blocks, attns, downsample });
        }
        if w.contains(&format!("{}.{}.0.norm1.weight", f.level("encoder", levels, levels + 1), f.blocks())) {
            invalid!("checkpoint {} has more encoder levels than ch_mult describes", w.source);
        }
        let mid = (l.resnet(&f.mid("encoder", 0), ch, ch)?, l.attn(&f.mid("encoder", 1), ch)?, l.resnet(&f.mid("encoder", 2), ch, ch)?);
        let norm_out = l.norm("encoder.norm_out", ch)?;
        let conv_out = l.conv("encoder.conv_out", ch, dd.z_channels, 3)?;
        let quant_conv = l.conv("quant_conv", dd.z_channels, c.embed_dim, 1)?;
        let codes = w.get("quantize.embedding.weight", &[c.n_embed, c.embed_dim])?;
        let codebook = Codebook::new(gpu, codes, c.n_embed, c.embed_dim, c.metric())?;
        Ok(VqganEncoder { config: c.clone(), format, conv_in, down, mid, norm_out, conv_out, quant_conv, codebook })
    }

    /// Loads `path` (a folder with model.safetensors + config.yaml, or a .safetensors file).
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VqganEncoder> {
        let (weights_path, config_path) = VqganConfig::resolve(path, config)?;
        let cfg = VqganConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Sides must be multiples of this (each level but the last halves them).
    pub fn downscale(&self) -> usize {
        1 << (self.down.len() - 1)
    }

    /// Token ids of images [B, in_channels, H, W] scaled to [−1, 1].
    pub fn encode(&self, gpu: &Gpu, images: &Tensor) -> Result<TokenGrid> {
        images.expect_dtype("vqgan encoder input", DType::F32)?;
        let &[b, c, h, w] = &images.shape[..] else { shape_err!("vqgan encoder: images must be [B, C, H, W], got {:?}", images.shape) };
        let want = self.config.ddconfig.in_channels;
        if c != want {
            shape_err!("vqgan encoder: images have {c} channels, the model takes {want}");
        }
        let plan = self.plan(gpu, b, h, w)?;
        let ids = plan.run_with(gpu, &[images])?.remove(0).to_vec_u32(gpu)?;
        let f = self.downscale();
        TokenGrid::new(&[b, h / f, w / f], ids.into_iter().map(i64::from).collect())
    }

    pub fn plan(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch, h, w)?)
    }

    /// The encode as a graph: input 0 the images, output 0 the ids [B, h, w] (u32).
    pub fn graph(&self, batch: usize, height: usize, width: usize) -> Result<Graph> {
        let f = self.downscale();
        if height == 0 || width == 0 || !height.is_multiple_of(f) || !width.is_multiple_of(f) {
            shape_err!("vqgan encoder: {height}×{width} images; sides must be positive multiples of {f}");
        }
        let mut g = Graph::new();
        let image = g.input(&[batch, self.config.ddconfig.in_channels, height, width], DType::F32);
        let mut x = g.conv2d("encoder.conv_in", &self.conv_in, image)?;
        let levels = self.down.len();
        for (l, level) in self.down.iter().enumerate() {
            for (i, block) in level.blocks.iter().enumerate() {
                x = resnet(&mut g, block, x)?;
                if let Some(a) = level.attns.get(i) {
                    x = attn_block(&mut g, a, x)?;
                }
            }
            if let Some(conv) = &level.downsample {
                x = g.conv2d(&format!("{}.downsample.conv", self.config.flavor.level("encoder", l, levels)), conv, x)?;
            }
        }
        x = resnet(&mut g, &self.mid.0, x)?;
        x = attn_block(&mut g, &self.mid.1, x)?;
        x = resnet(&mut g, &self.mid.2, x)?;
        let x = g.group_norm("encoder.norm_out", x, &self.norm_out, GROUPS, GN_EPS, true)?;
        let z = g.conv2d("encoder.conv_out", &self.conv_out, x)?;
        let z = g.conv_to_tokens("quant_conv", &self.quant_conv, z)?;
        let (h, w, e) = (height / f, width / f, self.config.embed_dim);
        let z = g.reshape(z, &[batch * h * w, e])?;
        let codebook = self.codebook.clone();
        let ids = g.node("quantize", "vq_search", &[z], &[batch * h * w], DType::U32, move |gpu, enc, i, out| codebook.search(gpu, enc, i[0], out, None));
        let ids = g.reshape(ids, &[batch, h, w])?;
        g.output(ids);
        Ok(g)
    }
}
