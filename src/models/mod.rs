//! Whole models on top of the kernel library. For now timm's ViT/DeiT classifiers: the hub
//! config (`config`), safetensors checkpoints (`weights`), the network (`vit`), its small glue
//! kernels (`glue`) and timm's eval image transform (`preprocess`).

pub mod config;
pub mod glue;
pub mod images;
pub mod info;
pub mod preprocess;
pub mod prior;
pub mod sampling;
pub mod vit;
pub mod vqgan;
pub mod vqgan_glue;
pub mod weights;

pub use config::{PreprocessConfig, VitConfig};
pub use info::{detect, ModelKind, WeightSummary};
pub use preprocess::{load_image, preprocess};
pub use vit::VisionTransformer;
pub use weights::Weights;
