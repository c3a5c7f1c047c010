//! Lossless coding of VQ token grids: the `.lbt` codec behind `lowbit compress` and
//! `lowbit decompress`.
//!
//! Each image's tokens (raster order) are rANS-coded into their own payload, under either a
//! uniform table over the tokenizer's codebook (no prior) or, with a prior, the table
//! [`rans::Freqs::from_logits`] makes of the prior's next-token logits. The prior is run step
//! by step on both sides — the same single-token plan, the same batch composition (chunks of
//! [`PRIOR_BATCH`] images in file order) — so that the decoder, replaying it on the tokens it
//! has decoded so far, sees the very logits the encoder saw on the same GPU and driver. Across
//! GPUs the logits may differ by ulps; the coarse rounding in `from_logits` absorbs nearly all
//! of that, and when it does not, the decoder fails with an error (the payload's end check and
//! CRC), never silently decoding other tokens.

pub mod format;
pub mod rans;

use std::path::Path;

use crate::models::prior::Prior;
use crate::models::vqgan::{TokenGrid, VqganConfig};
use crate::{invalid, Error, Gpu, Result};
use rans::Freqs;

/// Images whose prior runs share one batched session; fixed, so that both sides batch alike.
pub const PRIOR_BATCH: usize = 16;

/// How tokens are modelled.
pub enum Model<'a> {
    /// Every id of the codebook equally likely.
    Uniform { codebook: usize },
    /// Order-0 counts of the image's tokens so far (see [`Adaptive`]).
    Adaptive { codebook: usize },
    /// The prior's next-token distribution after `class`, restricted to the first `codebook` ids.
    Prior { prior: &'a Prior, class: u32, codebook: usize },
}

impl Model<'_> {
    pub fn codebook(&self) -> usize {
        match self {
            Model::Uniform { codebook } | Model::Adaptive { codebook } | Model::Prior { codebook, .. } => *codebook,
        }
    }
}

/// An adaptive order-0 model without floats: every id starts at count 1 and gains `STEP` each
/// time it occurs in the image; the table is rebuilt from the counts every `EVERY` tokens
/// (rebuilding per token costs O(codebook) each, for little gain). Each image starts afresh,
/// so payloads stay independent.
pub struct Adaptive {
    counts: Vec<u64>,
    table: Freqs,
    seen: usize,
}

impl Adaptive {
    const STEP: u64 = 16;
    const EVERY: usize = 16;

    pub fn new(codebook: usize) -> Result<Adaptive> {
        Ok(Adaptive { counts: vec![1; codebook], table: Freqs::uniform(codebook)?, seen: 0 })
    }

    /// The table for the next token.
    pub fn table(&self) -> &Freqs {
        &self.table
    }

    /// Counts token `s` (< codebook).
    pub fn update(&mut self, s: usize) -> Result<()> {
        self.counts[s] += Self::STEP;
        self.seen += 1;
        if self.seen.is_multiple_of(Self::EVERY) {
            self.table = Freqs::from_weights(&self.counts)?;
        }
        Ok(())
    }
}

/// The identity of a checkpoint: `model_hash` of its weights file and its config file.
fn hash_files(weights: &Path, config: &Path) -> Result<u64> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::Invalid(format!("reading {}: {e}", p.display())));
    Ok(format::model_hash(&[&read(weights)?, &read(config)?]))
}

/// The identity of a VQGAN folder (or .safetensors file).
pub fn tokenizer_hash(path: &Path) -> Result<u64> {
    let (weights, config) = VqganConfig::resolve(path, None)?;
    hash_files(&weights, &config)
}

/// The identity of a prior folder.
pub fn prior_hash(path: &Path) -> Result<u64> {
    let (weights, config) = crate::models::weights::resolve_checkpoint(path, None, "config.json")?;
    hash_files(&weights, &config)
}

/// The token a prior is conditioned on for compression: its null (unconditional) class where
/// it was trained with one, else class 0 (then stored in the file like any class).
pub fn conditioning_class(prior: &Prior) -> u32 {
    prior.config.null_class.unwrap_or(0) as u32
}

fn check_tokens(grid: &TokenGrid, model: &Model, i: usize) -> Result<()> {
    if grid.batch != 1 {
        invalid!("image {i}: one token grid per image, got a batch of {}", grid.batch);
    }
    // The prior models one id per position; several (sub-codebooks, stages) are coded as
    // planes with the static models only.
    if let (Some(s), Model::Prior { .. }) = (grid.codes, model) {
        invalid!("image {i}: tokens {:?} have {s} ids per position (sub-codebooks or stages); a prior codes one: compress them without --prior", grid.dims());
    }
    let n = model.codebook();
    if let Some(&id) = grid.ids.iter().find(|&&id| id < 0 || id as usize >= n) {
        invalid!("image {i}: token id {id} is outside the sub-codebook of {n} ids the model codes");
    }
    if let Model::Prior { prior, .. } = model {
        let want = prior.config.token_grid;
        if [grid.height, grid.width] != want {
            invalid!("image {i}: its token grid is {}×{}, but the prior models {}×{} grids", grid.height, grid.width, want[0], want[1]);
        }
    }
    Ok(())
}

/// One payload per grid (each grid [1, h, w]).
pub fn encode(gpu: &Gpu, model: &Model, grids: &[TokenGrid]) -> Result<Vec<Vec<u8>>> {
    for (i, g) in grids.iter().enumerate() {
        check_tokens(g, model, i)?;
    }
    let symbols = |g: &TokenGrid| g.ids.iter().map(|&id| id as usize).collect::<Vec<_>>();
    match model {
        Model::Uniform { codebook } => {
            let table = Freqs::uniform(*codebook)?;
            grids.iter().map(|g| rans::encode(&symbols(g), &vec![&table; g.ids.len()])).collect()
        }
        Model::Adaptive { codebook } => grids
            .iter()
            .map(|g| {
                let syms = symbols(g);
                let plane = g.height * g.width;
                // The table changes every EVERY tokens: keep one copy per change.
                let (mut tables, mut which) = (Vec::new(), Vec::with_capacity(syms.len()));
                for ids in syms.chunks(plane) {
                    // Each plane (sub-codebook or stage) has its own statistics: counts restart.
                    let mut model = Adaptive::new(*codebook)?;
                    for (i, &s) in ids.iter().enumerate() {
                        if i % Adaptive::EVERY == 0 {
                            tables.push(model.table().clone());
                        }
                        which.push(tables.len() - 1);
                        model.update(s)?;
                    }
                }
                rans::encode(&syms, &which.iter().map(|&t| &tables[t]).collect::<Vec<_>>())
            })
            .collect(),
        Model::Prior { prior, class, codebook } => {
            let mut out = Vec::with_capacity(grids.len());
            for chunk in grids.chunks(PRIOR_BATCH) {
                let seqs: Vec<Vec<usize>> = chunk.iter().map(symbols).collect();
                let n = seqs[0].len();
                let mut tables: Vec<Vec<Freqs>> = vec![Vec::with_capacity(n); chunk.len()];
                replay(gpu, prior, *class, chunk.len(), n, |i, logits| {
                    for (b, row) in logits.chunks(prior.config.vocab_size).enumerate() {
                        tables[b].push(Freqs::from_logits(row, *codebook)?);
                    }
                    // Teacher forcing: the next input is the true token.
                    Ok(seqs.iter().map(|s| s[i] as u32).collect())
                })?;
                for (s, t) in seqs.iter().zip(&tables) {
                    out.push(rans::encode(s, &t.iter().collect::<Vec<_>>())?);
                }
            }
            Ok(out)
        }
    }
}

/// Without a prior: the adaptive order-0 model, or the uniform one where that is smaller
/// (short grids, such as a 32×32 digit's 64 tokens, give the counts too little to learn from).
/// Returns whether the adaptive model won, and the payloads.
pub fn encode_without_prior(gpu: &Gpu, grids: &[TokenGrid], codebook: usize) -> Result<(bool, Vec<Vec<u8>>)> {
    let adaptive = encode(gpu, &Model::Adaptive { codebook }, grids)?;
    let uniform = encode(gpu, &Model::Uniform { codebook }, grids)?;
    let size = |p: &[Vec<u8>]| p.iter().map(Vec::len).sum::<usize>();
    Ok(if size(&uniform) <= size(&adaptive) { (false, uniform) } else { (true, adaptive) })
}

/// Runs the prior over `n` positions of `batch` sequences, starting from `class`: `next(i,
/// logits [batch, V])` returns the batch's token at position i, fed back for position i + 1.
fn replay(gpu: &Gpu, prior: &Prior, class: u32, batch: usize, n: usize, mut next: impl FnMut(usize, &[f32]) -> Result<Vec<u32>>) -> Result<()> {
    let mut session = prior.session(gpu, batch)?;
    let mut logits = session.step(gpu, &vec![class; batch])?;
    for i in 0..n {
        let ids = next(i, &logits)?;
        if i + 1 < n {
            logits = session.step(gpu, &ids)?;
        }
    }
    Ok(())
}

/// The token grids of `payloads`, each with its shape [ids per position, h, w]: grids
/// [1, h, w] for one id per position, else [1, S, h, w].
pub fn decode(gpu: &Gpu, model: &Model, payloads: &[([usize; 3], &[u8])]) -> Result<Vec<TokenGrid>> {
    let grid = |[s, h, w]: [usize; 3], ids: Vec<usize>| {
        let ids = ids.into_iter().map(|v| v as i64).collect();
        if s == 1 {
            TokenGrid::new(&[1, h, w], ids)
        } else {
            TokenGrid::new(&[1, s, h, w], ids)
        }
    };
    let count = |[s, h, w]: [usize; 3]| s * h * w;
    let bad = |i: usize| move |e: Error| Error::Invalid(format!("image {i}: {e}"));
    match model {
        Model::Uniform { codebook } => {
            let table = Freqs::uniform(*codebook)?;
            payloads
                .iter()
                .enumerate()
                .map(|(i, &(shape, bytes))| grid(shape, rans::decode(bytes, count(shape), |_, _| Ok(table.clone())).map_err(bad(i))?))
                .collect()
        }
        Model::Adaptive { codebook } => payloads
            .iter()
            .enumerate()
            .map(|(i, &(shape, bytes))| {
                let mut dec = rans::Decoder::new(bytes).map_err(bad(i))?;
                let plane = shape[1] * shape[2];
                let mut syms = Vec::with_capacity(count(shape).min(1 << 20));
                for _ in 0..shape[0] {
                    let mut model = Adaptive::new(*codebook)?;
                    for _ in 0..plane {
                        let s = dec.next(model.table()).map_err(bad(i))?;
                        model.update(s)?;
                        syms.push(s);
                    }
                }
                dec.finish().map_err(bad(i))?;
                grid(shape, syms)
            })
            .collect(),
        Model::Prior { prior, class, codebook } => {
            let want = prior.config.token_grid;
            if let Some(i) = payloads.iter().position(|(shape, _)| *shape != [1, want[0], want[1]]) {
                invalid!("image {i}: the file says a {:?} token grid, but the prior models {want:?}: another model's file or a corrupted header", payloads[i].0);
            }
            let n = want[0] * want[1];
            let mut out = Vec::with_capacity(payloads.len());
            for (c, chunk) in payloads.chunks(PRIOR_BATCH).enumerate() {
                let mut decoders = chunk.iter().enumerate().map(|(b, (_, bytes))| rans::Decoder::new(bytes).map_err(bad(c * PRIOR_BATCH + b))).collect::<Result<Vec<_>>>()?;
                let mut seqs = vec![Vec::with_capacity(n); chunk.len()];
                replay(gpu, prior, *class, chunk.len(), n, |_, logits| {
                    let mut ids = Vec::with_capacity(chunk.len());
                    for (b, row) in logits.chunks(prior.config.vocab_size).enumerate() {
                        let s = decoders[b].next(&Freqs::from_logits(row, *codebook)?).map_err(bad(c * PRIOR_BATCH + b))?;
                        seqs[b].push(s);
                        ids.push(s as u32);
                    }
                    Ok(ids)
                })?;
                for (b, d) in decoders.into_iter().enumerate() {
                    d.finish().map_err(bad(c * PRIOR_BATCH + b))?;
                }
                for s in seqs {
                    out.push(grid([1, want[0], want[1]], s)?);
                }
            }
            Ok(out)
        }
    }
}
