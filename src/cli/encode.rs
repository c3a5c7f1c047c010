//! `lowbit encode --model PATH IMAGE... --out TOKENS.safetensors [--config FILE] [--format FMT]`:
//! images → token grids (tensor `tokens`, i32 [B, h, w], or [B, S, h, w] for tokenizers with S
//! ids per position: FQGAN's sub-codebooks, RQ-VAE's stages, WeTok's groups) that `lowbit
//! decode` turns back into images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::gpu::Tensor;
use crate::models::images::rgb_to_signed_chw;
use crate::models::files::check_image;
use crate::models::{load_image, ModelKind};
use crate::models::vqgan::VqganEncoder;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct EncodeArgs {
    /// A folder with model.safetensors + config.yaml (taming's VQModel with its encoder) or
    /// config.json (LlamaGen, FQGAN, SimVQ, WeTok, VQGAN-LC, RQ-VAE).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The config to use instead of the config.yaml / config.json next to the weights.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the tokens (tensor `tokens`, i32 [B, h, w] or [B, S, h, w]).
    #[arg(long, value_name = "TOKENS.safetensors")]
    pub out: PathBuf,
    /// Overwrite an existing --out file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub weights: super::model::WeightArgs,
    /// Images (PNG or JPEG), all the same size. Sides that are not multiples of the model's
    /// downsampling factor are center-cropped to the nearest smaller multiple.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

pub fn run(gpu: &Gpu, args: EncodeArgs) -> anyhow::Result<()> {
    let format = args.weights.format()?;
    let inputs: Vec<&Path> = args.images.iter().map(|p| p.as_path()).chain([args.model.as_path()]).collect();
    super::output::check_target("--out", &args.out, &inputs, args.force)?;
    super::model::expect_kind(&args.model, ModelKind::Vqgan, "encode")?;
    let model = VqganEncoder::from_pretrained(gpu, &args.model, args.config.as_deref(), format)
        .with_context(|| format!("loading {}", args.model.display()))?;
    // Every image's header before decoding any: a bad last one fails at once.
    for path in &args.images {
        check_image(path)?;
    }
    let f = model.downscale();
    let mut pixels = Vec::new();
    let mut size = None;
    for path in &args.images {
        let img = load_image(path)?;
        let (h, w) = (img.height() as usize / f * f, img.width() as usize / f * f);
        if h == 0 || w == 0 {
            bail!("image {}: {}×{} is smaller than the model's {f}×{f} token cell", path.display(), img.width(), img.height());
        }
        if *size.get_or_insert((h, w)) != (h, w) {
            bail!("image {}: {w}×{h} after cropping, but earlier images are {:?}; encode different sizes separately", path.display(), size.unwrap());
        }
        pixels.extend(rgb_to_signed_chw(&img, h, w));
    }
    let (h, w) = size.unwrap();
    let images = Tensor::from_f32(gpu, &[args.images.len(), 3, h, w], &pixels)?;
    let start = std::time::Instant::now();
    let tokens = model.encode(gpu, &images)?;
    crate::verbose!("encoded {} image(s) of {w}×{h} to {:?} tokens in {:.1} ms", args.images.len(), tokens.shape(), start.elapsed().as_secs_f64() * 1e3);
    super::output::write_atomic(&args.out, |tmp| Ok(tokens.save(tmp, "tokens")?))?;
    outln!("{}", args.out.display());
    Ok(())
}
