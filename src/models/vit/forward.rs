//! The ViT forward pass as a graph (node names are the checkpoint's).

use super::config::Pool;
use super::glue::{embed_tokens_with, half_sum, layer_scale_add, pool_tokens, qk_norm, take_token_at, PoolKind};
use super::VisionTransformer;
use crate::models::block_quant::quantize_input;
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Plan, Value};
use crate::kernels::attention::AttentionParams;
use crate::{Gpu, Result};

impl VisionTransformer {
    /// The forward pass for `batch` images, planned: input 0 is the images, output 0 the logits.
    pub fn plan(&self, gpu: &Gpu, batch: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch)?)
    }

    /// The forward pass as a graph; node names are the checkpoint's.
    pub fn graph(&self, batch: usize) -> Result<Graph> {
        self.build(batch, false)
    }

    /// `graph` with a second output: the pooled features the head reads (timm's
    /// `forward_head(pre_logits=True)`, what Fréchet distances between image sets use).
    pub fn graph_with_features(&self, batch: usize) -> Result<Graph> {
        self.build(batch, true)
    }

    fn build(&self, batch: usize, features: bool) -> Result<Graph> {
        let c = &self.config;
        let (b, s, d, t, k) = (batch, c.img_size, c.embed_dim, c.tokens(), c.prefix_tokens());
        let eps = c.norm_eps as f32;
        let mut g = Graph::new();
        let images = g.input(&[b, 3, s, s], DType::F32);
        let patches = g.conv_to_tokens("patch_embed.proj", &self.patch, images)?;
        let (prefix, pos) = (self.prefix.clone(), self.pos_embed.clone());
        let mut x = g.node("pos_embed", "embed_tokens", &[patches], &[b, t, d], DType::F32, move |gpu, enc, i, out| {
            embed_tokens_with(gpu, enc, i[0], &prefix, Some(k), &pos, out)
        });
        if let Some(norm) = &self.norm_pre {
            x = g.layer_norm("norm_pre", x, norm, eps)?;
        }
        let attn = AttentionParams::new(b, t, c.num_heads, c.head_dim());
        let fused = c.act.fused_define().is_some();
        for (n, blk) in self.blocks.iter().enumerate() {
            let p = |name: &str| format!("blocks.{n}.{name}");
            let q = &blk.quant;
            let h = g.layer_norm(&p("norm1"), x, &blk.norm1, eps)?;
            let h = quantize_input(&mut g, &p("attn.qkv"), h, &q.qkv)?;
            let mut qkv = g.linear(&p("attn.qkv"), &blk.qkv, h, None)?;
            if let Some(affine) = &blk.qk_norm {
                let (affine, heads) = (affine.clone(), c.num_heads);
                qkv = g.node_inplace(p("attn.qk_norm"), "qk_norm", qkv, &[], move |gpu, enc, _, out| qk_norm(gpu, enc, out, heads, &affine, eps));
            }
            let heads = match q.softmax {
                Some(pq) => g.attention_quantized(&p("attn"), qkv, attn, pq)?,
                None if self.sage => g.sage_attention(&p("attn"), qkv, attn)?,
                None => g.attention(&p("attn"), qkv, attn)?,
            };
            let heads = quantize_input(&mut g, &p("attn.proj"), heads, &q.proj)?;
            let h = g.linear(&p("attn.proj"), &blk.proj, heads, None)?;
            x = residual(&mut g, &p("ls1"), x, h, blk.ls1.as_ref())?;
            let h = g.layer_norm(&p("norm2"), x, &blk.norm2, eps)?;
            let h = quantize_input(&mut g, &p("mlp.fc1"), h, &q.fc1)?;
            let h = if fused {
                g.linear(&p("mlp.fc1"), &blk.fc1, h, Some(c.act))?
            } else {
                let h = g.linear(&p("mlp.fc1"), &blk.fc1, h, None)?;
                g.activation(&p("mlp.act"), h, c.act)
            };
            let h = quantize_input(&mut g, &p("mlp.fc2"), h, &q.fc2)?;
            let h = g.linear(&p("mlp.fc2"), &blk.fc2, h, None)?;
            x = residual(&mut g, &p("ls2"), x, h, blk.ls2.as_ref())?;
        }
        let (out, pooled) = self.head(&mut g, x, features || self.head.is_none())?;
        g.output(out);
        if features {
            g.output(pooled.unwrap_or(out));
        }
        Ok(g)
    }

    /// norm → pool → fc_norm → head of the final tokens `x`: (logits, pre-logit features when
    /// `features`; `None` means they are the logits themselves).
    fn head(&self, g: &mut Graph, x: Value, features: bool) -> Result<(Value, Option<Value>)> {
        let c = &self.config;
        let (b, d, eps) = (g.shape(x)[0], c.embed_dim, c.norm_eps as f32);
        let norm = |g: &mut Graph, name: &str, v: Value| match &self.norm {
            Some(n) => g.layer_norm(name, v, n, eps),
            None => Ok(v),
        };
        let take = |g: &mut Graph, name: &str, index: usize| {
            g.node(name, "take_token", &[x], &[b, d], DType::F32, move |gpu, enc, i, out| take_token_at(gpu, enc, i[0], index, out))
        };
        let pooled = match c.global_pool {
            Pool::Token if c.distilled => {
                let cls = take(g, "cls_token", 0);
                let dist = take(g, "dist_token", 1);
                let (cls, dist) = (norm(g, "norm", cls)?, norm(g, "norm.dist", dist)?);
                return self.distilled_head(g, cls, dist, features);
            }
            // The norm on the class token only: LayerNorm is per token.
            Pool::Token => {
                let cls = take(g, "cls_token", 0);
                norm(g, "norm", cls)?
            }
            Pool::None => norm(g, "norm", x)?,
            Pool::Avg | Pool::Max | Pool::AvgMax => {
                let kind = match c.global_pool {
                    Pool::Avg => PoolKind::Avg,
                    Pool::Max => PoolKind::Max,
                    _ => PoolKind::AvgMax,
                };
                let skip = if c.pool_include_prefix { 0 } else { c.prefix_tokens() };
                let x = norm(g, "norm", x)?;
                g.node("pool", "pool_tokens", &[x], &[b, d], DType::F32, move |gpu, enc, i, out| pool_tokens(gpu, enc, i[0], skip, kind, out))
            }
        };
        let pooled = match &self.fc_norm {
            Some(n) => g.layer_norm("fc_norm", pooled, n, eps)?,
            None => pooled,
        };
        match &self.head {
            Some(head) => Ok((g.linear("head", head, pooled, None)?, Some(pooled))),
            None => Ok((pooled, None)),
        }
    }

    /// `VisionTransformerDistilled` at inference: (head(cls) + head_dist(dist)) / 2, and the
    /// features (cls + dist) / 2.
    fn distilled_head(&self, g: &mut Graph, cls: Value, dist: Value, features: bool) -> Result<(Value, Option<Value>)> {
        let average = |g: &mut Graph, name: &str, a: Value, b: Value| g.node_inplace(name, "half_sum", a, &[b], |gpu, enc, i, out| half_sum(gpu, enc, out, i[0]));
        let (Some(head), Some(head_dist)) = (&self.head, &self.head_dist) else {
            return Ok((average(g, "pre_logits", cls, dist), None));
        };
        let logits = g.linear("head", head, cls, None)?;
        let logits_dist = g.linear("head_dist", head_dist, dist, None)?;
        let logits = average(g, "head.average", logits, logits_dist);
        let pooled = features.then(|| average(g, "pre_logits", cls, dist));
        Ok((logits, pooled))
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
