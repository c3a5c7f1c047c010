//! timm's `VisionTransformer` (ViT / DeiT) for classification, built from a checkpoint with
//! timm's key names and run as a planned graph (one command encoder per forward pass):
//!
//! patch_embed → [cls; patches] + pos_embed → depth × (x += attn(norm1 x); x += mlp(norm2 x))
//! → norm (on the class token only: LayerNorm is per token, so this equals timm's norm of
//! every token followed by `global_pool='token'`) → head.

use std::path::{Path, PathBuf};

use image::RgbImage;
use std::sync::Arc;

pub mod config;
pub mod glue;

use config::VitConfig;
use glue::{embed_tokens, layer_scale_add, take_token};
use super::weights::{Weights, WeightsView};
use crate::gpu::{DType, Tensor};
use super::preprocess::{load_image, preprocess};
use crate::graph::{Graph, Linear, NodeTime, Norm, Plan, Value};
use crate::kernels::attention::AttentionParams;
use crate::kernels::conv::Conv2d;
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::QLinear;
use crate::kernels::w8a8::W8A8Linear;
use crate::kernels::act_quant::ActQuantizer;
use crate::models::packed::{Activations, Attention, Description, QuantPoint, Runtime};
use crate::formats::WeightFormat;
use crate::{invalid, shape_err, Error, Gpu, Result};

/// timm's ViT LayerNorm epsilon.
const LN_EPS: f32 = 1e-6;

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
    /// Static activation quantizers (W6A6/W4A8/W4A4 checkpoints); all None otherwise.
    quant: BlockQuant,
}

/// A Linear input's quantizer, with NoisyQuant's noise when it has one.
type InputQuant = Option<(ActQuantizer, Option<Tensor>)>;

#[derive(Default)]
struct BlockQuant {
    qkv: InputQuant,
    proj: InputQuant,
    fc1: InputQuant,
    fc2: InputQuant,
    softmax: Option<ActQuantizer>,
}

impl BlockQuant {
    /// Takes block `n`'s quantizers out of `points` (what is left afterwards is unknown).
    fn take(gpu: &Gpu, w: &Weights, n: usize, points: &mut Vec<QuantPoint>, widths: [usize; 4]) -> Result<BlockQuant> {
        let mut take = |name: &str| -> Option<QuantPoint> {
            let node = format!("blocks.{n}.{name}");
            let i = points.iter().position(|p| p.node == node)?;
            Some(points.remove(i))
        };
        let mut input = |name: &str, width: usize| -> Result<InputQuant> {
            let Some(p) = take(name) else { return Ok(None) };
            let noise = p.noise.as_ref().map(|key| Tensor::from_f32(gpu, &[width], w.get(key, &[width])?)).transpose()?;
            Ok(Some((p.quantizer, noise)))
        };
        Ok(BlockQuant {
            qkv: input("attn.qkv", widths[0])?,
            proj: input("attn.proj", widths[1])?,
            fc1: input("mlp.fc1", widths[2])?,
            fc2: input("mlp.fc2", widths[3])?,
            softmax: take("attn").map(|p| p.quantizer),
        })
    }
}

/// `x` through the Linear input quantizer `q` (named `{linear}.act_quant`), if there is one.
fn quantize_input(g: &mut Graph, linear: &str, x: Value, q: &InputQuant) -> Result<Value> {
    match q {
        Some((q, noise)) => g.act_quant(&format!("{linear}.act_quant"), x, *q, noise.clone()),
        None => Ok(x),
    }
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
    head: Option<Linear>,
    /// Attention through SageAttention (int8 Q·Kᵀ): checkpoints of `--recipe w8a8`.
    sage: bool,
}

/// Reads one f32 tensor of the checkpoint onto the GPU with the given shape.
fn upload(gpu: &Gpu, w: &Weights, key: &str, ckpt_shape: &[usize], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_f32(gpu, shape, w.get(key, ckpt_shape)?)
}

/// A `nn.Linear` (`weight` [out, in]) packed in `format` (or as the checkpoint packed it).
fn load_linear(gpu: &Gpu, w: &WeightsView, out: usize, inp: usize, bias: bool, format: WeightFormat) -> Result<QLinear> {
    let packed = w.matrix("weight", &[out, inp], format)?;
    let bias = if bias { Some(w.get("bias", &[out])?) } else { None };
    QLinear::new(gpu, &packed, bias)
}

/// A block Linear: through the W8A8 kernel when the checkpoint runs int8 activations.
#[allow(clippy::too_many_arguments)]
fn load_block_linear(gpu: &Gpu, w: &WeightsView, out: usize, inp: usize, bias: bool, format: WeightFormat, gelu: bool, runtime: Runtime) -> Result<Linear> {
    if runtime.activations != Activations::Int8PerToken {
        return Ok(Linear::Packed(load_linear(gpu, w, out, inp, bias, format)?));
    }
    let packed = w.matrix("weight", &[out, inp], format)?;
    let bias = if bias { Some(w.get("bias", &[out])?) } else { None };
    let layer = W8A8Linear::new(gpu, &packed, bias)?;
    Ok(Linear::Int8(Arc::new(if gelu { layer.with_gelu() } else { layer })))
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
        let (d, p, hidden) = (c.embed_dim, c.patch_size, c.mlp_hidden());
        let tokens = c.tokens();
        let packed = w.matrix("patch_embed.proj.weight", &[d, 3, p, p], format)?;
        let patch = Conv2d::new(gpu, &packed, Some(w.get("patch_embed.proj.bias", &[d])?), (p, p), p, 0)?;
        let cls_token = upload(gpu, w, "cls_token", &[1, 1, d], &[d])?;
        let pos_embed = upload(gpu, w, "pos_embed", &[1, tokens, d], &[tokens, d])?;
        let layer_scale = |ls: WeightsView| -> Result<Option<Tensor>> {
            let gamma = if c.init_values.is_some() { Some(ls.get("gamma", &[d])?) } else { ls.get_optional("gamma", &[d])? };
            gamma.map(|g| Tensor::from_f32(gpu, &[d], g)).transpose()
        };
        // The quantization description, parsed once: activation quantizers and runtime kernels.
        let desc = Description::of(w)?;
        let mut points = crate::models::packed::points(desc.as_ref())?;
        let runtime = desc.and_then(|d| d.runtime).unwrap_or_default();
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = w.pp("blocks").pp(i);
            let (attn, mlp) = (b.pp("attn"), b.pp("mlp"));
            blocks.push(Block {
                norm1: b.pp("norm1").norm(gpu, d)?,
                qkv: load_block_linear(gpu, &attn.pp("qkv"), 3 * d, d, c.qkv_bias, format, false, runtime)?,
                proj: load_block_linear(gpu, &attn.pp("proj"), d, d, true, format, false, runtime)?,
                ls1: layer_scale(b.pp("ls1"))?,
                norm2: b.pp("norm2").norm(gpu, d)?,
                fc1: load_block_linear(gpu, &mlp.pp("fc1"), hidden, d, true, format, true, runtime)?,
                fc2: load_block_linear(gpu, &mlp.pp("fc2"), d, hidden, true, format, false, runtime)?,
                ls2: layer_scale(b.pp("ls2"))?,
                quant: BlockQuant::take(gpu, w, i, &mut points, [d, d, d, hidden])?,
            });
        }
        if let Some(p) = points.first() {
            invalid!("checkpoint {}: activation quantizer at `{}`, which is not a block Linear or attention of this model", w.source, p.node);
        }
        if w.contains(&format!("blocks.{}.norm1.weight", c.depth)) {
            invalid!("checkpoint {} has more than the configured {} blocks", w.source, c.depth);
        }
        let norm = w.norm(gpu, "norm", d)?;
        let head = if c.num_classes > 0 { Some(load_linear(gpu, &w.pp("head"), c.num_classes, d, true, format)?.into()) } else { None };
        // Whether `lowbit quantize` asked for the low-bit attention kernel.
        let sage = runtime.attention == Attention::SageInt8;
        Ok(VisionTransformer { config: c.clone(), format, patch, cls_token, pos_embed, blocks, norm, head, sage })
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
        let mut pixels = Vec::new();
        for path in paths {
            let image = preprocess(&load_image(path)?, &self.config.preprocess);
            pixels.extend(image.map_err(|e| Error::Invalid(format!("image {}: {e}", path.display())))?);
        }
        Ok(self.run_pixels(gpu, &pixels, paths.len(), false)?.0)
    }

    /// Logits and pooled features of RGB images (timm's eval transform, then one forward pass).
    pub fn classify(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<Classified> {
        Ok(self.run_pixels(gpu, &self.preprocess(images)?, images.len(), false)?.0)
    }

    /// `classify`, also measuring the GPU time of each node.
    pub fn classify_profiled(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<(Classified, Vec<NodeTime>)> {
        self.run_pixels(gpu, &self.preprocess(images)?, images.len(), true)
    }

    /// timm's eval transform of each image, concatenated: [N, 3, img_size, img_size].
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Vec<f32>> {
        let mut pixels = Vec::new();
        for (i, img) in images.iter().enumerate() {
            pixels.extend(preprocess(img, &self.config.preprocess).map_err(|e| Error::Invalid(format!("image {i}: {e}")))?);
        }
        Ok(pixels)
    }

    fn run_pixels(&self, gpu: &Gpu, pixels: &[f32], n: usize, profile: bool) -> Result<(Classified, Vec<NodeTime>)> {
        if n == 0 {
            invalid!("vit: no images to classify");
        }
        let plan = Plan::new(gpu, self.graph_with_features(n)?)?;
        plan.set_input(gpu, 0, pixels)?;
        let (out, times) = if profile { plan.profile(gpu)? } else { (plan.run(gpu)?, Vec::new()) };
        Ok((Classified { logits: out[0].to_vec_f32(gpu)?, features: out[1].to_vec_f32(gpu)? }, times))
    }

    /// The forward pass for `batch` images, planned: input 0 is the images, output 0 the logits.
    pub fn plan(&self, gpu: &Gpu, batch: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch)?)
    }

    /// The forward pass as a graph; node names are the checkpoint's.
    pub fn graph(&self, batch: usize) -> Result<Graph> {
        self.build(batch, false)
    }

    /// `graph` with a second output: the pooled features [B, embed_dim] the head reads (what
    /// Fréchet distances between image sets are computed on).
    pub fn graph_with_features(&self, batch: usize) -> Result<Graph> {
        self.build(batch, true)
    }

    fn build(&self, batch: usize, features: bool) -> Result<Graph> {
        let c = &self.config;
        let (b, s, d, t) = (batch, c.img_size, c.embed_dim, c.tokens());
        let mut g = Graph::new();
        let images = g.input(&[b, 3, s, s], DType::F32);
        let patches = g.conv_to_tokens("patch_embed.proj", &self.patch, images)?;
        let (cls, pos) = (self.cls_token.clone(), self.pos_embed.clone());
        let mut x = g.node("pos_embed", "embed_tokens", &[patches], &[b, t, d], DType::F32, move |gpu, enc, i, out| {
            embed_tokens(gpu, enc, i[0], &cls, &pos, out)
        });
        let attn = AttentionParams::new(b, t, c.num_heads, c.head_dim());
        for (n, blk) in self.blocks.iter().enumerate() {
            let p = |name: &str| format!("blocks.{n}.{name}");
            let q = &blk.quant;
            let h = g.layer_norm(&p("norm1"), x, &blk.norm1, LN_EPS)?;
            let h = quantize_input(&mut g, &p("attn.qkv"), h, &q.qkv)?;
            let qkv = g.linear(&p("attn.qkv"), &blk.qkv, h, None)?;
            let heads = match q.softmax {
                Some(pq) => g.attention_quantized(&p("attn"), qkv, attn, pq)?,
                None if self.sage => g.sage_attention(&p("attn"), qkv, attn)?,
                None => g.attention(&p("attn"), qkv, attn)?,
            };
            let heads = quantize_input(&mut g, &p("attn.proj"), heads, &q.proj)?;
            let h = g.linear(&p("attn.proj"), &blk.proj, heads, None)?;
            x = residual(&mut g, &p("ls1"), x, h, blk.ls1.as_ref())?;
            let h = g.layer_norm(&p("norm2"), x, &blk.norm2, LN_EPS)?;
            let h = quantize_input(&mut g, &p("mlp.fc1"), h, &q.fc1)?;
            let h = g.linear(&p("mlp.fc1"), &blk.fc1, h, Some(Activation::Gelu))?;
            let h = quantize_input(&mut g, &p("mlp.fc2"), h, &q.fc2)?;
            let h = g.linear(&p("mlp.fc2"), &blk.fc2, h, None)?;
            x = residual(&mut g, &p("ls2"), x, h, blk.ls2.as_ref())?;
        }
        let cls = g.node("cls_token", "take_token", &[x], &[b, d], DType::F32, |gpu, enc, i, out| take_token(gpu, enc, i[0], out));
        let pooled = g.layer_norm("norm", cls, &self.norm, LN_EPS)?;
        let out = match &self.head {
            Some(head) => g.linear("head", head, pooled, None)?,
            None => pooled,
        };
        g.output(out);
        if features {
            g.output(pooled);
        }
        Ok(g)
    }
}

/// `x += gamma ⊙ branch` (LayerScale), or `x += branch` without it.
fn residual(g: &mut Graph, name: &str, x: Value, branch: Value, gamma: Option<&Tensor>) -> Result<Value> {
    match gamma {
        Some(gamma) => {
            let gamma = gamma.clone();
            Ok(g.node_inplace(name, "layer_scale_add", x, &[branch], move |gpu, enc, i, out| layer_scale_add(gpu, enc, out, i[0], &gamma)))
        }
        None => g.add(name, x, branch),
    }
}
