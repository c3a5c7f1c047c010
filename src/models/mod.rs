//! Whole models on top of the graph, each a plain struct built from a checkpoint's weights map
//! with fields named by its keys: timm's ViT/DeiT classifiers (`vit`, with its hub config and
//! glue kernels), taming-transformers and LlamaGen VQGANs (`vqgan`), and the autoregressive
//! prior (`prior`, sampled by `sampling`). Beside them: safetensors checkpoints (`weights`,
//! lowbit's quantized ones in `packed`), what a folder holds (`info`), and timm's eval image
//! transform (`preprocess`, `images`).

pub mod block_quant;
pub mod checksums;
pub mod classifier;
pub mod files;
pub mod images;
pub mod info;
pub mod packed;
pub mod preprocess;
pub mod prior;
pub mod sampling;
pub mod swin;
pub mod timm_config;
pub mod vit;
pub mod vqgan;
pub mod weights;

pub use vit::config::{PreprocessConfig, VitConfig};
pub use info::{detect, ModelKind, WeightSummary};
pub use preprocess::{load_image, preprocess};
pub use classifier::{Classifier, ClassifierConfig};
pub use vit::VisionTransformer;
pub use weights::Weights;

/// Every parameter block a model's own glue kernels pass to their shaders, after the kernel
/// families' (tests/contracts.rs).
pub fn params_layouts() -> Vec<&'static crate::gpu::contract::ParamsLayout> {
    let mut all = crate::kernels::params_layouts();
    all.extend([&vit::glue::PARAMS_LAYOUT, &swin::glue::PARAMS_LAYOUT, &vqgan::glue::PARAMS_LAYOUT]);
    all
}
