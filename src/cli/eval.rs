//! `lowbit eval --model PATH --data DIR [--json] [--limit N]`: top-1/top-5 accuracy of a timm
//! ViT (f32 or quantized) on an ImageFolder layout, `DIR/<class>/<image>`.
//!
//! A folder's class index is the position of its name in the model's `label_names` when the
//! config lists them (every folder must then be one of them), else its position in sorted
//! folder order (torchvision's ImageFolder).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

use super::classify::top_k;
use crate::models::Classifier;
use crate::quant::calibrate::find_images;
use crate::formats::WeightFormat;
use crate::Gpu;

/// Images per forward pass.
const BATCH: usize = 16;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A ViT folder (f32, or written by `lowbit quantize`).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// ImageFolder root: one sub-folder of PNG/JPEG images per class.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// (image, class index) of every image under `root`, classes named as the model names them.
pub fn image_folder(root: &Path, label_names: &[String], classes: usize) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut folders: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("--data {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    folders.sort();
    if folders.is_empty() {
        bail!("--data {}: no class folders (expected DIR/<class>/<image>)", root.display());
    }
    let mut out = Vec::new();
    for (i, (name, dir)) in folders.iter().enumerate() {
        let class = if label_names.is_empty() {
            i
        } else {
            match label_names.iter().position(|l| l == name) {
                Some(c) => c,
                None => bail!("--data {}: folder `{name}` is not one of the model's label_names {label_names:?}", root.display()),
            }
        };
        if class >= classes {
            bail!("--data {}: folder `{name}` would be class {class}, but the model has {classes} classes", root.display());
        }
        out.extend(find_images(dir).with_context(|| format!("class folder {}", dir.display()))?.into_iter().map(|p| (p, class)));
    }
    Ok(out)
}

pub fn run(gpu: &Gpu, args: EvalArgs) -> anyhow::Result<()> {
    let model = Classifier::from_pretrained(gpu, &args.model, None, WeightFormat::F32).with_context(|| format!("loading {}", args.model.display()))?;
    let classes = model.output_dim();
    if model.num_classes() == 0 {
        bail!("model {} has no classifier head to evaluate", args.model.display());
    }
    let images = image_folder(&args.data, model.label_names(), classes)?;
    let start = std::time::Instant::now();
    let (mut top1, mut top5) = (0usize, 0usize);
    for batch in images.chunks(BATCH) {
        let paths: Vec<PathBuf> = batch.iter().map(|(p, _)| p.clone()).collect();
        let logits = model.classify_files(gpu, &paths)?.logits;
        for ((_, class), row) in batch.iter().zip(logits.chunks(classes)) {
            let best = top_k(row, 5);
            top1 += (best[0].0 == *class) as usize;
            top5 += best.iter().any(|b| b.0 == *class) as usize;
        }
    }
    let n = images.len();
    let ms = start.elapsed().as_secs_f64() * 1e3 / n as f64;
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    if args.json {
        let v = json!({"model": args.model.display().to_string(), "data": args.data.display().to_string(), "images": n,
            "top1": {"correct": top1, "percent": pct(top1)}, "top5": {"correct": top5, "percent": pct(top5)}, "ms_per_image": ms});
        outln!("{v}");
    } else {
        outln!("{}: {n} images of {}", args.model.display(), args.data.display());
        outln!("top-1: {top1}/{n} = {:.2}%", pct(top1));
        outln!("top-5: {top5}/{n} = {:.2}%", pct(top5));
        outln!("({ms:.2} ms per image)");
    }
    Ok(())
}
