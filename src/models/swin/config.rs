//! timm's `SwinTransformer` arguments, from a hub config resolved by `timm_config`.

use std::path::Path;

use crate::models::timm_config::{Family, HubConfig, PreprocessConfig};
use crate::{invalid, Result};

/// Everything needed to build a `SwinTransformer` and prepare its input.
#[derive(Clone, Debug, PartialEq)]
pub struct SwinConfig {
    pub architecture: String,
    pub img_size: usize,
    pub patch_size: usize,
    /// Width of stage 0; stage i has `embed_dim · 2^i`.
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    /// The asked window per stage (shrunk to the stage's resolution where that is smaller).
    pub window_size: Vec<usize>,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub norm_eps: f32,
    /// 0: the forward pass returns the pooled features.
    pub num_classes: usize,
    /// `avg` (timm's default) or none (`""`: every token's features).
    pub avg_pool: bool,
    pub label_names: Vec<String>,
    pub preprocess: PreprocessConfig,
}

/// The options this implementation reads; anything else set away from timm's default is refused.
const SUPPORTED: [&str; 12] =
    ["img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias", "norm_layer", "num_classes", "global_pool", "in_chans"];

/// Bounds that keep a hostile config from asking for absurd allocations before the checkpoint
/// is read (real Swins: width ≤ 192·8, ≤ 24 blocks a stage, 384 px).
const MAX_WIDTH: usize = 8192;
const MAX_BLOCKS: usize = 256;
const MAX_IMAGE: usize = 4096;

/// One stage's geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Token grid side at this stage.
    pub resolution: usize,
    pub dim: usize,
    pub heads: usize,
    pub depth: usize,
    /// The window actually used and the shift of odd blocks (0 when the window covers the grid).
    pub window: usize,
    pub shift: usize,
}

impl SwinConfig {
    pub fn load(path: &Path) -> Result<SwinConfig> {
        Self::from_hub(&HubConfig::load(path)?)
    }

    pub fn from_json(text: &str) -> Result<SwinConfig> {
        Self::from_hub(&HubConfig::from_json(text)?)
    }

    pub fn from_hub(hub: &HubConfig) -> Result<SwinConfig> {
        let arch = &hub.architecture;
        if hub.family != Family::Swin {
            invalid!("architecture `{arch}` is a {}, not a Swin", hub.family.name());
        }
        hub.reject_unknown(&SUPPORTED)?;
        if hub.usize_arg("in_chans")? != 3 {
            invalid!("architecture `{arch}`: in_chans {} is not supported (RGB only)", hub.usize_arg("in_chans")?);
        }
        let depths = hub.usize_list_arg("depths", 4)?;
        let stages = depths.len();
        let embed_dim = hub.usize_arg("embed_dim").map_err(|_| crate::Error::Invalid(format!("architecture `{arch}`: embed_dim must be one number (per-stage widths are not supported)")))?;
        let num_heads = hub.usize_list_arg("num_heads", stages)?;
        let window_size = hub.usize_list_arg("window_size", stages)?;
        let avg_pool = match hub.str_arg("global_pool")? {
            Some("avg") => true,
            Some("") | None => false,
            Some(other) => invalid!("architecture `{arch}`: global_pool `{other}` is not supported (avg or \"\")"),
        };
        let c = SwinConfig {
            architecture: arch.clone(),
            img_size: hub.size_arg("img_size")?,
            patch_size: hub.size_arg("patch_size")?,
            embed_dim,
            depths,
            num_heads,
            window_size,
            mlp_ratio: hub.f64_arg("mlp_ratio")?,
            qkv_bias: hub.bool_arg("qkv_bias")?,
            norm_eps: hub.norm_eps(1e-5)? as f32,
            num_classes: hub.num_classes,
            avg_pool,
            label_names: hub.label_names.clone(),
            preprocess: hub.preprocess.clone(),
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let arch = &self.architecture;
        let n = self.depths.len();
        if n == 0 || self.num_heads.len() != n || self.window_size.len() != n {
            invalid!("architecture `{arch}`: depths {:?}, num_heads {:?} and window_size {:?} must have one entry per stage", self.depths, self.num_heads, self.window_size);
        }
        if self.embed_dim == 0 || self.embed_dim << (n - 1) > MAX_WIDTH || self.depths.iter().any(|&d| d > MAX_BLOCKS) || self.img_size > MAX_IMAGE {
            invalid!("architecture `{arch}`: embed_dim {}, depths {:?} or img_size {} is beyond what lowbit accepts (width ≤ {MAX_WIDTH}, ≤ {MAX_BLOCKS} blocks a stage, ≤ {MAX_IMAGE} px)", self.embed_dim, self.depths, self.img_size);
        }
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            invalid!("architecture `{arch}`: img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size);
        }
        if self.preprocess.input_size != (self.img_size, self.img_size) {
            invalid!("architecture `{arch}`: pretrained_cfg.input_size {:?} differs from img_size {} (Swin's windows and masks are fixed at load)", self.preprocess.input_size, self.img_size);
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            invalid!("architecture `{arch}`: mlp_ratio {} is out of range", self.mlp_ratio);
        }
        if !self.label_names.is_empty() && self.label_names.len() != self.num_classes {
            invalid!("{} label_names for {} classes", self.label_names.len(), self.num_classes);
        }
        for s in self.stages()? {
            if s.heads == 0 || !s.dim.is_multiple_of(s.heads) || s.dim / s.heads > super::glue::MAX_HEAD_DIM {
                invalid!("architecture `{arch}`: stage width {} with {} heads (head_dim must divide and be ≤ {})", s.dim, s.heads, super::glue::MAX_HEAD_DIM);
            }
            if s.window == 0 || !s.resolution.is_multiple_of(s.window) {
                invalid!("architecture `{arch}`: a {0}×{0} token grid is not a whole number of {1}×{1} windows (timm pads it; lowbit does not)", s.resolution, s.window);
            }
        }
        Ok(())
    }

    /// Each stage's grid, width, heads and window, as timm's `_calc_window_shift` sets them.
    pub fn stages(&self) -> Result<Vec<Stage>> {
        let mut res = self.img_size / self.patch_size.max(1);
        let mut out = Vec::new();
        for (i, (&depth, (&heads, &ws))) in self.depths.iter().zip(self.num_heads.iter().zip(&self.window_size)).enumerate() {
            if i > 0 {
                if !res.is_multiple_of(2) {
                    invalid!("architecture `{}`: stage {i} merges patches of an odd {res}×{res} grid (timm pads it; lowbit does not)", self.architecture);
                }
                res /= 2;
            }
            let window = ws.min(res);
            let shift = if res <= window { 0 } else { window / 2 };
            out.push(Stage { resolution: res, dim: self.embed_dim << i, heads, depth, window, shift });
        }
        Ok(out)
    }

    /// Width of the last stage (what the head reads).
    pub fn num_features(&self) -> usize {
        self.embed_dim << (self.depths.len() - 1)
    }

    pub fn mlp_hidden(&self, dim: usize) -> usize {
        (dim as f64 * self.mlp_ratio) as usize
    }
}
