//! The GPU side: one `Gpu` per device, tensors in storage buffers, cached pipelines, timing.

mod buffers;
mod context;
pub mod contract;
pub mod memory;
mod pipelines;
mod preprocess;
pub mod timing;

pub use buffers::{DType, Tensor};
pub use context::{adapter_rank, AdapterClass, Caps, Encoder, Gpu, GpuOptions, KernelPlan};
pub use pipelines::{BindGroupCache, Shader};
pub use preprocess::{preprocess, preprocess_file, shader_flags, Preprocessed, INCLUDES};
