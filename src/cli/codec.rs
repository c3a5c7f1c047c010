//! `lowbit compress --tokenizer PATH [--prior PATH] IMAGE... --out FILE.lbt [--json]` and
//! `lowbit decompress FILE.lbt --out DIR [--tokenizer PATH] [--prior PATH]`: images → VQGAN
//! tokens → rANS-coded `.lbt` file (src/codec), and back to tokens and images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{check_target, Staged};
use crate::codec::format::{Container, ImageEntry};
use crate::codec::{self, Model};
use crate::formats::WeightFormat;
use crate::metrics::psnr_db;
use crate::models::files::{check_image, read_limited};
use crate::models::images::{rgb_to_signed_chw, signed_chw_to_rgb};
use crate::models::prior::Prior;
use crate::models::vqgan::{TokenGrid, VqganDecoder, VqganEncoder};
use crate::models::{load_image, ModelKind};
use crate::{Gpu, Tensor};

/// Largest `.lbt` file `decompress` reads.
const MAX_LBT_BYTES: u64 = 1 << 30;

#[derive(clap::Args, Debug)]
pub struct CompressArgs {
    /// The VQGAN (folder with model.safetensors + config.yaml) that turns images into tokens.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: PathBuf,
    /// A prior over the tokenizer's token grids: its next-token probabilities drive the coder.
    /// Without it every token costs log2(codebook) bits.
    #[arg(long, value_name = "PATH")]
    pub prior: Option<PathBuf>,
    /// Without --prior, code every token with the same probability (log2 of the codebook
    /// size in bits). By default the file uses whichever of this and the adaptive model
    /// (counts of the image's tokens so far) is smaller.
    #[arg(long, conflicts_with = "prior")]
    pub uniform: bool,
    /// The compressed file.
    #[arg(long, value_name = "FILE.lbt")]
    pub out: PathBuf,
    /// Overwrite an existing --out file.
    #[arg(long)]
    pub force: bool,
    /// Print the measurements as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Images (PNG or JPEG); sides are center-cropped to multiples of the token cell.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DecompressArgs {
    /// A file made by `lowbit compress`.
    #[arg(value_name = "FILE.lbt")]
    pub file: PathBuf,
    /// Output folder (created if missing): image-<i>.png and tokens.safetensors.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The tokenizer to decode with, instead of the path stored in the file (same hash needed).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// The prior to decode with, instead of the path stored in the file (same hash needed).
    #[arg(long, value_name = "PATH")]
    pub prior: Option<PathBuf>,
    /// Overwrite existing files in --out.
    #[arg(long)]
    pub force: bool,
}

/// The prior (with its identity) if one is given, checked against the tokenizer.
fn load_prior(gpu: &Gpu, path: &Path, n_embed: usize) -> anyhow::Result<(Prior, u64)> {
    super::model::expect_kind(path, ModelKind::Prior, "compress --prior")?;
    let prior = Prior::from_pretrained(gpu, path, WeightFormat::F32).with_context(|| format!("loading prior {}", path.display()))?;
    if prior.config.vocab_size < 2 || n_embed < 2 {
        bail!("prior {}: a vocabulary of {} over a codebook of {n_embed} leaves nothing to code", path.display(), prior.config.vocab_size);
    }
    Ok((prior, codec::prior_hash(path)?))
}

fn model<'a>(prior: Option<&'a (Prior, u64)>, adaptive: bool, class: u32, n_embed: usize) -> Model<'a> {
    match prior {
        // The sub-codebook both models share: ids past either are impossible.
        Some((p, _)) => Model::Prior { prior: p, class, codebook: n_embed.min(p.config.vocab_size) },
        None if adaptive => Model::Adaptive { codebook: n_embed },
        None => Model::Uniform { codebook: n_embed },
    }
}

pub fn compress(gpu: &Gpu, args: CompressArgs) -> anyhow::Result<()> {
    let inputs: Vec<&Path> = args.images.iter().map(|p| p.as_path()).chain([args.tokenizer.as_path()]).chain(args.prior.as_deref()).collect();
    check_target("--out", &args.out, &inputs, args.force)?;
    super::model::expect_kind(&args.tokenizer, ModelKind::Vqgan, "compress --tokenizer")?;
    for path in &args.images {
        check_image(path)?;
    }
    if args.images.len() > codec::format::MAX_IMAGES {
        bail!("{} images is over the limit of {} per file", args.images.len(), codec::format::MAX_IMAGES);
    }
    let load = |what| format!("loading tokenizer {} ({what})", args.tokenizer.display());
    let encoder = VqganEncoder::from_pretrained(gpu, &args.tokenizer, None, WeightFormat::F32).with_context(|| load("encoder"))?;
    let decoder = VqganDecoder::from_pretrained(gpu, &args.tokenizer, None, WeightFormat::F32).with_context(|| load("decoder"))?;
    // Every slot (sub-codebook or stage) is coded over the largest codebook's range.
    let (n_embed, stages) = (encoder.quantizer.largest_codebook(), encoder.quantizer.codes_per_position());
    if n_embed > codec::rans::MAX_SYMBOLS {
        bail!("tokenizer {} has a codebook of {n_embed} ids; the .lbt coder's alphabet is at most {} (16-bit frequencies)", args.tokenizer.display(), codec::rans::MAX_SYMBOLS);
    }
    if let (Some(p), true) = (&args.prior, stages > 1) {
        bail!("--prior {}: a prior predicts one id per position, but tokenizer {} writes {stages} (sub-codebooks or stages); compress without --prior", p.display(), args.tokenizer.display());
    }
    let prior = args.prior.as_deref().map(|p| load_prior(gpu, p, n_embed)).transpose()?;
    let class = prior.as_ref().map_or(0, |(p, _)| codec::conditioning_class(p));
    let mut adaptive = prior.is_none() && !args.uniform;
    let mut model = model(prior.as_ref(), adaptive, class, n_embed);

    let f = encoder.downscale();
    let (mut crops, mut grids, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for path in &args.images {
        let img = load_image(path)?;
        let (h, w) = (img.height() as usize / f * f, img.width() as usize / f * f);
        if h == 0 || w == 0 {
            bail!("image {}: {}×{} is smaller than the tokenizer's {f}×{f} token cell", path.display(), img.width(), img.height());
        }
        let chw = rgb_to_signed_chw(&img, h, w);
        // One image per pass: images of different sizes share a file.
        grids.push(encoder.encode(gpu, &Tensor::from_f32(gpu, &[1, 3, h, w], &chw)?)?);
        crops.push((signed_chw_to_rgb(&chw, h, w), h, w));
        sizes.push((img.width(), img.height()));
    }
    let payloads = if adaptive {
        let (won, payloads) = codec::encode_without_prior(gpu, &grids, n_embed).context("entropy coding the tokens")?;
        if !won {
            (adaptive, model) = (false, Model::Uniform { codebook: n_embed });
        }
        payloads
    } else {
        codec::encode(gpu, &model, &grids).context("entropy coding the tokens")?
    };
    let container = Container {
        tokenizer_hash: codec::tokenizer_hash(&args.tokenizer)?,
        prior_hash: prior.as_ref().map(|(_, h)| *h),
        adaptive,
        tokenizer_path: args.tokenizer.to_string_lossy().into_owned(),
        prior_path: args.prior.as_ref().map_or(String::new(), |p| p.to_string_lossy().into_owned()),
        class,
        stages: u16::try_from(stages).context("more than 65535 ids per position")?,
        codebook: model.codebook() as u32,
        images: payloads.iter().zip(&grids).zip(&sizes).map(|((p, g), &(width, height))| ImageEntry { width, height, grid: [g.height, g.width], payload: p.clone() }).collect(),
    };
    let bytes = container.to_bytes()?;

    // The reconstruction the decompressor will produce, measured against the cropped input.
    let mut rows = Vec::new();
    let (mut bits, mut pixels) = (0usize, 0usize);
    for (i, ((grid, (crop, h, w)), payload)) in grids.iter().zip(&crops).zip(&payloads).enumerate() {
        let out = decoder.decode(gpu, grid)?.to_vec_f32(gpu)?;
        let recon: Vec<f32> = signed_chw_to_rgb(&out, *h, *w).into_raw().into_iter().map(f32::from).collect();
        let orig: Vec<f32> = crop.as_raw().iter().map(|&v| f32::from(v)).collect();
        let (psnr, ssim) = (psnr_db(&recon, &orig, 255.0), super::compare::ssim_rgb(&recon, &orig, *h, *w));
        bits += payload.len() * 8;
        pixels += h * w;
        let psnr = if psnr.is_finite() { json!(psnr) } else { json!(null) };
        rows.push(json!({"image": args.images[i].display().to_string(), "width": w, "height": h, "tokens": grid.ids.len(),
                         "payload_bytes": payload.len(), "bpp": (payload.len() * 8) as f64 / (h * w) as f64, "psnr_db": psnr, "ssim": ssim}));
    }
    super::output::write_atomic(&args.out, |tmp| Ok(std::fs::write(tmp, &bytes)?))?;
    let mean = |k: &str| rows.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / rows.len() as f64;
    let summary = json!({"file": args.out.display().to_string(), "file_bytes": bytes.len(), "model": if prior.is_some() { "prior" } else if adaptive { "adaptive" } else { "uniform" },
                         "payload_bpp": bits as f64 / pixels as f64, "file_bpp": (bytes.len() * 8) as f64 / pixels as f64,
                         "mean_psnr_db": mean("psnr_db"), "mean_ssim": mean("ssim"), "images": rows});
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    for r in &rows {
        outln!("{}: {}×{}, {} tokens, {} bytes, {:.4} bpp, PSNR {:.2} dB, SSIM {:.4}", r["image"].as_str().unwrap_or(""), r["width"], r["height"], r["tokens"], r["payload_bytes"], r["bpp"].as_f64().unwrap_or(0.0), r["psnr_db"].as_f64().unwrap_or(f64::INFINITY), r["ssim"].as_f64().unwrap_or(0.0));
    }
    outln!(
        "{}: {} image(s), {} bytes ({} model): payload {:.4} bpp, file {:.4} bpp, mean PSNR {:.2} dB, mean SSIM {:.4}",
        args.out.display(), rows.len(), bytes.len(), summary["model"].as_str().unwrap_or(""), summary["payload_bpp"].as_f64().unwrap_or(0.0),
        summary["file_bpp"].as_f64().unwrap_or(0.0), summary["mean_psnr_db"].as_f64().unwrap_or(0.0), summary["mean_ssim"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// The model at `given` (or the file's `stored` path) after checking it is the one the file
/// was made with.
fn resolve_model(what: &str, given: Option<&Path>, stored: &str, want: u64, hash: fn(&Path) -> crate::Result<u64>) -> anyhow::Result<PathBuf> {
    let path = given.map_or_else(|| PathBuf::from(stored), Path::to_path_buf);
    let got = hash(&path).with_context(|| {
        let how = if given.is_some() { "given".to_string() } else { "stored in the file; pass --".to_string() + what + " PATH to use another copy" };
        format!("the {what} ({})", how)
    })?;
    if got != want {
        bail!("{what} {} has model hash {got:016x}, but the file was made with a {what} of hash {want:016x}: another model (or another version of it)", path.display());
    }
    Ok(path)
}

pub fn decompress(gpu: &Gpu, args: DecompressArgs) -> anyhow::Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: is a file; --out names a folder (created if missing)", args.out.display());
    }
    let bytes = read_limited(&args.file, ".lbt file", MAX_LBT_BYTES)?;
    let file = Container::from_bytes(&bytes).with_context(|| format!("{}", args.file.display()))?;
    let n = file.images.len();
    let images: Vec<PathBuf> = (0..n).map(|i| args.out.join(format!("image-{i}.png"))).collect();
    let tokens_path = args.out.join("tokens.safetensors");
    for path in images.iter().chain([&tokens_path]) {
        check_target("--out", path, &[args.file.as_path()], args.force)?;
    }
    let tokenizer = resolve_model("tokenizer", args.tokenizer.as_deref(), &file.tokenizer_path, file.tokenizer_hash, codec::tokenizer_hash)?;
    let prior_path = match (file.prior_hash, args.prior.as_deref()) {
        (None, Some(p)) => bail!("--prior {}: the file was coded without a prior; drop --prior", p.display()),
        (None, None) => None,
        (Some(h), given) => Some(resolve_model("prior", given, &file.prior_path, h, codec::prior_hash)?),
    };
    let decoder = VqganDecoder::from_pretrained(gpu, &tokenizer, None, WeightFormat::F32).with_context(|| format!("loading tokenizer {}", tokenizer.display()))?;
    let (n_embed, stages) = (decoder.quantizer.largest_codebook(), decoder.quantizer.codes_per_position());
    if file.stages as usize != stages {
        bail!("{}: the file has {} ids per position, but tokenizer {} has {stages}: corrupted or another model's file", args.file.display(), file.stages, tokenizer.display());
    }
    let prior = prior_path.as_deref().map(|p| load_prior(gpu, p, n_embed)).transpose()?;
    let model = model(prior.as_ref(), file.adaptive, file.class, n_embed);
    if model.codebook() != file.codebook as usize {
        bail!("{}: the file codes a sub-codebook of {} ids, these models one of {}", args.file.display(), file.codebook, model.codebook());
    }
    if let Some((p, _)) = prior.as_ref().filter(|(p, _)| file.class as usize > p.config.n_classes) {
        bail!("{}: class token {} is outside the prior's {} classes", args.file.display(), file.class, p.config.n_classes);
    }
    let f = decoder.config.upscale();
    for (i, img) in file.images.iter().enumerate() {
        let want = [img.height as usize / f, img.width as usize / f];
        if img.grid != want || want.contains(&0) {
            bail!("{}: image {i} is {}×{} with a {:?} token grid, but this tokenizer makes {want:?}: corrupted or another model's file", args.file.display(), img.width, img.height, img.grid);
        }
    }
    let payloads: Vec<([usize; 3], &[u8])> = file.images.iter().map(|img| ([stages, img.grid[0], img.grid[1]], img.payload.as_slice())).collect();
    let grids = codec::decode(gpu, &model, &payloads).with_context(|| format!("decoding {}", args.file.display()))?;

    // Everything decoded before the folder is created: an error leaves nothing behind.
    let mut pngs = Vec::with_capacity(n);
    for grid in &grids {
        let out = decoder.decode(gpu, grid)?.to_vec_f32(gpu)?;
        let [_, _, h, w] = decoder.image_shape(grid.shape());
        pngs.push(signed_chw_to_rgb(&out, h, w));
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut staged = Staged::new();
    for (png, path) in pngs.iter().zip(&images) {
        staged.write(path, |tmp| Ok(png.save_with_format(tmp, image::ImageFormat::Png)?))?;
    }
    // One [B, h, w] (or [B, S, h, w]) tensor when the grids agree; otherwise each image's grid on its own row
    // would not be a tensor, so the tokens go out as tokens-<i>.safetensors.
    if grids.iter().all(|g| g.dims() == grids[0].dims()) {
        let mut dims = grids[0].dims();
        dims[0] = n;
        let all = TokenGrid::new(&dims, grids.iter().flat_map(|g| g.ids.iter().copied()).collect())?;
        staged.write(&tokens_path, |tmp| Ok(all.save(tmp, "tokens")?))?;
    } else {
        for (i, g) in grids.iter().enumerate() {
            let path = args.out.join(format!("tokens-{i}.safetensors"));
            check_target("--out", &path, &[], args.force)?;
            staged.write(&path, |tmp| Ok(g.save(tmp, "tokens")?))?;
        }
    }
    staged.commit()?;
    for path in &images {
        outln!("{}", path.display());
    }
    Ok(())
}
