//! lowbit: quantized vision models on any GPU through wgpu.
//!
//! The crate is layered one way, each layer using only those before it (`tests/layering.rs`
//! checks it):
//! 1. `formats` (how each weight format packs, and its WGSL decode table) and `gpu` (device,
//!    buffers, pipelines, the shader preprocessor);
//! 2. `kernels`: one module per WGSL kernel family, each with its CPU reference; which shape
//!    runs on which adapter is `kernels::launch`'s one table;
//! 3. `graph`: the op vocabulary models are written in, the memory planner and the executor;
//! 4. `models`: checkpoints (including lowbit's quantized ones) and the model structs;
//! 5. `quant`: post-training quantization, which calibrates through the models, and `codec`:
//!    lossless entropy coding of token grids under a prior (`lowbit compress`);
//! 6. `cli` and `viewer`, thin layers over these calls.

pub mod codec;
pub mod error;
pub mod formats;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod log;
pub mod metrics;
pub mod models;
pub mod ops_check;
pub mod quant;
pub mod synthetic;
// The command line (clap, files, terminals) has no place in the browser build.
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
#[cfg(feature = "viewer")]
pub mod viewer;

pub use error::{Error, Result};
pub use gpu::{Caps, Encoder, Gpu, GpuOptions, Tensor};
