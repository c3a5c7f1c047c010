//! `lowbit generate --prior PATH [--decoder PATH] --class C --count N --seed S --out DIR
//! [--temperature T] [--top-k K] [--guidance G] [--kv-bits 8|4|2] [--format FMT] [--profile]`: class → tokens (the minGPT prior, sampled
//! with a KV cache) → images (the VQGAN decoder). Writes `DIR/class<C>-<i>.png` and
//! `DIR/tokens.safetensors` (tensor `tokens`, i32 [N, h, w], readable by `lowbit decode`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::models::images::signed_chw_to_rgb;
use crate::kernels::attention::kv_cache::{check_kv_bits, kv_cache_name};
use crate::models::prior::Prior;
use super::output::Staged;
use crate::models::sampling::{generate, max_count, SamplingOptions};
use crate::models::vqgan::{VqganConfig, VqganDecoder};
use crate::models::ModelKind;
use super::model::print_profile;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The prior: a folder with model.safetensors + config.json (taming minGPT).
    #[arg(long, value_name = "PATH")]
    pub prior: PathBuf,
    /// The VQGAN decoder folder; defaults to the prior config's `decoder`.
    #[arg(long, value_name = "PATH")]
    pub decoder: Option<PathBuf>,
    /// Class to generate (0 ≤ C < n_classes).
    #[arg(long)]
    pub class: usize,
    /// Images to generate, sampled together as one batch.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Softmax temperature (0 = greedy); defaults to the prior config's, else 1.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the k most likely tokens (0 = all); defaults to the prior config's, else 100.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Classifier-free guidance scale (1 = none; needs a prior with a `null_class`); defaults
    /// to the prior config's, else 1.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Keep the prior's KV cache in 8, 4 or 2 bits per value (K per channel, calibrated first
    /// on sequences the prior samples itself; V per token) instead of f32.
    #[arg(long, value_name = "BITS")]
    pub kv_bits: Option<u32>,
    /// Also print the prior's GPU time per node for a prefill of the sequence and for one
    /// decode step.
    #[arg(long)]
    pub profile: bool,
    /// Overwrite existing images and tokens.safetensors in --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub weights: super::model::WeightArgs,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The files `generate` writes, checked before any work.
fn outputs(args: &GenerateArgs) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: is a file; --out names a folder (created if missing)", args.out.display());
    }
    let images: Vec<PathBuf> = (0..args.count).map(|i| args.out.join(format!("class{}-{i}.png", args.class))).collect();
    let tokens = args.out.join("tokens.safetensors");
    for path in images.iter().chain([&tokens]) {
        super::output::check_target("--out", path, &[], args.force)?;
    }
    Ok((images, tokens))
}

pub fn run(gpu: &Gpu, args: GenerateArgs) -> anyhow::Result<()> {
    let format = args.weights.format()?;
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if let Some(bits) = args.kv_bits {
        check_kv_bits(bits).context("--kv-bits")?;
    }
    let t = Instant::now();
    super::model::expect_kind(&args.prior, ModelKind::Prior, "generate")?;
    let mut prior = Prior::from_pretrained(gpu, &args.prior, format).with_context(|| format!("loading prior {}", args.prior.display()))?;
    let c = prior.config.clone();
    if args.class >= c.n_classes {
        bail!("--class {} is out of range: the prior has {} classes (0..={})", args.class, c.n_classes, c.n_classes - 1);
    }
    let defaults = c.sampling.unwrap_or_default();
    let opts = SamplingOptions {
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_k: args.top_k.unwrap_or(defaults.top_k),
        guidance: args.guidance.unwrap_or(defaults.guidance),
    };
    let most = max_count(gpu, &prior, &opts);
    if args.count > most {
        let why = if opts.guidance != 1.0 { format!(" with guidance {} (each image is sampled twice; --guidance 1 allows {})", opts.guidance, prior.max_batch(gpu)) } else { String::new() };
        bail!("--count {} is over the limit of {most} images per run on this GPU{why}; generate in several runs", args.count);
    }
    let (image_paths, tokens_path) = outputs(&args)?;
    let Some(decoder_path) = args.decoder.clone().or_else(|| prior.decoder_path.clone()) else {
        bail!("no --decoder given and the prior's config.json names no `decoder`");
    };
    super::model::expect_kind(&decoder_path, ModelKind::Vqgan, "generate --decoder")?;
    let decoder = VqganDecoder::from_pretrained(gpu, &decoder_path, None, format).with_context(|| format!("loading decoder {}", decoder_path.display()))?;
    check_vocabulary(&prior, &decoder, &decoder_path)?;
    if let Some(bits) = args.kv_bits {
        prior.quantize_kv_cache(gpu, bits).context("calibrating the low-bit KV cache")?;
    }
    let load_ms = ms(t);

    let t = Instant::now();
    let tokens = generate(gpu, &prior, args.class, args.count, args.seed, &opts)?;
    let gen_ms = ms(t);

    let t = Instant::now();
    let image = decoder.decode(gpu, &tokens).context("decoding the generated tokens")?;
    let pixels = image.to_vec_f32(gpu)?;
    let decode_ms = ms(t);
    let &[n, 3, h, w] = &image.shape[..] else { bail!("decoder output {:?} is not [N, 3, H, W]", image.shape) };

    let t = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut staged = Staged::new();
    for (img, path) in pixels.chunks(3 * h * w).take(n).zip(&image_paths) {
        staged.write(path, |tmp| Ok(signed_chw_to_rgb(img, h, w).save_with_format(tmp, image::ImageFormat::Png)?))?;
    }
    staged.write(&tokens_path, |tmp| Ok(tokens.save(tmp, "tokens")?))?;
    staged.commit()?;
    for path in image_paths.iter().chain([&tokens_path]) {
        outln!("{}", path.display());
    }
    let write_ms = ms(t);

    let steps = c.tokens_per_image();
    outln!(
        "class {} × {} (seed {}, temperature {}, top-k {}, guidance {}, {}, KV cache {}): load {load_ms:.0} ms, generate {gen_ms:.1} ms ({steps} steps, {:.2} ms/step), decode {decode_ms:.1} ms, write {write_ms:.1} ms; {:.1} ms per image",
        args.class,
        args.count,
        args.seed,
        opts.temperature,
        opts.top_k,
        opts.guidance,
        format.name(),
        kv_cache_name(args.kv_bits),
        gen_ms / steps as f64,
        (gen_ms + decode_ms) / args.count as f64
    );
    if args.profile {
        profile_prior(gpu, &prior, args.count)?;
    }
    Ok(())
}

/// The decoder must turn every id the prior samples into its own code: a codebook smaller
/// than the vocabulary would fail on some ids, and one of another size than the decoder the
/// prior was trained with (its config's `decoder`) is another model's.
fn check_vocabulary(prior: &Prior, decoder: &VqganDecoder, decoder_path: &Path) -> anyhow::Result<()> {
    let (codes, vocab) = (decoder.config.n_embed, prior.config.vocab_size);
    if codes < vocab {
        bail!("decoder {} has {codes} codes, fewer than the prior's vocabulary of {vocab}: use the decoder the prior was trained with", decoder_path.display());
    }
    if let Some(own) = prior.decoder_path.as_deref().filter(|own| *own != decoder_path) {
        let own_codes = VqganConfig::resolve(own, None).and_then(|(_, config)| VqganConfig::load(&config)).map(|c| c.n_embed);
        if let Ok(own_codes) = own_codes {
            if own_codes != codes {
                bail!(
                    "decoder {} has {codes} codes, but the prior's own decoder {} has {own_codes}: its tokens mean nothing to this decoder; use a decoder with {own_codes} codes",
                    decoder_path.display(),
                    own.display()
                );
            }
        }
    }
    Ok(())
}

/// Per-node times of a prefill of all but the last position, then of the decode step at the
/// last position (attending over the whole cache: the slowest step).
fn profile_prior(gpu: &Gpu, prior: &Prior, batch: usize) -> anyhow::Result<()> {
    let tokens = prior.config.block_size - 1;
    let mut session = prior.session(gpu, batch)?;
    outln!("prefill of {tokens} tokens × {batch}:");
    print_profile(&session.profile(gpu, tokens)?, 12);
    session.prefill(gpu, &vec![0; batch * tokens], tokens)?;
    outln!("decode step at position {tokens} ({} dispatches):", session.step_dispatches(gpu)?);
    print_profile(&session.profile(gpu, 1)?, 12);
    Ok(())
}
