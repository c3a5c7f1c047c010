//! Device loss in the viewer: the engine notices a lost device at its next action, opens a new
//! one and reloads its models there (they lived in the lost device's memory), so the window
//! carries on instead of failing every action until it is restarted.

use std::sync::Arc;

use anyhow::Context;

use super::Engine;
use crate::Gpu;

impl Engine {
    /// When the engine's device is lost, opens a new one (`gpu_options`) and drops the models
    /// (loaded again on first use); an opened classifier folder is reopened. `Ok(true)` when it
    /// did. Every action calls it first; the app calls it too to retry an action the loss
    /// interrupted. Jobs still running keep the old device and end with `Error::DeviceLost`.
    pub fn recover(&mut self) -> anyhow::Result<bool> {
        if !self.gpu.is_lost() {
            return Ok(false);
        }
        let lost = self.gpu.check_lost().err().map(|e| e.to_string()).unwrap_or_default();
        // In the browser a device can only be requested asynchronously: this says so.
        let gpu = Gpu::with_options(&self.gpu_options).with_context(|| format!("{lost}; opening a new device failed"))?;
        crate::warn!("{lost}; the viewer opened a new device ({}) and reloads its models", gpu.adapter_name());
        self.gpu = Arc::new(gpu);
        self.models.clear();
        self.recoveries += 1;
        if let Some((dir, _)) = self.classifier.take() {
            self.open_classifier(&dir).context("reopening the classifier on the new device")?;
        }
        Ok(true)
    }
}
