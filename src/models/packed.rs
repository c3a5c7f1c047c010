//! Packed matrices in a safetensors checkpoint (what `lowbit quantize` writes and every
//! model loader reads through `Weights::matrix`).
//!
//! A matrix `K` packed in a low-bit format is stored as the words the kernels read
//! (`docs/FORMATS.md` gives their bit layout):
//! - `K`: U32 [rows, row_words], the codes;
//! - `K.scales`: U32 [words], f16 scales two per word (absent for F32/F16);
//! - `K.zeros`: U32 [words], 4-bit zero points eight per word (Q4 with zero point only);
//!
//! and the header's `__metadata__["quantization"]` is a JSON object whose `tensors` map each
//! packed `K` to `{"format": "q4g32", "shape": [checkpoint shape], ...}` (the quantizer may add
//! fields, e.g. the method that chose the codes). Everything else stays f32/f16 as before,
//! including SVDQuant's low-rank branches (`{node}.lowrank_down` [rank, in] and
//! `{node}.lowrank_up` [out, rank], f32; `block_quant::LOW_RANK_DOWN`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::formats::{PackedMatrix, WeightFormat};
use super::Weights;
use crate::kernels::act_quant::ActQuantizer;
use crate::{invalid, Error, Result};

/// The metadata key holding the description.
pub const METADATA_KEY: &str = "quantization";

/// How one matrix was packed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedTensor {
    pub format: String,
    /// The checkpoint's shape of the f32 original ([out, in] or [out, in, kh, kw]).
    pub shape: Vec<usize>,
    /// Free-form provenance (method, calibration), for people reading the file.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The whole `quantization` description.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub tensors: BTreeMap<String, PackedTensor>,
    /// Which kernels the model runs with (absent: f32 activations, exact attention). The
    /// engine reads only this; the prose `activations`/`attention` entries are for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Everything else the quantizer records (recipe, activation quantizers, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Description {
    pub fn of(w: &Weights) -> Result<Option<Description>> {
        match w.metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("checkpoint {}: bad `{METADATA_KEY}` metadata: {e}", w.source))),
        }
    }
}

/// How a quantized checkpoint runs, in `quantization.json` as
/// `"runtime": {"activations": "int8_per_token", "attention": "sage_int8"}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default)]
    pub activations: Activations,
    #[serde(default)]
    pub attention: Attention,
    /// QuaRot: the block Linears whose tensor entry has `"hadamard": {"block": B, ..}` store W·H
    /// and rotate their input by H (the normalized block-diagonal Hadamard matrix of blocks B)
    /// on the GPU before quantizing it per token. Only with per-token W4 runtimes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hadamard: bool,
}

/// What the block Linears' inputs are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activations {
    /// f32 (weight-only quantization; static fake-quantizers, if listed, apply on top).
    #[default]
    F32,
    /// Quantized to int8 per token on the GPU at run time: through the W8A8 kernel for q8
    /// weights, the W4A8 kernel for q4 ones (`w4a8 --method dynamic`).
    Int8PerToken,
    /// Quantized to int4 per token (symmetric, absmax / 7) on the GPU at run time, through the
    /// W4A4 kernel; needs q4 block Linears.
    Int4PerToken,
    /// As `Int8PerToken` / `Int4PerToken` with a zero point per row (min/max over 2^bits − 1
    /// steps): through the W4A8/W4A4 kernel only, so q4 block Linears (`--method dynamic`).
    Int8PerTokenAsymmetric,
    Int4PerTokenAsymmetric,
    /// Each block Linear whose input has a static uniform quantizer and whose weights are
    /// `q4gG` runs through the W4A8/W4A4 integer kernel, which applies that quantizer to make
    /// its integer codes (`kernels::w4a8`); other quantizers stay simulated in f32.
    IntStatic,
}

impl Activations {
    /// The per-token runtime of `bits`-bit codes (8 or 4), with or without a zero point per row.
    pub fn per_token(bits: u32, zero_point: bool) -> Option<Activations> {
        match (bits, zero_point) {
            (8, false) => Some(Activations::Int8PerToken),
            (4, false) => Some(Activations::Int4PerToken),
            (8, true) => Some(Activations::Int8PerTokenAsymmetric),
            (4, true) => Some(Activations::Int4PerTokenAsymmetric),
            _ => None,
        }
    }

    /// (bits, zero point) of a per-token runtime; None for f32 and static activations.
    pub fn per_token_codes(self) -> Option<(u32, bool)> {
        match self {
            Activations::Int8PerToken => Some((8, false)),
            Activations::Int4PerToken => Some((4, false)),
            Activations::Int8PerTokenAsymmetric => Some((8, true)),
            Activations::Int4PerTokenAsymmetric => Some((4, true)),
            Activations::F32 | Activations::IntStatic => None,
        }
    }
}

/// How attention runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    #[default]
    Exact,
    /// SageAttention: int8 Q·Kᵀ per block (K mean-smoothed), P·V in f16 where the adapter has it.
    SageInt8,
}

/// The format `key` was packed in, if it was.
pub fn stored_format(w: &Weights, key: &str) -> Result<Option<WeightFormat>> {
    if !w.words.contains_key(key) {
        return Ok(None);
    }
    let desc = Description::of(w)?.unwrap_or_default();
    let Some(t) = desc.tensors.get(key) else {
        invalid!("checkpoint {}: {key} holds packed words but the `{METADATA_KEY}` metadata does not describe it", w.source);
    };
    WeightFormat::parse(&t.format).map(Some).map_err(|e| Error::Invalid(format!("checkpoint {}: {key}: {e}", w.source)))
}

/// Words of a matrix of checkpoint shape `shape` packed in `format`: (rows, cols, words per
/// row, groups per row, scale words, zero-point words); None when its element count does not
/// fit a usize (a description's shape is outside data), which bounds every product here.
fn layout(format: WeightFormat, shape: &[usize]) -> Option<(usize, usize, usize, usize, usize, usize)> {
    let rows = shape.first().copied().unwrap_or(0);
    let cols = shape.iter().skip(1).try_fold(1usize, |a, &d| a.checked_mul(d))?;
    rows.checked_mul(cols)?;
    let row_words = cols.div_ceil(format.per_word());
    let gs = format.group_size(cols);
    let groups = if gs == 0 { 0 } else { cols.div_ceil(gs) };
    let zero_words = if matches!(format, WeightFormat::Q4 { zero_point: true, .. }) { (rows * groups).div_ceil(8) } else { 0 };
    Some((rows, cols, row_words, groups, (rows * groups).div_ceil(2), zero_words))
}

/// Checks the description against the packed tensors when a checkpoint is loaded: every
/// entry names a U32 tensor of its format's shape, every U32 tensor is an entry or one of
/// the scales/zero points its format has, and nothing else.
pub fn validate(w: &Weights) -> Result<()> {
    let desc = Description::of(w)?;
    let src = &w.source;
    let Some(desc) = desc else {
        if let Some(name) = w.words.keys().min() {
            invalid!("checkpoint {src}: {name} holds packed words but the file has no `{METADATA_KEY}` description of them");
        }
        return Ok(());
    };
    let mut expected = BTreeMap::new();
    for (key, t) in &desc.tensors {
        let format = WeightFormat::parse(&t.format).map_err(|e| Error::Invalid(format!("checkpoint {src}: {key}: {e}")))?;
        if w.tensors.contains_key(key) {
            invalid!("checkpoint {src}: the `{METADATA_KEY}` description lists {key} as {}, but the file stores it as floats", t.format);
        }
        if t.shape.len() < 2 || t.shape.contains(&0) {
            invalid!("checkpoint {src}: the `{METADATA_KEY}` description gives {key} the shape {:?}; a packed matrix has two or more non-zero dimensions", t.shape);
        }
        let Some((rows, _, row_words, _, scale_words, zero_words)) = layout(format, &t.shape) else {
            invalid!("checkpoint {src}: the `{METADATA_KEY}` description gives {key} the shape {:?}, too large to exist", t.shape);
        };
        expected.insert(key.clone(), vec![rows, row_words]);
        if scale_words > 0 {
            expected.insert(format!("{key}.scales"), vec![scale_words]);
        }
        if zero_words > 0 {
            expected.insert(format!("{key}.zeros"), vec![zero_words]);
        }
    }
    for (name, shape) in &expected {
        match w.words.get(name) {
            None => invalid!("checkpoint {src}: the `{METADATA_KEY}` description needs a packed tensor {name}, which the file does not have"),
            Some((got, _)) if got != shape => {
                invalid!("checkpoint {src}: packed tensor {name} has shape {got:?}; its description needs {shape:?}")
            }
            Some(_) => {}
        }
    }
    if let Some(name) = w.words.keys().filter(|n| !expected.contains_key(*n)).min() {
        invalid!("checkpoint {src}: packed tensor {name} is not part of any matrix the `{METADATA_KEY}` description lists (a format without it, or no entry)");
    }
    for (key, t) in &desc.tensors {
        let Some(want) = t.extra.get(CHECKSUM_KEY) else { continue };
        let part = |n: String| w.words.get(&n).map_or(&[][..], |(_, words)| &words[..]);
        let got = checksum(&t.format, &[part(key.clone()), part(format!("{key}.scales")), part(format!("{key}.zeros"))]);
        if want.as_str() != Some(got.as_str()) {
            invalid!("checkpoint {src}: packed {key} does not match its `{METADATA_KEY}` description ({} with checksum {want}): its format or words were changed after quantization; quantize the model again", t.format);
        }
    }
    Ok(())
}

/// Rebuilds the packed matrix `key`, checking every part against its format and `shape`.
pub fn read(w: &Weights, key: &str, shape: &[usize]) -> Result<PackedMatrix> {
    let desc = Description::of(w)?.unwrap_or_default();
    let Some(t) = desc.tensors.get(key) else { invalid!("checkpoint {}: {key} is not a packed matrix", w.source) };
    if t.shape != shape {
        invalid!("checkpoint {}: packed {key} has shape {:?}, expected {shape:?}", w.source, t.shape);
    }
    let format = WeightFormat::parse(&t.format)?;
    let Some((rows, cols, row_words, groups, _, zero_words)) = layout(format, shape) else {
        invalid!("checkpoint {}: packed {key} has the shape {shape:?}, too large to exist", w.source);
    };
    let part = |name: &str, len: usize| -> Result<Vec<u32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        match w.words.get(name) {
            Some((_, words)) if words.len() == len => Ok(words.clone()),
            Some((_, words)) => invalid!("checkpoint {}: {name} has {} words, {} {key} needs {len}", w.source, words.len(), format.name()),
            None => invalid!("checkpoint {}: missing {name} for packed {key}", w.source),
        }
    };
    Ok(PackedMatrix {
        format,
        rows,
        cols,
        row_words,
        groups,
        data: part(key, rows * row_words)?,
        scales: part(&format!("{key}.scales"), (rows * groups).div_ceil(2))?,
        zeros: part(&format!("{key}.zeros"), zero_words)?,
    })
}

/// The tensors that store `m` under `key`: (name, shape, words).
pub fn tensors(key: &str, m: &PackedMatrix) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    let mut out = vec![(key.to_string(), vec![m.rows, m.row_words], m.data.clone())];
    if !m.scales.is_empty() {
        out.push((format!("{key}.scales"), vec![m.scales.len()], m.scales.clone()));
    }
    if !m.zeros.is_empty() {
        out.push((format!("{key}.zeros"), vec![m.zeros.len()], m.zeros.clone()));
    }
    out
}

/// Replaces the f32 matrix `key` of `w` by `m` in memory, as if `lowbit quantize` had packed
/// it (words plus the description entry): how the viewer tries bit widths per layer.
pub fn insert(w: &mut Weights, key: &str, m: &PackedMatrix, method: &str) -> Result<()> {
    let Some(t) = w.tensors.remove(key) else { invalid!("checkpoint {}: no f32 matrix {key} to pack", w.source) };
    let mut desc = Description::of(w)?.unwrap_or_default();
    let extra = BTreeMap::from([("method".to_string(), serde_json::json!(method))]);
    desc.tensors.insert(key.to_string(), PackedTensor { format: m.format.name(), shape: t.shape, extra });
    for (name, shape, words) in tensors(key, m) {
        w.words.insert(name, (shape, words));
    }
    w.metadata.insert(METADATA_KEY.to_string(), serde_json::to_string(&desc).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(())
}

/// The description key of a packed matrix's checksum.
const CHECKSUM_KEY: &str = "checksum";

/// FNV-1a over the format's name and every word of the matrix: two formats can share a word
/// layout (q4g32 and fp4g32), so relabelling one as the other must not go unnoticed.
fn checksum(format: &str, words: &[&[u32]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = format.bytes().chain(std::iter::once(0)).chain(words.iter().flat_map(|w| w.iter().flat_map(|x| x.to_le_bytes())));
    for b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `desc` with each packed matrix's checksum, as `save` records it.
pub fn with_checksums(desc: &Description, packed: &[(String, PackedMatrix)]) -> Description {
    let mut desc = desc.clone();
    for (key, m) in packed {
        if let Some(t) = desc.tensors.get_mut(key) {
            t.extra.insert(CHECKSUM_KEY.to_string(), serde_json::json!(checksum(&t.format, &[&m.data, &m.scales, &m.zeros])));
        }
    }
    desc
}

/// Writes a checkpoint: f32 tensors as they are, packed matrices as their words, and the
/// description (with checksums, `with_checksums`) in the header.
pub fn save(path: &std::path::Path, floats: &[(String, Vec<usize>, Vec<f32>)], packed: &[(String, PackedMatrix)], desc: &Description) -> Result<()> {
    let desc = &with_checksums(desc, packed);
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let words: Vec<(String, Vec<usize>, Vec<u32>)> = packed.iter().flat_map(|(k, m)| tensors(k, m)).collect();
    let mut views = Vec::with_capacity(floats.len() + words.len());
    for (name, shape, data) in floats {
        views.push((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data)).map_err(|e| Error::Invalid(format!("{name}: {e}")))?));
    }
    for (name, shape, data) in &words {
        views.push((name.clone(), TensorView::new(Dtype::U32, shape.clone(), bytemuck::cast_slice(data)).map_err(|e| Error::Invalid(format!("{name}: {e}")))?));
    }
    let meta = std::collections::HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(desc).map_err(|e| Error::Invalid(e.to_string()))?)]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
}

/// The description key holding the list of `QuantPoint`s.
pub const ACT_QUANT_KEY: &str = "activation_quantizers";

/// What the list means, recorded beside it in the description for people reading the file.
pub const ACT_QUANT_SCHEMA: &str = "one entry per fake-quantizer: `node` = a block Linear (its input is quantized, after adding \
the f32 tensor named by `noise` if present) or `blocks.N.attn` (the normalized attention probabilities, before P·V); \
`kind` = uniform {bits, scale, zero} | log2 {bits, delta} | log_sqrt2 {bits, delta} | adalog {bits, q, r, scale} | \
sulq {bits, eta, m, delta} | twin {bits, lo, hi, gelu}; formulas in docs/QUANTIZATION.md";

/// One quantizer in the checkpoint: `node` is a block Linear (`blocks.0.attn.qkv`: its input is
/// quantized) or a block's attention (`blocks.0.attn`: its normalized probabilities are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantPoint {
    pub node: String,
    #[serde(flatten)]
    pub quantizer: ActQuantizer,
    /// NoisyQuant: the checkpoint tensor [in_features] added to the input before quantizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<String>,
}

/// The quantizers a checkpoint's description lists (none for weight-only checkpoints).
pub fn points(desc: Option<&Description>) -> Result<Vec<QuantPoint>> {
    let Some(list) = desc.and_then(|d| d.extra.get(ACT_QUANT_KEY)) else { return Ok(Vec::new()) };
    let points: Vec<QuantPoint> = serde_json::from_value(list.clone()).map_err(|e| Error::Invalid(format!("quantization `{ACT_QUANT_KEY}`: {e}")))?;
    for p in &points {
        p.quantizer.validate().map_err(|e| Error::Invalid(format!("quantization `{ACT_QUANT_KEY}` at {}: {e}", p.node)))?;
        if points.iter().filter(|q| q.node == p.node).count() > 1 {
            invalid!("quantization `{ACT_QUANT_KEY}`: two quantizers at {}", p.node);
        }
    }
    Ok(points)
}
