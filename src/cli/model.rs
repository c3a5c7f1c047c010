//! What `info`, `bench model` and `--profile` share: load any model folder, describe it, and
//! plan its forward pass on inputs of its natural size.

use std::path::Path;

use anyhow::Context;

use crate::graph::{totals_per_op, Graph, NodeTime};
use crate::models::vqgan::VqganDecoder;
use crate::models::{detect, Classifier, ModelKind, Weights, WeightSummary};
use crate::formats::WeightFormat;
use crate::synthetic::Rng;
use crate::Gpu;

/// How the weights run: `--precision f32|f16`, or any `--format` (q8, q4g32, ternary, ...).
/// A checkpoint written by `lowbit quantize` runs as stored either way.
#[derive(clap::Args, Debug, Clone)]
pub struct WeightArgs {
    /// Weight precision: f32 (reproduces PyTorch) or f16 (half the weight memory).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub precision: String,
    /// Weight format for quantized runs (q8, q4g32, ternary, ...); overrides --precision.
    #[arg(long, value_name = "FMT")]
    pub format: Option<String>,
}

impl WeightArgs {
    pub fn format(&self) -> crate::Result<WeightFormat> {
        WeightFormat::parse(self.format.as_deref().unwrap_or(&self.precision))
    }
}

/// A loaded model whose forward pass is a graph.
pub enum Runnable {
    Classifier(Box<Classifier>),
    Decoder(Box<VqganDecoder>),
}

impl Runnable {
    pub fn load(gpu: &Gpu, path: &Path, format: WeightFormat) -> anyhow::Result<Runnable> {
        let load = || -> anyhow::Result<Runnable> {
            Ok(match detect(path)? {
                ModelKind::Vit => Runnable::Classifier(Box::new(Classifier::from_pretrained(gpu, path, None, format)?)),
                ModelKind::Vqgan => Runnable::Decoder(Box::new(VqganDecoder::from_pretrained(gpu, path, None, format)?)),
                ModelKind::Prior => anyhow::bail!("a prior runs through `lowbit generate`; bench its decoder instead"),
            })
        };
        load().with_context(|| format!("loading {}", path.display()))
    }

    /// One line on what the model is.
    pub fn describe(&self) -> String {
        match self {
            Runnable::Classifier(m) => m.describe(),
            Runnable::Decoder(m) => {
                let (c, r) = (&m.config, m.config.latent_resolution());
                format!(
                    "{} decoder: {} codes of dim {}, ch {} × {:?}, {} res blocks, {r}×{r} tokens → {}×{} images",
                    c.family_name(),
                    c.n_embed,
                    c.embed_dim, c.ddconfig.ch, c.ddconfig.ch_mult, c.ddconfig.num_res_blocks, r * c.upscale(), r * c.upscale()
                )
            }
        }
    }

    /// The forward pass for `batch` inputs of the model's training size.
    pub fn graph(&self, gpu: &Gpu, batch: usize) -> anyhow::Result<Graph> {
        Ok(match self {
            Runnable::Classifier(m) => m.graph(batch)?,
            Runnable::Decoder(m) => {
                let r = m.config.latent_resolution();
                m.timing_graph(gpu, batch, r, r)?
            }
        })
    }

    /// Fills input 0 of a plan of `graph(batch)` with seeded random data of the right kind.
    pub fn random_input(&self, gpu: &Gpu, plan: &crate::graph::Plan, seed: u64) -> anyhow::Result<()> {
        let n = plan.input(0)?.numel();
        let mut rng = Rng::new(seed);
        match self {
            Runnable::Classifier(_) => plan.set_input(gpu, 0, &(0..n).map(|_| rng.next_f32()).collect::<Vec<f32>>())?,
            Runnable::Decoder(m) => {
                let k = m.config.n_embed as f32;
                plan.set_input(gpu, 0, &(0..n).map(|_| (((rng.next_f32() + 1.0) * 0.5 * k) as u32).min(k as u32 - 1)).collect::<Vec<u32>>())?
            }
        }
        Ok(())
    }

    /// Images per input: what "images/s" counts.
    pub fn name(&self) -> &'static str {
        match self {
            Runnable::Classifier(_) => "classify",
            Runnable::Decoder(_) => "decode",
        }
    }
}

/// Checks that `path` holds a model of `want`'s kind before loading it, so a ViT given to
/// `decode` says it is a ViT instead of failing on a config field.
pub fn expect_kind(path: &Path, want: ModelKind, command: &str) -> anyhow::Result<()> {
    let kind = detect(path)?;
    if kind != want {
        let what = |k: ModelKind| match k {
            ModelKind::Vit => "a ViT classifier (use `lowbit classify`)",
            ModelKind::Vqgan => "a VQGAN (use `lowbit decode` or `lowbit encode`)",
            ModelKind::Prior => "a prior (use `lowbit generate`)",
        };
        anyhow::bail!("{}: is {}, but `lowbit {command}` needs {}", path.display(), what(kind), what(want).split(" (").next().unwrap_or(""));
    }
    Ok(())
}

/// The weights of the checkpoint at `path` (a model folder or its .safetensors file).
pub fn load_weights(path: &Path) -> anyhow::Result<Weights> {
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    Ok(Weights::load(&file)?)
}

/// Parameters and weight bytes per format of the checkpoint at `path`.
pub fn weight_summary(path: &Path) -> anyhow::Result<WeightSummary> {
    Ok(WeightSummary::new(&load_weights(path)?)?)
}

/// Prints the `n` slowest nodes and the time per op kind.
pub fn print_profile(times: &[NodeTime], n: usize) {
    let total: f64 = times.iter().map(|t| t.ms).sum();
    outln!("profile: {} nodes, {total:.2} ms of GPU time", times.len());
    let mut slowest: Vec<&NodeTime> = times.iter().collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for t in slowest.iter().take(n) {
        outln!("  {:>9.3} ms {:>5.1}%  {:<16} {}", t.ms, 100.0 * t.ms / total, t.op, t.name);
    }
    outln!("per op:");
    for (op, count, ms) in totals_per_op(times) {
        outln!("  {ms:>9.3} ms {:>5.1}%  {op:<16} ({count} nodes)", 100.0 * ms / total);
    }
}
