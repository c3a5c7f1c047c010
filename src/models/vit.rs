//! timm's `VisionTransformer` (ViT / DeiT) for classification, built from a checkpoint with
//! timm's key names and run as one command encoder per forward pass:
//!
//! patch_embed → [cls; patches] + pos_embed → depth × (x += attn(norm1 x); x += mlp(norm2 x))
//! → norm (on the class token only: LayerNorm is per token, so this equals timm's norm of
//! every token followed by `global_pool='token'`) → head.

use std::path::Path;

use super::config::VitConfig;
use super::glue::{embed_tokens, layer_scale_add, take_token};
use super::weights::Weights;
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::{attention, AttentionParams};
use crate::kernels::conv::{patch_embed, Conv2d};
use crate::kernels::elementwise::{add_inplace, Activation};
use crate::kernels::matmul::{linear, QLinear};
use crate::kernels::norm::layer_norm;
use crate::quant::{PackedMatrix, WeightFormat};
use crate::{invalid, shape_err, Encoder, Error, Gpu, Result};

/// timm's ViT LayerNorm epsilon.
const LN_EPS: f32 = 1e-6;

/// A LayerNorm's affine parameters on the GPU.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct Block {
    norm1: Norm,
    qkv: QLinear,
    proj: QLinear,
    /// LayerScale gammas (checkpoints trained with `init_values`).
    ls1: Option<Tensor>,
    norm2: Norm,
    fc1: QLinear,
    fc2: QLinear,
    ls2: Option<Tensor>,
}

pub struct VisionTransformer {
    pub config: VitConfig,
    /// The packed format of every Linear and of the patch projection.
    pub format: WeightFormat,
    patch: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    head: Option<QLinear>,
}

/// Reads one f32 tensor of the checkpoint onto the GPU with the given shape.
fn upload(gpu: &Gpu, w: &Weights, key: &str, ckpt_shape: &[usize], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_f32(gpu, shape, w.get(key, ckpt_shape)?)
}

fn load_norm(gpu: &Gpu, w: &Weights, prefix: &str, dim: usize) -> Result<Norm> {
    Ok(Norm {
        weight: upload(gpu, w, &format!("{prefix}.weight"), &[dim], &[dim])?,
        bias: upload(gpu, w, &format!("{prefix}.bias"), &[dim], &[dim])?,
    })
}

/// A `nn.Linear` (`weight` [out, in]) packed in `format`.
fn load_linear(gpu: &Gpu, w: &Weights, prefix: &str, out: usize, inp: usize, bias: bool, format: WeightFormat) -> Result<QLinear> {
    let key = format!("{prefix}.weight");
    let weight = w.get(&key, &[out, inp])?;
    let packed = PackedMatrix::quantize(weight, out, inp, format).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    let bias = if bias { Some(w.get(&format!("{prefix}.bias"), &[out])?) } else { None };
    QLinear::new(gpu, &packed, bias)
}

impl VisionTransformer {
    /// Builds the model from checkpoint tensors, packing matrices in `format`
    /// (`WeightFormat::F32` reproduces timm's numbers).
    pub fn new(gpu: &Gpu, config: &VitConfig, w: &Weights, format: WeightFormat) -> Result<VisionTransformer> {
        let c = config;
        let (d, p, hidden) = (c.embed_dim, c.patch_size, c.mlp_hidden());
        let tokens = c.tokens();
        let pw = w.get("patch_embed.proj.weight", &[d, 3, p, p])?;
        let packed = PackedMatrix::quantize(pw, d, 3 * p * p, format)?;
        let patch = Conv2d::new(gpu, &packed, Some(w.get("patch_embed.proj.bias", &[d])?), (p, p), p, 0)?;
        let cls_token = upload(gpu, w, "cls_token", &[1, 1, d], &[d])?;
        let pos_embed = upload(gpu, w, "pos_embed", &[1, tokens, d], &[tokens, d])?;
        let layer_scale = |key: &str| -> Result<Option<Tensor>> {
            let gamma = if c.init_values.is_some() { Some(w.get(key, &[d])?) } else { w.get_optional(key, &[d])? };
            gamma.map(|g| Tensor::from_f32(gpu, &[d], g)).transpose()
        };
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = format!("blocks.{i}");
            blocks.push(Block {
                norm1: load_norm(gpu, w, &format!("{b}.norm1"), d)?,
                qkv: load_linear(gpu, w, &format!("{b}.attn.qkv"), 3 * d, d, c.qkv_bias, format)?,
                proj: load_linear(gpu, w, &format!("{b}.attn.proj"), d, d, true, format)?,
                ls1: layer_scale(&format!("{b}.ls1.gamma"))?,
                norm2: load_norm(gpu, w, &format!("{b}.norm2"), d)?,
                fc1: load_linear(gpu, w, &format!("{b}.mlp.fc1"), hidden, d, true, format)?,
                fc2: load_linear(gpu, w, &format!("{b}.mlp.fc2"), d, hidden, true, format)?,
                ls2: layer_scale(&format!("{b}.ls2.gamma"))?,
            });
        }
        if w.contains(&format!("blocks.{}.norm1.weight", c.depth)) {
            invalid!("checkpoint {} has more than the configured {} blocks", w.source, c.depth);
        }
        let norm = load_norm(gpu, w, "norm", d)?;
        let head = if c.num_classes > 0 { Some(load_linear(gpu, w, "head", c.num_classes, d, true, format)?) } else { None };
        Ok(VisionTransformer { config: c.clone(), format, patch, cls_token, pos_embed, blocks, norm, head })
    }

    /// Loads `path`: a folder with `model.safetensors` and `config.json`, or a `.safetensors`
    /// file with `config.json` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VisionTransformer> {
        let (weights_path, config_path) = crate::models::weights::resolve_checkpoint(path, config, "config.json")?;
        let cfg = VitConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Width of the output: `num_classes`, or `embed_dim` for a model without a head.
    pub fn output_dim(&self) -> usize {
        self.head.as_ref().map_or(self.config.embed_dim, |h| h.out_features())
    }

    /// Logits [B, num_classes] for normalized images [B, 3, img_size, img_size].
    pub fn forward(&self, gpu: &Gpu, images: &Tensor) -> Result<Tensor> {
        let mut enc = gpu.encoder();
        let out = self.record(gpu, &mut enc, images)?;
        gpu.submit(enc)?;
        Ok(out)
    }

    /// Records the forward pass into `enc`; the returned tensor holds the logits once it runs.
    pub fn record(&self, gpu: &Gpu, enc: &mut Encoder, images: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        images.expect_dtype("vit input", DType::F32)?;
        let s = c.img_size;
        let &[b, 3, h, w] = &images.shape[..] else { shape_err!("vit: images must be [B, 3, {s}, {s}], got {:?}", images.shape) };
        if (h, w) != (s, s) {
            shape_err!("vit: images are {h}×{w}, the model takes {s}×{s}");
        }
        let (d, t, hidden) = (c.embed_dim, c.tokens(), c.mlp_hidden());
        let zeros = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32);
        let patches = zeros(&[b, t - 1, d])?;
        patch_embed(gpu, enc, images, &self.patch, &patches)?;
        let x = zeros(&[b, t, d])?;
        embed_tokens(gpu, enc, &patches, &self.cls_token, &self.pos_embed, &x)?;

        let normed = zeros(&[b, t, d])?;
        let qkv = zeros(&[b, t, 3 * d])?;
        let heads_out = zeros(&[b, t, d])?;
        let branch = zeros(&[b, t, d])?;
        let mlp = zeros(&[b, t, hidden])?;
        let attn = AttentionParams::new(b, t, c.num_heads, c.head_dim());
        for blk in &self.blocks {
            layer_norm(gpu, enc, &x, &blk.norm1.weight, &blk.norm1.bias, LN_EPS, &normed)?;
            linear(gpu, enc, &blk.qkv, &normed, &qkv, None)?;
            attention(gpu, enc, &qkv, &heads_out, attn)?;
            linear(gpu, enc, &blk.proj, &heads_out, &branch, None)?;
            residual(gpu, enc, &x, &branch, blk.ls1.as_ref())?;
            layer_norm(gpu, enc, &x, &blk.norm2.weight, &blk.norm2.bias, LN_EPS, &normed)?;
            linear(gpu, enc, &blk.fc1, &normed, &mlp, Some(Activation::Gelu))?;
            linear(gpu, enc, &blk.fc2, &mlp, &branch, None)?;
            residual(gpu, enc, &x, &branch, blk.ls2.as_ref())?;
        }
        let cls = zeros(&[b, d])?;
        take_token(gpu, enc, &x, &cls)?;
        let pooled = zeros(&[b, d])?;
        layer_norm(gpu, enc, &cls, &self.norm.weight, &self.norm.bias, LN_EPS, &pooled)?;
        let Some(head) = &self.head else { return Ok(pooled) };
        let logits = zeros(&[b, head.out_features()])?;
        linear(gpu, enc, head, &pooled, &logits, None)?;
        Ok(logits)
    }
}

/// `x += gamma ⊙ branch`, or `x += branch` without LayerScale.
fn residual(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, branch: &Tensor, gamma: Option<&Tensor>) -> Result<()> {
    match gamma {
        Some(g) => layer_scale_add(gpu, enc, x, branch, g),
        None => add_inplace(gpu, enc, x, branch),
    }
}
