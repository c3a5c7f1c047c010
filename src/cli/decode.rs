//! `lowbit decode --model PATH [--config FILE] --tokens TOKENS.safetensors --out OUT.png
//! [--save-tensor OUT.safetensors] [--precision f32|f16] [--format FMT] [--profile]`: token
//! grids → images (taming VQGAN, LlamaGen and the tokenizers of `models::vqgan::tokenizers`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::model::print_profile;
use super::output::{self, Staged};
use crate::models::images::signed_chw_to_rgb;
use crate::models::ModelKind;
use crate::models::vqgan::{TokenGrid, VqganDecoder};
use crate::models::weights::save_f32;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// A folder with model.safetensors + config.yaml (taming's VQModel) or config.json
    /// (LlamaGen, FQGAN, SimVQ, WeTok, VQGAN-LC, RQ-VAE), or a .safetensors file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The config to use instead of the config.yaml / config.json next to the weights.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Token ids: tensor `tokens`, integer (i32, i64 or u32) [B, h, w], or [B, S, h, w] for a
    /// model with S ids per position (upstream's shapes).
    #[arg(long, value_name = "TOKENS.safetensors")]
    pub tokens: PathBuf,
    /// Output PNG; with B > 1 images go to OUT-0.png, OUT-1.png, ...
    #[arg(long, value_name = "OUT.png")]
    pub out: PathBuf,
    /// Also write the raw decoder output as tensor `image` f32 [B, 3, H, W].
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_tensor: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub weights: super::model::WeightArgs,
    /// Print GPU time per node of the decode.
    #[arg(long)]
    pub profile: bool,
}

/// Token grids one `decode` run takes: each becomes an image file.
pub const MAX_IMAGES: usize = 1024;

pub fn run(gpu: &Gpu, args: DecodeArgs) -> anyhow::Result<()> {
    let format = args.weights.format()?;
    let tokens = TokenGrid::load(&args.tokens, "tokens")?;
    let b = tokens.batch;
    if b > MAX_IMAGES {
        bail!("--tokens {}: {b} token grids is over the limit of {MAX_IMAGES} images per run; split the file", args.tokens.display());
    }
    if args.out.is_dir() {
        bail!("--out {}: is a folder; give a file name such as {}", args.out.display(), args.out.join("decoded.png").display());
    }
    let outs: Vec<PathBuf> = (0..b).map(|i| if b == 1 { args.out.clone() } else { numbered(&args.out, i) }).collect();
    let inputs = [args.tokens.as_path(), args.model.as_path()];
    let image_format = output::image_format("--out", &outs[0])?;
    for out in &outs {
        output::check_target("--out", out, &inputs, args.force)?;
    }
    if let Some(path) = &args.save_tensor {
        output::check_target("--save-tensor", path, &inputs, args.force)?;
    }
    super::model::expect_kind(&args.model, ModelKind::Vqgan, "decode")?;
    let model = VqganDecoder::from_pretrained(gpu, &args.model, args.config.as_deref(), format)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let start = std::time::Instant::now();
    let image = model.decode(gpu, &tokens)?;
    if args.profile {
        let [b, h, w] = tokens.shape();
        let plan = crate::graph::Plan::new(gpu, model.timing_graph(gpu, b, h, w)?)?;
        plan.set_input(gpu, 0, &model.checked_ids(&tokens)?)?;
        print_profile(&plan.profile(gpu)?.1, 15);
    }
    let pixels = image.to_vec_f32(gpu)?;
    let shape = image.shape.clone();
    crate::verbose!("decoded {:?} tokens to {shape:?} in {:.1} ms", tokens.shape(), start.elapsed().as_secs_f64() * 1e3);
    let mut staged = Staged::new();
    if let Some(path) = &args.save_tensor {
        staged.write(path, |tmp| Ok(save_f32(tmp, &[("image", &shape, &pixels)])?))?;
    }
    let &[_, c, h, w] = &shape[..] else { bail!("decoder output {shape:?} is not [B, C, H, W]") };
    if c != 3 {
        bail!("the model decodes {c} channels; PNG output needs 3 (use --save-tensor for the raw output)");
    }
    for (img, path) in pixels.chunks(c * h * w).zip(&outs) {
        staged.write(path, |tmp| Ok(signed_chw_to_rgb(img, h, w).save_with_format(tmp, image_format)?))?;
    }
    staged.commit()?;
    for path in &outs {
        outln!("{}", path.display());
    }
    Ok(())
}

/// OUT.png → OUT-i.png (the extension kept, or .png when there is none).
pub fn numbered(out: &Path, i: usize) -> PathBuf {
    let stem = out.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let ext = out.extension().map_or_else(|| "png".into(), |e| e.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-{i}.{ext}"))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_outputs_and_pixel_mapping() {
        assert_eq!(numbered(Path::new("dir/out.png"), 2), PathBuf::from("dir/out-2.png"));
        assert_eq!(numbered(Path::new("out"), 0), PathBuf::from("out-0.png"));
        // R, G, B planes of a 1×2 image: −1 → 0, 1 → 255, out of range clamps.
        let img = crate::models::images::signed_chw_to_rgb(&[-1.0, 1.0, 0.0, 3.0, -5.0, 0.5], 1, 2);
        assert_eq!(img.get_pixel(0, 0).0, [0, 127, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 191]);
    }
}
