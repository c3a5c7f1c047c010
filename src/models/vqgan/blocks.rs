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
/// numbered from the deepest), or the MAGVIT2-style networks of SimVQ and WeTok
/// (`improved_model.py`: taming's layout without attention, `mid_block.N`, convs inside the
/// ResBlocks without bias, depth-to-space upsampling; WeTok adds adaptive GroupNorms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Taming,
    LlamaGen,
    Magvit,
    WeTok,
}

impl Flavor {
    /// `side` is "encoder" or "decoder"; `i` indexes (block_1, attn_1, block_2).
    pub(super) fn mid(self, side: &str, i: usize) -> String {
        match self {
            Flavor::Taming => format!("{side}.mid.{}", ["block_1", "attn_1", "block_2"][i]),
            Flavor::LlamaGen => format!("{side}.mid.{i}"),
            Flavor::Magvit | Flavor::WeTok => format!("{side}.mid_block.{i}"),
        }
    }

    /// MAGVIT2-style: no attention, bias-free ResBlock convs, depth-to-space upsampling.
    pub(super) fn magvit(self) -> bool {
        matches!(self, Flavor::Magvit | Flavor::WeTok)
    }

    /// The prefix of resolution level `level` (0 = full resolution) of `levels`.
    pub(super) fn level(self, side: &str, level: usize, levels: usize) -> String {
        match (self, side) {
            (Flavor::Taming | Flavor::Magvit | Flavor::WeTok, "encoder") => format!("encoder.down.{level}"),
            (Flavor::Taming | Flavor::Magvit | Flavor::WeTok, _) => format!("{side}.up.{level}"),
            (Flavor::LlamaGen, "encoder") => format!("encoder.conv_blocks.{level}"),
            (Flavor::LlamaGen, _) => format!("{side}.conv_blocks.{}", levels - 1 - level),
        }
    }

    /// The ResnetBlock list inside a level.
    pub(super) fn blocks(self) -> &'static str {
        match self {
            Flavor::Taming | Flavor::Magvit | Flavor::WeTok => "block",
            Flavor::LlamaGen => "res",
        }
    }
}

/// Reads and uploads the checkpoint's tensors, packing matrices in `format`.
pub(super) struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub w: &'a Weights,
    pub format: WeightFormat,
    /// Whether ResnetBlock convs have biases (not in the MAGVIT2-style networks).
    pub biased: bool,
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
        let w = self.w.pp(prefix);
        let weight = w.matrix("weight", &[cout, cin, k, k], self.format)?;
        Conv2d::with_padding(self.gpu, &weight, Some(w.get("bias", &[cout])?), (k, k), stride, padding)
    }

    /// An `nn.Conv2d(cin, cout, k, padding=k/2, bias=False)`; a stored bias means the
    /// checkpoint is not the network the config describes.
    pub fn conv_without_bias(&self, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
        let w = self.w.pp(prefix);
        if w.contains("bias") {
            invalid!("checkpoint {}: {prefix}.bias is unexpected (this network's conv has no bias)", self.w.source);
        }
        let weight = w.matrix("weight", &[cout, cin, k, k], self.format)?;
        Conv2d::with_padding(self.gpu, &weight, None, (k, k), 1, Padding::same(k / 2))
    }

    /// A ResnetBlock conv: with bias unless the network has none there.
    fn block_conv(&self, prefix: &str, cin: usize, cout: usize, k: usize) -> Result<Conv2d> {
        if self.biased {
            self.conv(prefix, cin, cout, k)
        } else {
            self.conv_without_bias(prefix, cin, cout, k)
        }
    }

    pub fn resnet(&self, prefix: &str, cin: usize, cout: usize) -> Result<ResnetBlock> {
        let w = self.w.pp(prefix);
        if w.contains("conv_shortcut.weight") {
            invalid!("checkpoint {}: {prefix}.conv_shortcut (3×3 shortcut) is not supported", self.w.source);
        }
        Ok(ResnetBlock {
            name: prefix.to_string(),
            norm1: w.pp("norm1").norm(self.gpu, cin)?,
            conv1: self.block_conv(&w.key("conv1"), cin, cout, 3)?,
            norm2: w.pp("norm2").norm(self.gpu, cout)?,
            conv2: self.block_conv(&w.key("conv2"), cout, cout, 3)?,
            shortcut: if cin != cout { Some(self.block_conv(&w.key("nin_shortcut"), cin, cout, 1)?) } else { None },
        })
    }

    pub fn attn(&self, prefix: &str, c: usize) -> Result<AttnBlock> {
        let w = self.w.pp(prefix);
        let mut parts = Vec::with_capacity(3);
        let mut bias = Vec::with_capacity(3 * c);
        for part in ["q", "k", "v"] {
            parts.push(w.pp(part).matrix("weight", &[c, c, 1, 1], self.format)?);
            bias.extend_from_slice(w.pp(part).get("bias", &[c])?);
        }
        let qkv = Conv2d::new(self.gpu, &PackedMatrix::concat_rows(&parts)?, Some(&bias), (1, 1), 1, 0)?;
        let proj = w.pp("proj_out");
        Ok(AttnBlock {
            name: prefix.to_string(),
            norm: w.pp("norm").norm(self.gpu, c)?,
            qkv,
            proj_out: QLinear::new(self.gpu, &proj.matrix("weight", &[c, c, 1, 1], self.format)?, Some(proj.get("bias", &[c])?))?.into(),
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

/// [B, C, h, w] → tokens [B, h·w, C] (the transpose `to_nchw` undoes).
pub(super) fn to_tokens(g: &mut Graph, name: &str, x: Value) -> Result<Value> {
    let [b, c, h, w] = g.nchw(x, name)?;
    // tokens_to_nchw transposes [B, T, C'] → [B, C', T]: with T = C and C' = h·w it is this.
    let x = g.reshape(x, &[b, c, h * w])?;
    let t = to_nchw(g, name, x, (c, 1))?;
    g.reshape(t, &[b, h * w, c])
}

/// `depth_to_space(x, 2)` of MAGVIT2's Upsampler (DCR: channel (i·2 + j)·C + c goes to pixel
/// (2y + i, 2x + j) of channel c): [B, 4C, H, W] → [B, C, 2H, 2W], as three transposes
/// (each [N, T, C'] → [N, C', T]) moving the (i, j) factors next to y and x.
pub(super) fn depth_to_space(g: &mut Graph, name: &str, x: Value) -> Result<Value> {
    let [b, c4, h, w] = g.nchw(x, name)?;
    if !c4.is_multiple_of(4) {
        crate::shape_err!("{name}: depth_to_space of {c4} channels (needs a multiple of 4)");
    }
    let c = c4 / 4;
    // (i, j, c, y, x) → (c, y, x, i, j)
    let t = g.reshape(x, &[b, 4, c * h * w])?;
    let t = to_nchw(g, &format!("{name}.d2s1"), t, (4, 1))?;
    // → (c, y, x, j, i)
    let t = g.reshape(t, &[b * c * h * w, 2, 2])?;
    let t = to_nchw(g, &format!("{name}.d2s2"), t, (2, 1))?;
    // → (c, y, i, x, j)
    let t = g.reshape(t, &[b * c * h, 2 * w, 2])?;
    let t = to_nchw(g, &format!("{name}.d2s3"), t, (2 * w, 1))?;
    g.reshape(t, &[b, c, 2 * h, 2 * w])
}

/// One block of the middle section.
pub(super) enum Mid {
    /// Both boxed: the blocks differ in size (whichever is larger), and a Vec of them is built once.
    Res(Box<ResnetBlock>),
    Attn(Box<AttnBlock>),
}

/// The middle section of `side`: ResnetBlock, AttnBlock, ResnetBlock (taming, LlamaGen), or
/// `num_res_blocks` ResnetBlocks without attention (MAGVIT2).
pub(super) fn load_mid(l: &Loader, f: Flavor, side: &str, ch: usize, num_res_blocks: usize) -> Result<Vec<Mid>> {
    if f.magvit() {
        let blocks = (0..num_res_blocks).map(|i| Ok(Mid::Res(Box::new(l.resnet(&f.mid(side, i), ch, ch)?)))).collect::<Result<Vec<_>>>()?;
        if l.w.contains(&format!("{}.norm1.weight", f.mid(side, num_res_blocks))) {
            invalid!("checkpoint {} has more {side} mid blocks than num_res_blocks = {num_res_blocks}", l.w.source);
        }
        return Ok(blocks);
    }
    let res = |i: usize| -> Result<Mid> { Ok(Mid::Res(Box::new(l.resnet(&f.mid(side, i), ch, ch)?))) };
    Ok(vec![res(0)?, Mid::Attn(Box::new(l.attn(&f.mid(side, 1), ch)?)), res(2)?])
}

/// The middle section's nodes.
pub(super) fn mid(g: &mut Graph, blocks: &[Mid], mut x: Value) -> Result<Value> {
    for b in blocks {
        x = match b {
            Mid::Res(r) => resnet(g, r, x)?,
            Mid::Attn(a) => attn_block(g, a, x)?,
        };
    }
    Ok(x)
}
