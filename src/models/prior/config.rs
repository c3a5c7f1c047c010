//! The prior's `config.json`:
//!
//! ```json
//! { "architecture": "taming_mingpt", "vocab_size": 1024, "block_size": 64, "n_layer": 8,
//!   "n_head": 8, "n_embd": 256, "n_classes": 10, "token_grid": [8, 8],
//!   "conditioning": "class_token", "decoder": "../digits-vqgan",
//!   "null_class": 10,                                       // optional: trained for guidance
//!   "sampling": { "temperature": 1.0, "top_k": 100, "guidance": 3.0 } }     // optional
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::models::sampling::SamplingOptions;
use crate::{invalid, Error, Result};

/// The most transformer blocks a prior may have (GPT-3 has 96).
pub const MAX_LAYERS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PriorConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub n_classes: usize,
    /// (height, width) of the token grid the prior generates, raster order.
    pub token_grid: [usize; 2],
    pub conditioning: String,
    /// The VQGAN that decodes the tokens, relative to the prior's folder.
    #[serde(default)]
    pub decoder: Option<PathBuf>,
    #[serde(default)]
    pub sampling: Option<SamplingOptions>,
    /// The class token of unconditional sequences, for a prior trained with class dropout
    /// (classifier-free guidance); absent for a plain class-conditional prior.
    #[serde(default)]
    pub null_class: Option<usize>,
    /// minGPT's `n_unmasked` (a bidirectional prefix): only 0 is supported.
    #[serde(default)]
    pub n_unmasked: usize,
}

impl PriorConfig {
    pub fn load(path: &Path) -> Result<PriorConfig> {
        let text = crate::models::files::read_text(path, "prior config")?;
        Self::from_json(&text).map_err(|e| Error::Invalid(format!("prior config {}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<PriorConfig> {
        let c: PriorConfig = serde_json::from_str(text).map_err(|e| Error::Invalid(format!("not a prior config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if self.architecture != "taming_mingpt" {
            invalid!("unknown prior architecture `{}` (supported: taming_mingpt)", self.architecture);
        }
        if self.conditioning != "class_token" {
            invalid!("unknown conditioning `{}` (supported: class_token)", self.conditioning);
        }
        let dims = [("vocab_size", self.vocab_size), ("block_size", self.block_size), ("n_layer", self.n_layer), ("n_head", self.n_head), ("n_embd", self.n_embd), ("n_classes", self.n_classes)];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            invalid!("{name} must be at least 1");
        }
        // Stated limits, checked before anything is allocated per layer, head or position.
        let limits = [("n_layer", self.n_layer, MAX_LAYERS), ("n_head", self.n_head, 4096), ("n_embd", self.n_embd, 1 << 16), ("block_size", self.block_size, 1 << 16), ("vocab_size", self.vocab_size, 1 << 20)];
        if let Some((name, v, most)) = limits.iter().find(|(_, v, most)| v > most) {
            invalid!("{name} {v} is over the limit of {most}");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            invalid!("n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        if self.vocab_size < self.n_classes {
            invalid!("vocab_size {} is smaller than n_classes {}: class c is fed as token id c", self.vocab_size, self.n_classes);
        }
        // The input is [class, z_0 .. z_{n-2}]: n positions.
        let [h, w] = self.token_grid;
        if h == 0 || w == 0 || h * w > self.block_size {
            invalid!("token_grid {h}×{w} needs 1..={} positions (block_size)", self.block_size);
        }
        if self.n_unmasked != 0 {
            invalid!("n_unmasked {} is not supported (only a fully causal prior)", self.n_unmasked);
        }
        if let Some(null) = self.null_class {
            // Trained priors put the null class right after the real ones (taming, LlamaGen).
            if null != self.n_classes || null >= self.vocab_size {
                invalid!(
                    "null_class {null} is out of range: the null class is the token after the {} classes ({}), below vocab_size {}",
                    self.n_classes,
                    self.n_classes,
                    self.vocab_size
                );
            }
        }
        if let Some(s) = self.sampling {
            s.check()?;
            if s.guidance != 1.0 && self.null_class.is_none() {
                invalid!("sampling.guidance {} needs a `null_class` (a prior trained for classifier-free guidance)", s.guidance);
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn tokens_per_image(&self) -> usize {
        self.token_grid[0] * self.token_grid[1]
    }
}
