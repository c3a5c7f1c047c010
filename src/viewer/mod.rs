//! `lowbit viewer`: an egui window over the shipped models. eframe renders with wgpu, and the
//! compute engine runs on the very same device (`Gpu::from_wgpu`): one device, one set of
//! driver resources, and the window works wherever the engine's kernels do.
//!
//! Files: `app` (state, frame loop, precision panel), `layers` (bits per layer of digits-vit),
//! `tabs` (the three tabs), `widgets`,
//! `engine` (model loading and the actions, no UI), `rollout` (attention rollout math),
//! `screenshot` (the `--screenshot` driver the tests use), `native` (the desktop window) and
//! `web` (the browser page, wasm32 with the `web` feature; the rest compiles for both).

mod app;
pub mod engine;
mod layers;
#[cfg(not(target_arch = "wasm32"))]
mod native;
pub mod rollout;
pub mod screenshot;
mod tabs;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;
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

/// The device eframe creates for the window (or canvas), set up for the engine too: the
/// adapter's full limits (egui's default on GL is WebGL2's, which has no compute) and the
/// optional features the kernels use.
fn compute_device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("lowbit viewer"),
        required_features: crate::Gpu::wanted_features(adapter),
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }
}
