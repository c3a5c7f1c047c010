//! `lowbit demo`: the shipped models end to end, in f32 and in low-bit weights, on this adapter.
//!
//! For each precision: classify the sample digits with digits-vit and the sample photographs
//! with photo-vit; generate digits of every
//! class with digits-prior + digits-vqgan and check them with digits-vit (the fraction
//! classified as the class asked for, and the Fréchet distance of digits-vit features to the
//! real samples); round-trip a photograph through photo-vqgan (encode → tokens → decode) and
//! measure its PSNR; entropy-code its tokens (photo-vqgan's and photo-rqvae's) and compare the
//! rate and PSNR with JPEG's at the same rate. Writes the images, one contact sheet and a JSON summary to `out/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use image::RgbImage;

use crate::gpu::Tensor;
use crate::metrics::{frechet_distance, psnr_db};
use crate::models::images::{hstack, rgb_to_signed_chw, signed_chw_to_rgb, tile, vstack};
use crate::kernels::attention::kv_cache::{check_kv_bits, kv_cache_name};
use crate::models::prior::Prior;
use crate::models::sampling::generate_classes;
use crate::models::vqgan::{VqganDecoder, VqganEncoder};
use super::demo_codec::CodecRow;
use super::label;
use super::output::Staged;
use super::model::weight_summary;
use crate::models::{load_image, VisionTransformer};
use crate::formats::WeightFormat;
use crate::Gpu;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the images, the contact sheet and demo.json.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Where the shipped models and samples are (default: ./assets, else the source tree's).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Weight formats to compare (the first is the reference).
    #[arg(long, value_delimiter = ',', default_value = "f32,q8,q4g32")]
    precisions: Vec<String>,
    /// Generated digits per class.
    #[arg(long, default_value_t = 4)]
    per_class: usize,
    /// Side of the photograph's center crop for the round trip.
    #[arg(long, default_value_t = 128)]
    photo_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The prior's KV cache in 8, 4 or 2 bits per value instead of f32 (see `generate`).
    #[arg(long, value_name = "BITS")]
    kv_bits: Option<u32>,
}

/// What one precision measured.
struct Row {
    precision: String,
    weight_bytes: usize,
    sample_top1: f64,
    /// photo-vit's top-1 label for each sample photograph, in `photos` order.
    photo_labels: Vec<String>,
    class_match: f64,
    frechet: f64,
    photo_psnr: f64,
    /// The round trip's tokens entropy-coded, per tokenizer, beside JPEG at the same rate.
    codec: Vec<CodecRow>,
    seconds: f64,
    /// Digit classes generated (one tile row each).
    classes: usize,
    generated: RgbImage,
    roundtrip: RgbImage,
}

fn assets_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates = match given {
        Some(p) => vec![p.to_path_buf()],
        None => vec![PathBuf::from("assets"), Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")],
    };
    candidates
        .into_iter()
        .find(|p| p.join("models/digits-vit").is_dir())
        .context("no assets/models/digits-vit found (run from the repository root or pass --assets)")
}

/// Sample digits `digit-<label>-<i>.png`, sorted, with their labels.
fn sample_digits(samples: &Path) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(samples).with_context(|| format!("reading {}", samples.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(label) = name.strip_prefix("digit-").and_then(|r| r.split('-').next()).and_then(|l| l.parse().ok()) {
            out.push((path, label));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no digit-<label>-<i>.png samples in {}", samples.display());
    }
    Ok(out)
}

/// (logits [N, classes], pooled features [N, dim]) of RGB images.
fn classify(gpu: &Gpu, vit: &VisionTransformer, images: &[RgbImage]) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let out = vit.classify(gpu, images)?;
    Ok((out.logits, out.features))
}

/// Sample photographs `photo-<name>.png` with their expected photo-vit labels, from
/// `samples/labels.json` ({"photo-chelsea.png": "cat", ...}).
fn sample_photos(samples: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let path = samples.join("labels.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let labels: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let photos: Vec<(PathBuf, String)> = labels.into_iter().filter(|(name, _)| name.starts_with("photo-")).map(|(name, label)| (samples.join(name), label)).collect();
    if photos.is_empty() {
        bail!("{} lists no photo-<name>.png samples", path.display());
    }
    Ok(photos)
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// The inputs every precision sees.
struct Inputs {
    digits: Vec<(PathBuf, usize)>,
    photos: Vec<(PathBuf, String)>,
    /// The round trip's photograph (held out from photo-vqgan's training).
    roundtrip: RgbImage,
}

fn run_precision(gpu: &Gpu, assets: &Path, format: WeightFormat, args: &DemoArgs, inputs: &Inputs) -> anyhow::Result<Row> {
    let (real, photo) = (&inputs.digits, &inputs.roundtrip);
    let start = Instant::now();
    let models = assets.join("models");
    let vit = VisionTransformer::from_pretrained(gpu, &models.join("digits-vit"), None, format)?;
    let photo_vit = VisionTransformer::from_pretrained(gpu, &models.join("photo-vit"), None, format)?;
    let mut prior = Prior::from_pretrained(gpu, &models.join("digits-prior"), format)?;
    if let Some(bits) = args.kv_bits {
        prior.quantize_kv_cache(gpu, bits).context("calibrating the low-bit KV cache")?;
    }
    let digits = VqganDecoder::from_pretrained(gpu, &models.join("digits-vqgan"), None, format)?;
    let photo_enc = VqganEncoder::from_pretrained(gpu, &models.join("photo-vqgan"), None, format)?;
    let photo_dec = VqganDecoder::from_pretrained(gpu, &models.join("photo-vqgan"), None, format)?;
    let weight_bytes = ["digits-vit", "digits-prior", "digits-vqgan", "photo-vqgan", "photo-rqvae", "photo-vit"]
        .iter()
        .map(|m| Ok(weight_summary(&models.join(m))?.bytes(format)))
        .sum::<anyhow::Result<usize>>()?;

    // Classify the real samples.
    let real_images: Vec<RgbImage> = real.iter().map(|(p, _)| load_image(p)).collect::<crate::Result<_>>()?;
    let (logits, real_features) = classify(gpu, &vit, &real_images)?;
    let classes = vit.output_dim();
    let correct = logits.chunks(classes).zip(real).filter(|(row, (_, label))| argmax(row) == *label).count();
    let photos: Vec<RgbImage> = inputs.photos.iter().map(|(p, _)| load_image(p)).collect::<crate::Result<_>>()?;
    let (logits, _) = classify(gpu, &photo_vit, &photos)?;
    let labels = &photo_vit.config.label_names;
    let photo_labels: Vec<String> = logits.chunks(photo_vit.output_dim()).map(|row| labels.get(argmax(row)).cloned().unwrap_or_else(|| argmax(row).to_string())).collect();

    // Generate every class, decode, and ask digits-vit what it sees.
    let opts = prior.config.sampling.unwrap_or_default();
    let wanted: Vec<usize> = (0..prior.config.n_classes).flat_map(|c| std::iter::repeat_n(c, args.per_class)).collect();
    let tokens = generate_classes(gpu, &prior, &wanted, args.seed, &opts)?;
    let image = digits.decode(gpu, &tokens)?;
    let &[n, _, h, w] = &image.shape[..] else { bail!("decoder output {:?}", image.shape) };
    let pixels = image.to_vec_f32(gpu)?;
    let generated: Vec<(usize, RgbImage)> = (0..n).map(|i| (wanted[i], signed_chw_to_rgb(&pixels[i * 3 * h * w..(i + 1) * 3 * h * w], h, w))).collect();
    let images: Vec<RgbImage> = generated.iter().map(|(_, img)| img.clone()).collect();
    let (logits, features) = classify(gpu, &vit, &images)?;
    let matched = logits.chunks(classes).zip(&generated).filter(|(row, (class, _))| argmax(row) == *class).count();
    let dim = vit.config.embed_dim;
    let frechet = frechet_distance(&features, &real_features, dim);

    // Round-trip the photograph.
    let s = args.photo_size / photo_enc.downscale() * photo_enc.downscale();
    let input = Tensor::from_f32(gpu, &[1, 3, s, s], &rgb_to_signed_chw(photo, s, s))?;
    let tokens = photo_enc.encode(gpu, &input)?;
    let decoded = photo_dec.decode(gpu, &tokens)?.to_vec_f32(gpu)?;
    let original = signed_chw_to_rgb(&input.to_vec_f32(gpu)?, s, s);
    let reconstructed = signed_chw_to_rgb(&decoded, s, s);
    let as_f32 = |img: &RgbImage| img.as_raw().iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let photo_psnr = psnr_db(&as_f32(&reconstructed), &as_f32(&original), 255.0);
    let mut codec = vec![CodecRow::measure(gpu, "photo-vqgan", &tokens, photo_enc.quantizer.largest_codebook(), &original, &reconstructed)?];
    // The residual tokenizer on the same crop: two ids per 4×4 cell.
    let rq_enc = VqganEncoder::from_pretrained(gpu, &models.join("photo-rqvae"), None, format)?;
    let rq_dec = VqganDecoder::from_pretrained(gpu, &models.join("photo-rqvae"), None, format)?;
    let rq_tokens = rq_enc.encode(gpu, &input)?;
    let rq_image = signed_chw_to_rgb(&rq_dec.decode(gpu, &rq_tokens)?.to_vec_f32(gpu)?, s, s);
    codec.push(CodecRow::measure(gpu, "photo-rqvae", &rq_tokens, rq_enc.quantizer.largest_codebook(), &original, &rq_image)?);

    Ok(Row {
        precision: format.name(),
        weight_bytes,
        sample_top1: 100.0 * correct as f64 / real.len() as f64,
        photo_labels,
        class_match: 100.0 * matched as f64 / generated.len() as f64,
        frechet,
        photo_psnr,
        codec,
        seconds: start.elapsed().as_secs_f64(),
        classes: prior.config.n_classes,
        generated: tile(&images, args.per_class, 2, 2, [40, 40, 40]),
        roundtrip: vstack(&[original, reconstructed], 4, [40, 40, 40]),
    })
}

const SHEET_BG: [u8; 3] = [40, 40, 40];
const SHEET_TEXT: [u8; 3] = [230, 230, 230];

/// One labelled column per precision (its name and weight size on top, the generated digits
/// with a row per class, the photograph's round trip with its PSNR under it), and the class of
/// each digit row on the left.
fn contact_sheet(rows: &[Row]) -> RgbImage {
    let px = 15.0;
    let columns: Vec<RgbImage> = rows
        .iter()
        .map(|r| {
            let width = r.generated.width().max(r.roundtrip.width());
            let head = label::strip(&format!("{}  {:.2} MB", r.precision, r.weight_bytes as f64 / 1e6), width, px, 6, SHEET_TEXT, SHEET_BG);
            let psnr = label::strip(&format!("PSNR {:.2} dB", r.photo_psnr), r.roundtrip.width(), px, 6, SHEET_TEXT, SHEET_BG);
            vstack(&[head, r.generated.clone(), r.roundtrip.clone(), psnr], 6, SHEET_BG)
        })
        .collect();
    // The class labels sit beside the digit rows of the first column (tile: gap 2 around cells).
    let Some(first) = rows.first() else { return RgbImage::from_pixel(1, 1, image::Rgb(SHEET_BG)) };
    let (_, head_h) = label::size("0", px);
    let classes = first.classes.max(1);
    let cell = (first.generated.height().saturating_sub(2) / classes as u32).max(1);
    let (label_w, _) = label::size("class 00", px);
    let mut left = RgbImage::from_pixel(label_w + 8, columns[0].height(), image::Rgb(SHEET_BG));
    let top = head_h + 12 + 6;
    for c in 0..classes {
        let y = top + 2 + c as u32 * cell + cell.saturating_sub(head_h) / 2;
        label::draw(&mut left, 4, y as i32, px, SHEET_TEXT, &format!("class {c}"));
    }
    // The photograph and its reconstruction (stacked with a 4-pixel gap) under the digits.
    let photo_top = top + first.generated.height() + 6;
    let photo_h = first.roundtrip.height().saturating_sub(4) / 2;
    for (i, name) in ["photo", "round trip"].iter().enumerate() {
        let y = photo_top + i as u32 * (photo_h + 4) + photo_h.saturating_sub(head_h) / 2;
        label::draw(&mut left, 4, y as i32, px, SHEET_TEXT, name);
    }
    let mut all = vec![left];
    all.extend(columns);
    hstack(&all, 16, SHEET_BG)
}

/// PNG whatever the (temporary) name's extension.
fn save_png(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    Ok(img.save_with_format(path, image::ImageFormat::Png)?)
}

pub fn run(gpu: &Gpu, args: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if let Some(bits) = args.kv_bits {
        check_kv_bits(bits).context("--kv-bits")?;
    }
    let assets = assets_dir(args.assets.as_deref())?;
    let samples = assets.join("samples");
    outln!("lowbit demo on {} ({:?}); models from {}", gpu.adapter_name(), gpu.class, assets.display());
    // Held out from photo-vqgan's training (see its model card).
    let photo_path = samples.join("photo-chelsea.png");
    let inputs = Inputs { digits: sample_digits(&samples)?, photos: sample_photos(&samples)?, roundtrip: load_image(&photo_path)? };
    let photo = &inputs.roundtrip;
    if photo.width() < args.photo_size as u32 || photo.height() < args.photo_size as u32 {
        bail!("{} is smaller than --photo-size {}", photo_path.display(), args.photo_size);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    // Every file is staged and all are renamed into place at the end: an interrupted or
    // failed demo leaves none of them (and no mix of this run's and an earlier run's).
    let mut staged = Staged::new();
    let mut rows = Vec::new();
    for p in &args.precisions {
        let format = WeightFormat::parse(p)?;
        let row = run_precision(gpu, &assets, format, &args, &inputs).with_context(|| format!("precision {p}"))?;
        staged.write(&args.out.join(format!("generated-{}.png", row.precision)), |tmp| save_png(&row.generated, tmp))?;
        staged.write(&args.out.join(format!("roundtrip-{}.png", row.precision)), |tmp| save_png(&row.roundtrip, tmp))?;
        rows.push(row);
    }
    let sheet = contact_sheet(&rows);
    let sheet_path = args.out.join("contact-sheet.png");
    staged.write(&sheet_path, |tmp| save_png(&sheet, tmp))?;

    let photo_hits = |r: &Row| r.photo_labels.iter().zip(&inputs.photos).filter(|(got, (_, want))| got == &want).count();
    outln!("\n{:<9} {:>10} {:>12} {:>8} {:>14} {:>10} {:>12} {:>8}", "weights", "size MB", "digits top1", "photos", "gen → class %", "Fréchet", "photo PSNR", "time s");
    for r in &rows {
        outln!(
            "{:<9} {:>10.2} {:>11.1}% {:>6}/{} {:>13.1}% {:>10.2} {:>9.2} dB {:>8.1}",
            r.precision,
            r.weight_bytes as f64 / 1e6,
            r.sample_top1,
            photo_hits(r),
            inputs.photos.len(),
            r.class_match,
            r.frechet,
            r.photo_psnr,
            r.seconds
        );
    }
    for (i, (path, want)) in inputs.photos.iter().enumerate() {
        let got: Vec<&str> = rows.iter().map(|r| r.photo_labels[i].as_str()).collect();
        outln!("photo-vit on {}: {} (expected {want})", path.display(), got.join(" / "));
    }
    outln!(
        "\n{} sample digits; {} generated per class (KV cache {}); Fréchet distance of digits-vit features, generated vs the samples; photo: {}×{} crop of {}",
        inputs.digits.len(),
        args.per_class,
        kv_cache_name(args.kv_bits),
        args.photo_size,
        args.photo_size,
        photo_path.display()
    );
    outln!("\nthe photo's tokens entropy-coded (as `lowbit compress` without a prior) vs JPEG at the same rate (both without headers):");
    outln!("{:<9} {:<12} {:>8} {:>10} {:>12} {:>10} {:>12}", "weights", "tokenizer", "bpp", "PSNR dB", "JPEG quality", "JPEG bpp", "JPEG PSNR dB");
    for r in &rows {
        for c in &r.codec {
            outln!("{:<9} {:<12} {:>8.4} {:>10.2} {:>12} {:>10.4} {:>12.2}", r.precision, c.tokenizer, c.bpp, c.psnr_db, c.jpeg.quality, c.jpeg.bpp, c.jpeg.psnr_db);
        }
    }
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "precision": r.precision, "weight_bytes": r.weight_bytes, "sample_top1": r.sample_top1,
                "photo_top1": 100.0 * photo_hits(r) as f64 / inputs.photos.len() as f64,
                "photo_labels": inputs.photos.iter().zip(&r.photo_labels).map(|((p, _), l)| (p.file_name().unwrap_or_default().to_string_lossy().into_owned(), l.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                "generated_class_match": r.class_match, "frechet_distance": r.frechet, "photo_psnr_db": r.photo_psnr, "seconds": r.seconds,
                "kv_bits": args.kv_bits,
                "codec": r.codec.iter().map(CodecRow::json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = serde_json::json!({ "adapter": gpu.adapter_name(), "rows": summary, "total_seconds": start.elapsed().as_secs_f64() });
    let text = serde_json::to_string_pretty(&json)?;
    staged.write(&args.out.join("demo.json"), |tmp| Ok(std::fs::write(tmp, text)?))?;
    staged.commit()?;
    outln!("wrote {} and the images beside it; {:.1} s in all", sheet_path.display(), start.elapsed().as_secs_f64());
    Ok(())
}
