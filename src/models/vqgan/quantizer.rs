//! The quantizer between a tokenizer's encoder and decoder, one type for both sides: `search`
//! (encoder: vectors → ids) and `lookup` (decoder: ids → vectors) as graph nodes.
//!
//! Every kind keeps S ids per position (S = 1 for a plain codebook) in the kernels' layout
//! [N, S] (position-major); `TokenGrid` converts to and from upstream's [B, S, h, w].
//!
//! - `Vq`: one codebook (taming, LlamaGen; SimVQ and VQGAN-LC through the effective codebook
//!   their forward computes, `effective_codebook`, taken once at load).
//! - `Factorized`: S sub-codebooks, each over its slice of the vector, lookups concatenated
//!   (FQGAN: the heads' codes concatenated before `post_quant_conv`).
//! - `Residual`: D codebooks, stage s quantizing what stages < s left; lookups summed.
//! - Lookup-free groups (WeTok GFQ) are `Factorized` over the ±value patterns of each group's
//!   bits (`lfq_patterns`): the nearest pattern by L2 is the per-value sign (a value of exactly
//!   0 ties, and the lowest index, bit clear, wins: upstream's `x > 0`), so the search is the
//!   sign quantizer's and the lookup is its decode, through the same kernels as the other
//!   kinds. The search's f32 dot products can only flip a value within ~1e-7 of the group's
//!   |x| sum of 0; it costs 2^bits·bits per group (bits ≤ 16).

use std::sync::{Arc, OnceLock};

use crate::gpu::DType;
use crate::graph::{Graph, Value};
use crate::kernels::vq::{Codebook, FactorizedCodebook, Metric};
use crate::{invalid, shape_err, Gpu, Result};

#[derive(Clone)]
pub enum Quantizer {
    Vq(Codebook),
    Factorized(FactorizedCodebook),
    Residual {
        stages: Vec<Codebook>,
        /// Each stage's codes negated: the search subtracts a stage's pick with the add kernel
        /// (r + (−q) is r − q exactly, as upstream's `residual - quantized`).
        negated: Vec<Codebook>,
    },
}

/// A one-word buffer the gather kernel may write and nobody reads (ids were checked on the CPU);
/// kept across runs so the dispatch's bind group stays reusable.
type Flag = Arc<OnceLock<wgpu::Buffer>>;

fn flag_buffer<'a>(gpu: &Gpu, flag: &'a Flag) -> Result<&'a wgpu::Buffer> {
    if flag.get().is_none() {
        let _ = flag.set(gpu.upload_u32(&[u32::MAX], "gather flag")?);
    }
    Ok(flag.get().unwrap())
}

impl Quantizer {
    /// One codebook `codes` [k, d].
    pub fn vq(gpu: &Gpu, codes: &[f32], k: usize, d: usize, metric: Metric) -> Result<Quantizer> {
        Ok(Quantizer::Vq(Codebook::new(gpu, codes, k, d, metric)?))
    }

    /// S sub-codebooks, each [k, d], back to back in `codes`.
    pub fn factorized(gpu: &Gpu, codes: &[f32], s: usize, k: usize, d: usize, metric: Metric) -> Result<Quantizer> {
        Ok(Quantizer::Factorized(FactorizedCodebook::new(gpu, codes, s, k, d, metric)?))
    }

    /// D stages, each a [k, d] codebook searched by L2.
    pub fn residual(gpu: &Gpu, stages: &[Vec<f32>], k: usize, d: usize) -> Result<Quantizer> {
        if stages.is_empty() {
            invalid!("residual quantizer: no stages");
        }
        let mut books = Vec::new();
        let mut negated = Vec::new();
        for codes in stages {
            books.push(Codebook::new(gpu, codes, k, d, Metric::L2)?);
            let neg: Vec<f32> = codes.iter().map(|v| -v).collect();
            negated.push(Codebook::new(gpu, &neg, k, d, Metric::L2)?);
        }
        Ok(Quantizer::Residual { stages: books, negated })
    }

    /// `groups` lookup-free groups of `bits` values each, value i of a group `+scale` where bit
    /// i (LSB first) of its id is set, else `−scale`.
    pub fn lookup_free(gpu: &Gpu, groups: usize, bits: u32, scale: f32) -> Result<Quantizer> {
        if !(1..=16).contains(&bits) {
            invalid!("lookup-free quantizer: {bits} bits per group; supported: 1 to 16");
        }
        let one = lfq_patterns(bits, scale);
        let codes: Vec<f32> = (0..groups).flat_map(|_| one.iter().copied()).collect();
        Self::factorized(gpu, &codes, groups, 1 << bits, bits as usize, Metric::L2)
    }

    /// Codebook entries per id slot (one entry per sub-codebook or stage).
    pub fn codebook_sizes(&self) -> Vec<usize> {
        match self {
            Quantizer::Vq(c) => vec![c.k],
            Quantizer::Factorized(f) => f.books.iter().map(|b| b.k).collect(),
            Quantizer::Residual { stages, .. } => stages.iter().map(|b| b.k).collect(),
        }
    }

    /// The largest sub-codebook: the symbol range an entropy coder of every slot needs.
    pub fn largest_codebook(&self) -> usize {
        self.codebook_sizes().into_iter().max().unwrap_or(0)
    }

    /// Ids per position (S).
    pub fn codes_per_position(&self) -> usize {
        self.codebook_sizes().len()
    }

    /// Width of the vectors searched and looked up (what post_quant_conv takes).
    pub fn dim(&self) -> usize {
        match self {
            Quantizer::Vq(c) => c.d,
            Quantizer::Factorized(f) => f.books.len() * f.d(),
            Quantizer::Residual { stages, .. } => stages[0].d,
        }
    }

    /// Upstream's token shape for a [b, h, w] grid: [b, h, w] for one codebook, else [b, S, h, w].
    pub fn token_dims(&self, b: usize, h: usize, w: usize) -> Vec<usize> {
        match self {
            Quantizer::Vq(_) => vec![b, h, w],
            _ => vec![b, self.codes_per_position(), h, w],
        }
    }

    /// Nodes searching `z` [N, dim] → ids [N, S] (u32); a factorized quantizer also takes its
    /// S sub-vectors as S values [N, d] (FQGAN's heads, each from its own quant_conv).
    pub fn search(&self, g: &mut Graph, zs: &[Value]) -> Result<Value> {
        if let (Quantizer::Factorized(books), true) = (self, zs.len() > 1) {
            return search_heads(g, books, zs);
        }
        let &[z] = zs else { shape_err!("quantize: {} inputs for a quantizer of one input", zs.len()) };
        let &[n, d] = g.shape(z) else { shape_err!("quantize: vectors must be [N, D], got {:?}", g.shape(z)) };
        if d != self.dim() {
            shape_err!("quantize: vectors of {d} values, the quantizer takes {}", self.dim());
        }
        match self {
            Quantizer::Vq(book) => {
                let book = book.clone();
                let ids = g.node("quantize", "vq_search", &[z], &[n], DType::U32, move |gpu, enc, i, out| book.search(gpu, enc, i[0], out, None));
                g.reshape(ids, &[n, 1])
            }
            Quantizer::Factorized(books) => {
                let (books, s) = (books.clone(), books.books.len());
                Ok(g.node("quantize", "vq_search", &[z], &[n, s], DType::U32, move |gpu, enc, i, out| books.search(gpu, enc, i[0], out, None)))
            }
            Quantizer::Residual { stages, negated } => {
                let depth = stages.len();
                let mut residual = z;
                let mut ids: Option<Value> = None;
                for (s, (book, neg)) in stages.iter().zip(negated).enumerate() {
                    let name = format!("quantize.stage{s}");
                    let book = book.clone();
                    let search = move |gpu: &Gpu, enc: &mut crate::Encoder, i: &[&crate::gpu::Tensor], out: &crate::gpu::Tensor| book.search_column(gpu, enc, i[0], out, s);
                    let stage_ids = match ids {
                        None => g.node(&name, "vq_search", &[residual], &[n, depth], DType::U32, search),
                        Some(prev) => g.node_inplace(&name, "vq_search", prev, &[residual], search),
                    };
                    ids = Some(stage_ids);
                    if s + 1 < depth {
                        // residual − codes[id]: the next stage quantizes what this one missed.
                        let (neg, flag) = (neg.clone(), Flag::default());
                        let minus = g.node(format!("{name}.lookup"), "gather", &[stage_ids], &[n, d], DType::F32, move |gpu, enc, i, out| {
                            neg.gather_column_checked(gpu, enc, i[0], s, out, flag_buffer(gpu, &flag)?)
                        });
                        residual = g.add(&format!("{name}.residual"), residual, minus)?;
                    }
                }
                Ok(ids.expect("at least one stage"))
            }
        }
    }

    /// Nodes looking up ids [B, T, S] (u32, range-checked on the CPU) → vectors [B, T, dim].
    pub fn lookup(&self, g: &mut Graph, ids: Value) -> Result<Value> {
        let &[b, t, s] = g.shape(ids) else { shape_err!("quantize lookup: ids must be [B, T, S], got {:?}", g.shape(ids)) };
        if s != self.codes_per_position() {
            shape_err!("quantize lookup: {s} ids per position, the quantizer takes {}", self.codes_per_position());
        }
        let d = self.dim();
        match self {
            Quantizer::Vq(book) => {
                let (book, flag) = (book.clone(), Flag::default());
                Ok(g.node("quantize.embedding", "gather", &[ids], &[b, t, d], DType::F32, move |gpu, enc, i, out| {
                    let ids = i[0].reshape(&[b, t])?;
                    book.gather_checked(gpu, enc, &ids, out, flag_buffer(gpu, &flag)?)
                }))
            }
            Quantizer::Factorized(books) => {
                let (books, flag) = (books.clone(), Flag::default());
                Ok(g.node("quantize.embedding", "gather", &[ids], &[b, t, d], DType::F32, move |gpu, enc, i, out| {
                    books.gather_checked(gpu, enc, i[0], out, flag_buffer(gpu, &flag)?)
                }))
            }
            Quantizer::Residual { stages, .. } => {
                // Σ_s codes_s[id_s], summed in stage order as upstream's `quantized_out += q`.
                let mut sum: Option<Value> = None;
                for (stage, book) in stages.iter().enumerate() {
                    let (book, flag) = (book.clone(), Flag::default());
                    let q = g.node(format!("quantize.stage{stage}.lookup"), "gather", &[ids], &[b, t, d], DType::F32, move |gpu, enc, i, out| {
                        book.gather_column_checked(gpu, enc, i[0], stage, out, flag_buffer(gpu, &flag)?)
                    });
                    sum = Some(match sum {
                        None => q,
                        Some(acc) => g.add(&format!("quantize.stage{stage}.sum"), acc, q)?,
                    });
                }
                Ok(sum.expect("at least one stage"))
            }
        }
    }
}

/// Sub-codebook s searched on `zs[s]` [N, d], each writing column s of ids [N, S].
fn search_heads(g: &mut Graph, books: &FactorizedCodebook, zs: &[Value]) -> Result<Value> {
    let (s_all, d) = (books.books.len(), books.d());
    if zs.len() != s_all {
        shape_err!("quantize: {} heads for {s_all} sub-codebooks", zs.len());
    }
    let n = g.shape(zs[0])[0];
    let mut ids: Option<Value> = None;
    for (s, (&z, book)) in zs.iter().zip(&books.books).enumerate() {
        if g.shape(z) != [n, d] {
            shape_err!("quantize: head {s} gives {:?}, sub-codebook {s} takes [{n}, {d}]", g.shape(z));
        }
        let (name, book) = (format!("quantize.{s}"), book.clone());
        let search = move |gpu: &Gpu, enc: &mut crate::Encoder, i: &[&crate::gpu::Tensor], out: &crate::gpu::Tensor| book.search_column(gpu, enc, i[0], out, s);
        ids = Some(match ids {
            None => g.node(&name, "vq_search", &[z], &[n, s_all], DType::U32, search),
            Some(prev) => g.node_inplace(&name, "vq_search", prev, &[z], search),
        });
    }
    Ok(ids.expect("at least one sub-codebook"))
}

/// The 2^bits value patterns of one lookup-free group: row k has value i = +scale where bit i
/// of k is set (LSB first), else −scale.
pub fn lfq_patterns(bits: u32, scale: f32) -> Vec<f32> {
    (0u32..1 << bits).flat_map(|k| (0..bits).map(move |i| if k >> i & 1 == 1 { scale } else { -scale })).collect()
}

/// `codes · projᵀ + bias` ([k, d_in] × [d_out, d_in]ᵀ → [k, d_out]): the codebook SimVQ's and
/// VQGAN-LC's forward computes from a frozen codebook and a linear layer on every call, taken
/// once at load. Sums in f64, so it is as close to PyTorch's f32 matmul as any order gets.
pub fn effective_codebook(codes: &[f32], k: usize, d_in: usize, proj: &[f32], d_out: usize, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    if codes.len() != k * d_in || proj.len() != d_out * d_in || bias.is_some_and(|b| b.len() != d_out) {
        shape_err!("effective codebook: codes {} values for [{k}, {d_in}], projection {} for [{d_out}, {d_in}]", codes.len(), proj.len());
    }
    let mut out = Vec::with_capacity(k * d_out);
    for row in codes.chunks(d_in) {
        for (o, w) in proj.chunks(d_in).enumerate() {
            let dot: f64 = row.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
            out.push((dot + bias.map_or(0.0, |b| b[o] as f64)) as f32);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_lsb_first_signs() {
        assert_eq!(lfq_patterns(2, 0.5), vec![-0.5, -0.5, 0.5, -0.5, -0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn effective_codebook_is_a_linear_layer() {
        // codes [[1, 2]], W = [[1, 0], [1, 1], [0, 3]], b = [0.5, 0, -1] → [1.5, 3, 5].
        let out = effective_codebook(&[1.0, 2.0], 1, 2, &[1.0, 0.0, 1.0, 1.0, 0.0, 3.0], 3, Some(&[0.5, 0.0, -1.0])).unwrap();
        assert_eq!(out, vec![1.5, 3.0, 5.0]);
        assert!(effective_codebook(&[1.0], 1, 2, &[1.0, 0.0], 1, None).is_err());
    }
}
