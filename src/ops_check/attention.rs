//! Attention (exact, with a post-softmax quantizer, SageAttention) and the KV-cache kernels of
//! autoregressive decoding.

use super::{path_name, random, run_graph, run_kernel, Case, EXACT, SAME_VALUES};
use crate::gpu::{DType, Tensor};
use crate::kernels::act_quant::ActQuantizer;
use crate::kernels::attention::kv_cache::{embed_at, kv_append, kv_attend, reference as kv_ref, KvCache, Position, KV_BITS};
use crate::kernels::attention::{attention_quantized_reference, attention_reference, realistic_qkv, sage_reference, AttentionParams, SageOptions};
use crate::Gpu;

fn shape_name(p: &AttentionParams) -> String {
    format!("b{} t{} h{} d{}{}", p.batch, p.tokens, p.heads, p.head_dim, if p.causal { " causal" } else { "" })
}

/// ViT-sized heads with 197 tokens, an odd head size, a causal case.
fn shapes() -> [AttentionParams; 3] {
    [AttentionParams::new(1, 197, 2, 64), AttentionParams::new(2, 50, 1, 36), AttentionParams::new(1, 61, 3, 20).causal(true)]
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let path = path_name(gpu);
    let mut cases = Vec::new();
    for (i, p) in shapes().into_iter().enumerate() {
        let check = Box::new(move |gpu: &Gpu| {
            let qkv = random(p.qkv_shape().iter().product(), 90 + i as u64, 2.0);
            let got = run_graph(gpu, &[(&p.qkv_shape(), &qkv)], |g, v| g.attention("attn", v[0], p))?;
            Ok((got, attention_reference(&qkv, &p)?))
        });
        cases.push(Case::new("attention", shape_name(&p), path.clone(), "f32", check));
    }
    let pq = ActQuantizer::Uniform { bits: 6, scale: 1.0 / 63.0, zero: 0.0 };
    for p in [AttentionParams::new(2, 37, 2, 16), AttentionParams::new(1, 21, 3, 12).causal(true)] {
        let check = Box::new(move |gpu: &Gpu| {
            let qkv = realistic_qkv(&p, 4);
            let got = run_graph(gpu, &[(&p.qkv_shape(), &qkv)], |g, v| g.attention_quantized("attn", v[0], p, pq))?;
            Ok((got, attention_quantized_reference(&qkv, &p, &pq)?))
        });
        cases.push(Case::new("attention_quantized", shape_name(&p), path.clone(), "p uniform 6b", check));
    }
    // SageAttention through the graph (default options: the paper's blocks, P·V in f16 where
    // the adapter has it), against its own reference and against exact attention.
    let pv_f16 = SageOptions::default().effective(gpu).pv_f16;
    for p in shapes() {
        let run = move |gpu: &Gpu| -> crate::Result<(super::Got, Vec<f32>)> {
            let qkv = realistic_qkv(&p, 20);
            let got = run_graph(gpu, &[(&p.qkv_shape(), &qkv)], |g, v| g.sage_attention("sage", v[0], p))?;
            Ok((got, qkv))
        };
        let own = Box::new(move |gpu: &Gpu| {
            let (got, qkv) = run(gpu)?;
            Ok((got, sage_reference(&qkv, &p, &SageOptions::default().effective(gpu))?))
        });
        let exact = Box::new(move |gpu: &Gpu| {
            let (got, qkv) = run(gpu)?;
            Ok((got, attention_reference(&qkv, &p)?))
        });
        let format = if pv_f16 { "int8 qk, f16 pv" } else { "int8 qk, f32 pv" };
        let own_case = Case::new("sage_attention", shape_name(&p), path.clone(), format, own);
        cases.push(if pv_f16 {
            own_case.bound(1e-6, "P·V in f16: the GPU's f16 products and sums round where the reference's f32 ones do not")
        } else {
            own_case
        });
        let exact_case = Case::new("sage_attention vs exact", shape_name(&p), path.clone(), format, exact);
        cases.push(exact_case.bound(5e-4, "int8 Q and K (and f16 P·V) against exact f32 attention"));
    }
    cases.extend(kv_cases(&path));
    for bits in KV_BITS {
        cases.push(kv_quantized_case(&path, bits));
    }
    cases
}

/// The low-bit cache: a prefill, then single steps, against the reference's decoded caches
/// (the same codes, so only the summation order differs). K's ranges come from the first
/// chunk's values, so later tokens also exercise the clamping. (tests/kv_cache.rs also
/// decodes the GPU's codes on the CPU.)
fn kv_quantized_case(path: &str, bits: u32) -> Case {
    let (batch, heads, head_dim, capacity) = (2, 3, 11, 9);
    let chunks = [3usize, 1, 2];
    let shape = format!("b{batch} h{heads} d{head_dim} cap{capacity} steps 3+1+2");
    let steps = Box::new(move |gpu: &Gpu| -> crate::Result<super::Outputs> {
        let e = heads * head_dim;
        let len = batch * heads * capacity * head_dim;
        let qkvs: Vec<Vec<f32>> = chunks.iter().enumerate().map(|(i, &t)| random(batch * t * 3 * e, 120 + i as u64, 1.5)).collect();
        let (mut k_first, mut v_first) = (vec![0f32; len], vec![0f32; len]);
        kv_ref::kv_append(&mut k_first, &mut v_first, &qkvs[0], batch, chunks[0], heads, head_dim, capacity, 0);
        let k_range = kv_ref::k_range(&k_first, batch, heads, head_dim, capacity, chunks[0], bits);
        let cache = KvCache::new_quantized(gpu, batch, heads, head_dim, capacity, bits, &k_range)?;
        let pos = Position::new(gpu)?;
        let (mut k_ref, mut v_ref) = (vec![0f32; len], vec![0f32; len]);
        let (mut got, mut want) = (super::Got::of(Vec::new()), Vec::new());
        let mut start = 0;
        for (qkv, &t) in qkvs.iter().zip(&chunks) {
            got.extend(kv_step(gpu, &cache, &pos, qkv, t, start)?);
            kv_ref::kv_append_quantized(&mut k_ref, &mut v_ref, qkv, batch, t, heads, head_dim, capacity, start, bits, &k_range);
            want.extend(kv_ref::kv_attend(qkv, &k_ref, &v_ref, batch, t, heads, head_dim, capacity, start));
            start += t;
        }
        Ok((got, want))
    });
    Case::new("kv_append+kv_attend", shape, path, format!("{bits}-bit"), steps)
}

/// Appends the `t` new tokens of `qkv` [B, t, 3E] at `start` and attends with them.
fn kv_step(gpu: &Gpu, cache: &KvCache, pos: &Position, qkv: &[f32], t: usize, start: usize) -> crate::Result<super::Got> {
    let (batch, e) = (cache.batch, cache.embd());
    let qkv_t = Tensor::from_f32(gpu, &[batch, t, 3 * e], qkv)?;
    let out = Tensor::zeros(gpu, &[batch, t, e], DType::F32)?;
    pos.set(gpu, start)?;
    run_kernel(gpu, &out, |enc| {
        kv_append(gpu, enc, &qkv_t, cache, pos)?;
        kv_attend(gpu, enc, &qkv_t, cache, pos, &out)
    })
}

/// A prefill of several tokens, then single-token steps: each step's attention output, the
/// cache contents at the end (a copy, so exact) and the embedding at a position.
fn kv_cases(path: &str) -> Vec<Case> {
    let (batch, heads, head_dim, capacity) = (2, 3, 7, 9);
    let chunks = [3usize, 1, 1, 2];
    let shape = format!("b{batch} h{heads} d{head_dim} cap{capacity} steps 3+1+1+2");
    // Returns (attention outputs of every step, reference) or (caches, reference caches).
    let run = move |gpu: &Gpu, caches: bool| -> crate::Result<super::Outputs> {
        let e = heads * head_dim;
        let cache = KvCache::new(gpu, batch, heads, head_dim, capacity)?;
        let pos = Position::new(gpu)?;
        let len = batch * heads * capacity * head_dim;
        let (mut k_ref, mut v_ref) = (vec![0f32; len], vec![0f32; len]);
        let (mut got, mut want) = (super::Got::of(Vec::new()), Vec::new());
        let mut start = 0;
        for (i, &t) in chunks.iter().enumerate() {
            let qkv = random(batch * t * 3 * e, 100 + i as u64, 1.5);
            got.extend(kv_step(gpu, &cache, &pos, &qkv, t, start)?);
            kv_ref::kv_append(&mut k_ref, &mut v_ref, &qkv, batch, t, heads, head_dim, capacity, start);
            want.extend(kv_ref::kv_attend(&qkv, &k_ref, &v_ref, batch, t, heads, head_dim, capacity, start));
            start += t;
        }
        if caches {
            k_ref.extend(v_ref);
            return Ok((super::Got::of(vec![cache.k.clone(), cache.v.clone()]), k_ref));
        }
        Ok((got, want))
    };
    let embed = Box::new(move |gpu: &Gpu| {
        let (b, t, v, s, e) = (2, 3, 11, 9, 5);
        let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 7) % v as u32).collect();
        let (tok, posv) = (random(v * e, 110, 1.0), random(s * e, 111, 1.0));
        let ids_t = Tensor::from_u32(gpu, &[b, t], &ids)?;
        let (tok_t, pos_t) = (Tensor::from_f32(gpu, &[v, e], &tok)?, Tensor::from_f32(gpu, &[s, e], &posv)?);
        let out = Tensor::zeros(gpu, &[b, t, e], DType::F32)?;
        let pos = Position::new(gpu)?;
        pos.set(gpu, 4)?;
        let got = run_kernel(gpu, &out, |enc| embed_at(gpu, enc, &ids_t, &tok_t, &pos_t, &pos, &out))?;
        Ok((got, kv_ref::embed_at(&ids, t, &tok, &posv, e, 4)))
    });
    let steps = Box::new(move |gpu: &Gpu| run(gpu, false));
    let contents = Box::new(move |gpu: &Gpu| run(gpu, true));
    vec![
        Case::new("kv_append+kv_attend", shape.clone(), path, "f32", steps).bound(SAME_VALUES, ""),
        Case::new("kv_append", shape, path, "f32", contents).bound(EXACT, "a copy"),
        Case::new("embed_at", "b2 t3 v11 e5 at 4", path, "f32", embed).bound(EXACT, "one f32 addition per element: exact"),
    ]
}
