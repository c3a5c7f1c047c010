//! FQGAN's `FactorizedAdapter` (`tokenizer/vq_model_{dual,triple}.py`): the small transformer
//! each encoder head runs on the trunk's features before its own norm_out/conv_out:
//!
//! [B, C, h, w] → tokens [B, h·w, C] + positional_embedding → ln_pre → `layers` ×
//! (x + attn(ln_1(x)); x + mlp(ln_2(x))) → ln_post → [B, C, h, w].
//!
//! `attn` is `nn.MultiheadAttention` (in_proj [3C, C] stacked q, k, v; out_proj), the MLP is
//! c_fc → GELU (erf) → c_proj, every LayerNorm has eps 1e-5 (PyTorch's default).

use super::blocks::{to_nchw, to_tokens};
use super::config::AdapterConfig;
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Linear, Norm, Value};
use crate::kernels::attention::AttentionParams;
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::QLinear;
use crate::models::weights::{Weights, WeightsView};
use crate::formats::WeightFormat;
use crate::{shape_err, Gpu, Result};

const LN_EPS: f32 = 1e-5;

struct Block {
    ln_1: Norm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    c_proj: Linear,
}

pub(super) struct Adapter {
    /// The checkpoint prefix (`encoder.visual_head.0`), naming the nodes.
    name: String,
    config: AdapterConfig,
    /// [grid², C] on the CPU: repeated per image when a graph is built for a batch.
    positional: Vec<f32>,
    ln_pre: Norm,
    blocks: Vec<Block>,
    ln_post: Norm,
}

fn linear(gpu: &Gpu, w: &WeightsView, weight: &str, bias: &str, out: usize, inp: usize, format: WeightFormat) -> Result<Linear> {
    Ok(QLinear::new(gpu, &w.matrix(weight, &[out, inp], format)?, Some(w.get(bias, &[out])?))?.into())
}

impl Adapter {
    pub fn load(gpu: &Gpu, w: &Weights, prefix: &str, config: &AdapterConfig, format: WeightFormat) -> Result<Adapter> {
        let c = config.width;
        let v = w.pp(prefix);
        let hidden = c * config.mlp_ratio;
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let b = v.pp("transformer").pp(i);
            let (attn, mlp) = (b.pp("attn"), b.pp("mlp"));
            blocks.push(Block {
                ln_1: b.pp("ln_1").norm(gpu, c)?,
                in_proj: linear(gpu, &attn, "in_proj_weight", "in_proj_bias", 3 * c, c, format)?,
                out_proj: linear(gpu, &attn.pp("out_proj"), "weight", "bias", c, c, format)?,
                ln_2: b.pp("ln_2").norm(gpu, c)?,
                c_fc: linear(gpu, &mlp.pp("c_fc"), "weight", "bias", hidden, c, format)?,
                c_proj: linear(gpu, &mlp.pp("c_proj"), "weight", "bias", c, hidden, format)?,
            });
        }
        let extra = format!("{prefix}.transformer.{}.ln_1.weight", config.layers);
        if w.contains(&extra) {
            crate::invalid!("checkpoint {} has {extra}: more adapter layers than the config's {}", w.source, config.layers);
        }
        Ok(Adapter {
            name: prefix.to_string(),
            config: config.clone(),
            positional: v.get("positional_embedding", &[config.grid_size * config.grid_size, c])?.to_vec(),
            ln_pre: v.pp("ln_pre").norm(gpu, c)?,
            blocks,
            ln_post: v.pp("ln_post").norm(gpu, c)?,
        })
    }

    /// The adapter's nodes on `x` [B, C, h, w]; the grid must be the one the positional
    /// embedding was trained for.
    pub fn graph(&self, gpu: &Gpu, g: &mut Graph, x: Value) -> Result<Value> {
        let name = &self.name;
        let [b, c, h, w] = g.nchw(x, name)?;
        let grid = self.config.grid_size;
        if (h, w) != (grid, grid) {
            shape_err!("{name}: a {h}×{w} token grid, but FQGAN's adapter has positional embeddings for {grid}×{grid} (images of {}×{} pixels)", grid * 8, grid * 8);
        }
        let t = h * w;
        let x = to_tokens(g, &format!("{name}.tokens"), x)?;
        let pos: Vec<f32> = (0..b).flat_map(|_| self.positional.iter().copied()).collect();
        let pos = g.external(&Tensor::from_f32(gpu, &[b, t, c], &pos)?);
        let x = g.add(&format!("{name}.positional_embedding"), x, pos)?;
        let mut x = g.layer_norm(&format!("{name}.ln_pre"), x, &self.ln_pre, LN_EPS)?;
        let heads = self.config.heads;
        let attn = AttentionParams::new(b, t, heads, c / heads);
        for (i, blk) in self.blocks.iter().enumerate() {
            let p = |part: &str| format!("{name}.transformer.{i}.{part}");
            let h = g.layer_norm(&p("ln_1"), x, &blk.ln_1, LN_EPS)?;
            let qkv = g.linear(&p("attn.in_proj"), &blk.in_proj, h, None)?;
            let o = g.attention(&p("attn"), qkv, attn)?;
            let o = g.linear(&p("attn.out_proj"), &blk.out_proj, o, None)?;
            x = g.add(&p("attn.add"), x, o)?;
            let h = g.layer_norm(&p("ln_2"), x, &blk.ln_2, LN_EPS)?;
            let h = g.linear(&p("mlp.c_fc"), &blk.c_fc, h, Some(Activation::Gelu))?;
            let h = g.linear(&p("mlp.c_proj"), &blk.c_proj, h, None)?;
            x = g.add(&p("mlp.add"), x, h)?;
        }
        let x = g.layer_norm(&format!("{name}.ln_post"), x, &self.ln_post, LN_EPS)?;
        debug_assert_eq!(g.dtype(x), DType::F32);
        to_nchw(g, &format!("{name}.nchw"), x, (h, w))
    }
}
