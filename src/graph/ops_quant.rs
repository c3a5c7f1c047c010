//! Graph ops whose activations run in low precision: the W8A8 Linear (per-token dynamic int8
//! activations × int8 weights, i32 accumulation: `kernels::w8a8`), used by checkpoints that
//! `lowbit quantize --recipe w8a8` wrote; and the static activation fake-quantizers of the
//! W6A6/W4A8/W4A4 recipes (`kernels::act_quant`, and attention with a post-softmax quantizer);
//! and SageAttention (int8 Q·Kᵀ) for the W8A8 recipe.

use std::sync::{Arc, OnceLock};

use super::ir::{Graph, Value};
use crate::gpu::{DType, Tensor};
use crate::kernels::act_quant::{act_quant, act_quant_noise, ActQuantizer};
use crate::kernels::attention::{attention_quantized, sage_attention_with, AttentionParams, SageOptions, SageScratch};
use crate::kernels::w4a8::{w4_forward, W4Linear, W4Scratch};
use crate::kernels::w8a8::{w8a8_forward, QuantizedActivations, W8A8Linear};
use crate::{shape_err, Result};

impl Graph {
    /// `Linear::Int8`: quantize each token of x to int8 (absmax scale), then the integer GEMM
    /// with the layer's int8 weights (and its GELU, if it has one).
    pub(super) fn w8a8_linear(&mut self, name: &str, layer: &Arc<W8A8Linear>, x: Value) -> Result<Value> {
        let (rows, shape) = self.linear_shape(name, x, layer.cols, layer.rows)?;
        let layer = layer.clone();
        // The int8 codes of x: made on the first run, reused by later runs of the plan.
        let scratch: OnceLock<QuantizedActivations> = OnceLock::new();
        Ok(self.node(name, "w8a8_linear", &[x], &shape, DType::F32, move |gpu, enc, i, out| {
            if scratch.get().is_none() {
                let _ = scratch.set(QuantizedActivations::new(gpu, rows, layer.cols)?);
            }
            w8a8_forward(gpu, enc, &layer, i[0], scratch.get().unwrap(), out)
        }))
    }

    /// `Linear::Int4`: the layer's own activation quantizer (static or per token) turns x into
    /// integer codes, then the W4A8/W4A4 GEMM (with the low-rank branch, if the layer has one).
    /// x itself is left as it was.
    pub(super) fn w4_linear(&mut self, name: &str, layer: &Arc<W4Linear>, x: Value) -> Result<Value> {
        let (rows, shape) = self.linear_shape(name, x, layer.cols, layer.rows)?;
        let layer = layer.clone();
        // The codes (and low-rank intermediate) of x: made on the first run, reused after.
        let scratch: OnceLock<W4Scratch> = OnceLock::new();
        Ok(self.node(name, "w4_linear", &[x], &shape, DType::F32, move |gpu, enc, i, out| {
            if scratch.get().is_none() {
                let _ = scratch.set(W4Scratch::new(gpu, &layer, rows)?);
            }
            w4_forward(gpu, enc, &layer, i[0], scratch.get().unwrap(), out)
        }))
    }
}

impl Graph {
    /// Fake-quantizes `x` in place with a static activation quantizer (after adding
    /// NoisyQuant's `noise` [width] to every row, when given). `x` must not be read afterwards
    /// by anyone expecting the unquantized values: the planner enforces it.
    pub fn act_quant(&mut self, name: &str, x: Value, q: ActQuantizer, noise: Option<Tensor>) -> Result<Value> {
        q.validate()?;
        let Some(&width) = self.shape(x).last() else { shape_err!("{name}: a scalar input") };
        if let Some(n) = &noise {
            if n.numel() != width {
                shape_err!("{name}: noise has {} values, rows have {width}", n.numel());
            }
        }
        Ok(self.node_inplace(name, "act_quant", x, &[], move |gpu, enc, _, out| match &noise {
            Some(n) => act_quant_noise(gpu, enc, out, n, &q),
            None => act_quant(gpu, enc, out, &q),
        }))
    }

    /// Multi-head attention whose normalized probabilities are fake-quantized by `pq` before
    /// P·V (a post-softmax activation quantizer).
    pub fn attention_quantized(&mut self, name: &str, qkv: Value, p: AttentionParams, pq: ActQuantizer) -> Result<Value> {
        pq.validate()?;
        if self.shape(qkv) != p.qkv_shape() {
            shape_err!("{name}: qkv is {:?}, the attention expects {:?}", self.shape(qkv), p.qkv_shape());
        }
        Ok(self.node(name, "attention", &[qkv], &p.out_shape(), DType::F32, move |gpu, enc, i, out| attention_quantized(gpu, enc, i[0], out, p, &pq)))
    }
}

impl Graph {
    /// SageAttention over packed qkv [B, T, 3·H·D] → [B, T, H·D]: Q and K in int8 per block
    /// (K minus its mean), P·V in f16 where the adapter has shader-f16, else f32.
    pub fn sage_attention(&mut self, name: &str, qkv: Value, p: AttentionParams) -> Result<Value> {
        if self.shape(qkv) != p.qkv_shape() {
            shape_err!("{name}: qkv is {:?}, the attention expects {:?}", self.shape(qkv), p.qkv_shape());
        }
        // The int8 copies of Q and K and their scales: made on the first run, reused after.
        let scratch: OnceLock<SageScratch> = OnceLock::new();
        Ok(self.node(name, "sage_attention", &[qkv], &p.out_shape(), DType::F32, move |gpu, enc, i, out| {
            if scratch.get().is_none() {
                let _ = scratch.set(SageScratch::new(gpu, p, SageOptions::default())?);
            }
            sage_attention_with(gpu, enc, i[0], out, scratch.get().unwrap())
        }))
    }

    /// The token count of x (all but its last dimension) and the Linear's output shape, x's
    /// width checked against the layer's `cols`.
    fn linear_shape(&self, name: &str, x: Value, cols: usize, out_cols: usize) -> Result<(usize, Vec<usize>)> {
        let Some((&width, rest)) = self.shape(x).split_last() else { shape_err!("{name}: a scalar input") };
        if width != cols {
            shape_err!("{name}: input width {width}, the layer takes {cols}");
        }
        let mut shape = self.shape(x).to_vec();
        *shape.last_mut().unwrap() = out_cols;
        Ok((rest.iter().product(), shape))
    }
}
