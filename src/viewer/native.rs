//! The desktop window: eframe's native runner with the wgpu device set up for compute.

use std::sync::Arc;

use anyhow::{anyhow, bail};
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupCreateNew};

use super::app::ViewerApp;
use super::engine::Engine;
use super::screenshot::ScreenshotJob;
use super::ViewerOptions;
use crate::{Gpu, GpuOptions};

/// Opens the window and returns when it closes; in screenshot mode, errors if no screenshot
/// was saved.
pub fn run(opts: ViewerOptions) -> anyhow::Result<()> {
    // Parse the action before opening a window, so a typo fails fast.
    let job = opts.screenshot.map(|(out, action)| ScreenshotJob::new(out, &action)).transpose()?;
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        bail!("no display to open a window on (DISPLAY is not set); without one, run it under Xvfb: xvfb-run -a lowbit viewer ...");
    }
    let outcome = job.as_ref().map(|j| j.outcome.clone());
    let native = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default().with_inner_size([1000.0, 720.0]).with_title("lowbit viewer"),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_configuration(&opts.gpu),
        ..Default::default()
    };
    let (assets, gpu_opts, recipe) = (opts.assets, opts.gpu, opts.recipe);
    eframe::run_native(
        "lowbit viewer",
        native,
        Box::new(move |cc| {
            // A missing render state leaves the app up with an error message, not a crash.
            let engine = match cc.wgpu_render_state.as_ref() {
                Some(rs) => Ok(Engine::new(Gpu::from_wgpu(&rs.instance, &rs.adapter, rs.device.clone(), rs.queue.clone(), &gpu_opts), assets)),
                None => Err("eframe started without the wgpu renderer".to_string()),
            };
            Ok(Box::new(ViewerApp::new(engine, &recipe, job)?))
        }),
    )
    .map_err(|e| anyhow!("viewer window: {e}"))?;
    match outcome.map(|o| o.lock().unwrap().take()) {
        None | Some(Some(Ok(()))) => Ok(()),
        Some(Some(Err(e))) => bail!("screenshot: {e}"),
        Some(None) => bail!("screenshot: the window closed before the screenshot was saved"),
    }
}

/// eframe's device, set up the way the engine wants it (`compute_device_descriptor`), with the
/// same adapter preference as `Gpu::new` (real GPUs first, Vulkan over GL).
fn wgpu_configuration(opts: &GpuOptions) -> WgpuConfiguration {
    let mut setup = WgpuSetupCreateNew::without_display_handle();
    // The Vulkan validation layers are slow and noisy; wgpu's own validation still runs.
    setup.instance_descriptor.flags.remove(wgpu::InstanceFlags::VALIDATION);
    let wanted_name = opts.adapter.clone().map(|n| n.to_lowercase());
    setup.native_adapter_selector = Some(Arc::new(move |adapters: &[wgpu::Adapter], surface: Option<&wgpu::Surface<'_>>| {
        let mut usable: Vec<&wgpu::Adapter> = adapters
            .iter()
            .filter(|a| surface.is_none_or(|s| a.is_surface_supported(s)))
            .filter(|a| wanted_name.as_ref().is_none_or(|w| a.get_info().name.to_lowercase().contains(w)))
            .collect();
        usable.sort_by_key(|a| crate::gpu::adapter_rank(&a.get_info()));
        usable.first().map(|a| (*a).clone()).ok_or_else(|| {
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            format!("no adapter can draw to this window{} (have: {})", wanted_name.as_ref().map_or(String::new(), |w| format!(" matching `{w}`")), names.join(", "))
        })
    }));
    setup.device_descriptor = Arc::new(super::compute_device_descriptor);
    WgpuConfiguration { wgpu_setup: WgpuSetup::CreateNew(setup), ..Default::default() }
}
