//! Sampling token grids from the prior: temperature and top-k over the next-token logits, as
//! taming's `sample` (`logits / temperature`, keep logits ≥ the k-th largest, softmax,
//! multinomial), with a seeded generator so a seed always gives the same images.
//!
//! Classifier-free guidance (Ho & Salimans 2022, as LlamaGen samples its class-conditional
//! GPT): a prior trained with the class token sometimes replaced by a null class (`null_class`
//! in its config) also predicts the unconditional next token. Sampling then runs each sequence
//! twice in one batch, with its class and with the null class, and draws from
//! `uncond + guidance · (cond − uncond)`; guidance 1 is plain conditional sampling.

use serde::Deserialize;

use super::prior::Prior;
use super::vqgan::TokenGrid;
use crate::{invalid, Gpu, Result};

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingOptions {
    /// Divides the logits; 0 always takes the most likely token.
    #[serde(default = "one")]
    pub temperature: f32,
    /// Sample among the k most likely tokens (ties at the k-th included); 0 keeps all.
    #[serde(default)]
    pub top_k: usize,
    /// Classifier-free guidance scale; 1 = none. Above 1 needs a prior with a `null_class`.
    #[serde(default = "one")]
    pub guidance: f32,
}

fn one() -> f32 {
    1.0
}

impl Default for SamplingOptions {
    /// taming's sampling scripts' usual settings.
    fn default() -> Self {
        SamplingOptions { temperature: 1.0, top_k: 100, guidance: 1.0 }
    }
}

impl SamplingOptions {
    /// Temperature and top-k, without guidance.
    pub fn new(temperature: f32, top_k: usize) -> SamplingOptions {
        SamplingOptions { temperature, top_k, guidance: 1.0 }
    }

    pub fn check(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            invalid!("temperature must be a finite number ≥ 0, got {}", self.temperature);
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            invalid!("guidance must be a finite number ≥ 0, got {}", self.guidance);
        }
        Ok(())
    }
}

/// SplitMix64: a tiny, well-mixed generator; the same stream on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws one token id from `logits` (one row of V values).
pub fn sample(logits: &[f32], opts: &SamplingOptions, rng: &mut Rng) -> Result<u32> {
    opts.check()?;
    if logits.is_empty() {
        invalid!("sample: no logits");
    }
    if let Some(i) = logits.iter().position(|l| !l.is_finite()) {
        invalid!("sample: logit {i} is {} (the model produced a non-finite value)", logits[i]);
    }
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best }) as u32;
    if opts.temperature == 0.0 {
        return Ok(argmax());
    }
    let threshold = match opts.top_k {
        k if k == 0 || k >= logits.len() => f32::NEG_INFINITY,
        k => {
            let mut sorted = logits.to_vec();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
    };
    let t = opts.temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let weights: Vec<f64> = logits.iter().map(|&l| if l >= threshold { ((l as f64 - max) / t).exp() } else { 0.0 }).collect();
    let total: f64 = weights.iter().sum();
    // A tiny temperature can underflow every weight but the max's to 0: still a valid draw.
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return Ok(i as u32);
        }
        u -= w;
    }
    // Rounding left u at the very end: the last kept token.
    Ok(weights.iter().rposition(|&w| w > 0.0).unwrap_or_else(|| argmax() as usize) as u32)
}

/// The most images one `generate` call samples on this adapter with `opts` (guidance other
/// than 1 runs every image twice).
pub fn max_count(gpu: &Gpu, prior: &Prior, opts: &SamplingOptions) -> usize {
    let rows = prior.max_batch(gpu);
    if opts.guidance != 1.0 { (rows / 2).max(1) } else { rows }
}

fn check_count(gpu: &Gpu, prior: &Prior, count: usize, opts: &SamplingOptions) -> Result<()> {
    if count == 0 {
        invalid!("count must be at least 1");
    }
    let most = max_count(gpu, prior, opts);
    if count > most {
        let why = if opts.guidance != 1.0 { format!(" with guidance {} (each image is sampled twice; guidance 1 allows twice as many)", opts.guidance) } else { String::new() };
        invalid!("count {count} is over the limit of {most} images at once on this GPU{why}; generate in several runs");
    }
    Ok(())
}

/// Samples `count` token grids of class `class` at once (batch = count), raster order, one
/// prior step per token: [class] → z_0, then z_i → z_{i+1}.
pub fn generate(gpu: &Gpu, prior: &Prior, class: usize, count: usize, seed: u64, opts: &SamplingOptions) -> Result<TokenGrid> {
    // Before the per-image allocation below: a huge count must be an error, not an abort.
    check_count(gpu, prior, count, opts)?;
    generate_classes(gpu, prior, &vec![class; count], seed, opts)
}

/// One token grid per entry of `classes`, all sampled in one batch.
pub fn generate_classes(gpu: &Gpu, prior: &Prior, classes: &[usize], seed: u64, opts: &SamplingOptions) -> Result<TokenGrid> {
    Gpu::block_on(generate_classes_async(gpu, prior, classes, seed, opts))
}

/// `generate_classes` awaiting each step's logits instead of blocking (the browser's way);
/// the same seed gives the same tokens on both paths, as they are one loop.
pub async fn generate_classes_async(gpu: &Gpu, prior: &Prior, classes: &[usize], seed: u64, opts: &SamplingOptions) -> Result<TokenGrid> {
    let c = &prior.config;
    if let Some(&class) = classes.iter().find(|&&k| k >= c.n_classes) {
        invalid!("class {class} is out of range: the prior knows {} classes (0..={})", c.n_classes, c.n_classes - 1);
    }
    let count = classes.len();
    check_count(gpu, prior, count, opts)?;
    opts.check()?;
    let null_class = match (opts.guidance != 1.0, c.null_class) {
        (false, _) => None,
        (true, Some(null)) => Some(null as u32),
        (true, None) => invalid!("guidance {} needs a prior trained for classifier-free guidance (a `null_class` in its config); use guidance 1", opts.guidance),
    };
    let [h, w] = c.token_grid;
    let n = h * w;
    let v = c.vocab_size;
    let mut rng = Rng::new(seed);
    // With guidance, rows count..2·count of the batch are the same sequences under the null class.
    let rows = if null_class.is_some() { 2 * count } else { count };
    let mut session = prior.session(gpu, rows)?;
    let mut ids: Vec<u32> = classes.iter().map(|&k| k as u32).collect();
    if let Some(null) = null_class {
        ids.extend(std::iter::repeat_n(null, count));
    }
    let mut logits = session.step_async(gpu, &ids).await?;
    let mut grid = vec![0u32; count * n];
    for i in 0..n {
        if null_class.is_some() {
            let (cond, uncond) = logits.split_at_mut(count * v);
            for (c, u) in cond.iter_mut().zip(uncond.iter()) {
                *c = u + opts.guidance * (*c - u);
            }
        }
        let next: Vec<u32> = logits[..count * v].chunks(v).map(|row| sample(row, opts, &mut rng)).collect::<Result<_>>()?;
        for (b, &id) in next.iter().enumerate() {
            grid[b * n + i] = id;
        }
        if i + 1 < n {
            ids = next.repeat(rows / count);
            logits = session.step_async(gpu, &ids).await?;
        }
    }
    TokenGrid::new(&[count, h, w], grid.into_iter().map(i64::from).collect())
}
