//! What the transformer families (ViT, Swin) share when loading a block: its Linears (packed,
//! int8 × int8 for `--recipe w8a8` checkpoints, int4 × int8/int4 for `w4a8`/`w4a4` ones) and
//! the static activation quantizers that W6A6/W4A8/W4A4 checkpoints record per node.

use std::sync::Arc;

use super::packed::{Activations, QuantPoint, Runtime};
use super::weights::{Weights, WeightsView};
use crate::formats::WeightFormat;
use crate::gpu::Tensor;
use crate::graph::{Graph, Linear, Value};
use crate::kernels::act_quant::ActQuantizer;
use crate::kernels::matmul::QLinear;
use crate::kernels::w4a8::{ActInput, W4Linear};
use crate::kernels::w8a8::W8A8Linear;
use crate::{invalid, Gpu, Result};

/// A Linear input's quantizer, with NoisyQuant's noise when it has one.
pub type InputQuant = Option<(ActQuantizer, Option<Tensor>)>;

/// A block's static activation quantizers; all None for other checkpoints.
#[derive(Default)]
pub struct BlockQuant {
    pub qkv: InputQuant,
    pub proj: InputQuant,
    pub fc1: InputQuant,
    pub fc2: InputQuant,
    pub softmax: Option<ActQuantizer>,
}

impl BlockQuant {
    /// Takes the quantizers of the block at `prefix` (e.g. `blocks.3`) out of `points`, so
    /// what is left afterwards sits at no node of the model. `widths` are the inputs of qkv,
    /// proj, fc1 and fc2.
    pub fn take(gpu: &Gpu, w: &Weights, prefix: &str, points: &mut Vec<QuantPoint>, widths: [usize; 4]) -> Result<BlockQuant> {
        let mut take = |name: &str| -> Option<QuantPoint> {
            let node = format!("{prefix}.{name}");
            let i = points.iter().position(|p| p.node == node)?;
            Some(points.remove(i))
        };
        let softmax = take("attn").map(|p| p.quantizer);
        let mut input = |name: &str, width: usize| take_input(gpu, w, &format!("{prefix}.{name}"), points, width);
        Ok(BlockQuant {
            qkv: input("attn.qkv", widths[0])?,
            proj: input("attn.proj", widths[1])?,
            fc1: input("mlp.fc1", widths[2])?,
            fc2: input("mlp.fc2", widths[3])?,
            softmax,
        })
    }
}

/// Takes the quantizer of the Linear input at `node` (width `width`) out of `points`.
pub fn take_input(gpu: &Gpu, w: &Weights, node: &str, points: &mut Vec<QuantPoint>, width: usize) -> Result<InputQuant> {
    let Some(i) = points.iter().position(|p| p.node == node) else { return Ok(None) };
    let p = points.remove(i);
    let noise = p.noise.as_ref().map(|key| Tensor::from_f32(gpu, &[width], w.get(key, &[width])?)).transpose()?;
    Ok(Some((p.quantizer, noise)))
}

/// `x` through the Linear input quantizer `q` (named `{linear}.act_quant`), if there is one.
pub fn quantize_input(g: &mut Graph, linear: &str, x: Value, q: &InputQuant) -> Result<Value> {
    match q {
        Some((q, noise)) => g.act_quant(&format!("{linear}.act_quant"), x, *q, noise.clone()),
        None => Ok(x),
    }
}

/// A `nn.Linear` (`weight` [out, in]) packed in `format` (or as the checkpoint packed it).
pub fn load_linear(gpu: &Gpu, w: &WeightsView, out: usize, inp: usize, bias: bool, format: WeightFormat) -> Result<QLinear> {
    let packed = w.matrix("weight", &[out, inp], format)?;
    let bias = if bias { Some(w.get("bias", &[out])?) } else { None };
    QLinear::new(gpu, &packed, bias)
}

/// Checkpoint names of SVDQuant's low-rank branch of the Linear `{node}`: `down` [rank, in]
/// and `up` [out, rank], f32 (`lowbit quantize --method svdquant`).
pub const LOW_RANK_DOWN: &str = "lowrank_down";
pub const LOW_RANK_UP: &str = "lowrank_up";

/// The rotation block of the Linear at `w` when the checkpoint stored it as W·H (its tensor
/// entry's `"hadamard": {"block": B}`, `lowbit quantize --method rotate`).
fn hadamard_block(w: &WeightsView) -> Result<Option<usize>> {
    let Some(desc) = super::packed::Description::of(w.weights)? else { return Ok(None) };
    if !desc.runtime.is_some_and(|r| r.hadamard) {
        return Ok(None);
    }
    let entry = desc.tensors.get(&w.key("weight")).and_then(|t| t.extra.get("hadamard"));
    match entry.map(|h| h.get("block").and_then(|b| b.as_u64())) {
        None => Ok(None),
        Some(Some(b)) => Ok(Some(b as usize)),
        Some(None) => invalid!("checkpoint {}: {}'s `hadamard` entry has no integer `block`", w.weights.source, w.prefix()),
    }
}

/// A block Linear: through the W8A8 kernel when the checkpoint runs int8 activations; through
/// the W4A8/W4A4 integer kernel when it runs static integer ones and this layer can (q4
/// weights, a uniform input quantizer, which the layer then takes out of `input`).
#[allow(clippy::too_many_arguments)]
pub fn load_block_linear(gpu: &Gpu, w: &WeightsView, out: usize, inp: usize, bias: bool, format: WeightFormat, gelu: bool, runtime: Runtime, input: &mut InputQuant) -> Result<Linear> {
    let low_rank = w.weights.tensors.get(&w.key(LOW_RANK_DOWN)).map(|t| t.shape.first().copied().unwrap_or(0));
    let packed = w.matrix("weight", &[out, inp], format)?;
    let bias = if bias { Some(w.get("bias", &[out])?) } else { None };
    let symmetric_q4 = matches!(packed.format, WeightFormat::Q4 { zero_point: false, .. });
    match (runtime.activations, runtime.activations.per_token_codes()) {
        (Activations::F32, _) => {}
        // W4A8/W4A4 with dynamic activations: the per-token scale is computed on the GPU.
        (_, Some((bits, zero_point))) if symmetric_q4 => {
            let mut layer = W4Linear::new(gpu, &packed, bias, ActInput::PerToken { bits, zero_point })?;
            if let Some(block) = hadamard_block(w)? {
                layer = layer.with_hadamard(block)?;
            }
            return Ok(Linear::Int4(Arc::new(if gelu { layer.with_gelu() } else { layer })));
        }
        (Activations::Int8PerToken, _) => {
            let layer = W8A8Linear::new(gpu, &packed, bias)?;
            return Ok(Linear::Int8(Arc::new(if gelu { layer.with_gelu() } else { layer })));
        }
        (_, Some(_)) => {
            invalid!("checkpoint {}: {} runs {:?} activations, which need symmetric q4 weights, not `{}`", w.weights.source, w.prefix(), runtime.activations, packed.format.name())
        }
        // Static integer codes (`IntStatic`, the one runtime left).
        (_, None) => {
            if let (true, Some((ActQuantizer::Uniform { bits, scale, zero }, noise))) = (symmetric_q4, input.as_ref()) {
                if *bits <= 8 {
                    let act = ActInput::Static { bits: *bits, scale: *scale, zero: *zero };
                    let mut layer = W4Linear::new(gpu, &packed, bias, act)?;
                    if let Some(n) = noise {
                        layer = layer.with_noise(n.clone())?;
                    }
                    if let Some(rank) = low_rank {
                        let down = w.get(LOW_RANK_DOWN, &[rank, inp])?;
                        let up = w.get(LOW_RANK_UP, &[out, rank])?;
                        layer = layer.with_low_rank(gpu, down, up, rank)?;
                    }
                    *input = None;
                    return Ok(Linear::Int4(Arc::new(if gelu { layer.with_gelu() } else { layer })));
                }
            }
        }
    }
    if runtime.hadamard && hadamard_block(w)?.is_some() {
        invalid!("checkpoint {}: {} stores Hadamard-rotated weights (runtime `hadamard`), which only the per-token W4A8/W4A4 kernel undoes; its weights are `{}`", w.weights.source, w.prefix(), packed.format.name());
    }
    if low_rank.is_some() {
        invalid!("checkpoint {}: {} has a low-rank branch ({LOW_RANK_DOWN}) but runs without the integer W4A8/W4A4 kernel (its runtime, weights or input quantizer do not allow it)", w.weights.source, w.prefix());
    }
    Ok(Linear::Packed(QLinear::new(gpu, &packed, bias)?))
}
