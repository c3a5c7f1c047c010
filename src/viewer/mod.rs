//! `lowbit viewer`: an egui window over the shipped models. eframe renders with wgpu, and the
//! compute engine runs on the very same device (`Gpu::from_wgpu`): one device, one set of
//! driver resources, and the window works wherever the engine's kernels do.
//!
//! Files: `app` (state, frame loop, precision panel), `tabs` (the three tabs), `widgets`,
//! `engine` (model loading and the actions, no UI), `rollout` (attention rollout math),
//! `screenshot` (the `--screenshot` driver the tests use), `native` (the desktop window; the
//! rest also compiles for wasm32, for a future browser build).

mod app;
pub mod engine;
#[cfg(not(target_arch = "wasm32"))]
mod native;
pub mod rollout;
pub mod screenshot;
mod tabs;
mod widgets;

use std::path::PathBuf;

use crate::GpuOptions;
#[cfg(not(target_arch = "wasm32"))]
pub use native::run;

pub struct ViewerOptions {
    /// The folder with `models/` and `samples/`.
    pub assets: PathBuf,
    pub gpu: GpuOptions,
    /// The weight recipe selected at start (f32, q8, q4g32 or a quantized folder's name).
    pub recipe: String,
    /// `(OUT.png, ACTION)`: perform ACTION, save the window, exit.
    pub screenshot: Option<(PathBuf, String)>,
}
