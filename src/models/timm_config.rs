//! timm's hub `config.json`, resolved the way `timm.create_model("hf-hub:…")` resolves it, for
//! every family lowbit implements (ViT/DeiT and Swin):
//!
//! ```json
//! { "architecture": "vit_small_patch14_reg4_dinov2", "num_classes": 0, "global_pool": "token",
//!   "pretrained_cfg": { "tag": "lvd142m", "input_size": [3, 518, 518], "mean": [...], ... },
//!   "model_args": { "img_size": 224 } }                     // optional overrides
//! ```
//!
//! The architecture's own arguments come from `architectures.json`, which
//! `tools/gen_architectures.py` reads out of timm's registry. Precedence is timm's: the
//! config's `model_args`, then the architecture's, then what `pretrained_cfg` fixes
//! (`num_classes`, `global_pool`, and `img_size` when `fixed_input_size`), then the model
//! class's defaults. A family's loader reads its options through [`HubConfig::arg`] and calls
//! [`HubConfig::reject_unknown`] so an option it does not implement is named, not ignored.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::{invalid, Error, Result};

/// ImageNet statistics (deit_*, DINOv2, Swin, …); Google's vit_* weights use 0.5.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The model families lowbit implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// timm's `VisionTransformer` (ViT, DeiT, DeiT III, DINOv2, CLIP image towers) and
    /// `VisionTransformerDistilled` (DeiT with a distillation token).
    Vit,
    /// timm's `SwinTransformer`.
    Swin,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Vit => "vit",
            Family::Swin => "swin",
        }
    }
}

/// timm's eval transform settings (`pretrained_cfg`).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// (height, width) the network takes.
    pub input_size: (usize, usize),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The image's shorter side is resized to floor(size / crop_pct) before the center crop.
    pub crop_pct: f64,
    pub interpolation: String,
}

/// A hub config resolved against timm's registry: what a family's loader reads.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The architecture as written in the config (with its `.tag`, when it has one).
    pub architecture: String,
    pub family: Family,
    /// timm's model class (`VisionTransformer`, `VisionTransformerDistilled`, `SwinTransformer`).
    pub class: String,
    /// The architecture's `model_args` overridden by the config's.
    args: Map<String, Value>,
    /// The config's own `model_args` (to tell an explicit override from a default).
    explicit: Map<String, Value>,
    /// What `pretrained_cfg` decides when no model argument does.
    pretrained_defaults: Map<String, Value>,
    /// Class name, for error messages and defaults.
    defaults: Map<String, Value>,
    pub num_classes: usize,
    /// Class names when the config lists them (`label_names`), else empty.
    pub label_names: Vec<String>,
    pub preprocess: PreprocessConfig,
}

/// The generated table of timm architectures (see `tools/gen_architectures.py`).
fn table() -> &'static Value {
    static TABLE: OnceLock<Value> = OnceLock::new();
    TABLE.get_or_init(|| serde_json::from_str(include_str!("architectures.json")).expect("architectures.json is valid JSON (generated)"))
}

/// Every architecture name lowbit knows, sorted (for `lowbit info` and error messages).
pub fn known_architectures() -> Vec<&'static str> {
    table()["architectures"].as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// Bare class names accepted as an architecture: every option then comes from `model_args`.
const BARE: [(&str, Family, &str); 4] = [
    ("vit", Family::Vit, "VisionTransformer"),
    ("vision_transformer", Family::Vit, "VisionTransformer"),
    ("swin", Family::Swin, "SwinTransformer"),
    ("swin_transformer", Family::Swin, "SwinTransformer"),
];

impl HubConfig {
    pub fn load(path: &Path) -> Result<HubConfig> {
        let text = crate::models::files::read_text(path, "config")?;
        Self::from_json(&text).map_err(|e| Error::Invalid(format!("config {}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<HubConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Invalid(format!("not valid JSON: {e}")))?;
        let Some(cfg) = v.as_object() else { invalid!("the config must be a JSON object") };
        let arch = cfg.get("architecture").and_then(Value::as_str).ok_or_else(|| Error::Invalid("missing `architecture`".into()))?;
        // timm's legacy single-dict layout: the pretrained settings sit at the top level.
        let pretrained_cfg = match cfg.get("pretrained_cfg") {
            Some(Value::Object(p)) => p.clone(),
            Some(other) => invalid!("`pretrained_cfg` must be an object, got {other}"),
            None => cfg.clone(),
        };
        let explicit = match cfg.get("model_args") {
            // timm's create_model drops None-valued kwargs: a null leaves the default in effect.
            Some(Value::Object(m)) => m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => invalid!("`model_args` must be an object, got {other}"),
            None => Map::new(),
        };
        let (base, tag) = match arch.split_once('.') {
            Some((b, t)) => (b, Some(t.to_string())),
            None => (arch, pretrained_cfg.get("tag").and_then(Value::as_str).map(str::to_string)),
        };
        let (family, class, arch_args, mut pretrained) = lookup(base, tag.as_deref())?;
        let defaults = table()["defaults"][&class].as_object().cloned().unwrap_or_default();
        // The config's pretrained_cfg over the architecture's (its tag's) defaults.
        for (k, val) in &pretrained_cfg {
            pretrained.insert(k.clone(), val.clone());
        }
        if let Some(n) = cfg.get("num_classes") {
            pretrained.insert("num_classes".into(), n.clone());
        }
        let label_names = cfg.get("label_names").or_else(|| pretrained_cfg.get("label_names")).or_else(|| pretrained_cfg.get("labels"));
        let label_names = match label_names {
            None | Some(Value::Null) => vec![],
            Some(names) => {
                let arr = names.as_array().ok_or_else(|| bad("label_names", names))?;
                arr.iter().map(|n| n.as_str().map(str::to_string).ok_or_else(|| bad("label_names", n))).collect::<Result<_>>()?
            }
        };
        let mut args = arch_args;
        for (k, val) in &explicit {
            args.insert(k.clone(), val.clone());
        }
        let fixed_input = pretrained.get("fixed_input_size").and_then(Value::as_bool).unwrap_or(false)
            && args.get("dynamic_img_size").and_then(Value::as_bool) != Some(true);
        let input_size = match pretrained.get("input_size") {
            Some(s) => {
                let dims: Vec<usize> = s.as_array().ok_or_else(|| bad("input_size", s))?.iter().map(|d| uint(d, "input_size")).collect::<Result<_>>()?;
                let [3, h, w] = dims[..] else { invalid!("pretrained_cfg.input_size must be [3, H, W], got {s}") };
                Some((h, w))
            }
            None => None,
        };
        // timm's `_update_default_model_kwargs`: what pretrained_cfg decides unless an argument does.
        let mut pretrained_defaults = Map::new();
        if let Some(n) = pretrained.get("num_classes").filter(|n| n.as_i64().is_some_and(|n| n >= 0)) {
            pretrained_defaults.insert("num_classes".into(), n.clone());
        }
        if let Some(pool) = pretrained.get("global_pool").or_else(|| cfg.get("global_pool")) {
            pretrained_defaults.insert("global_pool".into(), pool.clone());
        }
        if let (true, Some((h, w))) = (fixed_input, input_size) {
            pretrained_defaults.insert("img_size".into(), Value::from(vec![h, w]));
        }
        let mut hub = HubConfig {
            architecture: arch.to_string(),
            family,
            class,
            args,
            explicit,
            pretrained_defaults,
            defaults,
            num_classes: 0,
            label_names,
            preprocess: PreprocessConfig { input_size: (224, 224), mean: IMAGENET_MEAN, std: IMAGENET_STD, crop_pct: 0.875, interpolation: "bicubic".into() },
        };
        hub.num_classes = hub.usize_arg("num_classes")?;
        let img = hub.size_arg("img_size")?;
        // An explicit img_size with a fixed input size moves the eval transform with it (timm's
        // `_parse_model_cfg`); without any input size the network's own size is the one to feed.
        let input_size = match (hub.explicit.contains_key("img_size") && fixed_input, input_size) {
            (false, Some(s)) => s,
            _ => (img, img),
        };
        hub.preprocess = preprocess_config(&pretrained, input_size)?;
        if !hub.label_names.is_empty() && hub.label_names.len() != hub.num_classes {
            invalid!("{} label_names for {} classes", hub.label_names.len(), hub.num_classes);
        }
        Ok(hub)
    }

    /// The resolved value of model argument `key` (None when no level sets it).
    pub fn arg(&self, key: &str) -> Option<&Value> {
        self.args.get(key).or_else(|| self.pretrained_defaults.get(key)).or_else(|| self.defaults.get(key))
    }

    /// Whether the config's own `model_args` set `key`.
    pub fn is_explicit(&self, key: &str) -> bool {
        self.explicit.contains_key(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.arg(key).ok_or_else(|| Error::Invalid(format!("architecture `{}` needs model_args.{key}", self.architecture)))
    }

    pub fn usize_arg(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        uint(v, key)
    }

    pub fn f64_arg(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.as_f64().ok_or_else(|| bad(key, v))
    }

    pub fn bool_arg(&self, key: &str) -> Result<bool> {
        let v = self.required(key)?;
        v.as_bool().ok_or_else(|| bad(key, v))
    }

    /// A string argument; None when it is `null`.
    pub fn str_arg(&self, key: &str) -> Result<Option<&str>> {
        match self.arg(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| bad(key, v)),
        }
    }

    /// An optional number (`init_values: null` is None).
    pub fn opt_f64_arg(&self, key: &str) -> Result<Option<f64>> {
        match self.arg(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(key, v)),
        }
    }

    /// A list of sizes (`depths`, `num_heads` of Swin's stages), or one size for every stage.
    pub fn usize_list_arg(&self, key: &str, len: usize) -> Result<Vec<usize>> {
        let v = self.required(key)?;
        match v.as_array() {
            Some(a) => a.iter().map(|x| uint(x, key)).collect(),
            None => Ok(vec![uint(v, key)?; len]),
        }
    }

    /// A size timm accepts as an int or an (h, w) pair; only square sizes are supported.
    pub fn size_arg(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        match v.as_array() {
            Some(a) if a.len() == 2 && a[0] == a[1] => uint(&a[0], key),
            Some(_) => invalid!("architecture `{}`: {key} = {v}: only square sizes are supported", self.architecture),
            None => uint(v, key),
        }
    }

    /// The layer-norm eps a `norm_layer` argument asks for (`default` when unset).
    pub fn norm_eps(&self, default: f64) -> Result<f64> {
        match self.arg("norm_layer") {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.get("layer_norm_eps").and_then(Value::as_f64) {
                Some(eps) => Ok(eps),
                None => invalid!("architecture `{}`: norm_layer {v} is not supported (only LayerNorm)", self.architecture),
            },
        }
    }

    /// Errors on any model argument set away from its class default whose name is not in
    /// `supported`: options the loader would otherwise silently ignore.
    pub fn reject_unknown(&self, supported: &[&str]) -> Result<()> {
        // Training-only settings change nothing at inference.
        const TRAINING: [&str; 8] = ["drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "weight_init", "fix_init"];
        for (key, val) in &self.args {
            if supported.contains(&key.as_str()) || TRAINING.contains(&key.as_str()) || self.defaults.get(key) == Some(val) {
                continue;
            }
            if val.is_null() && matches!(key.as_str(), "device" | "dtype") {
                continue;
            }
            invalid!("architecture `{}`: option {key} = {val} is not supported by lowbit", self.architecture);
        }
        Ok(())
    }
}

/// (family, class, model_args, pretrained_cfg) of a known architecture.
type Known = (Family, String, Map<String, Value>, Map<String, Value>);

/// (family, class, model_args, pretrained_cfg) of a known architecture (or a bare class name).
fn lookup(base: &str, tag: Option<&str>) -> Result<Known> {
    if let Some(&(_, family, class)) = BARE.iter().find(|b| b.0 == base) {
        let mean = if family == Family::Vit { [0.5; 3] } else { IMAGENET_MEAN };
        let std = if family == Family::Vit { [0.5; 3] } else { IMAGENET_STD };
        let pretrained = serde_json::json!({
            "input_size": [3, 224, 224], "mean": mean, "std": std, "crop_pct": 0.9, "interpolation": "bicubic",
        });
        return Ok((family, class.to_string(), Map::new(), pretrained.as_object().cloned().unwrap_or_default()));
    }
    let Some(entry) = table()["architectures"].get(base) else {
        let family_hint = ["vit_", "deit", "swin_"].iter().any(|p| base.starts_with(p));
        let hint = if family_hint { " (this timm model uses a layer lowbit does not implement, or is newer than the table)" } else { "" };
        invalid!(
            "unknown architecture `{base}`{hint}: lowbit knows {} timm ViT/DeiT/Swin architectures (`lowbit info --architectures` lists them), or `vit` / `swin` with every option in model_args",
            known_architectures().len()
        )
    };
    let family = match entry["family"].as_str() {
        Some("swin") => Family::Swin,
        _ => Family::Vit,
    };
    let class = entry["class"].as_str().unwrap_or("VisionTransformer").to_string();
    let args = entry["model_args"].as_object().cloned().unwrap_or_default();
    let mut pretrained = entry["pretrained_cfg"].as_object().cloned().unwrap_or_default();
    if let Some(tag) = tag {
        // An unknown tag is fine (a fine-tune of the architecture): its config says the rest.
        if let Some(diff) = entry["tags"].get(tag).and_then(Value::as_object) {
            for (k, v) in diff {
                pretrained.insert(k.clone(), v.clone());
            }
        }
    }
    Ok((family, class, args, pretrained))
}

/// Largest input side and largest resize target (side) a config may ask for.
const MAX_INPUT_SIZE: usize = 8192;
const MAX_RESIZE_SIZE: f64 = 16384.0;

fn preprocess_config(p: &Map<String, Value>, input_size: (usize, usize)) -> Result<PreprocessConfig> {
    let mut out = PreprocessConfig { input_size, mean: IMAGENET_MEAN, std: IMAGENET_STD, crop_pct: 0.875, interpolation: "bicubic".into() };
    if let Some(m) = p.get("mean") {
        out.mean = triple(m, "mean")?;
    }
    if let Some(s) = p.get("std") {
        out.std = triple(s, "std")?;
    }
    if let Some(x) = p.get("crop_pct").filter(|x| !x.is_null()) {
        out.crop_pct = x.as_f64().ok_or_else(|| bad("crop_pct", x))?;
    }
    if let Some(mode) = p.get("crop_mode").filter(|x| !x.is_null()) {
        if *mode != "center" {
            invalid!("pretrained_cfg.crop_mode {mode} is not supported (only \"center\")");
        }
    }
    if let Some(x) = p.get("interpolation") {
        out.interpolation = x.as_str().ok_or_else(|| bad("interpolation", x))?.to_string();
    }
    if !(out.crop_pct > 0.0 && out.crop_pct <= 1.0) {
        invalid!("pretrained_cfg.crop_pct must be in (0, 1], got {}", out.crop_pct);
    }
    // The resize before the crop is floor(size / crop_pct): bounded so a tiny crop_pct is an
    // error here rather than a huge allocation per image.
    let (h, w) = input_size;
    if h.max(w) > MAX_INPUT_SIZE || (h.max(w) as f64 / out.crop_pct) > MAX_RESIZE_SIZE {
        invalid!("pretrained_cfg input_size {h}×{w} with crop_pct {} resizes beyond {MAX_RESIZE_SIZE} pixels a side", out.crop_pct);
    }
    if out.std.iter().any(|&s| !s.is_finite() || s < 1e-6) || out.mean.iter().any(|m| !m.is_finite()) {
        invalid!("pretrained_cfg mean/std must be finite with std ≥ 1e-6, got mean {:?} std {:?}", out.mean, out.std);
    }
    Ok(out)
}

fn bad(key: &str, val: &Value) -> Error {
    Error::Invalid(format!("`{key}` has an unexpected value {val}"))
}

fn uint(v: &Value, key: &str) -> Result<usize> {
    v.as_u64().map(|n| n as usize).ok_or_else(|| bad(key, v))
}

fn triple(v: &Value, key: &str) -> Result<[f32; 3]> {
    match v.as_array().map(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>()) {
        Some(Some(x)) if x.len() == 3 => Ok([x[0] as f32, x[1] as f32, x[2] as f32]),
        _ => Err(bad(key, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_configs_resolve_like_timm() {
        let c = HubConfig::from_json(r#"{"architecture": "vit_small_patch14_reg4_dinov2", "num_classes": 0,
            "pretrained_cfg": {"tag": "lvd142m", "input_size": [3, 518, 518], "fixed_input_size": true}}"#).unwrap();
        assert_eq!((c.family, c.usize_arg("reg_tokens").unwrap(), c.size_arg("img_size").unwrap()), (Family::Vit, 4, 518));
        assert_eq!(c.num_classes, 0);
        assert!(c.bool_arg("no_embed_class").unwrap());
        let c = HubConfig::from_json(r#"{"architecture": "vit_small_patch14_dinov2.lvd142m", "model_args": {"img_size": 224}}"#).unwrap();
        assert_eq!((c.size_arg("img_size").unwrap(), c.preprocess.input_size), (224, (224, 224)));
        let c = HubConfig::from_json(r#"{"architecture": "swin_tiny_patch4_window7_224"}"#).unwrap();
        assert_eq!((c.family, c.usize_list_arg("depths", 4).unwrap()), (Family::Swin, vec![2, 2, 6, 2]));
        assert_eq!(c.norm_eps(1e-6).unwrap(), 1e-5); // SwinTransformer's default nn.LayerNorm
        assert_eq!(c.num_classes, 1000);
        let c = HubConfig::from_json(r#"{"architecture": "vit_base_patch16_clip_quickgelu_224"}"#).unwrap();
        assert_eq!((c.str_arg("act_layer").unwrap(), c.norm_eps(1e-6).unwrap()), (Some("quick_gelu"), 1e-5));
        assert!(HubConfig::from_json(r#"{"architecture": "vit_so400m_patch14_siglip_224"}"#).unwrap().reject_unknown(&["embed_dim"]).is_err());
        let err = HubConfig::from_json(r#"{"architecture": "resnet50"}"#).unwrap_err().to_string();
        assert!(err.contains("unknown architecture `resnet50`"), "{err}");
    }
}
