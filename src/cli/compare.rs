//! `lowbit compare --reference PATH --model PATH (--images DIR | --tokens FILE) [--json]`: how far
//! a (quantized) model's outputs are from a reference's on the same inputs.
//!
//! Classifiers: SQNR and cosine of the logits (pooled over the images, and per image: the mean
//! and the worst), and how often the top-1 classes agree.
//! VQGAN decoders: SQNR and cosine of the raw decoded images, and PSNR and SSIM of the 8-bit
//! images (`lowbit decode`'s PNG pixels). With `--images` a VQGAN's tokens come from the
//! reference's own encoder, so only the decoders differ.
//!
//! SSIM is Wang et al. (2004) as skimage computes it with `gaussian_weights=True`: an 11×11
//! Gaussian window (σ = 1.5) over valid positions, K1 = 0.01, K2 = 0.03, L = 255, per channel,
//! averaged (smaller images use a window of their own smaller side).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use crate::gpu::Tensor;
use crate::metrics::{cosine, psnr_db, sqnr_db};
use crate::models::vqgan::{TokenGrid, VqganDecoder, VqganEncoder};
use crate::models::images::signed_chw_to_rgb;
use crate::models::{detect, load_image, Classifier, ModelKind};
use crate::quant::calibrate::{find_images, signed_center_crop};
use crate::formats::WeightFormat;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The reference model (usually the f32 original).
    #[arg(long, value_name = "PATH")]
    pub reference: PathBuf,
    /// The model to compare (usually a `lowbit quantize` output).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Images (a folder, searched recursively): classifier inputs, or VQGAN images to encode.
    #[arg(long, value_name = "DIR", conflicts_with = "tokens")]
    pub images: Option<PathBuf>,
    /// VQ tokens (.safetensors with a `tokens` tensor) for VQGAN decoders.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(gpu: &Gpu, args: CompareArgs) -> anyhow::Result<()> {
    let (kind, other) = (detect(&args.reference)?, detect(&args.model)?);
    if kind != other {
        bail!("--reference is a {kind:?} model but --model is a {other:?} model");
    }
    let mut report = match kind {
        ModelKind::Vit => compare_classifiers(gpu, &args)?,
        ModelKind::Vqgan => compare_decoders(gpu, &args)?,
        ModelKind::Prior => bail!("compare takes classifiers or VQGAN decoders, not a prior"),
    };
    report["reference"] = json!(args.reference.display().to_string());
    report["model"] = json!(args.model.display().to_string());
    if args.json {
        outln!("{report}");
    } else {
        outln!("{} vs reference {}:", args.model.display(), args.reference.display());
        for (k, v) in report.as_object().unwrap() {
            if k != "reference" && k != "model" {
                match v.as_f64() {
                    Some(x) if v.is_f64() => outln!("  {k:<16} {x:.4}"),
                    _ => outln!("  {k:<16} {v}"),
                }
            }
        }
    }
    Ok(())
}

fn load(gpu: &Gpu, path: &std::path::Path) -> anyhow::Result<Classifier> {
    Classifier::from_pretrained(gpu, path, None, WeightFormat::F32).with_context(|| format!("loading {}", path.display()))
}

/// Infinite SQNR (identical outputs) printed as a JSON-safe large number.
fn finite(db: f64) -> f64 {
    if db.is_finite() { db } else { 999.0 }
}

fn compare_classifiers(gpu: &Gpu, args: &CompareArgs) -> anyhow::Result<serde_json::Value> {
    let Some(dir) = &args.images else { bail!("classifiers are compared on images: pass --images DIR") };
    let (a, b) = (load(gpu, &args.reference)?, load(gpu, &args.model)?);
    if a.preprocess_config() != b.preprocess_config() || a.output_dim() != b.output_dim() {
        bail!("the models differ in input preprocessing or number of classes");
    }
    let files = find_images(dir)?;
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    for chunk in files.chunks(16) {
        la.extend(a.classify_files(gpu, chunk)?.logits);
        lb.extend(b.classify_files(gpu, chunk)?.logits);
    }
    let k = a.output_dim();
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
    let agree = la.chunks(k).zip(lb.chunks(k)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    // Per image as well: one bad image hides in the pooled cosine of many good ones.
    let per_image: Vec<f64> = la.chunks(k).zip(lb.chunks(k)).map(|(x, y)| cosine(y, x)).collect();
    Ok(json!({"kind": "classifier", "images": files.len(), "sqnr_db": finite(sqnr_db(&lb, &la)), "cosine": cosine(&lb, &la),
              "cosine_image_mean": per_image.iter().sum::<f64>() / per_image.len() as f64,
              "cosine_image_min": per_image.iter().copied().fold(f64::INFINITY, f64::min),
              "top1_agreement": agree as f64 / files.len() as f64}))
}

fn compare_decoders(gpu: &Gpu, args: &CompareArgs) -> anyhow::Result<serde_json::Value> {
    let dec = |p: &std::path::Path| VqganDecoder::from_pretrained(gpu, p, None, WeightFormat::F32).with_context(|| format!("loading {}", p.display()));
    let (a, b) = (dec(&args.reference)?, dec(&args.model)?);
    let tokens = match (&args.tokens, &args.images) {
        (Some(t), _) => TokenGrid::load(t, "tokens")?,
        (None, Some(dir)) => {
            let enc = VqganEncoder::from_pretrained(gpu, &args.reference, None, WeightFormat::F32).context("encoding --images with the reference's encoder")?;
            let r = enc.config.ddconfig.resolution;
            let mut pixels = Vec::new();
            let files = find_images(dir)?;
            for f in &files {
                pixels.extend(signed_center_crop(&load_image(f)?, r, r).map_err(|e| anyhow::anyhow!("image {}: {e}", f.display()))?);
            }
            enc.encode(gpu, &Tensor::from_f32(gpu, &[files.len(), 3, r, r], &pixels)?)?
        }
        (None, None) => bail!("decoders are compared on tokens: pass --tokens FILE or --images DIR"),
    };
    let (ia, ib) = (a.decode(gpu, &tokens)?, b.decode(gpu, &tokens)?);
    let (xa, xb) = (ia.to_vec_f32(gpu)?, ib.to_vec_f32(gpu)?);
    let &[n, c, h, w] = &ia.shape[..] else { bail!("decoder output {:?} is not [B, C, H, W]", ia.shape) };
    if c != 3 {
        bail!("PSNR/SSIM need 3-channel images, the decoder makes {c}");
    }
    let bytes = |x: &[f32]| -> Vec<f32> { x.chunks(c * h * w).flat_map(|img| signed_chw_to_rgb(img, h, w).into_raw()).map(f32::from).collect() };
    let (pa, pb) = (bytes(&xa), bytes(&xb));
    let ssim_mean = (0..n).map(|i| ssim_rgb(&pa[i * h * w * 3..(i + 1) * h * w * 3], &pb[i * h * w * 3..(i + 1) * h * w * 3], h, w)).sum::<f64>() / n as f64;
    Ok(json!({"kind": "decoder", "images": n, "sqnr_db": finite(sqnr_db(&xb, &xa)), "cosine": cosine(&xb, &xa),
              "psnr_db": finite(psnr_db(&pb, &pa, 255.0)), "ssim": ssim_mean}))
}

/// Mean SSIM of two interleaved 8-bit RGB images (values 0..255 as f32), per channel.
pub fn ssim_rgb(a: &[f32], b: &[f32], h: usize, w: usize) -> f64 {
    (0..3).map(|ch| {
        let plane = |x: &[f32]| -> Vec<f64> { (0..h * w).map(|i| x[i * 3 + ch] as f64).collect() };
        ssim_plane(&plane(a), &plane(b), h, w)
    }).sum::<f64>() / 3.0
}

fn ssim_plane(x: &[f64], y: &[f64], h: usize, w: usize) -> f64 {
    let size = 11.min(h).min(w);
    let sigma = 1.5 * size as f64 / 11.0;
    let r = size as f64 / 2.0 - 0.5;
    let mut win: Vec<f64> = (0..size * size).map(|i| {
        let (dy, dx) = ((i / size) as f64 - r, (i % size) as f64 - r);
        (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp()
    }).collect();
    let total: f64 = win.iter().sum();
    win.iter_mut().for_each(|v| *v /= total);
    let (c1, c2) = ((0.01 * 255.0f64).powi(2), (0.03 * 255.0f64).powi(2));
    let mut sum = 0.0;
    let mut count = 0;
    for oy in 0..=h - size {
        for ox in 0..=w - size {
            let (mut mx, mut my, mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (i, &g) in win.iter().enumerate() {
                let p = (oy + i / size) * w + ox + i % size;
                mx += g * x[p];
                my += g * y[p];
                xx += g * x[p] * x[p];
                yy += g * y[p] * y[p];
                xy += g * x[p] * y[p];
            }
            let (vx, vy, cxy) = (xx - mx * mx, yy - my * my, xy - mx * my);
            sum += ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
            count += 1;
        }
    }
    sum / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_for_identical_images_and_drops_with_noise() {
        let (h, w) = (16, 16);
        let a: Vec<f32> = (0..h * w * 3).map(|i| ((i * 37) % 256) as f32).collect();
        assert!((ssim_rgb(&a, &a, h, w) - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a.iter().enumerate().map(|(i, v)| (v + if i % 2 == 0 { 40.0 } else { -40.0 }).clamp(0.0, 255.0)).collect();
        assert!(ssim_rgb(&a, &b, h, w) < 0.9);
    }
}
