//! timm's `SwinTransformer` for classification, built from a checkpoint with timm's key names
//! and run as a planned graph. Tokens stay [B, H·W, C] in timm's NHWC order throughout:
//!
//! patch_embed (conv, LayerNorm) → per stage: [patch merging: 2×2 gather, LayerNorm,
//! reduction] → depth × (x += proj(window_attention(qkv(gather(norm1 x)))) scattered back;
//! x += mlp(norm2 x)) → norm → average over tokens → head.fc.
//!
//! A window's attention adds timm's relative-position bias (the table indexed by
//! `get_relative_position_index`, recomputed here since timm does not store it) and, in
//! shifted blocks, the −100 mask between regions the cyclic shift brought together; both are
//! summed at load into one bias [nW, heads, N, N].

pub mod config;
pub mod glue;

use std::path::{Path, PathBuf};

use image::RgbImage;

use config::{Stage, SwinConfig};
use glue::index;
use super::block_quant::{load_block_linear, load_linear, quantize_input, take_input, BlockQuant, InputQuant};
use super::packed::Description;
use super::classifier::{preprocess_files, preprocess_images, run_pixels};
use super::vit::glue::{pool_tokens, PoolKind};
use super::vit::Classified;
use super::weights::Weights;
use crate::formats::WeightFormat;
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Linear, NodeTime, Norm, Plan, Value};
use crate::kernels::conv::Conv2d;
use crate::kernels::elementwise::Activation;
use crate::{invalid, Gpu, Result};

struct Block {
    /// Window partition (with the cyclic shift) and its inverse, rows per image.
    partition: Tensor,
    reverse: Tensor,
    norm1: Norm,
    qkv: Linear,
    /// [nW, heads, N, N]: relative-position bias plus the shift mask (nW = 1 without shift).
    bias: Tensor,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    quant: BlockQuant,
}

struct Merge {
    /// The 2×2 concatenation's rows per image.
    rows: Tensor,
    norm: Norm,
    reduction: Linear,
    quant: InputQuant,
}

struct StageWeights {
    geometry: Stage,
    merge: Option<Merge>,
    blocks: Vec<Block>,
}

pub struct SwinTransformer {
    pub config: SwinConfig,
    pub format: WeightFormat,
    patch: Conv2d,
    patch_norm: Norm,
    stages: Vec<StageWeights>,
    norm: Norm,
    head: Option<Linear>,
}

/// timm's `get_relative_position_index` for a `ws`×`ws` window: [N·N] rows into the table.
pub fn relative_position_index(ws: usize) -> Vec<usize> {
    let n = ws * ws;
    let mut out = Vec::with_capacity(n * n);
    for a in 0..n {
        for b in 0..n {
            let (dy, dx) = (a / ws + ws - 1 - b / ws, a % ws + ws - 1 - b % ws);
            out.push(dy * (2 * ws - 1) + dx);
        }
    }
    out
}

/// timm's `get_attn_mask`: 0 within a region of the shifted grid, −100 across regions,
/// [nW, N, N]; a single zero window without shift.
pub fn shift_mask(res: usize, ws: usize, shift: usize) -> Vec<f32> {
    let n = ws * ws;
    if shift == 0 {
        return vec![0.0; n * n];
    }
    let region = |c: usize| if c < res - ws { 0 } else if c < res - shift { 1 } else { 2 };
    let ids: Vec<usize> = index::partition(res, res, ws, 0).iter().map(|&t| 3 * region(t as usize / res) + region(t as usize % res)).collect();
    let mut out = Vec::with_capacity(ids.len() * n);
    for w in ids.chunks(n) {
        for &a in w {
            out.extend(w.iter().map(|&b| if a == b { 0.0 } else { -100.0 }));
        }
    }
    out
}

impl SwinTransformer {
    pub fn new(gpu: &Gpu, config: &SwinConfig, w: &Weights, format: WeightFormat) -> Result<SwinTransformer> {
        let c = config;
        let (d0, p) = (c.embed_dim, c.patch_size);
        let packed = w.matrix("patch_embed.proj.weight", &[d0, 3, p, p], format)?;
        let patch = Conv2d::new(gpu, &packed, Some(w.get("patch_embed.proj.bias", &[d0])?), (p, p), p, 0)?;
        let patch_norm = w.norm(gpu, "patch_embed.norm", d0)?;
        let desc = Description::of(w)?;
        let mut points = crate::models::packed::points(desc.as_ref())?;
        let runtime = desc.and_then(|d| d.runtime).unwrap_or_default();
        let mut stages = Vec::new();
        for (i, s) in c.stages()?.into_iter().enumerate() {
            let l = w.pp("layers").pp(i);
            let merge = if i == 0 {
                None
            } else {
                // The 2×2 concatenation of the previous stage's width (s.dim / 2).
                let (inp, m) = (2 * s.dim, l.pp("downsample"));
                let prev = 2 * s.resolution;
                let mut quant = take_input(gpu, w, &format!("layers.{i}.downsample.reduction"), &mut points, inp)?;
                Some(Merge {
                    rows: Tensor::from_u32(gpu, &[s.resolution * s.resolution * 4], &index::merge(prev, prev))?,
                    norm: m.pp("norm").norm(gpu, inp)?,
                    reduction: load_block_linear(gpu, &m.pp("reduction"), s.dim, inp, false, format, false, runtime, &mut quant)?,
                    quant,
                })
            };
            let (n, hidden) = (s.window * s.window, c.mlp_hidden(s.dim));
            let rel = relative_position_index(s.window);
            let mut blocks = Vec::new();
            for j in 0..s.depth {
                let b = l.pp("blocks").pp(j);
                let shift = if j % 2 == 1 { s.shift } else { 0 };
                let table = b.pp("attn").get("relative_position_bias_table", &[(2 * s.window - 1).pow(2), s.heads])?;
                let mask = shift_mask(s.resolution, s.window, shift);
                let windows = mask.len() / (n * n);
                let mut bias = Vec::with_capacity(windows * s.heads * n * n);
                for win in 0..windows {
                    for h in 0..s.heads {
                        bias.extend((0..n * n).map(|k| table[rel[k] * s.heads + h] + mask[win * n * n + k]));
                    }
                }
                let prefix = format!("layers.{i}.blocks.{j}");
                let mut quant = BlockQuant::take(gpu, w, &prefix, &mut points, [s.dim, s.dim, s.dim, hidden])?;
                if quant.softmax.is_some() {
                    invalid!("checkpoint {}: a post-softmax quantizer at `{prefix}.attn`: Swin's window attention runs in f32", w.source);
                }
                let r = s.resolution;
                blocks.push(Block {
                    partition: Tensor::from_u32(gpu, &[r * r], &index::partition(r, r, s.window, shift))?,
                    reverse: Tensor::from_u32(gpu, &[r * r], &index::reverse(r, r, s.window, shift))?,
                    norm1: b.pp("norm1").norm(gpu, s.dim)?,
                    qkv: load_block_linear(gpu, &b.pp("attn").pp("qkv"), 3 * s.dim, s.dim, c.qkv_bias, format, false, runtime, &mut quant.qkv)?,
                    bias: Tensor::from_f32(gpu, &[windows, s.heads, n, n], &bias)?,
                    proj: load_block_linear(gpu, &b.pp("attn").pp("proj"), s.dim, s.dim, true, format, false, runtime, &mut quant.proj)?,
                    norm2: b.pp("norm2").norm(gpu, s.dim)?,
                    fc1: load_block_linear(gpu, &b.pp("mlp").pp("fc1"), hidden, s.dim, true, format, true, runtime, &mut quant.fc1)?,
                    fc2: load_block_linear(gpu, &b.pp("mlp").pp("fc2"), s.dim, hidden, true, format, false, runtime, &mut quant.fc2)?,

                    quant,
                });
            }
            if w.contains(&format!("layers.{i}.blocks.{}.norm1.weight", s.depth)) {
                invalid!("checkpoint {} has more than the configured {} blocks in stage {i}", w.source, s.depth);
            }
            stages.push(StageWeights { geometry: s, merge, blocks });
        }
        if w.contains(&format!("layers.{}.blocks.0.norm1.weight", stages.len())) {
            invalid!("checkpoint {} has more than the configured {} stages", w.source, stages.len());
        }
        if !c.qkv_bias && w.contains("layers.0.blocks.0.attn.qkv.bias") {
            invalid!("checkpoint {} has qkv biases (layers.0.blocks.0.attn.qkv.bias) but the config says qkv_bias: false", w.source);
        }
        if let Some(p) = points.first() {
            invalid!("checkpoint {}: activation quantizer at `{}`, which is not a Linear of this model", w.source, p.node);
        }
        let nf = c.num_features();
        let norm = w.norm(gpu, "norm", nf)?;
        let head = if c.num_classes > 0 { Some(load_linear(gpu, &w.pp("head").pp("fc"), c.num_classes, nf, true, format)?.into()) } else { None };
        Ok(SwinTransformer { config: c.clone(), format, patch, patch_norm, stages, norm, head })
    }

    /// Loads a folder with `model.safetensors` and `config.json` (or the file and its config).
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<SwinTransformer> {
        let (weights_path, config_path) = crate::models::weights::resolve_checkpoint(path, config, "config.json")?;
        let cfg = SwinConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Values per image in the output: `num_classes`, or the last stage's width without a head
    /// (times the tokens without pooling).
    pub fn output_dim(&self) -> usize {
        let per = self.head.as_ref().map_or(self.config.num_features(), |h| h.out_features());
        if self.config.avg_pool {
            per
        } else {
            let r = self.stages.last().map_or(0, |s| s.geometry.resolution);
            per * r * r
        }
    }

    pub fn plan(&self, gpu: &Gpu, batch: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch)?)
    }

    /// The forward pass; input 0 the images [B, 3, S, S], output 0 the logits.
    pub fn graph(&self, batch: usize) -> Result<Graph> {
        self.build(batch, false)
    }

    /// `graph` with a second output: the pooled features the head reads.
    pub fn graph_with_features(&self, batch: usize) -> Result<Graph> {
        self.build(batch, true)
    }

    fn build(&self, b: usize, features: bool) -> Result<Graph> {
        let c = &self.config;
        let eps = c.norm_eps;
        let mut g = Graph::new();
        let images = g.input(&[b, 3, c.img_size, c.img_size], DType::F32);
        let x = g.conv_to_tokens("patch_embed.proj", &self.patch, images)?;
        let mut x = g.layer_norm("patch_embed.norm", x, &self.patch_norm, eps)?;
        for (i, stage) in self.stages.iter().enumerate() {
            let s = stage.geometry;
            if let Some(m) = &stage.merge {
                let name = format!("layers.{i}.downsample");
                let t = s.resolution * s.resolution;
                let merged = gather(&mut g, &format!("{name}.merge"), x, m.rows.clone(), &[b, t, 2 * s.dim])?;
                let h = g.layer_norm(&format!("{name}.norm"), merged, &m.norm, eps)?;
                let h = quantize_input(&mut g, &format!("{name}.reduction"), h, &m.quant)?;
                x = g.linear(&format!("{name}.reduction"), &m.reduction, h, None)?;
            }
            let (t, n) = (s.resolution * s.resolution, s.window * s.window);
            let windows = b * t / n;
            for (j, blk) in stage.blocks.iter().enumerate() {
                let p = |name: &str| format!("layers.{i}.blocks.{j}.{name}");
                let q = &blk.quant;
                let h = g.layer_norm(&p("norm1"), x, &blk.norm1, eps)?;
                let h = gather(&mut g, &p("window_partition"), h, blk.partition.clone(), &[windows, n, s.dim])?;
                let h = quantize_input(&mut g, &p("attn.qkv"), h, &q.qkv)?;
                let qkv = g.linear(&p("attn.qkv"), &blk.qkv, h, None)?;
                let (bias, heads) = (blk.bias.clone(), s.heads);
                let att = g.node(p("attn"), "window_attention", &[qkv], &[windows, n, s.dim], DType::F32, move |gpu, enc, inp, out| {
                    glue::window_attention(gpu, enc, inp[0], &bias, heads, out)
                });
                let att = quantize_input(&mut g, &p("attn.proj"), att, &q.proj)?;
                let h = g.linear(&p("attn.proj"), &blk.proj, att, None)?;
                let h = gather(&mut g, &p("window_reverse"), h, blk.reverse.clone(), &[b, t, s.dim])?;
                x = g.add(&p("add1"), x, h)?;
                let h = g.layer_norm(&p("norm2"), x, &blk.norm2, eps)?;
                let h = quantize_input(&mut g, &p("mlp.fc1"), h, &q.fc1)?;
                let h = g.linear(&p("mlp.fc1"), &blk.fc1, h, Some(Activation::Gelu))?;
                let h = quantize_input(&mut g, &p("mlp.fc2"), h, &q.fc2)?;
                let h = g.linear(&p("mlp.fc2"), &blk.fc2, h, None)?;
                x = g.add(&p("add2"), x, h)?;
            }
        }
        let x = g.layer_norm("norm", x, &self.norm, eps)?;
        let nf = c.num_features();
        let pooled = if c.avg_pool {
            g.node("head.global_pool", "pool_tokens", &[x], &[b, nf], DType::F32, |gpu, enc, i, out| pool_tokens(gpu, enc, i[0], 0, PoolKind::Avg, out))
        } else {
            x
        };
        let out = match &self.head {
            Some(head) => g.linear("head.fc", head, pooled, None)?,
            None => pooled,
        };
        g.output(out);
        if features {
            g.output(pooled);
        }
        Ok(g)
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

/// A gather node: `out` [shape] from the rows of `x` through index table `idx`.
fn gather(g: &mut Graph, name: &str, x: Value, idx: Tensor, shape: &[usize]) -> Result<Value> {
    Ok(g.node(name, "gather_rows", &[x], shape, DType::F32, move |gpu, enc, i, out| glue::gather_rows(gpu, enc, i[0], &idx, out)))
}
