//! Model configuration in timm's Hugging Face hub layout (`config.json`):
//!
//! ```json
//! { "architecture": "vit_tiny_patch16_224", "num_classes": 1000,
//!   "model_args": { "embed_dim": 192, ... },            // optional overrides
//!   "pretrained_cfg": { "input_size": [3, 224, 224], "mean": [...], "std": [...],
//!                       "crop_pct": 0.9, "interpolation": "bicubic" } }
//! ```
//!
//! The architecture name gives timm's defaults; `model_args` overrides them the way
//! `timm.create_model(name, **model_args)` does.

use std::path::Path;

use serde_json::Value;

use crate::{invalid, Error, Result};

pub use crate::models::timm_config::{PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD};

/// Everything needed to build a `VisionTransformer` and prepare its input.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub architecture: String,
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
}

impl VitConfig {
    /// timm's defaults for a known architecture name.
    pub fn from_architecture(name: &str) -> Result<VitConfig> {
        let base = name.split('.').next().unwrap_or(name); // "vit_base_patch16_224.augreg_in21k"
        let (embed_dim, num_heads) = match base {
            "vit_tiny_patch16_224" | "deit_tiny_patch16_224" => (192, 3),
            "vit_small_patch16_224" | "deit_small_patch16_224" => (384, 6),
            "vit_base_patch16_224" | "deit_base_patch16_224" => (768, 12),
            // A bare VisionTransformer: everything must come from model_args.
            "vit" | "vision_transformer" => (0, 0),
            _ => invalid!(
                "unknown architecture `{name}` (known: vit_/deit_ tiny, small, base _patch16_224, or `vit` with model_args)"
            ),
        };
        let (mean, std, crop_pct) = if base.starts_with("deit") { (IMAGENET_MEAN, IMAGENET_STD, 0.875) } else { ([0.5; 3], [0.5; 3], 0.9) };
        Ok(VitConfig {
            architecture: name.to_string(),
            img_size: 224,
            patch_size: 16,
            embed_dim,
            depth: 12,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            init_values: None,
            num_classes: 1000,
            label_names: vec![],
            preprocess: PreprocessConfig { input_size: (224, 224), mean, std, crop_pct, interpolation: "bicubic".into() },
        })
    }

    pub fn load(path: &Path) -> Result<VitConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("config {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| Error::Invalid(format!("config {}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<VitConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Invalid(format!("not valid JSON: {e}")))?;
        let arch = v.get("architecture").and_then(Value::as_str).ok_or_else(|| Error::Invalid("missing `architecture`".into()))?;
        let mut c = Self::from_architecture(arch)?;
        let mut img_size_set = false;
        if let Some(args) = v.get("model_args") {
            let args = args.as_object().ok_or_else(|| Error::Invalid("`model_args` must be an object".into()))?;
            for (key, val) in args {
                match key.as_str() {
                    "img_size" => {
                        c.img_size = square_size(val, key)?;
                        img_size_set = true;
                    }
                    "patch_size" => c.patch_size = square_size(val, key)?,
                    "embed_dim" => c.embed_dim = uint(val, key)?,
                    "depth" => c.depth = uint(val, key)?,
                    "num_heads" => c.num_heads = uint(val, key)?,
                    "num_classes" => c.num_classes = uint(val, key)?,
                    "mlp_ratio" => c.mlp_ratio = num(val, key)?,
                    "qkv_bias" => c.qkv_bias = val.as_bool().ok_or_else(|| bad(key, val))?,
                    "init_values" => c.init_values = if val.is_null() { None } else { Some(num(val, key)?) },
                    // Options this implementation only supports at timm's defaults.
                    "global_pool" if *val == "token" => {}
                    "class_token" if *val == true => {}
                    "reg_tokens" | "no_embed_class" | "pre_norm" | "fc_norm" if *val == 0 || *val == false || val.is_null() => {}
                    "drop_rate" | "drop_path_rate" | "attn_drop_rate" | "proj_drop_rate" | "pos_drop_rate" => {}
                    _ => invalid!("model_args.{key} = {val} is not supported"),
                }
            }
        }
        if let Some(n) = v.get("num_classes") {
            c.num_classes = uint(n, "num_classes")?;
        }
        if let Some(pool) = v.get("global_pool") {
            if *pool != "token" {
                invalid!("global_pool {pool} is not supported (only \"token\")");
            }
        }
        if let Some(names) = v.get("label_names") {
            let names = names.as_array().ok_or_else(|| bad("label_names", names))?;
            c.label_names = names.iter().map(|n| n.as_str().map(str::to_string).ok_or_else(|| bad("label_names", n))).collect::<Result<_>>()?;
        }
        if let Some(pc) = v.get("pretrained_cfg") {
            let p = &mut c.preprocess;
            if let Some(s) = pc.get("input_size") {
                let dims: Vec<usize> = s.as_array().ok_or_else(|| bad("input_size", s))?.iter().map(|d| uint(d, "input_size")).collect::<Result<_>>()?;
                let [3, h, w] = dims[..] else { invalid!("pretrained_cfg.input_size must be [3, H, W], got {s}") };
                p.input_size = (h, w);
            }
            if let Some(m) = pc.get("mean") {
                p.mean = triple(m, "mean")?;
            }
            if let Some(s) = pc.get("std") {
                p.std = triple(s, "std")?;
            }
            if let Some(x) = pc.get("crop_pct") {
                p.crop_pct = num(x, "crop_pct")?;
            }
            if let Some(mode) = pc.get("crop_mode") {
                if *mode != "center" {
                    invalid!("pretrained_cfg.crop_mode {mode} is not supported (only \"center\")");
                }
            }
            if let Some(x) = pc.get("interpolation") {
                p.interpolation = x.as_str().ok_or_else(|| bad("interpolation", x))?.to_string();
            }
        }
        // Without an explicit input size, the network's own size is the one to feed.
        if img_size_set && v.get("pretrained_cfg").and_then(|p| p.get("input_size")).is_none() {
            c.preprocess.input_size = (c.img_size, c.img_size);
        }
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

    /// Tokens per image: the class token plus one per patch.
    pub fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    fn validate(&self) -> Result<()> {
        if self.embed_dim == 0 || self.num_heads == 0 || self.depth == 0 || self.patch_size == 0 || self.img_size == 0 {
            invalid!("embed_dim, num_heads, depth, patch_size and img_size must all be set and non-zero ({self:?})");
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            invalid!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads);
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            invalid!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size);
        }
        if self.mlp_hidden() == 0 {
            invalid!("mlp_ratio {} gives an empty MLP", self.mlp_ratio);
        }
        let p = &self.preprocess;
        if p.input_size != (self.img_size, self.img_size) {
            invalid!("pretrained_cfg.input_size {:?} differs from img_size {} (position embeddings are not resampled)", p.input_size, self.img_size);
        }
        if !(0.0..=1.0).contains(&p.crop_pct) || p.crop_pct == 0.0 {
            invalid!("crop_pct must be in (0, 1], got {}", p.crop_pct);
        }
        if p.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            invalid!("std must be positive, got {:?}", p.std);
        }
        if !self.label_names.is_empty() && self.label_names.len() != self.num_classes {
            invalid!("{} label_names for {} classes", self.label_names.len(), self.num_classes);
        }
        Ok(())
    }
}

fn bad(key: &str, val: &Value) -> Error {
    Error::Invalid(format!("`{key}` has an unexpected value {val}"))
}

fn uint(v: &Value, key: &str) -> Result<usize> {
    v.as_u64().map(|n| n as usize).ok_or_else(|| bad(key, v))
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.as_f64().ok_or_else(|| bad(key, v))
}

/// timm accepts an int or an (h, w) pair; only square sizes are supported here.
fn square_size(v: &Value, key: &str) -> Result<usize> {
    match v.as_array() {
        Some(a) if a.len() == 2 && a[0] == a[1] => uint(&a[0], key),
        Some(_) => invalid!("`{key}` = {v}: only square sizes are supported"),
        None => uint(v, key),
    }
}

fn triple(v: &Value, key: &str) -> Result<[f32; 3]> {
    match v.as_array().map(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>()) {
        Some(Some(x)) if x.len() == 3 => Ok([x[0] as f32, x[1] as f32, x[2] as f32]),
        _ => Err(bad(key, v)),
    }
}
