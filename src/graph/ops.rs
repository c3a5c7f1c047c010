//! The op vocabulary models are written in. Each op infers its output shape, checks its
//! inputs against its layer, and adds a node that records the kernel from `crate::kernels`.
//! Layers are cloned into the node (cheap: their buffers are reference-counted).

use std::sync::Arc;

use super::ir::{Graph, Value};
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::{attention, AttentionParams};
use crate::kernels::conv::{conv2d, patch_embed, Conv2d};
use crate::kernels::elementwise::{activate, add_inplace, upsample_nearest2x, Activation};
use crate::kernels::matmul::{linear, QLinear};
use crate::kernels::norm::{group_norm, layer_norm};
use crate::kernels::w4a8::W4Linear;
use crate::kernels::w8a8::W8A8Linear;
use crate::{invalid, shape_err, Result};

/// A Linear layer's weights as the graph runs them (as candle's `QMatMul`): packed weights of
/// any `WeightFormat`, decoded inside the kernel with f32 activations, or int8 weights with
/// per-token int8 activations (`kernels::w8a8`, checkpoints of `--recipe w8a8`), or 4-bit
/// weights with int8/int4 activations quantized inside the layer (`kernels::w4a8`, checkpoints
/// of `--recipe w4a8`/`w4a4`, optionally with SVDQuant's low-rank branch).
#[derive(Clone)]
pub enum Linear {
    Packed(QLinear),
    Int8(Arc<W8A8Linear>),
    Int4(Arc<W4Linear>),
}

impl Linear {
    pub fn in_features(&self) -> usize {
        match self {
            Linear::Packed(l) => l.in_features(),
            Linear::Int8(l) => l.cols,
            Linear::Int4(l) => l.cols,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Linear::Packed(l) => l.out_features(),
            Linear::Int8(l) => l.rows,
            Linear::Int4(l) => l.rows,
        }
    }
}

impl From<QLinear> for Linear {
    fn from(l: QLinear) -> Linear {
        Linear::Packed(l)
    }
}

/// A normalization layer's affine parameters (LayerNorm, GroupNorm); models load them with
/// `Weights::norm`.
#[derive(Clone)]
pub struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Norm {
    pub fn channels(&self) -> usize {
        self.weight.numel()
    }
}

impl Graph {
    /// `x [..., in] → [..., out]` through a Linear layer of any kind, with an optional fused
    /// activation (an int8 layer's GELU is fused when it is loaded, so `act` must match it).
    pub fn linear(&mut self, name: &str, layer: &Linear, x: Value, act: Option<Activation>) -> Result<Value> {
        let layer = match layer {
            Linear::Int8(l) if l.gelu == act.is_some() => return self.w8a8_linear(name, l, x),
            Linear::Int8(_) => invalid!("{name}: the int8 layer's fused activation does not match {act:?}"),
            Linear::Int4(l) if l.gelu == act.is_some() => return self.w4_linear(name, l, x),
            Linear::Int4(_) => invalid!("{name}: the integer layer's fused activation does not match {act:?}"),
            Linear::Packed(l) => l,
        };
        // Activations the Linear kernels do not fuse run as their own pass.
        if let Some(a) = act.filter(|a| a.fused_define().is_none()) {
            let y = self.linear(name, &Linear::Packed(layer.clone()), x, None)?;
            return Ok(self.activation(&format!("{name}.act"), y, a));
        }
        let (_, width) = self.rows(x, "linear")?;
        if width != layer.in_features() {
            shape_err!("{name}: input width {width}, the layer takes {}", layer.in_features());
        }
        let mut shape = self.shape(x).to_vec();
        *shape.last_mut().unwrap() = layer.out_features();
        let layer = layer.clone();
        Ok(self.node(name, "linear", &[x], &shape, DType::F32, move |gpu, enc, i, out| linear(gpu, enc, &layer, i[0], out, act)))
    }

    /// LayerNorm over the last dimension.
    pub fn layer_norm(&mut self, name: &str, x: Value, norm: &Norm, eps: f32) -> Result<Value> {
        let (_, width) = self.rows(x, "layer_norm")?;
        if width != norm.channels() {
            shape_err!("{name}: input width {width}, the norm has {} channels", norm.channels());
        }
        let shape = self.shape(x).to_vec();
        let n = norm.clone();
        Ok(self.node(name, "layer_norm", &[x], &shape, DType::F32, move |gpu, enc, i, out| layer_norm(gpu, enc, i[0], &n.weight, &n.bias, eps, out)))
    }

    /// GroupNorm over [B, C, H, W], optionally followed by swish in the same kernel.
    pub fn group_norm(&mut self, name: &str, x: Value, norm: &Norm, groups: usize, eps: f32, swish: bool) -> Result<Value> {
        let [_, c, _, _] = self.nchw(x, name)?;
        if c != norm.channels() || groups == 0 || c % groups != 0 {
            shape_err!("{name}: {c} channels, the norm has {} in {groups} groups", norm.channels());
        }
        let shape = self.shape(x).to_vec();
        let n = norm.clone();
        Ok(self.node(name, "group_norm", &[x], &shape, DType::F32, move |gpu, enc, i, out| {
            group_norm(gpu, enc, i[0], groups, &n.weight, &n.bias, eps, out, swish)
        }))
    }

    /// Multi-head attention over fused q|k|v [B, T, 3·H·D] → [B, T, H·D].
    pub fn attention(&mut self, name: &str, qkv: Value, p: AttentionParams) -> Result<Value> {
        if self.shape(qkv) != p.qkv_shape() {
            shape_err!("{name}: qkv is {:?}, the attention expects {:?}", self.shape(qkv), p.qkv_shape());
        }
        Ok(self.node(name, "attention", &[qkv], &p.out_shape(), DType::F32, move |gpu, enc, i, out| attention(gpu, enc, i[0], out, p)))
    }

    /// Convolution of [B, Cin, H, W] → [B, Cout, Ho, Wo].
    pub fn conv2d(&mut self, name: &str, conv: &Conv2d, x: Value) -> Result<Value> {
        let [b, c, h, w] = self.nchw(x, name)?;
        if c != conv.in_channels {
            shape_err!("{name}: input has {c} channels, the conv takes {}", conv.in_channels);
        }
        let (ho, wo) = conv.output_size(h, w)?;
        let conv = conv.clone();
        Ok(self.node(name, "conv2d", &[x], &[b, conv.out_channels, ho, wo], DType::F32, move |gpu, enc, i, out| conv2d(gpu, enc, i[0], &conv, out)))
    }

    /// A convolution whose output is laid out as tokens [B, Ho·Wo, Cout] (ViT patch
    /// embedding; 1×1 projections feeding attention).
    pub fn conv_to_tokens(&mut self, name: &str, conv: &Conv2d, x: Value) -> Result<Value> {
        let [b, c, h, w] = self.nchw(x, name)?;
        if c != conv.in_channels {
            shape_err!("{name}: input has {c} channels, the conv takes {}", conv.in_channels);
        }
        let (ho, wo) = conv.output_size(h, w)?;
        let conv = conv.clone();
        Ok(self.node(name, "conv2d", &[x], &[b, ho * wo, conv.out_channels], DType::F32, move |gpu, enc, i, out| {
            patch_embed(gpu, enc, i[0], &conv, out)
        }))
    }

    /// `x + y`, written over `x` (a residual connection): `x` is not readable afterwards.
    pub fn add(&mut self, name: &str, x: Value, y: Value) -> Result<Value> {
        if self.shape(x).iter().product::<usize>() != self.shape(y).iter().product::<usize>() {
            shape_err!("{name}: adding {:?} to {:?}", self.shape(y), self.shape(x));
        }
        Ok(self.node_inplace(name, "add", x, &[y], |gpu, enc, i, out| add_inplace(gpu, enc, out, i[0])))
    }

    /// An element-wise activation into a new value.
    pub fn activation(&mut self, name: &str, x: Value, act: Activation) -> Value {
        let shape = self.shape(x).to_vec();
        self.node(name, "activation", &[x], &shape, DType::F32, move |gpu, enc, i, out| activate(gpu, enc, act, i[0], out))
    }

    /// Nearest-neighbour ×2 upsampling of [B, C, H, W].
    pub fn upsample2x(&mut self, name: &str, x: Value) -> Result<Value> {
        let [b, c, h, w] = self.nchw(x, name)?;
        Ok(self.node(name, "upsample", &[x], &[b, c, 2 * h, 2 * w], DType::F32, |gpu, enc, i, out| upsample_nearest2x(gpu, enc, i[0], out)))
    }

    fn rows(&self, x: Value, what: &str) -> Result<(usize, usize)> {
        match self.shape(x).split_last() {
            Some((&w, rest)) => Ok((rest.iter().product(), w)),
            None => shape_err!("{what}: a scalar input"),
        }
    }

    /// [B, C, H, W] of a 4-D value.
    pub fn nchw(&self, x: Value, what: &str) -> Result<[usize; 4]> {
        match self.shape(x) {
            &[b, c, h, w] => Ok([b, c, h, w]),
            s => shape_err!("{what}: expected [B, C, H, W], got {s:?}"),
        }
    }
}
