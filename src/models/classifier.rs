//! An image classifier of any timm family lowbit implements, chosen by the folder's
//! `config.json` (`HubConfig::family`): what `classify`, `eval`, `compare`, `bench` and the
//! quantizer run without caring whether it is a ViT or a Swin.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::swin::config::SwinConfig;
use super::swin::SwinTransformer;
use super::timm_config::{Family, HubConfig, PreprocessConfig};
use super::vit::config::VitConfig;
use super::vit::{Classified, VisionTransformer};
use super::weights::{resolve_checkpoint, Weights};
use crate::formats::WeightFormat;
use super::preprocess::{load_image, preprocess};
use crate::graph::{Graph, NodeTime, Plan};
use crate::{Gpu, Result};

/// A classifier's configuration, parsed once.
#[derive(Clone, Debug)]
pub enum ClassifierConfig {
    Vit(VitConfig),
    Swin(SwinConfig),
}

impl ClassifierConfig {
    pub fn load(path: &Path) -> Result<ClassifierConfig> {
        Self::from_hub(&HubConfig::load(path)?)
    }

    pub fn from_hub(hub: &HubConfig) -> Result<ClassifierConfig> {
        Ok(match hub.family {
            Family::Vit => ClassifierConfig::Vit(VitConfig::from_hub(hub)?),
            Family::Swin => ClassifierConfig::Swin(SwinConfig::from_hub(hub)?),
        })
    }

    pub fn preprocess(&self) -> &PreprocessConfig {
        match self {
            ClassifierConfig::Vit(c) => &c.preprocess,
            ClassifierConfig::Swin(c) => &c.preprocess,
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            ClassifierConfig::Vit(c) => c.num_classes,
            ClassifierConfig::Swin(c) => c.num_classes,
        }
    }

    pub fn label_names(&self) -> &[String] {
        match self {
            ClassifierConfig::Vit(c) => &c.label_names,
            ClassifierConfig::Swin(c) => &c.label_names,
        }
    }

    /// One line on the architecture and its options, for `lowbit info` and `bench`.
    pub fn describe(&self) -> String {
        match self {
            ClassifierConfig::Vit(c) => c.describe(),
            ClassifierConfig::Swin(c) => format!(
                "timm Swin `{}`: {}×{} images, patch {}, width {}, depths {:?}, heads {:?}, window {:?}, {} classes",
                c.architecture, c.img_size, c.img_size, c.patch_size, c.embed_dim, c.depths, c.num_heads, c.window_size, c.num_classes
            ),
        }
    }
}

pub enum Classifier {
    Vit(Box<VisionTransformer>),
    Swin(Box<SwinTransformer>),
}

impl Classifier {
    pub fn new(gpu: &Gpu, config: &ClassifierConfig, w: &Weights, format: WeightFormat) -> Result<Classifier> {
        Ok(match config {
            ClassifierConfig::Vit(c) => Classifier::Vit(Box::new(VisionTransformer::new(gpu, c, w, format)?)),
            ClassifierConfig::Swin(c) => Classifier::Swin(Box::new(SwinTransformer::new(gpu, c, w, format)?)),
        })
    }

    /// A folder with `model.safetensors` and `config.json`, or a `.safetensors` file with
    /// `config.json` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<Classifier> {
        let (weights_path, config_path) = resolve_checkpoint(path, config, "config.json")?;
        let cfg = ClassifierConfig::load(&config_path)?;
        Self::new(gpu, &cfg, &Weights::load(&weights_path)?, format)
    }

    pub fn config(&self) -> ClassifierConfig {
        match self {
            Classifier::Vit(m) => ClassifierConfig::Vit(m.config.clone()),
            Classifier::Swin(m) => ClassifierConfig::Swin(m.config.clone()),
        }
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        match self {
            Classifier::Vit(m) => &m.config.preprocess,
            Classifier::Swin(m) => &m.config.preprocess,
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Classifier::Vit(m) => m.config.num_classes,
            Classifier::Swin(m) => m.config.num_classes,
        }
    }

    pub fn label_names(&self) -> &[String] {
        match self {
            Classifier::Vit(m) => &m.config.label_names,
            Classifier::Swin(m) => &m.config.label_names,
        }
    }

    pub fn output_dim(&self) -> usize {
        match self {
            Classifier::Vit(m) => m.output_dim(),
            Classifier::Swin(m) => m.output_dim(),
        }
    }

    pub fn graph(&self, batch: usize) -> Result<Graph> {
        match self {
            Classifier::Vit(m) => m.graph(batch),
            Classifier::Swin(m) => m.graph(batch),
        }
    }

    pub fn classify_files(&self, gpu: &Gpu, paths: &[PathBuf]) -> Result<Classified> {
        match self {
            Classifier::Vit(m) => m.classify_files(gpu, paths),
            Classifier::Swin(m) => m.classify_files(gpu, paths),
        }
    }

    pub fn classify(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<Classified> {
        match self {
            Classifier::Vit(m) => m.classify(gpu, images),
            Classifier::Swin(m) => m.classify(gpu, images),
        }
    }

    pub fn classify_profiled(&self, gpu: &Gpu, images: &[RgbImage]) -> Result<(Classified, Vec<NodeTime>)> {
        match self {
            Classifier::Vit(m) => m.classify_profiled(gpu, images),
            Classifier::Swin(m) => m.classify_profiled(gpu, images),
        }
    }

    pub fn describe(&self) -> String {
        self.config().describe()
    }
}

/// timm's eval transform of each image, concatenated: [N, 3, H, W].
pub(crate) fn preprocess_images(images: &[RgbImage], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let mut pixels = Vec::new();
    for (i, img) in images.iter().enumerate() {
        pixels.extend(preprocess(img, cfg).map_err(|e| crate::Error::Invalid(format!("image {i}: {e}")))?);
    }
    Ok(pixels)
}

/// The eval transform of the images read from `paths`, concatenated.
pub(crate) fn preprocess_files(paths: &[PathBuf], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let mut pixels = Vec::new();
    for path in paths {
        let image = preprocess(&load_image(path)?, cfg);
        pixels.extend(image.map_err(|e| crate::Error::Invalid(format!("image {}: {e}", path.display())))?);
    }
    Ok(pixels)
}

/// Runs a classifier's graph with features (output 0 logits, output 1 pooled features) on `n`
/// preprocessed images, profiling each node when asked.
pub(crate) fn run_pixels(gpu: &Gpu, graph: impl FnOnce(usize) -> Result<Graph>, pixels: &[f32], n: usize, profile: bool) -> Result<(Classified, Vec<NodeTime>)> {
    if n == 0 {
        crate::invalid!("no images to classify");
    }
    let plan = Plan::new(gpu, graph(n)?)?;
    plan.set_input(gpu, 0, pixels)?;
    let (out, times) = if profile { plan.profile(gpu)? } else { (plan.run(gpu)?, Vec::new()) };
    Ok((Classified { logits: out[0].to_vec_f32(gpu)?, features: out[1].to_vec_f32(gpu)? }, times))
}
