//! A ViT's forward and backward pass on the CPU, from the checkpoint's f32 weights: how much
//! each Linear's output, token by token, moves the model's output. The quantizer's loss-aware
//! options (`--sensitivity fisher|lrp`, `--method fisher`) need this once per calibration image
//! and never at inference, so it is plain Rust (threaded loops) rather than backward kernels on
//! the GPU.
//!
//! What is measured: an error ΔO on a layer's output moves the output y by J·ΔO to first order,
//! so the output's squared error is ΔOᵀ·JᵀJ·ΔO, and a token whose channels carry a large
//! diagonal of JᵀJ matters more (PTQ4ViT's "Hessian-guided" metric, with the squared error of
//! the output as the loss: the Gauss–Newton matrix of the quantized model's distance to the
//! float one). The diagonal comes from Hutchinson's estimator: for random signs r on the
//! output, E[(Jᵀr)²] = diag(JᵀJ), one backward pass per sign vector; with few outputs (up to
//! `EXACT_OUTPUTS`) each output's unit vector instead, which is exact.
//!
//! The forward pass mirrors `forward.rs` (and is checked against timm's logits by the tests);
//! inputs of another size than the config's are a clear error.

use std::collections::HashMap;

mod blocks;
mod inputs;
mod layers;

pub use blocks::{InputMap, QDrop};
pub use inputs::NodeInput;

use layers::{activate, add_scaled, gemm, half_sum, par_rows, Operand, part, scaled, set_part, slope, softmax, Dense, Norm, NormCache};
use super::checks;
use super::config::{Pool, VitConfig};
use crate::kernels::act_quant::ActQuantizer;
use crate::models::Weights;
use crate::synthetic::Rng;
use crate::{shape_err, Result};

/// Outputs up to this many get one exact backward pass each; more get `RANDOM_SIGNS` passes.
const EXACT_OUTPUTS: usize = 16;
const RANDOM_SIGNS: usize = 4;

/// Per layer (the graph node that runs it, e.g. `blocks.3.mlp.fc1`), one value per input row
/// in the order the node sees them (image-major, then token): the expected squared norm of the
/// output's gradient at that row, E‖∂(rᵀy)/∂O_row‖².
pub type Sensitivity = HashMap<String, Vec<f32>>;

/// What `CpuVit::sensitivity` measures on a set of images.
pub struct Measured {
    /// Per layer, per input row (module docs).
    pub rows: Sensitivity,
    /// Per layer, per output channel: the same squared gradients summed over the rows.
    pub channels: HashMap<String, Vec<f64>>,
    /// The model's outputs.
    pub outputs: Vec<f32>,
}

/// One Linear's part of a backward pass: its output's gradient and the output itself, rows of
/// `width` (fc1's output is before the activation).
pub struct Visit<'a> {
    pub node: String,
    pub grad: &'a [f32],
    pub output: &'a [f32],
    pub width: usize,
}

/// The Linears of block `i`, as the checkpoint names them under `blocks.{i}.`, in the order
/// `CpuVit::run_block` takes their weights.
pub const BLOCK_LINEARS: [&str; 4] = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"];

#[derive(Clone, Copy)]
struct Block<'a> {
    norm1: Norm<'a>,
    qkv: Dense<'a>,
    proj: Dense<'a>,
    ls1: Option<&'a [f32]>,
    norm2: Norm<'a>,
    fc1: Dense<'a>,
    fc2: Dense<'a>,
    ls2: Option<&'a [f32]>,
    /// LayerNorm over each query head and each key head (timm's `qk_norm`).
    qk_norm: Option<(Norm<'a>, Norm<'a>)>,
    /// What each Linear's input goes through (`BLOCK_LINEARS` order).
    maps: [InputMap; 4],
    /// A quantized model's post-softmax quantizer (straight-through in the backward pass).
    softmax_quant: Option<ActQuantizer>,
}

/// What a block's backward needs from its forward, and its Linears' outputs.
pub struct BlockCache {
    ln1: NormCache,
    /// qkv's output, and with qk_norm the attention's input (normalized q and k) beside it.
    qkv: Vec<f32>,
    qk_normed: Option<(Vec<f32>, NormCache, NormCache)>,
    /// Attention probabilities, [image, head, query, key], and where the block quantizes them
    /// (`CpuVit::with_attention_quantizers`), what that made of them.
    probs: Vec<f32>,
    probs_q: Option<Vec<f32>>,
    /// The heads' outputs (proj's input).
    heads: Vec<f32>,
    /// Each Linear's input as it multiplied it, where an `InputMap` changed it.
    mapped: [Option<Vec<f32>>; 4],
    proj: Vec<f32>,
    ln2: NormCache,
    pre_act: Vec<f32>,
    fc2: Vec<f32>,
}

/// How `CpuVit::backward` passes through the nonlinear parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The true gradient.
    Gradient,
    /// Layer-wise relevance propagation as gradient × input with the conservative rules of
    /// Ali et al. (ICML 2022, "XAI for Transformers"): LayerNorm's σ and the attention
    /// probabilities are held constant and relevance passes through the activation
    /// unchanged (its local slope taken as act(x)/x), so every Linear's output carries the
    /// relevance its inputs pass on.
    Relevance,
}

/// The float ViT on the CPU.
pub struct CpuVit<'a> {
    c: &'a VitConfig,
    patch: Dense<'a>,
    prefix: Vec<f32>,
    pos: Vec<f32>,
    norm_pre: Option<Norm<'a>>,
    blocks: Vec<Block<'a>>,
    norm: Option<Norm<'a>>,
    fc_norm: Option<Norm<'a>>,
    head: Option<Dense<'a>>,
    head_dist: Option<Dense<'a>>,
}

/// The residual rows entering the first block, the patch embedding's output, `norm_pre`'s
/// cache and the image count.
struct Embedded {
    x: Vec<f32>,
    patch: Vec<f32>,
    pre: Option<NormCache>,
    images: usize,
}

/// What `block_backward` hands each Linear's visitor: (linear as in `BLOCK_LINEARS`, its
/// output's gradient, its output, the output's width).
type Record<'r> = dyn FnMut(&str, &[f32], &[f32], usize) + 'r;

/// A forward pass's intermediate values, for the backward.
pub struct Trace {
    images: usize,
    patch: Vec<f32>,
    pre: Option<NormCache>,
    blocks: Vec<BlockCache>,
    /// The head's and the distillation head's inputs and outputs.
    head_in: Vec<f32>,
    dist_in: Vec<f32>,
    head_out: Vec<f32>,
    dist_out: Vec<f32>,
    /// The final norm over the rows it normalized (class tokens, or every token).
    norm: Option<NormCache>,
    norm_dist: Option<NormCache>,
    fc_norm: Option<NormCache>,
    /// With max pooling: the token each pooled channel came from, [image, channel].
    argmax: Vec<usize>,
}

impl Trace {
    /// The trace of `images` images before anything is recorded in it.
    fn empty(images: usize) -> Trace {
        Trace {
            images,
            patch: Vec::new(),
            pre: None,
            blocks: Vec::new(),
            head_in: Vec::new(),
            dist_in: Vec::new(),
            head_out: Vec::new(),
            dist_out: Vec::new(),
            norm: None,
            norm_dist: None,
            fc_norm: None,
            argmax: Vec::new(),
        }
    }
}

impl<'a> CpuVit<'a> {
    pub fn new(c: &'a VitConfig, w: &'a Weights) -> Result<CpuVit<'a>> {
        let (d, p, hidden, eps) = (c.embed_dim, c.patch_size, c.mlp_hidden(), c.norm_eps as f32);
        let prefix = checks::prefix_tokens(c, w)?;
        // The conv's [D, 3, p, p] weight is a [D, 3·p·p] matrix over flattened patches.
        let patch = Dense {
            w: w.get("patch_embed.proj.weight", &[d, 3, p, p])?,
            b: if c.pre_norm { None } else { Some(w.get("patch_embed.proj.bias", &[d])?) },
            out: d,
            inp: 3 * p * p,
        };
        let layer_scale = |name: String| -> Result<Option<&'a [f32]>> { c.init_values.map(|_| w.get(&name, &[d])).transpose() };
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = |name: &str| format!("blocks.{i}.{name}");
            blocks.push(Block {
                norm1: Norm::load(w, &b("norm1"), d, eps)?,
                qkv: Dense::load(w, &b("attn.qkv"), 3 * d, d, c.qkv_bias)?,
                proj: Dense::load(w, &b("attn.proj"), d, d, c.proj_bias)?,
                ls1: layer_scale(b("ls1.gamma"))?,
                norm2: Norm::load(w, &b("norm2"), d, eps)?,
                fc1: Dense::load(w, &b("mlp.fc1"), hidden, d, c.proj_bias)?,
                fc2: Dense::load(w, &b("mlp.fc2"), d, hidden, c.proj_bias)?,
                ls2: layer_scale(b("ls2.gamma"))?,
                maps: Default::default(),
                softmax_quant: None,
                qk_norm: if c.qk_norm { Some((Norm::load(w, &b("attn.q_norm"), c.head_dim(), eps)?, Norm::load(w, &b("attn.k_norm"), c.head_dim(), eps)?)) } else { None },
            });
        }
        let norm_if = |on: bool, name: &str| if on { Norm::load(w, name, d, eps).map(Some) } else { Ok(None) };
        let head_of = |name: &str| if c.num_classes > 0 { Dense::load(w, name, c.num_classes, d, true).map(Some) } else { Ok(None) };
        Ok(CpuVit {
            c,
            patch,
            prefix,
            pos: checks::pos_embed(c, w)?,
            norm_pre: norm_if(c.pre_norm, "norm_pre")?,
            blocks,
            norm: norm_if(c.final_norm, "norm")?,
            fc_norm: norm_if(c.fc_norm, "fc_norm")?,
            head: head_of("head")?,
            head_dist: if c.distilled { head_of("head_dist")? } else { None },
        })
    }

    /// Output values per image (what `VisionTransformer::output_dim` says).
    pub fn output_dim(&self) -> usize {
        let per_row = self.head.as_ref().map_or(self.c.embed_dim, |h| h.out);
        if self.c.global_pool == Pool::None { per_row * self.c.tokens() } else { per_row }
    }

    /// The residual rows entering the first block ([n·T, D]) for `images`.
    pub fn embed(&self, images: &[f32]) -> Result<Vec<f32>> {
        Ok(self.embed_traced(images)?.x)
    }

    /// `embed`, with what the backward pass needs of it.
    fn embed_traced(&self, images: &[f32]) -> Result<Embedded> {
        let c = self.c;
        let (s, p, d, t, k) = (c.img_size, c.patch_size, c.embed_dim, c.tokens(), c.prefix_tokens());
        if images.is_empty() || !images.len().is_multiple_of(3 * s * s) {
            shape_err!("{}: {} input values are not 3×{s}×{s} images", c.architecture, images.len());
        }
        let n = images.len() / (3 * s * s);
        let g = c.grid();
        // Patches in the conv weight's (channel, row, column) order, image-major, row-major.
        let mut patches = Vec::with_capacity(n * g * g * 3 * p * p);
        for img in images.chunks(3 * s * s) {
            for gy in 0..g {
                for gx in 0..g {
                    for ch in 0..3 {
                        for y in 0..p {
                            let at = (ch * s + gy * p + y) * s + gx * p;
                            patches.extend_from_slice(&img[at..at + p]);
                        }
                    }
                }
            }
        }
        let patch_out = self.patch.forward(&patches);
        let mut x = Vec::with_capacity(n * t * d);
        for i in 0..n {
            for tok in 0..t {
                let src = if tok < k { &self.prefix[tok * d..(tok + 1) * d] } else { &patch_out[(i * g * g + tok - k) * d..][..d] };
                x.extend(src.iter().zip(&self.pos[tok * d..(tok + 1) * d]).map(|(a, b)| a + b));
            }
        }
        let pre = self.norm_pre.as_ref().map(|norm| {
            let (y, cache) = norm.forward(&x);
            x = y;
            cache
        });
        Ok(Embedded { x, patch: patch_out, pre, images: n })
    }

    /// The outputs (logits) of `images` ([n, 3, S, S], preprocessed) and the trace for
    /// `backward`.
    pub fn forward(&self, images: &[f32]) -> Result<(Vec<f32>, Trace)> {
        let Embedded { mut x, patch, pre, images: n } = self.embed_traced(images)?;
        let blocks = self.blocks.iter().map(|b| self.block_forward(b, &mut x, n)).collect::<Result<_>>()?;
        let mut trace = Trace { patch, pre, blocks, ..Trace::empty(n) };
        let out = self.head_forward(&x, &mut trace);
        Ok((out, trace))
    }

    /// One block on the residual rows `x` ([n·T, D], updated in place): what its backward needs.
    fn block_forward(&self, b: &Block, x: &mut [f32], n: usize) -> Result<BlockCache> {
        let (c, d) = (self.c, self.c.embed_dim);
        let mut mapped: [Option<Vec<f32>>; 4] = Default::default();
        // Each Linear on its input after its map, which the weight gradient needs kept.
        let mut linear = |at: usize, dense: &Dense, input: &[f32]| -> Result<Vec<f32>> {
            if b.maps[at].is_identity() {
                return Ok(dense.forward(input));
            }
            let m = b.maps[at].forward(input, dense.inp)?;
            let y = dense.forward(&m);
            mapped[at] = Some(m);
            Ok(y)
        };
        let (h, ln1) = b.norm1.forward(x);
        let qkv = linear(0, &b.qkv, &h)?;
        let qk_normed = b.qk_norm.as_ref().map(|(qn, kn)| {
            let (q, qc) = qn.forward(&part(&qkv, d, 0));
            let (k, kc) = kn.forward(&part(&qkv, d, 1));
            let mut normed = qkv.clone();
            set_part(&mut normed, d, 0, &q);
            set_part(&mut normed, d, 1, &k);
            (normed, qc, kc)
        });
        let (heads, probs, probs_q) = self.attention(qk_normed.as_ref().map_or(&qkv, |q| &q.0), n, b.softmax_quant);
        let proj = linear(1, &b.proj, &heads)?;
        add_scaled(x, &proj, b.ls1);
        let (h, ln2) = b.norm2.forward(x);
        let pre_act = linear(2, &b.fc1, &h)?;
        let act: Vec<f32> = activate(c.act, &pre_act);
        let fc2 = linear(3, &b.fc2, &act)?;
        add_scaled(x, &fc2, b.ls2);
        Ok(BlockCache { ln1, qkv, qk_normed, probs, probs_q, heads, mapped, proj, ln2, pre_act, fc2 })
    }

    /// One block's backward: `dx` (the gradient at its output rows) becomes the gradient at
    /// its input; `record(linear, grad, output, width)` sees each Linear's output gradient
    /// (linear as in `BLOCK_LINEARS`), last first.
    fn block_backward(&self, b: &Block, cache: &BlockCache, dx: &mut [f32], n: usize, rule: Rule, record: &mut Record) {
        let (c, d) = (self.c, self.c.embed_dim);
        let d_fc2 = scaled(dx, b.ls2);
        record("mlp.fc2", &d_fc2, &cache.fc2, d);
        let mut d_pre = b.maps[3].backward(b.fc2.backward(&d_fc2), b.fc2.inp);
        d_pre.iter_mut().zip(&cache.pre_act).for_each(|(g, &v)| *g *= slope(c.act, v, rule));
        record("mlp.fc1", &d_pre, &cache.pre_act, b.fc1.out);
        let dh = b.norm2.backward(&cache.ln2, &b.maps[2].backward(b.fc1.backward(&d_pre), b.fc1.inp), rule);
        dx.iter_mut().zip(&dh).for_each(|(a, b)| *a += b);
        let d_proj = scaled(dx, b.ls1);
        record("attn.proj", &d_proj, &cache.proj, d);
        let mut d_qkv = self.attention_backward(cache, &b.maps[1].backward(b.proj.backward(&d_proj), b.proj.inp), n, rule);
        if let (Some((qn, kn)), Some((_, qc, kc))) = (&b.qk_norm, &cache.qk_normed) {
            let dq = qn.backward(qc, &part(&d_qkv, d, 0), rule);
            let dk = kn.backward(kc, &part(&d_qkv, d, 1), rule);
            set_part(&mut d_qkv, d, 0, &dq);
            set_part(&mut d_qkv, d, 1, &dk);
        }
        record("attn.qkv", &d_qkv, &cache.qkv, 3 * d);
        let dh = b.norm1.backward(&cache.ln1, &b.maps[0].backward(b.qkv.backward(&d_qkv), b.qkv.inp), rule);
        dx.iter_mut().zip(&dh).for_each(|(a, b)| *a += b);
    }

    fn head_forward(&self, x: &[f32], trace: &mut Trace) -> Vec<f32> {
        let (c, n) = (self.c, trace.images);
        let (d, t) = (c.embed_dim, c.tokens());
        let token = |j: usize| -> Vec<f32> { (0..n).flat_map(|i| x[(i * t + j) * d..][..d].iter().copied()).collect() };
        let norm = |v: Vec<f32>| match &self.norm {
            Some(norm) => {
                let (y, cache) = norm.forward(&v);
                (y, Some(cache))
            }
            None => (v, None),
        };
        let pooled = match c.global_pool {
            Pool::Token if c.distilled => {
                let (cls, nc) = norm(token(0));
                let (dist, nd) = norm(token(1));
                (trace.norm, trace.norm_dist) = (nc, nd);
                return match (&self.head, &self.head_dist) {
                    (Some(h), Some(hd)) => {
                        (trace.head_out, trace.dist_out) = (h.forward(&cls), hd.forward(&dist));
                        (trace.head_in, trace.dist_in) = (cls, dist);
                        half_sum(&trace.head_out, &trace.dist_out)
                    }
                    _ => half_sum(&cls, &dist),
                };
            }
            Pool::Token => {
                let (y, cache) = norm(token(0));
                trace.norm = cache;
                y
            }
            Pool::None => {
                let (y, cache) = norm(x.to_vec());
                trace.norm = cache;
                y
            }
            _ => {
                let (y, cache) = norm(x.to_vec());
                trace.norm = cache;
                let skip = if c.pool_include_prefix { 0 } else { c.prefix_tokens() };
                let (avg, max) = self.pool_weights();
                let mut pooled = vec![0.0; n * d];
                trace.argmax = vec![skip; n * d];
                for (i, out) in pooled.chunks_mut(d).enumerate() {
                    let token = |tok: usize| &y[(i * t + tok) * d..][..d];
                    let arg = &mut trace.argmax[i * d..(i + 1) * d];
                    for tok in skip..t {
                        for (j, &v) in token(tok).iter().enumerate() {
                            out[j] += avg / (t - skip) as f32 * v;
                            if v > token(arg[j])[j] {
                                arg[j] = tok;
                            }
                        }
                    }
                    out.iter_mut().enumerate().for_each(|(j, o)| *o += max * token(arg[j])[j]);
                }
                pooled
            }
        };
        let pooled = match &self.fc_norm {
            Some(norm) => {
                let (y, cache) = norm.forward(&pooled);
                trace.fc_norm = Some(cache);
                y
            }
            None => pooled,
        };
        match &self.head {
            Some(h) => {
                trace.head_out = h.forward(&pooled);
                trace.head_in = pooled;
                trace.head_out.clone()
            }
            None => pooled,
        }
    }

    /// What the pooled features take from the tokens' average and from their maximum.
    fn pool_weights(&self) -> (f32, f32) {
        match self.c.global_pool {
            Pool::Max => (0.0, 1.0),
            Pool::AvgMax => (0.5, 0.5),
            _ => (1.0, 0.0),
        }
    }

    /// Multi-head attention over timm's fused qkv rows ([n·T, 3·D], q | k | v, heads inside
    /// each): the heads' outputs [n·T, D], the probabilities, and with `quant` (a quantized
    /// model's post-softmax quantizer) the quantized probabilities that multiplied V.
    fn attention(&self, qkv: &[f32], n: usize, quant: Option<ActQuantizer>) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let c = self.c;
        let (t, d, heads, hd) = (c.tokens(), c.embed_dim, c.num_heads, c.head_dim());
        let scale = (hd as f32).powf(-0.5);
        // Head h's q, k or v of image i: T rows of hd, 3·D apart in the qkv rows.
        let head_of = |i: usize, which: usize, h: usize| &qkv[i * t * 3 * d + which * d + h * hd..];
        // Per image and head, S = Q·Kᵀ and then P·V through the blocked GEMM: at 1370 tokens
        // (a 518-px ViT-S/14) attention is most of a forward pass's arithmetic, and one dot
        // product per score ran it at a few GFLOP/s. One product at a time: matrixmultiply
        // threads the large ones itself, and its threads spin when products run side by side
        // on ours (measured: 540 K context switches, 41 s of system time in one pass).
        let mut probs = vec![0.0; n * heads * t * t];
        for (ih, s) in probs.chunks_mut(t * t).enumerate() {
            let (i, h) = (ih / heads, ih % heads);
            gemm(t, hd, t, Operand::rows(head_of(i, 0, h), 3 * d), Operand::cols(head_of(i, 1, h), 3 * d), s);
        }
        par_rows(&mut probs, t, |_, p| {
            p.iter_mut().for_each(|v| *v *= scale);
            softmax(p);
        });
        let quantized = quant.map(|aq| aq.reference(&probs));
        let used = quantized.as_ref().unwrap_or(&probs);
        let mut out = vec![0.0; n * t * d];
        let mut head = vec![0.0; t * hd];
        for (ih, p) in used.chunks(t * t).enumerate() {
            let (i, h) = (ih / heads, ih % heads);
            head.iter_mut().for_each(|v| *v = 0.0);
            gemm(t, t, hd, Operand::rows(p, t), Operand::rows(head_of(i, 2, h), 3 * d), &mut head);
            for (o, row) in out[i * t * d..(i + 1) * t * d].chunks_mut(d).zip(head.chunks(hd)) {
                o[h * hd..][..hd].copy_from_slice(row);
            }
        }
        (out, probs, quantized)
    }

    /// The gradient of rᵀ·output for `seed` = r ([n, output_dim]) with respect to every
    /// Linear's output (under `rule`), handed to `visit` as a `Visit`, last layer first.
    pub fn backward(&self, trace: &Trace, seed: &[f32], rule: Rule, visit: &mut dyn FnMut(Visit)) -> Result<()> {
        let c = self.c;
        let (n, d, t, k, g) = (trace.images, c.embed_dim, c.tokens(), c.prefix_tokens(), c.grid());
        if seed.len() != n * self.output_dim() {
            shape_err!("backward seed: {} values for {n} images of {} outputs", seed.len(), self.output_dim());
        }
        let mut dx = self.head_backward(trace, seed, rule, &mut *visit);
        for (i, (b, cache)) in self.blocks.iter().zip(&trace.blocks).enumerate().rev() {
            self.block_backward(b, cache, &mut dx, n, rule, &mut |name, grad, output, width| visit(Visit { node: format!("blocks.{i}.{name}"), grad, output, width }));
        }
        if let (Some(norm), Some(cache)) = (&self.norm_pre, &trace.pre) {
            dx = norm.backward(cache, &dx, rule);
        }
        // The position embedding adds; the patch tokens' gradient is the conv's.
        let d_patch: Vec<f32> = (0..n).flat_map(|i| dx[(i * t + k) * d..(i + 1) * t * d].iter().copied()).collect();
        debug_assert_eq!(d_patch.len(), n * g * g * d);
        visit(Visit { node: "patch_embed.proj".into(), grad: &d_patch, output: &trace.patch, width: d });
        Ok(())
    }

    /// The head's backward: the gradient with respect to the last block's output tokens.
    fn head_backward(&self, trace: &Trace, seed: &[f32], rule: Rule, visit: &mut dyn FnMut(Visit)) -> Vec<f32> {
        let mut record = |node: &str, grad: &[f32], output: &[f32], width: usize| visit(Visit { node: node.into(), grad, output, width });
        let c = self.c;
        let (n, d, t) = (trace.images, c.embed_dim, c.tokens());
        let mut dx = vec![0.0; n * t * d];
        let norm_back = |cache: &Option<NormCache>, dy: Vec<f32>| match (&self.norm, cache) {
            (Some(norm), Some(cache)) => norm.backward(cache, &dy, rule),
            _ => dy,
        };
        let into_token = |dx: &mut [f32], j: usize, g: &[f32]| {
            for (i, row) in g.chunks(d).enumerate() {
                dx[(i * t + j) * d..][..d].iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        };
        if c.global_pool == Pool::Token && c.distilled {
            let half: Vec<f32> = seed.iter().map(|v| 0.5 * v).collect();
            let (d_cls, d_dist) = match (&self.head, &self.head_dist) {
                (Some(h), Some(hd)) => {
                    record("head", &half, &trace.head_out, h.out);
                    record("head_dist", &half, &trace.dist_out, hd.out);
                    (h.backward(&half), hd.backward(&half))
                }
                _ => (half.clone(), half),
            };
            into_token(&mut dx, 0, &norm_back(&trace.norm, d_cls));
            into_token(&mut dx, 1, &norm_back(&trace.norm_dist, d_dist));
            return dx;
        }
        let mut dp = match &self.head {
            Some(h) => {
                record("head", seed, &trace.head_out, h.out);
                h.backward(seed)
            }
            None => seed.to_vec(),
        };
        if let (Some(norm), Some(cache)) = (&self.fc_norm, &trace.fc_norm) {
            dp = norm.backward(cache, &dp, rule);
        }
        match c.global_pool {
            Pool::Token => into_token(&mut dx, 0, &norm_back(&trace.norm, dp)),
            Pool::None => dx = norm_back(&trace.norm, dp),
            _ => {
                let skip = if c.pool_include_prefix { 0 } else { c.prefix_tokens() };
                let (avg, max) = self.pool_weights();
                let share = avg / (t - skip) as f32;
                let mut dy = vec![0.0; n * t * d];
                for (i, g) in dp.chunks(d).enumerate() {
                    for tok in skip..t {
                        dy[(i * t + tok) * d..][..d].iter_mut().zip(g).for_each(|(a, &b)| *a = b * share);
                    }
                    for (j, &b) in g.iter().enumerate() {
                        dy[(i * t + trace.argmax[i * d + j]) * d + j] += max * b;
                    }
                }
                dx = norm_back(&trace.norm, dy);
            }
        }
        dx
    }

    fn attention_backward(&self, cache: &BlockCache, d_out: &[f32], n: usize, rule: Rule) -> Vec<f32> {
        let c = self.c;
        let (t, d, heads, hd) = (c.tokens(), c.embed_dim, c.num_heads, c.head_dim());
        let scale = (hd as f32).powf(-0.5);
        let qkv = cache.qk_normed.as_ref().map_or(&cache.qkv, |q| &q.0);
        let mut d_qkv = vec![0.0; n * t * 3 * d];
        // Per image and head, five GEMMs over [T×T] and [T×hd] (as the forward's two, one at
        // a time for the same reason).
        let (mut ds, mut grad) = (vec![0.0; t * t], vec![0.0; t * hd]);
        // d_qkv's columns of `which` (0 q, 1 k, 2 v) of image i's head h += grad.
        let add_part = |d_qkv: &mut [f32], grad: &[f32], i: usize, which: usize, h: usize| {
            for (row, g) in d_qkv[i * t * 3 * d..(i + 1) * t * 3 * d].chunks_mut(3 * d).zip(grad.chunks(hd)) {
                row[which * d + h * hd..][..hd].iter_mut().zip(g).for_each(|(a, &b)| *a += b);
            }
        };
        for ih in 0..n * heads {
            let (i, h) = (ih / heads, ih % heads);
            let rows = &qkv[i * t * 3 * d..(i + 1) * t * 3 * d];
            let p = &cache.probs[ih * t * t..][..t * t];
            let (q, k, v, g) = (&rows[h * hd..], &rows[d + h * hd..], &rows[2 * d + h * hd..], &d_out[i * t * d + h * hd..]);
            // dV = P̂ᵀ·dO (P̂ what multiplied V); the relevance rule holds P constant, so
            // stops there. The quantizer passes the gradient to P unchanged.
            let used = cache.probs_q.as_ref().map_or(p, |pq| &pq[ih * t * t..][..t * t]);
            grad.iter_mut().for_each(|v| *v = 0.0);
            gemm(t, t, hd, Operand::cols(used, t), Operand::rows(g, d), &mut grad);
            add_part(&mut d_qkv, &grad, i, 2, h);
            if rule == Rule::Relevance {
                continue;
            }
            // dP = dO·Vᵀ, dS = P ⊙ (dP − Σ P·dP).
            ds.iter_mut().for_each(|v| *v = 0.0);
            gemm(t, hd, t, Operand::rows(g, d), Operand::cols(v, 3 * d), &mut ds);
            for (s, p) in ds.chunks_mut(t).zip(p.chunks(t)) {
                let mean: f32 = s.iter().zip(p).map(|(s, p)| s * p).sum();
                s.iter_mut().zip(p).for_each(|(s, p)| *s = p * (*s - mean) * scale);
            }
            // dQ = dS·K, dK = dSᵀ·Q.
            for (which, a, b) in [(0, Operand::rows(&ds, t), Operand::rows(k, 3 * d)), (1, Operand::cols(&ds, t), Operand::rows(q, 3 * d))] {
                grad.iter_mut().for_each(|v| *v = 0.0);
                gemm(t, t, hd, a, b, &mut grad);
                add_part(&mut d_qkv, &grad, i, which, h);
            }
        }
        d_qkv
    }

    /// The backward passes' seeds r for outputs of `len` values, and the weight of each pass
    /// in E[(Jᵀr)²]: each output's unit vector (exact) or `RANDOM_SIGNS` random sign vectors.
    fn probes(&self, len: usize, seed: u64) -> (Vec<Vec<f32>>, f32) {
        let dim = self.output_dim();
        if dim <= EXACT_OUTPUTS {
            ((0..dim).map(|j| (0..len).map(|at| if at % dim == j { 1.0 } else { 0.0 }).collect()).collect(), 1.0)
        } else {
            let mut rng = Rng::new(seed);
            ((0..RANDOM_SIGNS).map(|_| (0..len).map(|_| if rng.next_f32() < 0.0 { -1.0 } else { 1.0 }).collect()).collect(), 1.0 / RANDOM_SIGNS as f32)
        }
    }

    /// Each Linear's sensitivity (module docs) over `images` ([n, 3, S, S]), averaged over the
    /// backward passes, per row and per output channel; `seed` picks the random signs.
    pub fn sensitivity(&self, images: &[f32], seed: u64) -> Result<Measured> {
        let (out, trace) = self.forward(images)?;
        let (seeds, weight) = self.probes(out.len(), seed);
        let (mut rows, mut channels) = (Sensitivity::new(), HashMap::new());
        for r in &seeds {
            self.backward(&trace, r, Rule::Gradient, &mut |v| {
                let per_row = rows.entry(v.node.clone()).or_insert_with(|| vec![0.0; v.grad.len() / v.width]);
                let per_channel = channels.entry(v.node).or_insert_with(|| vec![0.0; v.width]);
                for (acc, row) in per_row.iter_mut().zip(v.grad.chunks(v.width)) {
                    *acc += weight * row.iter().map(|g| g * g).sum::<f32>();
                    per_channel.iter_mut().zip(row).for_each(|(c, &g)| *c += (weight * g * g) as f64);
                }
            })?;
        }
        Ok(Measured { rows, channels, outputs: out })
    }

    /// Each Linear's relevance over `images` (LRP-QViT's layer contribution): Σ |O ⊙ G| over its
    /// output O, where G is `Rule::Relevance`'s backward pass from each image's largest output
    /// (the predicted class), so O ⊙ G is the relevance of each output value; summed over images.
    pub fn relevance(&self, images: &[f32]) -> Result<HashMap<String, f64>> {
        let (out, trace) = self.forward(images)?;
        let dim = self.output_dim();
        let mut seed = vec![0.0; out.len()];
        for (y, r) in out.chunks(dim).zip(seed.chunks_mut(dim)) {
            let top = (0..dim).max_by(|&a, &b| y[a].total_cmp(&y[b])).unwrap_or(0);
            r[top] = 1.0;
        }
        let mut scores = HashMap::new();
        self.backward(&trace, &seed, Rule::Relevance, &mut |v| {
            *scores.entry(v.node).or_insert(0.0) += v.grad.iter().zip(v.output).map(|(g, o)| (g * o).abs() as f64).sum::<f64>();
        })?;
        Ok(scores)
    }
}
