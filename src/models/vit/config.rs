//! Model configuration in timm's Hugging Face hub layout (`config.json`), resolved by
//! [`HubConfig`] against timm's registry:
//!
//! ```json
//! { "architecture": "vit_small_patch14_reg4_dinov2.lvd142m", "num_classes": 0,
//!   "model_args": { "img_size": 224 },                   // optional overrides
//!   "pretrained_cfg": { "input_size": [3, 518, 518], "mean": [...], "std": [...],
//!                       "crop_pct": 1.0, "interpolation": "bicubic" } }
//! ```
//!
//! Every `VisionTransformer` option is read the way timm's constructor reads it; an option
//! this implementation does not have is an error naming it and the architecture.

use std::path::Path;

use crate::kernels::elementwise::Activation;
use crate::models::timm_config::{Family, HubConfig};
use crate::{invalid, Error, Result};

pub use crate::models::timm_config::{PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD};

/// timm's `global_pool` (`''` is `None`: every token goes through the head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Token,
    Avg,
    Max,
    AvgMax,
    None,
}

/// The options implemented here: anything else set away from timm's default is refused.
const SUPPORTED: [&str; 27] = [
    "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads", "mlp_ratio",
    "qkv_bias", "qk_norm", "proj_bias", "init_values", "class_token", "no_embed_class", "reg_tokens", "pre_norm",
    "final_norm", "fc_norm", "pool_include_prefix", "dynamic_img_size", "norm_layer", "act_layer", "pos_embed",
    "dynamic_img_pad", "scale_attn_norm", "scale_mlp_norm",
];

/// Bounds far above any published ViT that keep every size computation (tokens, weights,
/// the resize before the crop) from overflowing or asking for absurd memory.
const MAX_DIM: usize = 1 << 16;
const MAX_DEPTH: usize = 4096;
const MAX_IMG: usize = 8192;
const MAX_CLASSES: usize = 1 << 24;
const MAX_TOKENS: usize = 1 << 16;

/// Everything needed to build a `VisionTransformer` and prepare its input.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub architecture: String,
    /// The size images are fed at (timm's `img_size`, or the eval input size of a
    /// `dynamic_img_size` model).
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// LayerScale init; `Some` means the checkpoint has `blocks.N.ls1.gamma` / `ls2.gamma`.
    pub init_values: Option<f64>,
    /// 0 means no head: the forward pass returns the pooled features.
    pub num_classes: usize,
    /// Class names when the hub config lists them (`label_names`), else empty.
    pub label_names: Vec<String>,
    pub preprocess: PreprocessConfig,
    /// timm's `img_size`: the grid `pos_embed` has in the model (checkpoints at another grid
    /// are resampled to it first, as timm's `checkpoint_filter_fn` does).
    pub model_img_size: usize,
    pub class_token: bool,
    /// `VisionTransformerDistilled`: a distillation token after the class token and `head_dist`.
    pub distilled: bool,
    pub reg_tokens: usize,
    /// Position embeddings only for patches (prefix tokens get none).
    pub no_embed_class: bool,
    pub global_pool: Pool,
    pub pool_include_prefix: bool,
    /// A LayerNorm on the tokens before pooling (`norm`).
    pub final_norm: bool,
    /// A LayerNorm on the pooled features instead (`fc_norm`; timm's `use_fc_norm and final_norm`).
    pub fc_norm: bool,
    /// `norm_pre` after the embeddings (CLIP); the patch projection then has no bias.
    pub pre_norm: bool,
    pub act: Activation,
    /// LayerNorms on each head's queries and keys (`attn.q_norm`, `attn.k_norm`).
    pub qk_norm: bool,
    /// Bias of `attn.proj`, `mlp.fc1` and `mlp.fc2`.
    pub proj_bias: bool,
    pub norm_eps: f64,
    /// Position embeddings resampled to the input's grid (timm's `dynamic_img_size`).
    pub dynamic_img_size: bool,
}

impl VitConfig {
    /// timm's defaults for a known architecture name.
    pub fn from_architecture(name: &str) -> Result<VitConfig> {
        let json = serde_json::json!({ "architecture": name }).to_string();
        Self::from_json(&json)
    }

    pub fn load(path: &Path) -> Result<VitConfig> {
        let text = crate::models::files::read_text(path, "config")?;
        Self::from_json(&text).map_err(|e| Error::Invalid(format!("config {}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<VitConfig> {
        Self::from_hub(&HubConfig::from_json(text)?)
    }

    /// One line naming the family, its size and every option away from a plain ViT.
    pub fn describe(&self) -> String {
        let family = if self.distilled { "DeiT (distilled)" } else { "ViT" };
        let mut opts = Vec::new();
        if self.reg_tokens > 0 {
            opts.push(format!("{} register tokens", self.reg_tokens));
        }
        if !self.class_token {
            opts.push("no class token".to_string());
        }
        if self.no_embed_class {
            opts.push("no_embed_class".to_string());
        }
        if self.global_pool != Pool::Token {
            opts.push(format!("pool {:?}", self.global_pool).to_lowercase());
        }
        if self.fc_norm {
            opts.push("fc_norm".to_string());
        }
        if self.pre_norm {
            opts.push("pre_norm".to_string());
        }
        if self.act != Activation::Gelu {
            opts.push(format!("{:?}", self.act).to_lowercase());
        }
        if self.qk_norm {
            opts.push("qk_norm".to_string());
        }
        if self.init_values.is_some() {
            opts.push("LayerScale".to_string());
        }
        if !self.qkv_bias {
            opts.push("no qkv bias".to_string());
        }
        if self.dynamic_img_size {
            opts.push("dynamic_img_size".to_string());
        }
        let opts = if opts.is_empty() { String::new() } else { format!("; {}", opts.join(", ")) };
        format!(
            "timm {family} `{}`: {}×{} images, patch {}, width {}, depth {}, {} heads, {} classes{opts}",
            self.architecture, self.img_size, self.img_size, self.patch_size, self.embed_dim, self.depth, self.num_heads, self.num_classes
        )
    }

    /// The ViT options of a resolved hub config (an error for a Swin one).
    pub fn from_hub(h: &HubConfig) -> Result<VitConfig> {
        let arch = &h.architecture;
        if h.family != Family::Vit {
            invalid!("architecture `{arch}` is a {} model, not a ViT", h.family.name());
        }
        h.reject_unknown(&SUPPORTED)?;
        let unsupported = |key: &str, val: &dyn std::fmt::Display| -> Error {
            Error::Invalid(format!("architecture `{arch}`: option {key} = {val} is not supported by lowbit"))
        };
        // Options accepted only at one value (listed in SUPPORTED so that value passes).
        for (key, want) in [("in_chans", serde_json::json!(3)), ("pos_embed", "learn".into()), ("dynamic_img_pad", false.into()), ("scale_attn_norm", false.into()), ("scale_mlp_norm", false.into())] {
            if let Some(v) = h.arg(key).filter(|v| **v != want) {
                return Err(unsupported(key, v));
            }
        }
        let distilled = match h.class.as_str() {
            "VisionTransformer" => false,
            "VisionTransformerDistilled" => true,
            other => invalid!("architecture `{arch}`: model class {other} is not supported"),
        };
        let global_pool = match h.str_arg("global_pool")?.unwrap_or("") {
            "token" => Pool::Token,
            "avg" => Pool::Avg,
            "max" => Pool::Max,
            "avgmax" => Pool::AvgMax,
            "" => Pool::None,
            other => return Err(unsupported("global_pool", &other)),
        };
        let act = match h.str_arg("act_layer")? {
            None | Some("gelu") => Activation::Gelu,
            Some("quick_gelu") => Activation::QuickGelu,
            Some("gelu_tanh") => Activation::GeluTanh,
            Some(other) => return Err(unsupported("act_layer", &other)),
        };
        let final_norm = h.bool_arg("final_norm")?;
        // timm: `fc_norm=None` means "after pooling" exactly for the reducing pools.
        let use_fc_norm = match h.arg("fc_norm") {
            None | Some(serde_json::Value::Null) => matches!(global_pool, Pool::Avg | Pool::Max | Pool::AvgMax),
            Some(_) => h.bool_arg("fc_norm")?,
        };
        let model_img_size = h.size_arg("img_size")?;
        let dynamic_img_size = h.bool_arg("dynamic_img_size")?;
        let (ih, iw) = h.preprocess.input_size;
        let c = VitConfig {
            architecture: arch.clone(),
            img_size: if dynamic_img_size && ih == iw { ih } else { model_img_size },
            patch_size: h.size_arg("patch_size")?,
            embed_dim: h.usize_arg("embed_dim")?,
            depth: h.usize_arg("depth")?,
            num_heads: h.usize_arg("num_heads")?,
            mlp_ratio: h.f64_arg("mlp_ratio")?,
            qkv_bias: h.bool_arg("qkv_bias")?,
            init_values: h.opt_f64_arg("init_values")?.filter(|v| *v != 0.0),
            num_classes: h.num_classes,
            label_names: h.label_names.clone(),
            preprocess: h.preprocess.clone(),
            model_img_size,
            class_token: h.bool_arg("class_token")?,
            distilled,
            reg_tokens: h.usize_arg("reg_tokens")?,
            no_embed_class: h.bool_arg("no_embed_class")?,
            global_pool,
            pool_include_prefix: h.bool_arg("pool_include_prefix")?,
            final_norm: final_norm && !use_fc_norm,
            fc_norm: final_norm && use_fc_norm,
            pre_norm: h.bool_arg("pre_norm")?,
            act,
            qk_norm: h.bool_arg("qk_norm")?,
            proj_bias: h.bool_arg("proj_bias")?,
            norm_eps: h.norm_eps(1e-6)?,
            dynamic_img_size,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Patches per image side for an `img_size` input.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens before the patches: class, distillation and register tokens.
    pub fn prefix_tokens(&self) -> usize {
        self.class_token as usize + self.distilled as usize + self.reg_tokens
    }

    /// Tokens per image: the prefix tokens plus one per patch.
    pub fn tokens(&self) -> usize {
        self.prefix_tokens() + self.grid() * self.grid()
    }

    fn validate(&self) -> Result<()> {
        let arch = &self.architecture;
        if self.embed_dim == 0 || self.num_heads == 0 || self.depth == 0 || self.patch_size == 0 || self.img_size == 0 {
            invalid!("architecture `{arch}`: embed_dim, num_heads, depth, patch_size and img_size must all be non-zero");
        }
        for (what, v, max) in [
            ("embed_dim", self.embed_dim, MAX_DIM),
            ("depth", self.depth, MAX_DEPTH),
            ("img_size", self.img_size.max(self.model_img_size), MAX_IMG),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("reg_tokens", self.reg_tokens, MAX_TOKENS),
        ] {
            if v > max {
                invalid!("architecture `{arch}`: {what} = {v} is beyond what lowbit supports ({max})");
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            invalid!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads);
        }
        if !self.img_size.is_multiple_of(self.patch_size) || !self.model_img_size.is_multiple_of(self.patch_size) {
            invalid!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size);
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 || self.mlp_hidden() > 16 * MAX_DIM {
            invalid!("architecture `{arch}`: mlp_ratio {} gives an MLP of {} channels", self.mlp_ratio, self.mlp_hidden());
        }
        if self.tokens() > MAX_TOKENS {
            invalid!("architecture `{arch}`: {} tokens per image is beyond what lowbit supports ({MAX_TOKENS})", self.tokens());
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            invalid!("architecture `{arch}`: norm eps {} must be positive", self.norm_eps);
        }
        if self.global_pool == Pool::Token && !self.class_token {
            invalid!("architecture `{arch}`: global_pool \"token\" needs the class token (class_token is false)");
        }
        if self.distilled && (self.global_pool != Pool::Token || self.reg_tokens > 0 || !self.class_token) {
            invalid!("architecture `{arch}`: the distilled head reads the class and distillation tokens (global_pool \"token\", class_token, no reg_tokens)");
        }
        let p = &self.preprocess;
        if p.input_size != (self.img_size, self.img_size) {
            invalid!(
                "pretrained_cfg.input_size {:?} differs from img_size {} (set model_args.dynamic_img_size to resample position embeddings)",
                p.input_size,
                self.img_size
            );
        }
        Ok(())
    }
}
