//! The building blocks taming's Encoder and Decoder share (`taming/modules/diffusionmodules/
//! model.py`): loading them from checkpoint keys, and writing them as graph ops.

use crate::gpu::DType;
use crate::graph::{Graph, Linear, Norm, Value};
use crate::kernels::attention::AttentionParams;
use crate::kernels::conv::{Conv2d, Padding};
use crate::kernels::matmul::QLinear;
use super::glue::tokens_to_nchw;
use crate::models::weights::Weights;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, Gpu, Result};

/// taming's `Normalize`: GroupNorm(32 groups, eps 1e-6).
pub(super) const GROUPS: usize = 32;
pub(super) const GN_EPS: f32 = 1e-6;

pub(super) struct ResnetBlock {
    /// The checkpoint prefix, naming the block's nodes.
    name: String,
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    /// `nin_shortcut` (1×1) where the block changes the channel count.
    shortcut: Option<Conv2d>,
}

pub(super) struct AttnBlock {
    name: String,
    norm: Norm,
    /// q, k, v stacked as one 1×1 conv with 3C outputs.
    qkv: Conv2d,
    proj_out: Linear,
}

/// Where the checkpoint keeps each block: taming's names, or LlamaGen's (which renamed the
/// containers of the same blocks: `mid.0..2`, `conv_blocks.N.res/attn`, levels of the decoder
/// numbered from the deepest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Taming,
    LlamaGen,
}

impl Flavor {
    /// `side` is "encoder" or "decoder"; `i` indexes (block_1, attn_1, block_2).
    pub(super) fn mid(self, side: &str, i: usize) -> String {
        match self {
            Flavor::Taming => format!("{side}.mid.{}", ["block_1", "attn_1", "block_2"][i]),
            Flavor::LlamaGen => format!("{side}.mid.{i}"),
        }
    }

    /// The prefix of resolution level `level` (0 = full resolution) of `levels`.
    pub(super) fn level(self, side: &str, level: usize, levels: usize) -> String {
        match (self, side) {
            (Flavor::Taming, "encoder") => format!("encoder.down.{level}"),
            (Flavor::Taming, _) => format!("{side}.up.{level}"),
            (Flavor::LlamaGen, "encoder") => format!("encoder.conv_blocks.{level}"),
            (Flavor::LlamaGen, _) => format!("{side}.conv_blocks.{}", levels - 1 - level),
        }
    }

    /// The ResnetBlock list inside a level.
    pub(super) fn blocks(self) -> &'static str {
        match self {
            Flavor::Taming => "block",
            Flavor::LlamaGen => "res",
        }
    }
}

/// Reads and uploads the checkpoint's tensors, packing matrices in `format`.
pub(super) struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub w: &'a Weights,
    pub format: WeightFormat,
}

impl Loader<'_> {
    pub fn norm(&self, prefix: &str, c: usize) -> Result<Norm> {
        self.w.norm(self.gpu, prefix, c)
    }

    /// An `nn.Conv2d(cin, cout, k, padding=k/2)` with bias.
    pub fn conv(&self, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
        self.conv_padded(prefix, cin, cout, k, 1, Padding::same(k / 2))
    }

    pub fn conv_padded(&self, prefix: &str, cin: usize, cout: usize, k: usize, stride: usize, padding: Padding) -> Result<Conv2d> {
        let weight = self.w.matrix(&format!("{prefix}.weight"), &[cout, cin, k, k], self.format)?;
        Conv2d::with_padding(self.gpu, &weight, Some(self.w.get(&format!("{prefix}.bias"), &[cout])?), (k, k), stride, padding)
    }

    pub fn resnet(&self, prefix: &str, cin: usize, cout: usize) -> Result<ResnetBlock> {
        if self.w.contains(&format!("{prefix}.conv_shortcut.weight")) {
            invalid!("checkpoint {}: {prefix}.conv_shortcut (3×3 shortcut) is not supported", self.w.source);
        }
        Ok(ResnetBlock {
            name: prefix.to_string(),
            norm1: self.norm(&format!("{prefix}.norm1"), cin)?,
            conv1: self.conv(&format!("{prefix}.conv1"), cin, cout, 3)?,
            norm2: self.norm(&format!("{prefix}.norm2"), cout)?,
            conv2: self.conv(&format!("{prefix}.conv2"), cout, cout, 3)?,
            shortcut: if cin != cout { Some(self.conv(&format!("{prefix}.nin_shortcut"), cin, cout, 1)?) } else { None },
        })
    }

    pub fn attn(&self, prefix: &str, c: usize) -> Result<AttnBlock> {
        let mut parts = Vec::with_capacity(3);
        let mut bias = Vec::with_capacity(3 * c);
        for part in ["q", "k", "v"] {
            parts.push(self.w.matrix(&format!("{prefix}.{part}.weight"), &[c, c, 1, 1], self.format)?);
            bias.extend_from_slice(self.w.get(&format!("{prefix}.{part}.bias"), &[c])?);
        }
        let qkv = Conv2d::new(self.gpu, &PackedMatrix::concat_rows(&parts)?, Some(&bias), (1, 1), 1, 0)?;
        let proj = self.w.matrix(&format!("{prefix}.proj_out.weight"), &[c, c, 1, 1], self.format)?;
        Ok(AttnBlock {
            name: prefix.to_string(),
            norm: self.norm(&format!("{prefix}.norm"), c)?,
            qkv,
            proj_out: QLinear::new(self.gpu, &proj, Some(self.w.get(&format!("{prefix}.proj_out.bias"), &[c])?))?.into(),
        })
    }
}

/// norm1 → swish → conv1 → norm2 → swish → conv2, plus the (projected) input.
pub(super) fn resnet(g: &mut Graph, blk: &ResnetBlock, x: Value) -> Result<Value> {
    let name = &blk.name;
    let h = g.group_norm(&format!("{name}.norm1"), x, &blk.norm1, GROUPS, GN_EPS, true)?;
    let h = g.conv2d(&format!("{name}.conv1"), &blk.conv1, h)?;
    let h = g.group_norm(&format!("{name}.norm2"), h, &blk.norm2, GROUPS, GN_EPS, true)?;
    let h = g.conv2d(&format!("{name}.conv2"), &blk.conv2, h)?;
    let shortcut = match &blk.shortcut {
        Some(nin) => g.conv2d(&format!("{name}.nin_shortcut"), nin, x)?,
        None => x,
    };
    g.add(&format!("{name}.add"), h, shortcut)
}

/// `x + proj_out(softmax(q·kᵀ·C^-0.5)·v)` with q, k, v from GroupNorm(x), written over `x`:
/// q, k, v come out of one 1×1 conv as tokens [B, T, 3C] (the attention kernel's layout, one
/// head of width C), and proj_out's tokens are transposed back while added to the residual.
pub(super) fn attn_block(g: &mut Graph, blk: &AttnBlock, x: Value) -> Result<Value> {
    let name = &blk.name;
    let [b, c, h, w] = g.nchw(x, name)?;
    let normed = g.group_norm(&format!("{name}.norm"), x, &blk.norm, GROUPS, GN_EPS, false)?;
    let qkv = g.conv_to_tokens(&format!("{name}.q/k/v"), &blk.qkv, normed)?;
    let heads = g.attention(name, qkv, AttentionParams::new(b, h * w, 1, c))?;
    let proj = g.linear(&format!("{name}.proj_out"), &blk.proj_out, heads, None)?;
    Ok(g.node_inplace(format!("{name}.add"), "tokens_to_nchw", x, &[proj], |gpu, enc, i, out| tokens_to_nchw(gpu, enc, i[0], out, true)))
}

/// [B, T, C] tokens → [B, C, h, w] (no add).
pub(super) fn to_nchw(g: &mut Graph, name: &str, tokens: Value, hw: (usize, usize)) -> Result<Value> {
    let &[b, t, c] = g.shape(tokens) else { crate::shape_err!("{name}: expected tokens [B, T, C], got {:?}", g.shape(tokens)) };
    if t != hw.0 * hw.1 {
        crate::shape_err!("{name}: {t} tokens do not make a {}×{} grid", hw.0, hw.1);
    }
    Ok(g.node(name, "tokens_to_nchw", &[tokens], &[b, c, hw.0, hw.1], DType::F32, |gpu, enc, i, out| tokens_to_nchw(gpu, enc, i[0], out, false)))
}
