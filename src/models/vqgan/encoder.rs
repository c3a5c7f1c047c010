//! taming-transformers' VQGAN encoder side (`VQModel.encode`): image → tokens.
//!
//! image [B, in_channels, H, W] (in [−1, 1]) → `encoder.`: conv_in → for each level:
//! num_res_blocks ResnetBlocks (each followed by an AttnBlock at the `attn_resolutions`), then
//! `Downsample` (pad right/bottom by one, 3×3 stride-2 conv) except at the last level → mid
//! (ResnetBlock, AttnBlock, ResnetBlock) → GroupNorm + swish → conv_out → quant_conv (1×1,
//! written as tokens [B, h·w, embed_dim]) → nearest codebook entry by L2 → ids [B, h, w].
//!
//! The other tokenizers (`tokenizers.rs`) vary this: MAGVIT2-style networks (SimVQ, WeTok) pad
//! the downsampling conv all round, have no attention and no quant_conv; FQGAN runs one head
//! per sub-codebook (adapter, norm_out_X, conv_out_X, quant_conv_X) on the shared trunk.

use std::path::Path;

use super::adapter::Adapter;
use super::blocks::{attn_block, load_mid, mid, resnet, AttnBlock, Loader, Mid, ResnetBlock, GN_EPS, GROUPS};
use super::config::QuantizerKind;
use super::quantizer::Quantizer;
use super::{TokenGrid, VqganConfig};
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Norm, Plan};
use crate::kernels::conv::{Conv2d, Padding};
use crate::models::weights::Weights;
use crate::formats::WeightFormat;
use crate::{invalid, shape_err, Gpu, Result};

struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// A stride-2 conv (taming: after padding right/bottom by one; MAGVIT2: padding 1 all
    /// round); None at the last level.
    downsample: Option<Conv2d>,
}

/// What turns the trunk's features into the quantizer's input: one head, or FQGAN's one per
/// sub-codebook (each with its adapter, norm_out_X, conv_out_X and quant_conv_X).
struct Head {
    /// The checkpoint names of its norm_out, conv_out and quant_conv.
    names: [String; 3],
    adapter: Option<Adapter>,
    norm_out: Norm,
    conv_out: Conv2d,
    /// None in the MAGVIT2-style networks (conv_out emits the codes' width).
    quant_conv: Option<Conv2d>,
}

pub struct VqganEncoder {
    pub config: VqganConfig,
    pub format: WeightFormat,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Vec<Mid>,
    heads: Vec<Head>,
    pub quantizer: Quantizer,
}

/// FQGAN's adapter module of sub-codebook `head` (`vis` → `visual_head`, `sem` →
/// `semantic_head`, `sem_mid` → `semantic_head_mid`, ...).
fn adapter_prefix(head: &str) -> String {
    match head.strip_prefix("sem") {
        Some(rest) => format!("encoder.semantic_head{rest}.0"),
        None => "encoder.visual_head.0".into(),
    }
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
        let f = c.flavor;
        let l = Loader { gpu, w, format, biased: !f.magvit() };
        let levels = dd.ch_mult.len();
        let mut ch = dd.ch;
        let conv_in = if f.magvit() { l.conv_without_bias("encoder.conv_in", dd.in_channels, ch, 3)? } else { l.conv("encoder.conv_in", dd.in_channels, ch, 3)? };
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
                Some(if f.magvit() {
                    l.conv_padded(&format!("{p}.downsample"), ch, ch, 3, 2, Padding::same(1))?
                } else {
                    // F.pad(x, (0, 1, 0, 1)) then a 3×3 stride-2 conv without padding.
                    l.conv_padded(&format!("{p}.downsample.conv"), ch, ch, 3, 2, Padding { top: 0, left: 0, bottom: 1, right: 1 })?
                })
            } else {
                None
            };
            down.push(Level { blocks, attns, downsample });
        }
        if w.contains(&format!("{}.{}.0.norm1.weight", f.level("encoder", levels, levels + 1), f.blocks())) {
            invalid!("checkpoint {} has more encoder levels than ch_mult describes", w.source);
        }
        let mid = load_mid(&l, f, "encoder", ch, dd.num_res_blocks)?;
        let quantizer = super::tokenizers::load_quantizer(gpu, c, w)?;
        let heads = match (&c.quantizer, &c.adapter) {
            (QuantizerKind::Factorized { heads }, Some(adapter)) => heads
                .iter()
                .map(|h| {
                    let names = [format!("encoder.norm_out_{h}"), format!("encoder.conv_out_{h}"), format!("quant_conv_{h}")];
                    Ok(Head {
                        adapter: Some(Adapter::load(gpu, w, &adapter_prefix(h), adapter, format)?),
                        norm_out: l.norm(&names[0], ch)?,
                        conv_out: l.conv(&names[1], ch, dd.z_channels, 3)?,
                        quant_conv: Some(l.conv(&names[2], dd.z_channels, c.embed_dim, 1)?),
                        names,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            _ if f.magvit() => {
                if quantizer.dim() != dd.z_channels {
                    invalid!("config: the quantizer takes {} values, but the encoder (no quant_conv) emits z_channels = {}", quantizer.dim(), dd.z_channels);
                }
                vec![Head {
                    adapter: None,
                    norm_out: l.norm("encoder.norm_out", ch)?,
                    conv_out: l.conv("encoder.conv_out", ch, dd.z_channels, 1)?,
                    quant_conv: None,
                    names: ["encoder.norm_out".into(), "encoder.conv_out".into(), String::new()],
                }]
            }
            _ => vec![Head {
                adapter: None,
                norm_out: l.norm("encoder.norm_out", ch)?,
                conv_out: l.conv("encoder.conv_out", ch, dd.z_channels, 3)?,
                quant_conv: Some(l.conv("quant_conv", dd.z_channels, quantizer.dim(), 1)?),
                names: ["encoder.norm_out".into(), "encoder.conv_out".into(), "quant_conv".into()],
            }],
        };
        Ok(VqganEncoder { config: c.clone(), format, conv_in, down, mid, heads, quantizer })
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
        TokenGrid::from_position_major(&self.quantizer.token_dims(b, h / f, w / f), &ids)
    }

    pub fn plan(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph_on(Some(gpu), batch, h, w)?)
    }

    /// The encode as a graph: input 0 the images, output 0 the ids [B, h, w, S] (u32,
    /// position-major; S = 1 for one codebook).
    pub fn graph(&self, batch: usize, height: usize, width: usize) -> Result<Graph> {
        self.graph_on(None, batch, height, width)
    }

    /// `graph`, with the GPU for the constants a head may need (FQGAN's positional embeddings).
    fn graph_on(&self, gpu: Option<&Gpu>, batch: usize, height: usize, width: usize) -> Result<Graph> {
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
                let p = self.config.flavor.level("encoder", l, levels);
                let name = if self.config.flavor.magvit() { format!("{p}.downsample") } else { format!("{p}.downsample.conv") };
                x = g.conv2d(&name, conv, x)?;
            }
        }
        let trunk = mid(&mut g, &self.mid, x)?;
        let (h, w) = (height / f, width / f);
        let mut zs = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let mut x = trunk;
            if let Some(adapter) = &head.adapter {
                let Some(gpu) = gpu else { crate::invalid!("vqgan encoder: FQGAN's heads need the GPU to build their graph (use plan)") };
                x = adapter.graph(gpu, &mut g, x)?;
            }
            let x = g.group_norm(&head.names[0], x, &head.norm_out, GROUPS, GN_EPS, true)?;
            let z = match &head.quant_conv {
                Some(qc) => {
                    let z = g.conv2d(&head.names[1], &head.conv_out, x)?;
                    g.conv_to_tokens(&head.names[2], qc, z)?
                }
                None => g.conv_to_tokens(&head.names[1], &head.conv_out, x)?,
            };
            let e = g.shape(z)[2];
            zs.push(g.reshape(z, &[batch * h * w, e])?);
        }
        let ids = self.quantizer.search(&mut g, &zs)?;
        let ids = g.reshape(ids, &[batch, h, w, self.quantizer.codes_per_position()])?;
        g.output(ids);
        Ok(g)
    }
}
