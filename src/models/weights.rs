//! A checkpoint's tensors by name, read from a `.safetensors` file and widened to f32.
//!
//! Every error names the checkpoint and the tensor, so a bad download or a checkpoint for
//! another architecture says what is wrong instead of failing somewhere in a kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::{invalid, shape_err, Error, Result};

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
}

impl Weights {
    pub fn load(path: &Path) -> Result<Weights> {
        let bytes = std::fs::read(path).map_err(|e| Error::Invalid(format!("checkpoint {}: {e}", path.display())))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; f32, f16 and bf16 tensors are widened to f32.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Weights> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Invalid(format!("checkpoint {source}: not a valid safetensors file (truncated or corrupt?): {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                other => invalid!("checkpoint {source}: tensor {name} has dtype {other:?} (only F32, F16, BF16 are supported)"),
            };
            tensors.insert(name, WeightTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Weights { source: source.to_string(), tensors })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key`, which must have exactly `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<&[f32]> {
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
