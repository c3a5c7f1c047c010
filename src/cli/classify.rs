//! `lowbit classify --model PATH [--config FILE] [--topk K] [--labels FILE]
//! [--save-logits OUT.safetensors] IMAGE...`: timm ViT/DeiT classification of image files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::model::print_profile;
use crate::models::weights::save_f32;
use crate::models::files::check_image;
use crate::models::{load_image, Classifier};
use crate::Gpu;

/// Images per forward pass: bounds activation memory for long argument lists.
const BATCH: usize = 8;

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// A folder with model.safetensors + config.json (timm's hub layout), or a .safetensors file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// config.json to use instead of the one next to the weights.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub topk: usize,
    /// Class names, one per line (line N names class N); default: config.json's label_names.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Write the logits as tensor `logits` f32 [N, classes], in argument order.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_logits: Option<PathBuf>,
    /// Overwrite an existing --save-logits file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub weights: super::model::WeightArgs,
    /// Print GPU time per node of the (first batch's) forward pass.
    #[arg(long)]
    pub profile: bool,
    /// Image files (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

pub fn run(gpu: &Gpu, args: ClassifyArgs) -> anyhow::Result<()> {
    let format = args.weights.format()?;
    let model = Classifier::from_pretrained(gpu, &args.model, args.config.as_deref(), format)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if args.topk == 0 {
        bail!("--topk must be at least 1");
    }
    if let Some(out) = &args.save_logits {
        let inputs: Vec<&Path> = args.images.iter().map(|p| p.as_path()).collect();
        super::output::check_target("--save-logits", out, &inputs, args.force)?;
    }
    // Every image is checked before the first result, so a bad one among many prints nothing.
    for path in &args.images {
        check_image(path)?;
    }
    let labels = match &args.labels {
        Some(path) => read_labels(path, model.output_dim())?,
        None => model.label_names().to_vec(),
    };
    let mut all_logits = Vec::with_capacity(args.images.len() * model.output_dim());
    for (i, batch) in args.images.chunks(BATCH).enumerate() {
        all_logits.extend(classify(gpu, &model, batch, args.profile && i == 0)?);
    }
    if let Some(out) = &args.save_logits {
        let shape = [args.images.len(), model.output_dim()];
        super::output::write_atomic(out, |tmp| Ok(save_f32(tmp, &[("logits", &shape, &all_logits)])?))?;
    }
    for (path, row) in args.images.iter().zip(all_logits.chunks(model.output_dim())) {
        outln!("{}:", path.display());
        for (class, score, prob) in top_k(row, args.topk) {
            let name = labels.get(class).map_or(String::new(), |l| format!("  {l}"));
            outln!("  {class:>5}  {prob:>7.4}  (logit {score:.4}){name}");
        }
    }
    Ok(())
}

/// Logits of `paths`, row-major [paths.len(), classes]; `profile` prints GPU time per node.
fn classify(gpu: &Gpu, model: &Classifier, paths: &[PathBuf], profile: bool) -> anyhow::Result<Vec<f32>> {
    if !profile {
        return Ok(model.classify_files(gpu, paths)?.logits);
    }
    let images = paths.iter().map(|p| load_image(p)).collect::<Result<Vec<_>, _>>()?;
    let (out, times) = model.classify_profiled(gpu, &images)?;
    print_profile(&times, 15);
    Ok(out.logits)
}

/// The `k` best classes as (index, logit, softmax probability), best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.into_iter().take(k).map(|i| (i, logits[i], (((logits[i] - max) as f64).exp() / total) as f32)).collect()
}

fn read_labels(path: &Path, classes: usize) -> anyhow::Result<Vec<String>> {
    let text = crate::models::files::read_text(path, "--labels")?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if labels.len() < classes {
        bail!("--labels {}: {} lines for {classes} classes", path.display(), labels.len());
    }
    Ok(labels)
}
