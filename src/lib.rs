//! lowbit: quantized vision models on any GPU through wgpu.
//!
//! The crate is layered one way: `quant` packs weights on the CPU, `gpu` owns the device,
//! buffers and pipelines, `kernels` holds one module per WGSL kernel family (each with its CPU
//! reference), and `cli` is a thin layer over these calls.

pub mod error;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod quant;
pub mod synthetic;
// The command line (clap, files, terminals) has no place in the browser build.
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(feature = "viewer")]
pub mod viewer;

pub use error::{Error, Result};
pub use gpu::{Caps, Encoder, Gpu, GpuOptions, Tensor};
