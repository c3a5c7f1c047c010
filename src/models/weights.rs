//! A checkpoint's tensors by name, read from a `.safetensors` file and widened to f32.
//!
//! Every error names the checkpoint and the tensor, so a bad download or a checkpoint for
//! another architecture says what is wrong instead of failing somewhere in a kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::formats::{PackedMatrix, WeightFormat};
use crate::gpu::Tensor;
use crate::graph::Norm;
use crate::{invalid, shape_err, Error, Gpu, Result};

/// One tensor of a checkpoint, in f32.
#[derive(Clone, Debug)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors of one checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    /// The file name (or any label) errors mention.
    pub source: String,
    pub tensors: HashMap<String, WeightTensor>,
    /// u32 tensors: the words of matrices packed by `lowbit quantize` (see `models::packed`).
    pub words: HashMap<String, (Vec<usize>, Vec<u32>)>,
    /// The safetensors header's `__metadata__` (`quantization` describes packed matrices).
    pub metadata: HashMap<String, String>,
}

impl Weights {
    /// A normalization layer's `{prefix}.weight` and `{prefix}.bias` ([channels] each), on the
    /// GPU.
    pub fn norm(&self, gpu: &Gpu, prefix: &str, channels: usize) -> Result<Norm> {
        let up = |key: &str| Tensor::from_f32(gpu, &[channels], self.get(&format!("{prefix}.{key}"), &[channels])?);
        Ok(Norm { weight: up("weight")?, bias: up("bias")? })
    }

    /// Reads a checkpoint; in a folder lowbit wrote, also checks it (and the files beside it)
    /// against the SHA-256 checksums and the description copy in `quantization.json`.
    pub fn load(path: &Path) -> Result<Weights> {
        let bytes = super::files::read_limited(path, "checkpoint", super::files::MAX_CHECKPOINT_BYTES)?;
        let source = path.display().to_string();
        let Some(record) = Self::record_beside(path)? else { return Self::from_bytes(&bytes, &source) };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // Warnings about the weights only once the file is known to be the one lowbit wrote.
        let (w, absurd) = record.verify(dir, (&name, &bytes), || Self::parse(&bytes, &source))?;
        w.check_description_copy(path, &record)?;
        warn_absurd(&source, absurd);
        Ok(w)
    }

    /// `quantization.json` beside the checkpoint `path`, if there is one.
    fn record_beside(path: &Path) -> Result<Option<super::checksums::Record>> {
        let copy = path.with_file_name(super::checksums::RECORD_FILE);
        if !copy.exists() {
            return Ok(None);
        }
        let text = super::files::read_text(&copy, "quantization description")?;
        super::checksums::Record::parse(&text, &copy.display().to_string()).map(Some)
    }

    /// `lowbit quantize` writes `quantization.json` beside the checkpoint as a readable copy of
    /// the description in its header, which is what the engine runs: a copy that says
    /// something else (edited, or from another model) is an error rather than ignored.
    fn check_description_copy(&self, path: &Path, record: &super::checksums::Record) -> Result<()> {
        let copy = path.with_file_name(super::checksums::RECORD_FILE);
        let name = copy.display();
        let Some(header) = self.metadata.get(super::packed::METADATA_KEY) else {
            invalid!("{name} describes a quantized model, but {} has no quantization description: they are from different models", self.source);
        };
        let header: serde_json::Value = serde_json::from_str(header).map_err(|e| Error::Invalid(format!("checkpoint {}: bad `quantization` metadata: {e}", self.source)))?;
        if record.description != header {
            invalid!("{name} differs from the quantization description in {} (the one lowbit runs): restore it, delete it, or quantize the model again", self.source);
        }
        Ok(())
    }

    /// Parses safetensors bytes; f32, f16 and bf16 tensors are widened to f32.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Weights> {
        let (w, absurd) = Self::parse(bytes, source)?;
        warn_absurd(source, absurd);
        Ok(w)
    }

    /// `from_bytes` and the tensors holding absurd values.
    fn parse(bytes: &[u8], source: &str) -> Result<(Weights, Vec<Absurd>)> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Invalid(format!("checkpoint {source}: not a valid safetensors file (truncated or corrupt?): {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Invalid(format!("checkpoint {source}: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        let mut words = HashMap::new();
        let mut absurd = Vec::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::U32 => {
                    let w: Vec<u32> = raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    if name.ends_with(".scales") {
                        check_scales(&w, &name, source)?;
                    }
                    words.insert(name, (view.shape().to_vec(), w));
                    continue;
                }
                other => invalid!("checkpoint {source}: tensor {name} has dtype {other:?} (only F32, F16, BF16 and packed U32 are supported)"),
            };
            // Every float tensor, once, here: a NaN bias or norm weight would otherwise run
            // silently and give a confident wrong answer.
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                invalid!("checkpoint {source}: tensor {name} holds {} at index {i}; the file is corrupt (re-download or re-export it)", data[i]);
            }
            if let Some(i) = data.iter().position(|v| v.abs() > ABSURD) {
                absurd.push((name.clone(), i, data[i]));
            }
            tensors.insert(name, WeightTensor { shape: view.shape().to_vec(), data });
        }
        let w = Weights { source: source.to_string(), tensors, words, metadata };
        super::packed::validate(&w)?;
        Ok((w, absurd))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key) || self.words.contains_key(key)
    }

    /// The matrix `key` (checkpoint shape `shape`: [rows, ...] flattened to rows × the rest)
    /// ready for the kernels: as stored if `lowbit quantize` packed it, else the f32 tensor
    /// packed in `format` by round-to-nearest. Asking a packed matrix for another format than
    /// its own (other than the default F32, "as stored") is an error: re-packing low-bit codes
    /// would compound the rounding.
    pub fn matrix(&self, key: &str, shape: &[usize], format: WeightFormat) -> Result<PackedMatrix> {
        let rows = shape.first().copied().unwrap_or(0);
        let cols: usize = shape.iter().skip(1).product();
        if let Some(stored) = crate::models::packed::stored_format(self, key)? {
            if format != WeightFormat::F32 && format != stored {
                invalid!("checkpoint {}: {key} is already quantized as {}; it cannot be re-packed as {}", self.source, stored.name(), format.name());
            }
            return crate::models::packed::read(self, key, shape);
        }
        PackedMatrix::quantize(self.get(key, shape)?, rows, cols, format).map_err(|e| Error::Invalid(format!("{key}: {e}")))
    }

    /// The tensor `key`, which must have exactly `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<&[f32]> {
        if self.words.contains_key(key) {
            invalid!("checkpoint {}: {key} is a packed low-bit matrix, not an f32 tensor", self.source);
        }
        let t = self.tensors.get(key).ok_or_else(|| {
            Error::Invalid(format!("checkpoint {}: missing tensor {key} (expected shape {shape:?})", self.source))
        })?;
        if t.shape != shape {
            shape_err!("checkpoint {}: tensor {key} has shape {:?}, expected {shape:?}", self.source, t.shape);
        }
        Ok(&t.data)
    }

    /// Like `get`, for tensors a model may or may not have (biases, LayerScale).
    pub fn get_optional(&self, key: &str, shape: &[usize]) -> Result<Option<&[f32]>> {
        if self.contains(key) {
            self.get(key, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A tensor holding a value over `ABSURD`: (name, index, value) of its first.
type Absurd = (String, usize, f32);

/// Larger than any weight training produces: behind LayerNorms and softmaxes, values this
/// large are flipped exponent bits (a corrupt file), not a model. Finite, so only a warning.
const ABSURD: f32 = 1e6;

/// One warning per checkpoint for its tensors holding values over `ABSURD`, naming the first.
fn warn_absurd(source: &str, mut absurd: Vec<Absurd>) {
    absurd.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some((name, i, v)) = absurd.first() {
        let more = match absurd.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more tensors)"),
        };
        crate::warn!("checkpoint {source}: tensor {name} holds {v:e} at index {i}{more}; weights over {ABSURD:e} in magnitude are far outside what training produces: the file may be corrupt");
    }
}

/// Packed scales are f16 pairs: each must be finite, as every float tensor.
fn check_scales(words: &[u32], name: &str, source: &str) -> Result<()> {
    let halves = words.iter().flat_map(|w| [*w as u16, (*w >> 16) as u16]);
    if let Some((i, h)) = halves.enumerate().map(|(i, h)| (i, half::f16::from_bits(h))).find(|(_, h)| !h.is_finite()) {
        invalid!("checkpoint {source}: packed scales {name} hold {h} at index {i}; the file is corrupt (re-quantize it)");
    }
    Ok(())
}

impl Weights {
    /// The tensors under `prefix` (as candle's `vb.pp("attn")`): `w.pp("blocks.0").pp("attn")`
    /// reads `blocks.0.attn.qkv.weight` as `get("qkv.weight", ..)`.
    pub fn pp(&self, prefix: impl std::fmt::Display) -> WeightsView<'_> {
        WeightsView { weights: self, prefix: prefix.to_string() }
    }
}

/// A prefixed view of a checkpoint: model code names tensors as the upstream module does.
#[derive(Clone)]
pub struct WeightsView<'a> {
    pub weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsView<'a> {
    /// The view one level down (`attn` under `blocks.0` is `blocks.0.attn`).
    pub fn pp(&self, name: impl std::fmt::Display) -> WeightsView<'a> {
        WeightsView { weights: self.weights, prefix: self.key(&name.to_string()) }
    }

    /// The full checkpoint key of `name` under this view.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The prefix itself (the module's name in the checkpoint).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
        self.weights.get(&self.key(name), shape)
    }

    pub fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<&'a [f32]>> {
        self.weights.get_optional(&self.key(name), shape)
    }

    pub fn matrix(&self, name: &str, shape: &[usize], format: WeightFormat) -> Result<PackedMatrix> {
        self.weights.matrix(&self.key(name), shape, format)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// This module's `weight` and `bias` ([channels] each) as a normalization layer.
    pub fn norm(&self, gpu: &Gpu, channels: usize) -> Result<Norm> {
        self.weights.norm(gpu, &self.prefix, channels)
    }
}

/// Writes f32 tensors as a safetensors file (used for `--save-logits`).
pub fn save_f32(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(data))
                .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
}

/// (weights file, config file) for a model path: a folder holding `model.safetensors` and
/// `config_name`, or a `.safetensors` file with `config_name` beside it, or `config` if given.
pub fn resolve_checkpoint(path: &Path, config: Option<&Path>, config_name: &str) -> Result<(PathBuf, PathBuf)> {
    let weights = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    if !weights.is_file() {
        invalid!("model {}: no such checkpoint (expected a folder with model.safetensors, or a .safetensors file)", weights.display());
    }
    let config = match config {
        Some(c) => c.to_path_buf(),
        None => weights.parent().unwrap_or(Path::new(".")).join(config_name),
    };
    if !config.is_file() {
        invalid!("model {}: config {} not found (pass --config)", path.display(), config.display());
    }
    Ok((weights, config))
}
