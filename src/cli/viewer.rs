//! `lowbit viewer [--assets DIR] [--screenshot OUT.png --action ACTION]`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::viewer::{run as run_viewer, ViewerOptions};
use crate::GpuOptions;

#[derive(Args)]
pub struct ViewerArgs {
    /// Where the shipped models and samples are (default: ./assets, else the source tree's).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// The weight recipe selected at start: f32, q8, q4g32, or the name of a quantized model
    /// folder in the assets (listed in the precision panel).
    #[arg(long, default_value = "f32")]
    recipe: String,
    /// Perform --action, save the window to this PNG and exit (prints one JSON line).
    #[arg(long, value_name = "OUT.png", requires = "action")]
    screenshot: Option<PathBuf>,
    /// With --screenshot: generate:<class> (seed 0), classify:<image> or roundtrip:<image>.
    #[arg(long, value_name = "ACTION", requires = "screenshot")]
    action: Option<String>,
}

pub fn run(gpu: GpuOptions, args: ViewerArgs) -> anyhow::Result<()> {
    let assets = assets_dir(args.assets.as_deref())?;
    let screenshot = args.screenshot.zip(args.action);
    run_viewer(ViewerOptions { assets, gpu, recipe: args.recipe, screenshot })
}

fn assets_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if !p.join("models").is_dir() {
            bail!("--assets {}: no models/ folder in it", p.display());
        }
        return Ok(p.to_path_buf());
    }
    [PathBuf::from("assets"), Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")]
        .into_iter()
        .find(|p| p.join("models/digits-vit").is_dir())
        .context("no assets/models/digits-vit found (run from the repository root or pass --assets)")
}
