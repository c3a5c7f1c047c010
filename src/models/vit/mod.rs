//! timm's `VisionTransformer` (ViT / DeiT) for classification, built from a checkpoint with
//! timm's key names and run as a planned graph (one command encoder per forward pass):
//!
//! patch_embed → [prefix tokens; patches] + pos_embed → norm_pre → depth × (x += ls1 ⊙
//! attn(norm1 x); x += ls2 ⊙ mlp(norm2 x)) → norm → pool → fc_norm → head. Prefix tokens are
//! the class, distillation and register tokens; with token pooling the norm runs on the
//! pooled token only (LayerNorm is per token, so this equals timm's norm of every token).
//! `forward.rs` builds the graph, `checks.rs` compares config and checkpoint, `resample.rs`
//! resizes position embeddings.

use std::path::{Path, PathBuf};

use image::RgbImage;

pub mod backprop;
mod checks;
pub mod config;
mod forward;
pub mod glue;
pub mod resample;

use config::VitConfig;
use super::weights::{Weights, WeightsView};
use crate::gpu::{DType, Tensor};
use super::classifier::{preprocess_files, preprocess_images, run_pixels};
use crate::graph::{Linear, NodeTime, Norm};
use crate::kernels::conv::Conv2d;
use crate::kernels::elementwise::Activation;
use crate::models::block_quant::{load_block_linear, load_linear, BlockQuant};
use crate::models::packed::{Attention, Description};
use crate::formats::WeightFormat;
use crate::{invalid, shape_err, Gpu, Result};

/// A block's Linear: f32 activations × packed weights, or int8 × int8 (`--recipe w8a8`).
struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    /// LayerScale gammas (checkpoints trained with `init_values`).
    ls1: Option<Tensor>,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
    /// q_norm and k_norm, [4, head_dim]: q weight, q bias, k weight, k bias.
    qk_norm: Option<Tensor>,
    /// Static activation quantizers (W6A6/W4A8/W4A4 checkpoints); all None otherwise.
    quant: BlockQuant,
}

pub struct VisionTransformer {
    pub config: VitConfig,
    /// The packed format of every Linear and of the patch projection.
    pub format: WeightFormat,
    patch: Conv2d,
    /// Class, distillation and register tokens [K, D] (a zero row when K is 0).
    prefix: Tensor,
    /// [K + P, D] for the input's grid; prefix rows are zero with `no_embed_class`.
    pos_embed: Tensor,
    norm_pre: Option<Norm>,
    blocks: Vec<Block>,
    norm: Option<Norm>,
    fc_norm: Option<Norm>,
    head: Option<Linear>,
    head_dist: Option<Linear>,
    /// Attention through SageAttention (int8 Q·Kᵀ): checkpoints of `--recipe w8a8`.
    sage: bool,
}

/// What `VisionTransformer::classify` returns for N images.
pub struct Classified {
    /// [N, num_classes] row-major (the pooled features when the model has no head).
    pub logits: Vec<f32>,
    /// [N, embed_dim]: what the head reads (Fréchet distances between image sets use these).
    pub features: Vec<f32>,
}

impl VisionTransformer {
    /// Builds the model from checkpoint tensors, packing matrices in `format`
    /// (`WeightFormat::F32` reproduces timm's numbers).
    pub fn new(gpu: &Gpu, config: &VitConfig, w: &Weights, format: WeightFormat) -> Result<VisionTransformer> {
        let c = config;
        let (d, p, hidden, hd) = (c.embed_dim, c.patch_size, c.mlp_hidden(), c.head_dim());
        // Before anything is allocated for `depth` blocks: the checkpoint must have them.
        checks::block_count(c, w)?;
        checks::unexpected_keys(c, w)?;
        let packed = w.matrix("patch_embed.proj.weight", &[d, 3, p, p], format)?;
        // timm's patch embedding has no bias under pre_norm (CLIP).
        let bias = if c.pre_norm { None } else { Some(w.get("patch_embed.proj.bias", &[d])?) };
        let patch = Conv2d::new(gpu, &packed, bias, (p, p), p, 0)?;
        let prefix = checks::prefix_tokens(c, w)?;
        let k = c.prefix_tokens();
        let pos = checks::pos_embed(c, w)?;
        let pos_embed = Tensor::from_f32(gpu, &[c.tokens(), d], &pos)?;
        let prefix = if k == 0 { Tensor::zeros(gpu, &[1, d], DType::F32)? } else { Tensor::from_f32(gpu, &[k, d], &prefix)? };
        let layer_scale = |ls: WeightsView| -> Result<Option<Tensor>> {
            if c.init_values.is_none() {
                return Ok(None);
            }
            Tensor::from_f32(gpu, &[d], ls.get("gamma", &[d])?).map(Some)
        };
        let qk_norm = |attn: &WeightsView| -> Result<Option<Tensor>> {
            if !c.qk_norm {
                return Ok(None);
            }
            let mut affine = Vec::with_capacity(4 * hd);
            for key in ["q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"] {
                affine.extend_from_slice(attn.get(key, &[hd])?);
            }
            Tensor::from_f32(gpu, &[4, hd], &affine).map(Some)
        };
        // The quantization description, parsed once: activation quantizers and runtime kernels.
        let desc = Description::of(w)?;
        let mut points = crate::models::packed::points(desc.as_ref())?;
        let runtime = desc.and_then(|d| d.runtime).unwrap_or_default();
        // Only GELU is fused into the int8 Linear; other activations run as their own pass.
        let fuse_gelu = c.act == Activation::Gelu;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = w.pp("blocks").pp(i);
            let (attn, mlp) = (b.pp("attn"), b.pp("mlp"));
            // The quantizers first: an integer Linear takes its input's quantizer into itself.
            let mut quant = BlockQuant::take(gpu, w, &format!("blocks.{i}"), &mut points, [d, d, d, hidden])?;
            blocks.push(Block {
                norm1: b.pp("norm1").norm(gpu, d)?,
                qkv: load_block_linear(gpu, &attn.pp("qkv"), 3 * d, d, c.qkv_bias, format, false, runtime, &mut quant.qkv)?,
                proj: load_block_linear(gpu, &attn.pp("proj"), d, d, c.proj_bias, format, false, runtime, &mut quant.proj)?,
                ls1: layer_scale(b.pp("ls1"))?,
                norm2: b.pp("norm2").norm(gpu, d)?,
                fc1: load_block_linear(gpu, &mlp.pp("fc1"), hidden, d, c.proj_bias, format, fuse_gelu, runtime, &mut quant.fc1)?,
                fc2: load_block_linear(gpu, &mlp.pp("fc2"), d, hidden, c.proj_bias, format, false, runtime, &mut quant.fc2)?,
                ls2: layer_scale(b.pp("ls2"))?,
                qk_norm: qk_norm(&attn)?,
                quant,
            });
        }
        if let Some(p) = points.first() {
            invalid!("checkpoint {}: activation quantizer at `{}`, which is not a block Linear or attention of this model", w.source, p.node);
        }
        let norm_pre = if c.pre_norm { Some(w.norm(gpu, "norm_pre", d)?) } else { None };
        let norm = if c.final_norm { Some(w.norm(gpu, "norm", d)?) } else { None };
        let fc_norm = if c.fc_norm { Some(w.norm(gpu, "fc_norm", d)?) } else { None };
        let head_of = |name: &str| -> Result<Option<Linear>> {
            Ok(if c.num_classes > 0 { Some(load_linear(gpu, &w.pp(name), c.num_classes, d, true, format)?.into()) } else { None })
        };
        let head = head_of("head")?;
        let head_dist = if c.distilled { head_of("head_dist")? } else { None };
        // Whether `lowbit quantize` asked for the low-bit attention kernel.
        let sage = runtime.attention == Attention::SageInt8;
        Ok(VisionTransformer { config: c.clone(), format, patch, prefix, pos_embed, norm_pre, blocks, norm, fc_norm, head, head_dist, sage })
    }

    /// Loads `path`: a folder with `model.safetensors` and `config.json`, or a `.safetensors`
    /// file with `config.json` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VisionTransformer> {
        let (weights_path, config_path) = crate::models::weights::resolve_checkpoint(path, config, "config.json")?;
        let cfg = VitConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Values per image in the output: `num_classes`, or `embed_dim` for a model without a
    /// head; times the tokens for `global_pool: ""`, which classifies every token.
    pub fn output_dim(&self) -> usize {
        let per_token = self.head.as_ref().map_or(self.config.embed_dim, |h| h.out_features());
        if self.config.global_pool == config::Pool::None {
            per_token * self.config.tokens()
        } else {
            per_token
        }
    }

    /// Logits [B, num_classes] for normalized images [B, 3, img_size, img_size]: plans the
    /// graph for this batch and runs it once (hold a `plan` to run many times).
    pub fn forward(&self, gpu: &Gpu, images: &Tensor) -> Result<Tensor> {
        images.expect_dtype("vit input", DType::F32)?;
        let s = self.config.img_size;
        let &[b, 3, h, w] = &images.shape[..] else { shape_err!("vit: images must be [B, 3, {s}, {s}], got {:?}", images.shape) };
        if (h, w) != (s, s) {
            shape_err!("vit: images are {h}×{w}, the model takes {s}×{s}");
        }
        let plan = self.plan(gpu, b)?;
        Ok(plan.run_with(gpu, &[images])?.remove(0))
    }

    /// Logits and pooled features of images read from `paths`, through timm's eval transform
    /// (`config.preprocess`) and one forward pass over all of them.
    pub fn classify_files(&self, gpu: &Gpu, paths: &[PathBuf]) -> Result<Classified> {
        let pixels = preprocess_files(paths, &self.config.preprocess)?;
        Ok(run_pixels(gpu, |n| self.graph_with_features(n), &pixels, paths.len(), false)?.0)
    }

    /// Logits and pooled features of RGB images (timm's eval transform, then one forward pass).
    pub fn classify(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<Classified> {
        Ok(run_pixels(gpu, |n| self.graph_with_features(n), &self.preprocess(images)?, images.len(), false)?.0)
    }

    /// `classify`, also measuring the GPU time of each node.
    pub fn classify_profiled(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<(Classified, Vec<NodeTime>)> {
        run_pixels(gpu, |n| self.graph_with_features(n), &self.preprocess(images)?, images.len(), true)
    }

    /// timm's eval transform of each image, concatenated: [N, 3, img_size, img_size].
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Vec<f32>> {
        preprocess_images(images, &self.config.preprocess)
    }
}
