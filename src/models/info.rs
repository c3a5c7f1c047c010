//! What a checkpoint folder holds, without running it: which model family, how many
//! parameters, and how many bytes its weights take in each weight format (`lowbit info`).

use std::path::{Path, PathBuf};

use super::weights::Weights;
use crate::models::packed::Description;
use crate::formats::WeightFormat;
use crate::{invalid, Error, Result};

/// The model families lowbit loads, told apart by their config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A timm classifier (ViT family or Swin): `config.json` in the hub layout.
    Vit,
    /// taming-transformers VQModel (`config.yaml`), LlamaGen VQ tokenizer or one of the
    /// tokenizers of `models::vqgan::tokenizers` (`config.json`).
    Vqgan,
    /// taming minGPT prior over VQ tokens: `config.json` with `"architecture": "taming_mingpt"`.
    Prior,
}

impl ModelKind {
    /// What `lowbit info` calls it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Vit => "timm classifier",
            ModelKind::Vqgan => "VQGAN",
            ModelKind::Prior => "minGPT prior",
        }
    }
}

/// The kind of model at `path` (a folder, or a `.safetensors` file with its config beside it).
pub fn detect(path: &Path) -> Result<ModelKind> {
    let dir: PathBuf = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    if dir.join("config.yaml").is_file() {
        return Ok(ModelKind::Vqgan);
    }
    let json = dir.join("config.json");
    if !json.is_file() {
        invalid!("model {}: neither config.json (timm ViT, prior) nor config.yaml (taming VQGAN) found", path.display());
    }
    let text = super::files::read_text(&json, "config")?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", json.display())))?;
    Ok(match v.get("architecture").and_then(|a| a.as_str()) {
        Some("taming_mingpt") => ModelKind::Prior,
        Some("VQ-16" | "VQ_16" | "VQ-8" | "VQ_8" | "llamagen_vq") => ModelKind::Vqgan,
        Some(a) if crate::models::vqgan::TOKENIZER_ARCHITECTURES.contains(&a) => ModelKind::Vqgan,
        _ => ModelKind::Vit,
    })
}

/// Parameter counts of a checkpoint, split into the matrices lowbit packs in low-bit formats
/// (every `*.weight` of two or more dimensions except embedding tables: Linear and conv
/// weights) and the tensors that stay f32 (biases, norms, embeddings, codebooks).
#[derive(Clone, Debug, Default)]
pub struct WeightSummary {
    /// (name, rows, cols, the format `lowbit quantize` packed it in) of each packable matrix.
    pub matrices: Vec<(String, usize, usize, Option<WeightFormat>)>,
    /// Parameters of everything else.
    pub other_params: usize,
}

/// Tables looked up by id rather than multiplied: they stay f32.
const EMBEDDINGS: [&str; 3] = ["quantize.embedding.weight", "tok_emb.weight", "pos_emb"];

/// The tokenizers' codebooks (FQGAN's `quantize_<head>.embedding`, VQGAN-LC's
/// `tok_embeddings`, RQ-VAE's `quantizer.codebooks.<i>`) and the Linears that make SimVQ's
/// and VQGAN-LC's effective codebook at load (`quantize.embedding_proj`,
/// `codebook_projection`): read as f32 by the quantizer, never packed.
fn is_codebook(name: &str) -> bool {
    EMBEDDINGS.contains(&name)
        || (name.starts_with("quantize") && name.ends_with("embedding.weight"))
        || name == "tok_embeddings.weight"
        || name.starts_with("quantizer.codebooks.")
        || name.starts_with("quantize.embedding_proj.")
        || name.starts_with("codebook_projection.")
}

/// Training-time bookkeeping buffers, not parameters.
const BUFFERS: [&str; 2] = [".attn.mask", "quantize.codebook_used"];

impl WeightSummary {
    pub fn new(w: &Weights) -> Result<WeightSummary> {
        let mut s = WeightSummary::default();
        for (name, t) in &w.tensors {
            let packable = name.ends_with(".weight") && t.shape.len() >= 2 && !is_codebook(name);
            if packable {
                s.matrices.push((name.clone(), t.shape[0], t.shape[1..].iter().product(), None));
            } else if !BUFFERS.iter().any(|b| name.ends_with(b)) {
                s.other_params += t.data.len();
            }
        }
        if let Some(desc) = Description::of(w)? {
            for (name, t) in desc.tensors {
                let format = WeightFormat::parse(&t.format)?;
                s.matrices.push((name, t.shape[0], t.shape[1..].iter().product(), Some(format)));
            }
        }
        s.matrices.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(s)
    }

    pub fn params(&self) -> usize {
        self.other_params + self.matrices.iter().map(|(_, r, c, _)| r * c).sum::<usize>()
    }

    /// GPU bytes of all weights with the matrices packed in `format` (matrices the checkpoint
    /// already packed count in their own format).
    pub fn bytes(&self, format: WeightFormat) -> usize {
        4 * self.other_params + self.matrices.iter().map(|&(_, r, c, stored)| stored.unwrap_or(format).packed_bytes(r, c)).sum::<usize>()
    }

    /// True when `lowbit quantize` wrote this checkpoint.
    pub fn is_quantized(&self) -> bool {
        self.matrices.iter().any(|m| m.3.is_some())
    }
}
