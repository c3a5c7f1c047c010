//! Incremental (autoregressive) decoding: per-layer K/V caches (f32, or low-bit codes with K
//! per channel and V per token), appending the new tokens' K and V at a position, causal
//! attention of the new queries over the cache, and the token + position embedding at a
//! position. See `shaders/kv_cache.wgsl`.
//!
//! The start position lives in a one-word GPU buffer (`Position`) that the kernels read, so a
//! decoding step records the same dispatches with the same parameters at every position.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::gpu::{DType, Shader, Tensor};
use crate::kernels::{params, BenchCase, BenchSize};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("kv_cache");
/// Invocations per workgroup of the item-per-lane entries (embed, kv_append).
const WG: u32 = 64;
/// Most positions a cache holds: `attend` keeps one query's scores in workgroup memory.
pub const MAX_CAPACITY: usize = 1024;

/// The start position of the tokens the next recorded calls process, on the GPU. `set` writes
/// it through the queue, so it takes effect for the next submission.
/// Clones share the position (a planned graph's nodes hold clones; the session moves it).
#[derive(Clone)]
pub struct Position {
    buffer: wgpu::Buffer,
    /// The same value on the CPU, for the bounds checks made while recording.
    value: Arc<AtomicUsize>,
}

impl Position {
    pub fn new(gpu: &Gpu) -> Result<Position> {
        Ok(Position { buffer: gpu.upload_u32(&[0], "kv position")?, value: Arc::new(AtomicUsize::new(0)) })
    }

    pub fn set(&self, gpu: &Gpu, pos: usize) -> Result<()> {
        let word = u32::try_from(pos).map_err(|_| crate::Error::Invalid(format!("position {pos} is too large")))?;
        gpu.queue.write_buffer(&self.buffer, 0, bytemuck::bytes_of(&word));
        self.value.store(pos, Ordering::Relaxed);
        Ok(())
    }

    pub fn get(&self) -> usize {
        self.value.load(Ordering::Relaxed)
    }
}

/// Bits per value a low-bit cache can store (`generate --kv-bits`).
pub const KV_BITS: [u32; 3] = [8, 4, 2];

/// One layer's K and V for `batch` sequences of up to `capacity` positions, [B, H, S, D] each
/// in f32; or, with `quant`, their codes, u32 [B, H, S, ⌈D / (32 / bits)⌉]. Clones share the
/// buffers.
#[derive(Clone)]
pub struct KvCache {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub k: Tensor,
    pub v: Tensor,
    pub quant: Option<KvQuant>,
}

/// What a low-bit cache adds: the bits per value, K's per-channel ranges (f32 [H·D, 2]: lowest
/// value and step, fixed by calibration) and V's per-token ranges (f32 [B, H, S, 2], written by
/// `kv_append`). A value decodes as `lo + code · step`.
#[derive(Clone)]
pub struct KvQuant {
    pub bits: u32,
    pub k_range: Tensor,
    pub v_range: Tensor,
}

/// Checks `bits` against `KV_BITS`.
pub fn check_kv_bits(bits: u32) -> Result<()> {
    if !KV_BITS.contains(&bits) {
        invalid!("a KV cache of {bits} bits per value is not supported: use one of {KV_BITS:?} (or no --kv-bits for f32)");
    }
    Ok(())
}

/// How a cache stores its values, for messages: "f32" or "4-bit".
pub fn kv_cache_name(bits: Option<u32>) -> String {
    bits.map_or("f32".to_string(), |b| format!("{b}-bit"))
}

/// u32 words per (b, h, position) slot of a `bits`-bit cache.
pub fn row_words(head_dim: usize, bits: u32) -> usize {
    head_dim.div_ceil(32 / bits as usize)
}

/// The geometry every cache must have: no zero dimension, at most `MAX_CAPACITY` positions.
fn check_geometry(batch: usize, heads: usize, head_dim: usize, capacity: usize) -> Result<()> {
    if batch == 0 || heads == 0 || head_dim == 0 || capacity == 0 {
        shape_err!("kv cache: zero-sized dimension (batch {batch}, heads {heads}, head_dim {head_dim}, capacity {capacity})");
    }
    if capacity > MAX_CAPACITY {
        invalid!("kv cache: capacity {capacity} is over the {MAX_CAPACITY} positions attention supports");
    }
    Ok(())
}

impl KvCache {
    pub fn new(gpu: &Gpu, batch: usize, heads: usize, head_dim: usize, capacity: usize) -> Result<KvCache> {
        check_geometry(batch, heads, head_dim, capacity)?;
        let shape = [batch, heads, capacity, head_dim];
        Ok(KvCache { batch, heads, head_dim, capacity, k: Tensor::zeros(gpu, &shape, DType::F32)?, v: Tensor::zeros(gpu, &shape, DType::F32)?, quant: None })
    }

    /// A `bits`-bit cache whose K is quantized with the per-channel ranges `k_range` (f32
    /// [H·D, 2] = lo, step; `reference::k_range` makes them from calibration data).
    #[allow(clippy::too_many_arguments)]
    pub fn new_quantized(gpu: &Gpu, batch: usize, heads: usize, head_dim: usize, capacity: usize, bits: u32, k_range: &[f32]) -> Result<KvCache> {
        check_kv_bits(bits)?;
        check_geometry(batch, heads, head_dim, capacity)?;
        if k_range.len() != heads * head_dim * 2 {
            shape_err!("kv cache: {} K range values for {heads} heads × {head_dim} channels (want lo and step per channel: {})", k_range.len(), heads * head_dim * 2);
        }
        if let Some(i) = k_range.chunks(2).position(|r| !r[0].is_finite() || !r[1].is_finite() || r[1] < 0.0) {
            invalid!("kv cache: K range of channel {i} is {:?}: want a finite lo and a step ≥ 0", &k_range[2 * i..2 * i + 2]);
        }
        let codes = [batch, heads, capacity, row_words(head_dim, bits)];
        let quant = KvQuant {
            bits,
            k_range: Tensor::from_f32(gpu, &[heads * head_dim, 2], k_range)?,
            v_range: Tensor::zeros(gpu, &[batch, heads, capacity, 2], DType::F32)?,
        };
        Ok(KvCache { batch, heads, head_dim, capacity, k: Tensor::zeros(gpu, &codes, DType::U32)?, v: Tensor::zeros(gpu, &codes, DType::U32)?, quant: Some(quant) })
    }

    /// Bytes of K and V (with their ranges) per position of one sequence.
    pub fn bytes_per_position(&self) -> usize {
        match &self.quant {
            None => 2 * self.embd() * 4,
            Some(q) => self.heads * (2 * row_words(self.head_dim, q.bits) * 4 + 2 * 4),
        }
    }

    pub fn embd(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Checks `qkv` [B, T, 3E] and that T new tokens from `pos` fit; returns T.
    fn check_new(&self, what: &str, qkv: &Tensor, pos: &Position) -> Result<usize> {
        qkv.expect_dtype(what, DType::F32)?;
        let e = self.embd();
        let &[b, t, w] = &qkv.shape[..] else { shape_err!("{what}: qkv must be [B, T, 3·{e}], got {:?}", qkv.shape) };
        if b != self.batch || w != 3 * e || t == 0 {
            shape_err!("{what}: qkv {:?} does not match the cache (batch {}, 3·E = {})", qkv.shape, self.batch, 3 * e);
        }
        if pos.get() + t > self.capacity {
            invalid!("{what}: {t} tokens at position {} overflow the cache of {} positions", pos.get(), self.capacity);
        }
        Ok(t)
    }

    fn params(&self, tokens: usize, items: usize) -> Params {
        Params {
            batch: self.batch as u32,
            tokens: tokens as u32,
            heads: self.heads as u32,
            head_dim: self.head_dim as u32,
            capacity: self.capacity as u32,
            vocab: 0,
            scale: (self.head_dim as f32).powf(-0.5),
            items: items as u32,
        }
    }
}

/// Matches `struct Params` in shaders/kv_cache.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    capacity: u32,
    vocab: u32,
    scale: f32,
    items: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["kv_cache"], [], "Params", [batch, tokens, heads, head_dim, capacity, vocab, scale, items]);

fn item_count(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| crate::Error::Invalid(format!("{what}: {n} items is too many")))
}

/// Writes the K and V of `qkv` [B, T, 3E] into `cache` at positions `pos..pos + T`.
pub fn kv_append(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, cache: &KvCache, pos: &Position) -> Result<()> {
    let t = cache.check_new("kv_append", qkv, pos)?;
    if let Some(q) = &cache.quant {
        // One item per (b, t, h): the head's V range, then its codes.
        let n = item_count("kv_append", cache.batch * t * cache.heads)?;
        let pipe = gpu.pipeline(&SHADER, "kv_append", &["QUANT"], &[("WG", WG as f64), ("BITS", q.bits as f64)])?;
        let p = cache.params(t, n as usize);
        let buffers = [&*qkv.buffer, &pos.buffer, &cache.k.buffer, &cache.v.buffer, &q.k_range.buffer, &q.v_range.buffer];
        return gpu.dispatch(enc, &pipe, params(&p), &buffers, gpu.grid(n.div_ceil(WG)));
    }
    let n = item_count("kv_append", cache.batch * t * cache.embd())?;
    let pipe = gpu.pipeline(&SHADER, "kv_append", &[], &[("WG", WG as f64)])?;
    let p = cache.params(t, n as usize);
    gpu.dispatch(enc, &pipe, params(&p), &[&qkv.buffer, &pos.buffer, &cache.k.buffer, &cache.v.buffer], gpu.grid(n.div_ceil(WG)))
}

/// `out` [B, T, E]: the T queries of `qkv` (at positions `pos..pos + T`) attend causally over
/// cache positions 0..=their own, with scale D^-0.5 (their K and V must be appended already).
pub fn kv_attend(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, cache: &KvCache, pos: &Position, out: &Tensor) -> Result<()> {
    kv_attend_with_lanes(gpu, enc, qkv, cache, pos, out, attend_lanes(gpu, cache))
}

/// `kv_attend` with `lanes` invocations per workgroup instead of this adapter's choice (so
/// tests can run every adapter class's shape on lavapipe).
pub fn kv_attend_with_lanes(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, cache: &KvCache, pos: &Position, out: &Tensor, lanes: u32) -> Result<()> {
    if lanes == 0 || lanes > gpu.limits.max_compute_workgroup_size_x.min(gpu.limits.max_compute_invocations_per_workgroup) {
        invalid!("kv_attend: {lanes} lanes per workgroup is out of range");
    }
    let t = cache.check_new("kv_attend", qkv, pos)?;
    out.expect_dtype("kv_attend out", DType::F32)?;
    out.expect_shape("kv_attend out", &[cache.batch, t, cache.embd()])?;
    if std::sync::Arc::ptr_eq(&qkv.buffer, &out.buffer) {
        invalid!("kv_attend: out must not alias qkv");
    }
    let groups = item_count("kv_attend", cache.batch * t * cache.heads)?;
    let p = cache.params(t, 0);
    if let Some(q) = &cache.quant {
        let pipe = gpu.pipeline(&SHADER, "attend", &["QUANT"], &[("WG", lanes as f64), ("BITS", q.bits as f64)])?;
        let buffers = [&*qkv.buffer, &pos.buffer, &cache.k.buffer, &cache.v.buffer, &q.k_range.buffer, &q.v_range.buffer, &out.buffer];
        return gpu.dispatch(enc, &pipe, params(&p), &buffers, gpu.grid(groups));
    }
    let defines: &[&str] = if cache.head_dim.is_multiple_of(4) { &["VEC4"] } else { &[] };
    let pipe = gpu.pipeline(&SHADER, "attend", defines, &[("WG", lanes as f64)])?;
    let buffers = [&*qkv.buffer, &pos.buffer, &cache.k.buffer, &cache.v.buffer, &out.buffer];
    gpu.dispatch(enc, &pipe, params(&p), &buffers, gpu.grid(groups))
}

/// Lanes of an `attend` workgroup on one class of adapter (a column of `kernels::launch`'s
/// table): enough to cover the keys or channels in one round, within `min..=max`. The lanes
/// score keys, then own channels. On CPU adapters one SIMD width (8): a workgroup is one
/// thread, and its barrier is nearly free when one coroutine runs all lanes (measured on
/// lavapipe at 10 sequences × 4 heads × 32 channels × 64 keys: 8 lanes 0.55 ms, 16–32 lanes
/// 0.74, 64 lanes 0.87).
#[derive(Clone, Copy, Debug)]
pub struct AttendLanes {
    pub min: u32,
    pub max: u32,
}

fn attend_lanes(gpu: &Gpu, cache: &KvCache) -> u32 {
    let AttendLanes { min, max } = crate::kernels::launch::for_class(gpu.class).kv_attend;
    (cache.head_dim.max(cache.capacity).next_power_of_two() as u32).clamp(min, max)
}

/// `out[b, t] = tok_emb[ids[b, t]] + pos_emb[pos + t]`: `ids` u32 [B, T] (checked by the
/// caller against V: the GPU clamps), `tok_emb` [V, E], `pos_emb` [S, E], `out` [B, T, E].
pub fn embed_at(gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, tok_emb: &Tensor, pos_emb: &Tensor, pos: &Position, out: &Tensor) -> Result<()> {
    if ids.dtype != DType::U32 {
        invalid!("embed_at: ids must be u32, got {:?}", ids.dtype);
    }
    for (what, t) in [("tok_emb", tok_emb), ("pos_emb", pos_emb), ("out", out)] {
        t.expect_dtype(&format!("embed_at {what}"), DType::F32)?;
    }
    let (&[b, t], &[v, e], &[s, e2]) = (&ids.shape[..], &tok_emb.shape[..], &pos_emb.shape[..]) else {
        shape_err!("embed_at: ids must be [B, T], tok_emb [V, E], pos_emb [S, E]; got {:?}, {:?}, {:?}", ids.shape, tok_emb.shape, pos_emb.shape);
    };
    if e != e2 || b == 0 || t == 0 || v == 0 || e == 0 {
        shape_err!("embed_at: tok_emb {:?} and pos_emb {:?} must share a non-zero width, ids {:?} be non-empty", tok_emb.shape, pos_emb.shape, ids.shape);
    }
    out.expect_shape("embed_at out", &[b, t, e])?;
    if pos.get() + t > s {
        invalid!("embed_at: {t} tokens at position {} go past the {s} position embeddings", pos.get());
    }
    let n = item_count("embed_at", b * t * e)?;
    let p = Params { batch: b as u32, tokens: t as u32, heads: 1, head_dim: e as u32, capacity: s as u32, vocab: v as u32, scale: 1.0, items: n };
    let pipe = gpu.pipeline(&SHADER, "embed", &[], &[("WG", WG as f64)])?;
    let buffers = [&*ids.buffer, &tok_emb.buffer, &pos_emb.buffer, &pos.buffer, &out.buffer];
    gpu.dispatch(enc, &pipe, params(&p), &buffers, gpu.grid(n.div_ceil(WG)))
}

/// CPU references, f64 accumulation. Caches are [B, H, S, D] as on the GPU.
pub mod reference {
    /// Copies the K and V of `qkv` [B, T, 3·H·D] into the caches at positions `pos..pos + T`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(k: &mut [f32], v: &mut [f32], qkv: &[f32], batch: usize, tokens: usize, heads: usize, head_dim: usize, capacity: usize, pos: usize) {
        let e = heads * head_dim;
        for b in 0..batch {
            for t in 0..tokens {
                let row = &qkv[(b * tokens + t) * 3 * e..][..3 * e];
                for h in 0..heads {
                    let dst = ((b * heads + h) * capacity + pos + t) * head_dim;
                    k[dst..dst + head_dim].copy_from_slice(&row[e + h * head_dim..][..head_dim]);
                    v[dst..dst + head_dim].copy_from_slice(&row[2 * e + h * head_dim..][..head_dim]);
                }
            }
        }
    }

    /// Causal attention of the T queries of `qkv` (at positions `pos..pos + T`) over the
    /// caches, scale D^-0.5; returns [B, T, H·D].
    #[allow(clippy::too_many_arguments)]
    pub fn kv_attend(qkv: &[f32], k: &[f32], v: &[f32], batch: usize, tokens: usize, heads: usize, head_dim: usize, capacity: usize, pos: usize) -> Vec<f32> {
        let e = heads * head_dim;
        let scale = (head_dim as f64).powf(-0.5);
        let mut out = vec![0f32; batch * tokens * e];
        for b in 0..batch {
            for t in 0..tokens {
                for h in 0..heads {
                    let q = &qkv[(b * tokens + t) * 3 * e + h * head_dim..][..head_dim];
                    let base = (b * heads + h) * capacity;
                    let scores: Vec<f64> = (0..=pos + t)
                        .map(|j| {
                            let kj = &k[(base + j) * head_dim..][..head_dim];
                            q.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for d in 0..head_dim {
                        let acc: f64 = weights.iter().enumerate().map(|(j, w)| w * v[(base + j) * head_dim + d] as f64).sum();
                        out[(b * tokens + t) * e + h * head_dim + d] = (acc / sum) as f32;
                    }
                }
            }
        }
        out
    }

    /// The largest `bits`-bit code (the shader's `top_code`).
    fn top_code(bits: u32) -> u32 {
        (1u32 << bits) - 1
    }

    /// The shader's quantizer: round to nearest (ties to even), clamped to the codes.
    pub fn quantize(x: f32, lo: f32, step: f32, bits: u32) -> u32 {
        if step <= 0.0 {
            return 0;
        }
        ((x - lo) / step).round_ties_even().clamp(0.0, top_code(bits) as f32) as u32
    }

    /// The shader's decoder: `lo + code · step` (one fma).
    pub fn dequantize(code: u32, lo: f32, step: f32) -> f32 {
        (code as f32).mul_add(step, lo)
    }

    /// K's per-channel ranges (f32 [H·D, 2]: lo, step) for `bits`, from the K values a cache
    /// [B, H, S, D] holds at positions `0..len`.
    pub fn k_range(k: &[f32], batch: usize, heads: usize, head_dim: usize, capacity: usize, len: usize, bits: u32) -> Vec<f32> {
        let top = top_code(bits) as f32;
        let mut out = Vec::with_capacity(heads * head_dim * 2);
        for h in 0..heads {
            for d in 0..head_dim {
                let values = (0..batch).flat_map(|b| (0..len).map(move |s| k[(((b * heads + h) * capacity) + s) * head_dim + d]));
                let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
                let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 0.0) };
                out.extend([lo, (hi - lo) / top]);
            }
        }
        out
    }

    /// `kv_append` of a `bits`-bit cache, writing what the GPU's codes decode to into f32
    /// caches [B, H, S, D] (K with the ranges `k_range`, V with each token's own range).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append_quantized(k: &mut [f32], v: &mut [f32], qkv: &[f32], batch: usize, tokens: usize, heads: usize, head_dim: usize, capacity: usize, pos: usize, bits: u32, k_range: &[f32]) {
        let e = heads * head_dim;
        let top = top_code(bits) as f32;
        for b in 0..batch {
            for t in 0..tokens {
                let row = &qkv[(b * tokens + t) * 3 * e..][..3 * e];
                for h in 0..heads {
                    let (kr, vr) = (&row[e + h * head_dim..][..head_dim], &row[2 * e + h * head_dim..][..head_dim]);
                    let lo = vr.iter().cloned().fold(vr[0], f32::min);
                    let hi = vr.iter().cloned().fold(vr[0], f32::max);
                    let step = (hi - lo) / top;
                    let dst = ((b * heads + h) * capacity + pos + t) * head_dim;
                    for d in 0..head_dim {
                        let (klo, kstep) = (k_range[(h * head_dim + d) * 2], k_range[(h * head_dim + d) * 2 + 1]);
                        k[dst + d] = dequantize(quantize(kr[d], klo, kstep, bits), klo, kstep);
                        v[dst + d] = dequantize(quantize(vr[d], lo, step, bits), lo, step);
                    }
                }
            }
        }
    }

    /// Decodes a `bits`-bit cache's codes (u32 [B, H, S, words]) to f32 [B, H, S, D], each
    /// slot with `range(h, slot, d)`'s (lo, step).
    pub fn decode_codes(codes: &[u32], slots: usize, head_dim: usize, bits: u32, range: impl Fn(usize, usize) -> (f32, f32)) -> Vec<f32> {
        let words = super::row_words(head_dim, bits);
        let per_word = 32 / bits as usize;
        let mask = top_code(bits);
        let mut out = Vec::with_capacity(slots * head_dim);
        for slot in 0..slots {
            for d in 0..head_dim {
                let code = (codes[slot * words + d / per_word] >> ((d % per_word) as u32 * bits)) & mask;
                let (lo, step) = range(slot, d);
                out.push(dequantize(code, lo, step));
            }
        }
        out
    }

    /// `tok_emb[ids[i]] + pos_emb[pos + i % tokens]` for ids [B, T]; rows of width `e`.
    pub fn embed_at(ids: &[u32], tokens: usize, tok_emb: &[f32], pos_emb: &[f32], e: usize, pos: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * e);
        for (i, &id) in ids.iter().enumerate() {
            let p = pos + i % tokens;
            out.extend((0..e).map(|c| tok_emb[id as usize * e + c] + pos_emb[p * e + c]));
        }
        out
    }
}

/// One decoding step's attention (one new query per sequence over a full cache), with the f32
/// cache and each low-bit one. Full: the digits prior (10 sequences × 4 heads × 32, 64
/// positions) and a GPT-2-small-like head shape (12 × 64, 1024 positions); Quick: small odd
/// shapes.
pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let shapes: &[(usize, usize, usize, usize)] = match size {
        BenchSize::Full => &[(10, 4, 32, 64), (1, 12, 64, 1024)],
        BenchSize::Quick => &[(3, 2, 12, 9), (1, 3, 7, 5)],
    };
    let mut cases = Vec::new();
    for &(b, h, d, s) in shapes {
        for bits in [None, Some(8), Some(4), Some(2)] {
            let cache = match bits {
                None => KvCache::new(gpu, b, h, d, s)?,
                Some(bits) => KvCache::new_quantized(gpu, b, h, d, s, bits, &[0.0, 0.01].repeat(h * d))?,
            };
            let pos = Position::new(gpu)?;
            pos.set(gpu, s - 1)?;
            let qkv = Tensor::from_f32(gpu, &[b, 1, 3 * h * d], &crate::synthetic::uniform(b * 3 * h * d, 1, 1.0))?;
            let out = Tensor::zeros(gpu, &[b, 1, h * d], DType::F32)?;
            let (b64, h64, d64, s64) = (b as u64, h as u64, d as u64, s as u64);
            cases.push(BenchCase {
                kernel: "kv_attend".into(),
                format: bits.map_or("f32".into(), |bits| format!("kv{bits}")),
                shape: format!("B{b} H{h} D{d} {s} keys"),
                // The step streams the whole K and V cache (with V's ranges when low-bit).
                bytes: b64 * s64 * cache.bytes_per_position() as u64,
                flops: 4 * b64 * h64 * s64 * d64,
                step: Box::new(move |gpu, enc| kv_attend(gpu, enc, &qkv, &cache, &pos, &out)),
            });
        }
    }
    Ok(cases)
}
