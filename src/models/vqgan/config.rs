//! taming-transformers' YAML config (`configs/*.yaml`, `model.params`):
//!
//! ```yaml
//! model:
//!   target: taming.models.vqgan.VQModel
//!   params:
//!     embed_dim: 256
//!     n_embed: 1024
//!     ddconfig: { z_channels: 256, resolution: 256, out_ch: 3, ch: 128,
//!                 ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 2, attn_resolutions: [16], ... }
//! ```
//!
//! `dropout` (a no-op at inference) and `lossconfig` are ignored.

use std::path::Path;

use serde::Deserialize;

use super::blocks::Flavor;
use crate::kernels::vq::Metric;
use crate::{Error, Result};

/// The hyper-parameters of a taming `VQModel` (or of LlamaGen's, which has the same shape).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VqganConfig {
    /// Codebook vector width (post_quant_conv input).
    pub embed_dim: usize,
    /// Codebook entries: valid token ids are 0..n_embed.
    pub n_embed: usize,
    pub ddconfig: DdConfig,
    /// LlamaGen: codes and encoder outputs are l2-normalized (search by cosine).
    #[serde(default)]
    pub codebook_l2_norm: bool,
    /// Whose key names the checkpoint uses (set by the loader from the config's format).
    #[serde(skip, default = "taming")]
    pub flavor: Flavor,
    /// The quantizer between encoder and decoder (taming's one codebook unless the config
    /// names another tokenizer: `tokenizers.rs`).
    #[serde(skip)]
    pub quantizer: QuantizerKind,
    /// FQGAN: the transformer adapter in front of each head's norm_out/conv_out.
    #[serde(skip)]
    pub adapter: Option<AdapterConfig>,
}

/// Which quantizer a tokenizer has, and where its tensors are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QuantizerKind {
    /// `quantize.embedding.weight` [n_embed, embed_dim] (taming, LlamaGen).
    #[default]
    Codebook,
    /// FQGAN: one codebook per head, `quantize_{head}.embedding.weight` [n_embed, embed_dim],
    /// ids and codes in `heads` order (the order post_quant_conv's input concatenates them).
    Factorized { heads: Vec<String> },
    /// A frozen codebook `codes` [n_embed, code_dim] through the Linear `projection`
    /// (code_dim → embed_dim), or used as is when `projection` is None: SimVQ
    /// (`quantize.embedding`, `quantize.embedding_proj`) and VQGAN-LC (`tok_embeddings`,
    /// `codebook_projection`).
    Projected { codes: String, projection: Option<String>, code_dim: usize },
    /// RQ-VAE: `depth` stages `quantizer.codebooks.{i}.weight` [n_embed + 1, embed_dim] (the
    /// last row is a padding code no search returns).
    Residual { depth: usize },
    /// WeTok GFQ: `groups` groups of `bits` channels, one id per group from the channels'
    /// signs (LSB first); no stored codebook.
    LookupFree { groups: usize, bits: u32 },
}

/// FQGAN's `FactorizedAdapter`: positional embedding, ln_pre, `layers` pre-norm transformer
/// blocks (nn.MultiheadAttention with `heads` heads, MLP ×mlp_ratio with GELU), ln_post.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// Side of the token grid the positional embedding was trained for (`image_size / 8`).
    pub grid_size: usize,
    /// The MLP's width over `width`; FQGAN uses 4.
    #[serde(with = "ratio")]
    pub mlp_ratio: usize,
}

/// `mlp_ratio` as the integer it always is (a float in the config, as upstream's argument).
mod ratio {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let r = f64::deserialize(d)?;
        if r <= 0.0 || r.fract() != 0.0 || r > 64.0 {
            return Err(serde::de::Error::custom(format!("mlp_ratio {r}: lowbit supports whole ratios from 1 to 64")));
        }
        Ok(r as usize)
    }
}

fn taming() -> Flavor {
    Flavor::Taming
}

/// LlamaGen's `config.json` (lowbit's own: LlamaGen defines its models in code, `VQ_16` and
/// `VQ_8` in `tokenizer/tokenizer_image/vq_model.py`); every field defaults to `VQ_16`'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LlamaGenFile {
    architecture: String,
    #[serde(default = "llamagen_codes")]
    codebook_size: usize,
    #[serde(default = "llamagen_dim")]
    codebook_embed_dim: usize,
    #[serde(default = "yes")]
    codebook_l2_norm: bool,
    encoder_ch_mult: Option<Vec<usize>>,
    decoder_ch_mult: Option<Vec<usize>>,
    #[serde(default = "llamagen_z")]
    z_channels: usize,
    #[serde(default = "llamagen_ch")]
    ch: usize,
    #[serde(default = "two")]
    num_res_blocks: usize,
    /// The training resolution (only sets which level has attention: the deepest).
    #[serde(default = "llamagen_image")]
    image_size: usize,
}

fn llamagen_codes() -> usize {
    16384
}
fn llamagen_dim() -> usize {
    8
}
fn llamagen_z() -> usize {
    256
}
fn llamagen_ch() -> usize {
    128
}
fn two() -> usize {
    2
}
fn llamagen_image() -> usize {
    256
}

/// taming's `ddconfig`, the `Decoder`'s constructor arguments.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DdConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Feature-map sizes (at the training resolution) that get an AttnBlock (none in the
    /// MAGVIT2-style networks of SimVQ and WeTok, whose configs leave it out).
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    pub z_channels: usize,
    pub resolution: usize,
    pub out_ch: usize,
    /// Image channels the encoder takes.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// The encoder emits mean and log-variance (a KL autoencoder, not a VQGAN) when true.
    #[serde(default)]
    pub double_z: bool,
    /// Upsample without its 3×3 conv when false (taming's default is true).
    #[serde(default = "yes")]
    pub resamp_with_conv: bool,
    /// Return the features before norm_out (unsupported: decoding wants the image).
    #[serde(default)]
    pub give_pre_end: bool,
    /// tanh on the output (later taming versions; unsupported).
    #[serde(default)]
    pub tanh_out: bool,
}

impl DdConfig {
    /// LlamaGen's network (and FQGAN's copy of it) in taming's terms: RGB in and out, attention
    /// at the deepest level only (`image_size` halved per level), upsampling with a conv.
    pub fn llamagen(ch: usize, ch_mult: Vec<usize>, num_res_blocks: usize, z_channels: usize, image_size: usize) -> DdConfig {
        let latent = image_size >> (ch_mult.len().max(1) - 1);
        DdConfig {
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions: vec![latent],
            z_channels,
            resolution: image_size,
            out_ch: 3,
            in_channels: 3,
            double_z: false,
            resamp_with_conv: true,
            give_pre_end: false,
            tanh_out: false,
        }
    }
}

fn three() -> usize {
    3
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct File {
    model: Section,
}

#[derive(Deserialize)]
struct Section {
    /// taming's class path; only its VQModel is this architecture.
    #[serde(default)]
    target: Option<String>,
    params: VqganConfig,
}

impl VqganConfig {
    /// taming's YAML (`.yaml`/`.yml`) or LlamaGen's JSON.
    pub fn load(path: &Path) -> Result<VqganConfig> {
        let text = crate::models::files::read_text(path, "config")?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A config's text, read by its file name `source` as `load` does (`.json`: LlamaGen,
    /// else taming's YAML); for configs that did not come from a file (e.g. fetched over HTTP).
    pub fn parse(text: &str, source: &str) -> Result<VqganConfig> {
        match Path::new(source).extension().and_then(|e| e.to_str()) {
            Some("json") if super::tokenizers::is_tokenizer_json(text) => super::tokenizers::from_json(text, source),
            Some("json") => Self::from_llamagen_json(text, source),
            _ => Self::from_yaml(text, source),
        }
    }

    /// (weights, config) of a model folder: `config.yaml` (taming) if present, else
    /// `config.json` (LlamaGen); `config` overrides.
    pub fn resolve(path: &Path, config: Option<&Path>) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
        let name = if config.is_none() && !dir.join("config.yaml").is_file() && dir.join("config.json").is_file() { "config.json" } else { "config.yaml" };
        crate::models::weights::resolve_checkpoint(path, config, name)
    }

    /// LlamaGen's VQ models in lowbit's `config.json`: `{"architecture": "VQ-16"}` (or `VQ-8`,
    /// or `llamagen_vq` with `encoder_ch_mult`/`decoder_ch_mult`), other fields as `ModelArgs`.
    pub fn from_llamagen_json(text: &str, source: &str) -> Result<VqganConfig> {
        let bad = |e: String| Error::Invalid(format!("config {source}: {e}"));
        let f: LlamaGenFile = serde_json::from_str(text).map_err(|e| bad(format!("not a LlamaGen VQ config: {e}")))?;
        let preset = match f.architecture.as_str() {
            "VQ-16" | "VQ_16" => vec![1, 1, 2, 2, 4],
            "VQ-8" | "VQ_8" => vec![1, 2, 2, 4],
            "llamagen_vq" => vec![],
            other => return Err(bad(format!("unknown architecture `{other}` (VQ-16, VQ-8, llamagen_vq)"))),
        };
        let pick = |m: Option<Vec<usize>>| m.unwrap_or_else(|| preset.clone());
        let (enc, dec) = (pick(f.encoder_ch_mult), pick(f.decoder_ch_mult));
        if enc != dec {
            return Err(bad(format!("encoder_ch_mult {enc:?} and decoder_ch_mult {dec:?} differ; lowbit supports equal ones")));
        }
        if dec.is_empty() {
            return Err(bad("llamagen_vq needs decoder_ch_mult".into()));
        }
        let c = VqganConfig {
            embed_dim: f.codebook_embed_dim,
            n_embed: f.codebook_size,
            ddconfig: DdConfig::llamagen(f.ch, dec, f.num_res_blocks, f.z_channels, f.image_size),
            codebook_l2_norm: f.codebook_l2_norm,
            flavor: Flavor::LlamaGen,
            quantizer: QuantizerKind::Codebook,
            adapter: None,
        };
        c.validate().map_err(bad)?;
        Ok(c)
    }

    /// What the model is, for messages (`lowbit bench`, `info`).
    pub fn family_name(&self) -> &'static str {
        match (&self.quantizer, self.flavor) {
            (QuantizerKind::Factorized { .. }, _) => "FQGAN",
            (QuantizerKind::LookupFree { .. }, _) => "WeTok GFQ",
            (QuantizerKind::Residual { .. }, _) => "RQ-VAE",
            (QuantizerKind::Projected { .. }, Flavor::Magvit) => "SimVQ",
            (QuantizerKind::Projected { .. }, _) => "VQGAN-LC",
            (QuantizerKind::Codebook, Flavor::LlamaGen) => "LlamaGen VQ",
            (QuantizerKind::Codebook, _) => "taming VQGAN",
        }
    }

    /// Entries of each codebook a token position has ids in (one per sub-codebook, stage or
    /// group; one for a plain codebook): what `TokenGrid::check_codebooks` takes.
    pub fn codebook_sizes(&self) -> Vec<usize> {
        let n = self.n_embed;
        match &self.quantizer {
            QuantizerKind::Codebook | QuantizerKind::Projected { .. } => vec![n],
            QuantizerKind::Factorized { heads } => vec![n; heads.len()],
            QuantizerKind::Residual { depth } => vec![n; *depth],
            QuantizerKind::LookupFree { groups, .. } => vec![n; *groups],
        }
    }

    /// How the codebook is searched and read: cosine for l2-normalized codebooks.
    pub fn metric(&self) -> Metric {
        if self.codebook_l2_norm {
            Metric::Cosine
        } else {
            Metric::L2
        }
    }

    /// Parses taming's layout (`model.params`); `source` names the file in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<VqganConfig> {
        let file: File = serde_yaml::from_str(text).map_err(|e| Error::Invalid(format!("config {source}: not a taming VQModel config (model.params with embed_dim, n_embed, ddconfig): {e}")))?;
        if let Some(target) = file.model.target.as_deref().filter(|t| !t.ends_with(".VQModel")) {
            return Err(Error::Invalid(format!("config {source}: target `{target}` is not a taming VQModel (taming.models.vqgan.VQModel)")));
        }
        let c = file.model.params;
        c.validate().map_err(|e| Error::Invalid(format!("config {source}: {e}")))?;
        Ok(c)
    }

    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        let d = &self.ddconfig;
        let sizes = [("embed_dim", self.embed_dim), ("n_embed", self.n_embed), ("ch", d.ch), ("z_channels", d.z_channels), ("resolution", d.resolution), ("out_ch", d.out_ch)];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be non-zero"));
        }
        if d.ch_mult.is_empty() || d.ch_mult.contains(&0) {
            return Err(format!("ch_mult {:?} must be non-empty and non-zero", d.ch_mult));
        }
        // Attention sits where the feature map has one of attn_resolutions' sizes at the
        // training resolution: a resolution that does not halve evenly to every level would
        // silently place it nowhere.
        let halvings = d.ch_mult.len() - 1;
        if d.resolution > 1 << 16 || halvings >= 16 || !d.resolution.is_multiple_of(1 << halvings) {
            return Err(format!(
                "resolution {} must be a multiple of {} (halved at each of the {halvings} downsamplings) and at most 65536",
                d.resolution,
                1usize << halvings.min(16)
            ));
        }
        if let Some(r) = d.attn_resolutions.iter().find(|&&r| !(0..=halvings).any(|i| d.resolution >> i == r)) {
            return Err(format!("attn_resolutions entry {r} is not a feature-map size of resolution {} (halved per level)", d.resolution));
        }
        if d.give_pre_end || d.tanh_out {
            return Err("give_pre_end and tanh_out are not supported".into());
        }
        Ok(())
    }

    /// Channels of level `i` (`ch · ch_mult[i]`).
    pub fn level_channels(&self, level: usize) -> usize {
        self.ddconfig.ch * self.ddconfig.ch_mult[level]
    }

    /// Feature-map size at the lowest level, at the training resolution (taming's `curr_res`).
    pub fn latent_resolution(&self) -> usize {
        self.ddconfig.resolution >> (self.ddconfig.ch_mult.len() - 1)
    }

    /// How much the decoder enlarges the token grid.
    pub fn upscale(&self) -> usize {
        1 << (self.ddconfig.ch_mult.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_taming_layout_and_rejects_others() {
        let yaml = "model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: 4\n    n_embed: 9\n    ddconfig:\n      double_z: False\n      z_channels: 8\n      resolution: 32\n      out_ch: 3\n      ch: 32\n      ch_mult: [1,2,2]\n      num_res_blocks: 2\n      attn_resolutions: [8]\n      dropout: 0.0\n    lossconfig: {target: x}\n";
        let c = VqganConfig::from_yaml(yaml, "t").unwrap();
        assert_eq!((c.embed_dim, c.n_embed, c.latent_resolution(), c.upscale(), c.level_channels(2)), (4, 9, 8, 4, 64));
        assert!(c.ddconfig.resamp_with_conv);
        let err = VqganConfig::from_yaml("model: {params: {embed_dim: 4}}", "t").unwrap_err().to_string();
        assert!(err.contains("n_embed"), "{err}");
        let err = VqganConfig::from_yaml(&yaml.replace("ch_mult: [1,2,2]", "ch_mult: []"), "t").unwrap_err().to_string();
        assert!(err.contains("ch_mult"), "{err}");
    }
}
