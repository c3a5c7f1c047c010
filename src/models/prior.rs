//! taming-transformers' minGPT (`taming.modules.transformer.mingpt.GPT`) as a class-conditional
//! prior over VQGAN token grids, built from its state_dict with upstream key names:
//!
//! tok_emb(ids) + pos_emb → n_layer × (x += proj(attn(ln1 x)); x += mlp(ln2 x)) → ln_f → head.
//!
//! Every pass runs through per-layer KV caches (`kernels::attention::kv_cache`): the full
//! forward is a prefill of all its tokens from position 0, and decoding appends one token per
//! step. A step records the same dispatches with the same shapes at every position (the
//! position is a GPU-side word), in one submission, and reads back only the new logits.
//! q, k and v run as one fused Linear (weights stacked q|k|v).
//!
//! Conditioning as taming's class-conditional `Net2NetTransformer`: class c is token id c, the
//! sequence is [c, z_0, …, z_{n−1}], and the logits at position i predict z_i.

mod config;

pub use config::PriorConfig;

use std::path::{Path, PathBuf};

use super::weights::Weights;
use crate::graph::Norm;
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::kv_cache::{embed_at, kv_append, kv_attend, KvCache, Position};
use crate::kernels::elementwise::{add_inplace, Activation};
use crate::kernels::matmul::{linear, QLinear};
use crate::kernels::norm::layer_norm;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, shape_err, Encoder, Gpu, Result};

/// `nn.LayerNorm`'s default epsilon, which minGPT keeps.
const LN_EPS: f32 = 1e-5;

struct Block {
    ln1: Norm,
    /// query, key, value stacked: 3E outputs in the q|k|v order the KV kernels read.
    qkv: QLinear,
    proj: QLinear,
    ln2: Norm,
    fc1: QLinear,
    fc2: QLinear,
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
    head: QLinear,
}

/// An `nn.Linear(inp, out)` with bias, packed in `format`.
fn load_linear(gpu: &Gpu, w: &Weights, prefix: &str, out: usize, inp: usize, format: WeightFormat) -> Result<QLinear> {
    let packed = w.matrix(&format!("{prefix}.weight"), &[out, inp], format)?;
    QLinear::new(gpu, &packed, Some(w.get(&format!("{prefix}.bias"), &[out])?))
}

/// query, key and value of one attention layer as a single [3E, E] Linear.
fn load_qkv(gpu: &Gpu, w: &Weights, prefix: &str, e: usize, format: WeightFormat) -> Result<QLinear> {
    let (mut parts, mut bias) = (Vec::with_capacity(3), Vec::with_capacity(3 * e));
    for part in ["query", "key", "value"] {
        parts.push(w.matrix(&format!("{prefix}.{part}.weight"), &[e, e], format)?);
        bias.extend_from_slice(w.get(&format!("{prefix}.{part}.bias"), &[e])?);
    }
    QLinear::new(gpu, &PackedMatrix::concat_rows(&parts)?, Some(&bias))
}

impl Prior {
    /// Builds the prior from GPT state_dict tensors (`blocks.N.attn.mask` buffers are ignored),
    /// packing Linears in `format` (`WeightFormat::F32` reproduces PyTorch).
    pub fn new(gpu: &Gpu, config: &PriorConfig, w: &Weights, format: WeightFormat) -> Result<Prior> {
        let c = config;
        let (v, e, s) = (c.vocab_size, c.n_embd, c.block_size);
        let tok_emb = Tensor::from_f32(gpu, &[v, e], w.get("tok_emb.weight", &[v, e])?)?;
        let pos_emb = Tensor::from_f32(gpu, &[s, e], w.get("pos_emb", &[1, s, e])?)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let b = format!("blocks.{i}");
            blocks.push(Block {
                ln1: w.norm(gpu, &format!("{b}.ln1"), e)?,
                qkv: load_qkv(gpu, w, &format!("{b}.attn"), e, format)?,
                proj: load_linear(gpu, w, &format!("{b}.attn.proj"), e, e, format)?,
                ln2: w.norm(gpu, &format!("{b}.ln2"), e)?,
                fc1: load_linear(gpu, w, &format!("{b}.mlp.0"), 4 * e, e, format)?,
                fc2: load_linear(gpu, w, &format!("{b}.mlp.2"), e, 4 * e, format)?,
            });
        }
        if w.contains(&format!("blocks.{}.ln1.weight", c.n_layer)) {
            invalid!("checkpoint {} has more than the configured {} layers", w.source, c.n_layer);
        }
        let ln_f = w.norm(gpu, "ln_f", e)?;
        let head = QLinear::new(gpu, &w.matrix("head.weight", &[v, e], format)?, None)?;
        if w.contains("head.bias") {
            invalid!("checkpoint {}: head.bias present, but minGPT's head has no bias", w.source);
        }
        Ok(Prior { config: c.clone(), format, decoder_path: None, tok_emb, pos_emb, blocks, ln_f, head })
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
        let pass = session.check_and_pass(gpu, ids, tokens)?;
        session.run(gpu, &pass, ids)?;
        Ok(pass.logits)
    }

    /// An empty decoding session for `batch` sequences of up to `block_size` tokens.
    pub fn session(&self, gpu: &Gpu, batch: usize) -> Result<PriorSession<'_>> {
        let c = &self.config;
        if batch == 0 {
            shape_err!("prior: batch must be at least 1");
        }
        // The largest per-sequence buffers: a layer's K (or V) cache, the MLP activations, logits.
        let per_sequence = (4 * c.block_size * (4 * c.n_embd).max(c.vocab_size)) as u64;
        let most = (gpu.max_binding_size() / per_sequence).max(1);
        if batch as u64 > most {
            invalid!("prior: {batch} sequences at once is over this adapter's buffer limit; at most {most}");
        }
        let caches = (0..c.n_layer).map(|_| KvCache::new(gpu, batch, c.n_head, c.head_dim(), c.block_size)).collect::<Result<_>>()?;
        Ok(PriorSession { prior: self, batch, caches, position: Position::new(gpu)?, step_pass: None })
    }

    /// Records one pass over the new tokens of `pass` (ids already written) at the session's
    /// position: embeddings, every block (appending to its cache), ln_f and head.
    fn record(&self, gpu: &Gpu, enc: &mut Encoder, pass: &Pass, caches: &[KvCache], pos: &Position) -> Result<()> {
        embed_at(gpu, enc, &pass.ids, &self.tok_emb, &self.pos_emb, pos, &pass.x)?;
        for (blk, cache) in self.blocks.iter().zip(caches) {
            layer_norm(gpu, enc, &pass.x, &blk.ln1.weight, &blk.ln1.bias, LN_EPS, &pass.normed)?;
            linear(gpu, enc, &blk.qkv, &pass.normed, &pass.qkv, None)?;
            kv_append(gpu, enc, &pass.qkv, cache, pos)?;
            kv_attend(gpu, enc, &pass.qkv, cache, pos, &pass.heads)?;
            linear(gpu, enc, &blk.proj, &pass.heads, &pass.branch, None)?;
            add_inplace(gpu, enc, &pass.x, &pass.branch)?;
            layer_norm(gpu, enc, &pass.x, &blk.ln2.weight, &blk.ln2.bias, LN_EPS, &pass.normed)?;
            linear(gpu, enc, &blk.fc1, &pass.normed, &pass.hidden, Some(Activation::Gelu))?;
            linear(gpu, enc, &blk.fc2, &pass.hidden, &pass.branch, None)?;
            add_inplace(gpu, enc, &pass.x, &pass.branch)?;
        }
        layer_norm(gpu, enc, &pass.x, &self.ln_f.weight, &self.ln_f.bias, LN_EPS, &pass.normed)?;
        linear(gpu, enc, &self.head, &pass.normed, &pass.logits, None)
    }
}

/// Activations of one pass over T new tokens per sequence.
struct Pass {
    tokens: usize,
    ids: Tensor,
    x: Tensor,
    normed: Tensor,
    qkv: Tensor,
    heads: Tensor,
    branch: Tensor,
    hidden: Tensor,
    logits: Tensor,
}

impl Pass {
    fn new(gpu: &Gpu, c: &PriorConfig, batch: usize, tokens: usize) -> Result<Pass> {
        let (b, t, e) = (batch, tokens, c.n_embd);
        let f32s = |w: usize| Tensor::zeros(gpu, &[b, t, w], DType::F32);
        Ok(Pass {
            tokens,
            ids: Tensor::zeros(gpu, &[b, t], DType::U32)?,
            x: f32s(e)?,
            normed: f32s(e)?,
            qkv: f32s(3 * e)?,
            heads: f32s(e)?,
            branch: f32s(e)?,
            hidden: f32s(4 * e)?,
            logits: f32s(c.vocab_size)?,
        })
    }
}

/// Incremental decoding: per-layer KV caches for `batch` sequences and the next position.
pub struct PriorSession<'a> {
    prior: &'a Prior,
    batch: usize,
    caches: Vec<KvCache>,
    position: Position,
    /// The single-token pass, made on the first step and reused by every later one.
    step_pass: Option<Pass>,
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
        let pass = self.check_and_pass(gpu, ids, tokens)?;
        self.run(gpu, &pass, ids)?;
        self.last_logits(gpu, &pass).await
    }

    /// Appends one id per sequence (`ids` [B]) and returns the next-token logits [B, V].
    pub fn step(&mut self, gpu: &Gpu, ids: &[u32]) -> Result<Vec<f32>> {
        Gpu::block_on(self.step_async(gpu, ids))
    }

    /// `step` without blocking on the logits' readback (the browser's way).
    pub async fn step_async(&mut self, gpu: &Gpu, ids: &[u32]) -> Result<Vec<f32>> {
        let pass = match self.step_pass.take() {
            Some(p) => p,
            None => self.check_and_pass(gpu, ids, 1)?,
        };
        let result = match self.check(ids, 1).and_then(|()| self.run(gpu, &pass, ids)) {
            Ok(()) => self.last_logits(gpu, &pass).await,
            Err(e) => Err(e),
        };
        self.step_pass = Some(pass);
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

    fn check_and_pass(&self, gpu: &Gpu, ids: &[u32], tokens: usize) -> Result<Pass> {
        self.check(ids, tokens)?;
        Pass::new(gpu, &self.prior.config, self.batch, tokens)
    }

    /// Writes the ids, records and submits one pass at the current position, then advances it.
    fn run(&mut self, gpu: &Gpu, pass: &Pass, ids: &[u32]) -> Result<()> {
        gpu.queue.write_buffer(&pass.ids.buffer, 0, bytemuck::cast_slice(ids));
        let mut enc = gpu.encoder();
        self.prior.record(gpu, &mut enc, pass, &self.caches, &self.position)?;
        gpu.submit(enc)?;
        let next = self.position.get() + pass.tokens;
        // Takes effect for the next submission, after this pass has read the old value.
        self.position.set(gpu, next)
    }

    async fn last_logits(&self, gpu: &Gpu, pass: &Pass) -> Result<Vec<f32>> {
        let v = self.prior.config.vocab_size;
        let all = pass.logits.to_vec_f32_async(gpu).await?;
        Ok(all.chunks(pass.tokens * v).flat_map(|seq| seq[(pass.tokens - 1) * v..].to_vec()).collect())
    }
}
