//! taming-transformers' minGPT (`taming.modules.transformer.mingpt.GPT`) as a class-conditional
//! prior over VQGAN token grids, built from its state_dict with upstream key names:
//!
//! tok_emb(ids) + pos_emb → n_layer × (x += proj(attn(ln1 x)); x += mlp(ln2 x)) → ln_f → head.
//!
//! Every pass is a graph over per-layer KV caches kept between runs (`Graph::external`): the
//! full forward is a prefill of all its tokens from position 0, and decoding appends one token
//! per step. A step is one planned graph run again and again: the same dispatches, bind groups
//! and uniform buffers at every position (the position is a GPU-side word), one submission,
//! and only the new logits read back. q, k and v run as one fused Linear (weights stacked
//! q|k|v).
//!
//! Conditioning as taming's class-conditional `Net2NetTransformer`: class c is token id c, the
//! sequence is [c, z_0, …, z_{n−1}], and the logits at position i predict z_i.
//!
//! The caches hold f32, or (after `quantize_kv_cache`) 8-, 4- or 2-bit codes: K per channel
//! with ranges calibrated on sequences the prior samples itself, V per token.

mod config;

pub use config::PriorConfig;

use std::path::{Path, PathBuf};

use super::weights::{Weights, WeightsView};
use crate::graph::{Graph, Linear, NodeTime, Norm, Plan};
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::kv_cache::{check_kv_bits, reference as kv_ref, KvCache, Position};
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::QLinear;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, shape_err, Gpu, Result};

/// `nn.LayerNorm`'s default epsilon, which minGPT keeps.
const LN_EPS: f32 = 1e-5;

struct Block {
    ln1: Norm,
    /// query, key, value stacked: 3E outputs in the q|k|v order the KV kernels read.
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

pub struct Prior {
    pub config: PriorConfig,
    /// The packed format of every Linear (embeddings and norms stay f32).
    pub format: WeightFormat,
    /// Where the config's `decoder` resolves to (relative to the checkpoint's folder).
    pub decoder_path: Option<PathBuf>,
    tok_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    /// Low-bit KV caches for every session, when set.
    kv: Option<KvQuantSpec>,
}

/// A low-bit KV cache: bits per value and each layer's calibrated K ranges (f32 [H·D, 2]).
#[derive(Clone, Debug)]
pub struct KvQuantSpec {
    pub bits: u32,
    pub k_ranges: Vec<Vec<f32>>,
}

/// Seed of the sequences `quantize_kv_cache` calibrates on: not the default generation seed
/// (0), so that a run with the default seed is not scored on its own calibration.
const KV_CALIBRATION_SEED: u64 = 0x6b76;

/// An `nn.Linear(inp, out)` with bias, packed in `format`.
fn load_linear(gpu: &Gpu, w: &WeightsView, out: usize, inp: usize, format: WeightFormat) -> Result<Linear> {
    let packed = w.matrix("weight", &[out, inp], format)?;
    Ok(QLinear::new(gpu, &packed, Some(w.get("bias", &[out])?))?.into())
}

/// query, key and value of one attention layer as a single [3E, E] Linear.
fn load_qkv(gpu: &Gpu, attn: &WeightsView, e: usize, format: WeightFormat) -> Result<Linear> {
    let (mut parts, mut bias) = (Vec::with_capacity(3), Vec::with_capacity(3 * e));
    for part in ["query", "key", "value"] {
        parts.push(attn.pp(part).matrix("weight", &[e, e], format)?);
        bias.extend_from_slice(attn.pp(part).get("bias", &[e])?);
    }
    Ok(QLinear::new(gpu, &PackedMatrix::concat_rows(&parts)?, Some(&bias))?.into())
}

impl Prior {
    /// Builds the prior from GPT state_dict tensors (`blocks.N.attn.mask` buffers are ignored),
    /// packing Linears in `format` (`WeightFormat::F32` reproduces PyTorch).
    pub fn new(gpu: &Gpu, config: &PriorConfig, w: &Weights, format: WeightFormat) -> Result<Prior> {
        let c = config;
        let (v, e, s) = (c.vocab_size, c.n_embd, c.block_size);
        let tok_emb = Tensor::from_f32(gpu, &[v, e], w.get("tok_emb.weight", &[v, e])?)?;
        let pos_emb = Tensor::from_f32(gpu, &[s, e], w.get("pos_emb", &[1, s, e])?)?;
        // The checkpoint's depth before any per-block storage: a config that claims more
        // layers than the file has fails here, naming both.
        if !w.contains(&format!("blocks.{}.ln1.weight", c.n_layer - 1)) {
            invalid!("config says n_layer {}, but checkpoint {} has no blocks.{}.ln1.weight", c.n_layer, w.source, c.n_layer - 1);
        }
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let b = w.pp("blocks").pp(i);
            let (attn, mlp) = (b.pp("attn"), b.pp("mlp"));
            blocks.push(Block {
                ln1: b.pp("ln1").norm(gpu, e)?,
                qkv: load_qkv(gpu, &attn, e, format)?,
                proj: load_linear(gpu, &attn.pp("proj"), e, e, format)?,
                ln2: b.pp("ln2").norm(gpu, e)?,
                fc1: load_linear(gpu, &mlp.pp(0), 4 * e, e, format)?,
                fc2: load_linear(gpu, &mlp.pp(2), e, 4 * e, format)?,
            });
        }
        if w.contains(&format!("blocks.{}.ln1.weight", c.n_layer)) {
            invalid!("checkpoint {} has more than the configured {} layers", w.source, c.n_layer);
        }
        let ln_f = w.norm(gpu, "ln_f", e)?;
        let head = QLinear::new(gpu, &w.matrix("head.weight", &[v, e], format)?, None)?.into();
        if w.contains("head.bias") {
            invalid!("checkpoint {}: head.bias present, but minGPT's head has no bias", w.source);
        }
        Ok(Prior { config: c.clone(), format, decoder_path: None, tok_emb, pos_emb, blocks, ln_f, head, kv: None })
    }

    /// Loads a folder with `model.safetensors` and `config.json` (or a `.safetensors` file with
    /// `config.json` beside it).
    pub fn from_pretrained(gpu: &Gpu, path: &Path, format: WeightFormat) -> Result<Prior> {
        let (weights_path, config_path) = super::weights::resolve_checkpoint(path, None, "config.json")?;
        let config = PriorConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        let mut prior = Self::new(gpu, &config, &weights, format)?;
        let folder = config_path.parent().unwrap_or(Path::new("."));
        prior.decoder_path = config.decoder.as_ref().map(|d| folder.join(d));
        Ok(prior)
    }

    /// Logits [B, T, V] for token ids [B, T] (row-major `ids`, T ≤ block_size): the full
    /// causal pass, as `GPT.forward`.
    pub fn forward(&self, gpu: &Gpu, ids: &[u32], shape: [usize; 2]) -> Result<Tensor> {
        let [batch, tokens] = shape;
        let mut session = self.session(gpu, batch)?;
        let pass = session.check_and_plan(gpu, ids, tokens)?;
        session.run(gpu, &pass, ids)?;
        Ok(pass.outputs().remove(0))
    }

    /// The most sequences one session holds on this adapter.
    pub fn max_batch(&self, gpu: &Gpu) -> usize {
        let c = &self.config;
        // The largest per-sequence buffers: a layer's K (or V) cache, the MLP activations, logits.
        let per_sequence = (4 * c.block_size * (4 * c.n_embd).max(c.vocab_size)) as u64;
        (gpu.max_binding_size() / per_sequence).max(1) as usize
    }

    /// Bits per value of the KV caches (None: f32).
    pub fn kv_bits(&self) -> Option<u32> {
        self.kv.as_ref().map(|q| q.bits)
    }

    /// From now on, sessions keep K and V in `bits` bits per value (8, 4 or 2). K's
    /// per-channel ranges come from one f32 pass over a sequence of every class (and of the
    /// null class, with guidance) that the prior samples with its default options and
    /// `KV_CALIBRATION_SEED`: its min and max of each channel over every position.
    pub fn quantize_kv_cache(&mut self, gpu: &Gpu, bits: u32) -> Result<()> {
        check_kv_bits(bits)?;
        self.kv = None;
        let c = self.config.clone();
        let opts = c.sampling.unwrap_or_default();
        let most = super::sampling::max_count(gpu, self, &opts);
        let classes: Vec<usize> = (0..c.n_classes).take(most).collect();
        let grid = super::sampling::generate_classes(gpu, self, &classes, KV_CALIBRATION_SEED, &opts)?;
        let n = c.tokens_per_image();
        let mut conditions: Vec<u32> = classes.iter().map(|&k| k as u32).collect();
        if let (true, Some(null)) = (opts.guidance != 1.0, c.null_class) {
            conditions.extend(std::iter::repeat_n(null as u32, classes.len()));
        }
        // [condition, z_0 … z_{n−2}]: the n positions a generation fills.
        let mut ids = Vec::with_capacity(conditions.len() * n);
        for (row, &cond) in conditions.iter().enumerate() {
            ids.push(cond);
            let seq = &grid.ids[(row % classes.len()) * n..][..n];
            ids.extend(seq[..n - 1].iter().map(|&id| id as u32));
        }
        let batch = conditions.len();
        let mut session = self.session(gpu, batch)?;
        session.prefill(gpu, &ids, n)?;
        let k_ranges = session
            .caches
            .iter()
            .map(|cache| Ok(kv_ref::k_range(&cache.k.to_vec_f32(gpu)?, batch, c.n_head, c.head_dim(), c.block_size, n, bits)))
            .collect::<Result<Vec<_>>>()?;
        self.kv = Some(KvQuantSpec { bits, k_ranges });
        Ok(())
    }

    /// An empty decoding session for `batch` sequences of up to `block_size` tokens.
    pub fn session(&self, gpu: &Gpu, batch: usize) -> Result<PriorSession<'_>> {
        let c = &self.config;
        if batch == 0 {
            shape_err!("prior: batch must be at least 1");
        }
        let most = self.max_batch(gpu);
        if batch > most {
            invalid!("prior: {batch} sequences at once is over this GPU's buffer limit; at most {most}");
        }
        let caches = (0..c.n_layer)
            .map(|i| match &self.kv {
                None => KvCache::new(gpu, batch, c.n_head, c.head_dim(), c.block_size),
                Some(q) => KvCache::new_quantized(gpu, batch, c.n_head, c.head_dim(), c.block_size, q.bits, &q.k_ranges[i]),
            })
            .collect::<Result<_>>()?;
        Ok(PriorSession { prior: self, batch, caches, position: Position::new(gpu)?, step_plan: None })
    }

    /// The graph of one pass over `tokens` new tokens of `batch` sequences at `pos`: ids
    /// [B, T] u32 in, embeddings, every block (appending to its cache), ln_f, head, logits
    /// [B, T, V] out.
    pub fn graph(&self, batch: usize, tokens: usize, caches: &[KvCache], pos: &Position) -> Result<Graph> {
        let mut g = Graph::new();
        let ids = g.input(&[batch, tokens], DType::U32);
        let mut x = g.embed_at("embed", ids, &self.tok_emb, &self.pos_emb, pos)?;
        for (i, (blk, cache)) in self.blocks.iter().zip(caches).enumerate() {
            let name = |n: &str| format!("blocks.{i}.{n}");
            let h = g.layer_norm(&name("ln1"), x, &blk.ln1, LN_EPS)?;
            let qkv = g.linear(&name("attn.qkv"), &blk.qkv, h, None)?;
            let state = g.kv_cache(cache);
            let state = g.kv_append(&name("attn.kv_append"), state, qkv, cache, pos)?;
            let heads = g.kv_attend(&name("attn"), qkv, state, cache, pos)?;
            let branch = g.linear(&name("attn.proj"), &blk.proj, heads, None)?;
            x = g.add(&name("attn.residual"), x, branch)?;
            let h = g.layer_norm(&name("ln2"), x, &blk.ln2, LN_EPS)?;
            let h = g.linear(&name("mlp.0"), &blk.fc1, h, Some(Activation::Gelu))?;
            let branch = g.linear(&name("mlp.2"), &blk.fc2, h, None)?;
            x = g.add(&name("mlp.residual"), x, branch)?;
        }
        let h = g.layer_norm("ln_f", x, &self.ln_f, LN_EPS)?;
        let logits = g.linear("head", &self.head, h, None)?;
        g.output(logits);
        Ok(g)
    }
}

/// Incremental decoding: per-layer KV caches for `batch` sequences and the next position.
pub struct PriorSession<'a> {
    prior: &'a Prior,
    batch: usize,
    caches: Vec<KvCache>,
    position: Position,
    /// The single-token pass, planned on the first step and run by every later one.
    step_plan: Option<Plan>,
}

impl PriorSession<'_> {
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence appended so far (the position of the next one).
    pub fn len(&self) -> usize {
        self.position.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `tokens` ids per sequence (`ids` row-major [B, tokens]) and returns the logits
    /// after the last of them, [B, V] row-major: the distribution of each sequence's next token.
    pub fn prefill(&mut self, gpu: &Gpu, ids: &[u32], tokens: usize) -> Result<Vec<f32>> {
        Gpu::block_on(self.prefill_async(gpu, ids, tokens))
    }

    /// `prefill` without blocking on the logits' readback (the browser's way).
    pub async fn prefill_async(&mut self, gpu: &Gpu, ids: &[u32], tokens: usize) -> Result<Vec<f32>> {
        if tokens == 1 {
            return self.step_async(gpu, ids).await;
        }
        let pass = self.check_and_plan(gpu, ids, tokens)?;
        self.run(gpu, &pass, ids)?;
        self.last_logits(gpu, &pass, tokens).await
    }

    /// Appends one id per sequence (`ids` [B]) and returns the next-token logits [B, V].
    pub fn step(&mut self, gpu: &Gpu, ids: &[u32]) -> Result<Vec<f32>> {
        Gpu::block_on(self.step_async(gpu, ids))
    }

    /// `step` without blocking on the logits' readback (the browser's way).
    pub async fn step_async(&mut self, gpu: &Gpu, ids: &[u32]) -> Result<Vec<f32>> {
        let pass = match self.step_plan.take() {
            Some(p) => p,
            None => self.check_and_plan(gpu, ids, 1)?,
        };
        let result = match self.check(ids, 1).and_then(|()| self.run(gpu, &pass, ids)) {
            Ok(()) => self.last_logits(gpu, &pass, 1).await,
            Err(e) => Err(e),
        };
        self.step_plan = Some(pass);
        result
    }

    fn check(&self, ids: &[u32], tokens: usize) -> Result<()> {
        let c = &self.prior.config;
        if tokens == 0 || ids.len() != self.batch * tokens {
            shape_err!("prior: {} ids for {} sequences of {tokens} tokens", ids.len(), self.batch);
        }
        if self.len() + tokens > c.block_size {
            invalid!("prior: {tokens} tokens at position {} exceed block_size {}", self.len(), c.block_size);
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= c.vocab_size) {
            invalid!("prior: token id {id} at position {i} is outside the vocabulary of {}", c.vocab_size);
        }
        Ok(())
    }

    fn check_and_plan(&self, gpu: &Gpu, ids: &[u32], tokens: usize) -> Result<Plan> {
        self.check(ids, tokens)?;
        self.plan(gpu, tokens)
    }

    /// The planned pass over `tokens` new tokens per sequence of this session.
    pub fn plan(&self, gpu: &Gpu, tokens: usize) -> Result<Plan> {
        Plan::new(gpu, self.prior.graph(self.batch, tokens, &self.caches, &self.position)?)
    }

    /// Writes the ids, runs one pass at the current position, then advances it.
    fn run(&mut self, gpu: &Gpu, pass: &Plan, ids: &[u32]) -> Result<()> {
        pass.set_input(gpu, 0, ids)?;
        pass.run(gpu)?;
        let tokens = ids.len() / self.batch;
        // Takes effect for the next submission, after this pass has read the old value.
        self.position.set(gpu, self.position.get() + tokens)
    }

    /// Each sequence's logits after its last new token, [B, V].
    async fn last_logits(&self, gpu: &Gpu, pass: &Plan, tokens: usize) -> Result<Vec<f32>> {
        let v = self.prior.config.vocab_size;
        let all = pass.outputs()[0].to_vec_f32_async(gpu).await?;
        Ok(all.chunks(tokens * v).flat_map(|seq| seq[(tokens - 1) * v..].to_vec()).collect())
    }

    /// Dispatches one decode step records.
    pub fn step_dispatches(&mut self, gpu: &Gpu) -> Result<u32> {
        if self.step_plan.is_none() {
            self.step_plan = Some(self.plan(gpu, 1)?);
        }
        let mut enc = gpu.encoder();
        self.step_plan.as_ref().unwrap().record(gpu, &mut enc)?;
        Ok(enc.dispatches())
    }

    /// Per-node GPU times of one pass over `tokens` new tokens (ids 0) at the current position;
    /// the position does not move, so the caches keep what they held.
    pub fn profile(&self, gpu: &Gpu, tokens: usize) -> Result<Vec<NodeTime>> {
        if self.len() + tokens > self.prior.config.block_size {
            invalid!("prior: {tokens} tokens at position {} exceed block_size {}", self.len(), self.prior.config.block_size);
        }
        let pass = self.plan(gpu, tokens)?;
        Ok(pass.profile(gpu)?.1)
    }
}
