mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::attention::kv_cache::{embed_at, kv_append, kv_attend, kv_attend_with_lanes, reference, row_words, KvCache, Position, KV_BITS};
use lowbit::kernels::attention::{attention_reference, AttentionParams};
use lowbit::models::sampling::{sample, Rng, SamplingOptions};
use lowbit::Gpu;

/// Geometry of one decoding run: batch, heads, head_dim, capacity.
#[derive(Clone, Copy, Debug)]
struct Geo {
    batch: usize,
    heads: usize,
    head_dim: usize,
    capacity: usize,
}

/// Appends the `t` new tokens of `qkv` [B, t, 3E] at `start` and attends with them (over
/// `lanes` per workgroup, or the adapter's); returns the attention output [B, t, E].
fn append_and_attend(gpu: &Gpu, cache: &KvCache, pos: &Position, qkv: &[f32], t: usize, start: usize, lanes: Option<u32>) -> Vec<f32> {
    let (batch, e) = (cache.batch, cache.embd());
    let qkv_t = Tensor::from_f32(gpu, &[batch, t, 3 * e], qkv).unwrap();
    let out = Tensor::zeros(gpu, &[batch, t, e], DType::F32).unwrap();
    pos.set(gpu, start).unwrap();
    let mut enc = gpu.encoder();
    kv_append(gpu, &mut enc, &qkv_t, cache, pos).unwrap();
    match lanes {
        Some(l) => kv_attend_with_lanes(gpu, &mut enc, &qkv_t, cache, pos, &out, l).unwrap(),
        None => kv_attend(gpu, &mut enc, &qkv_t, cache, pos, &out).unwrap(),
    }
    gpu.submit(enc).unwrap();
    out.to_vec_f32(gpu).unwrap()
}

/// Fills the cache chunk by chunk (`chunks` new tokens per call, from position 0), checking
/// after every call the attention output and, at the end, the cache contents against the CPU.
/// `lanes`: the attention workgroup size (None: the adapter's).
fn run_chunks(gpu: &Gpu, label: &str, g: Geo, chunks: &[usize], lanes: Option<u32>) {
    let Geo { batch, heads, head_dim, capacity } = g;
    let e = heads * head_dim;
    let cache = KvCache::new(gpu, batch, heads, head_dim, capacity).unwrap();
    let pos = Position::new(gpu).unwrap();
    let cache_len = batch * heads * capacity * head_dim;
    let (mut k_ref, mut v_ref) = (vec![0f32; cache_len], vec![0f32; cache_len]);
    let mut start = 0;
    for (i, &t) in chunks.iter().enumerate() {
        let qkv = random(batch * t * 3 * e, 10 + i as u64, 1.5);
        let got = append_and_attend(gpu, &cache, &pos, &qkv, t, start, lanes);
        reference::kv_append(&mut k_ref, &mut v_ref, &qkv, batch, t, heads, head_dim, capacity, start);
        let want = reference::kv_attend(&qkv, &k_ref, &v_ref, batch, t, heads, head_dim, capacity, start);
        let what = format!("kv_attend {g:?} {t} tokens at {start} lanes {lanes:?} {label}");
        assert_nmse(&what, &got, &want, F32_NMSE);
        start += t;
    }
    // Positions past `start` stay zero on both sides.
    assert_nmse(&format!("k cache {g:?} {label}"), &cache.k.to_vec_f32(gpu).unwrap(), &k_ref, F32_NMSE);
    assert_nmse(&format!("v cache {g:?} {label}"), &cache.v.to_vec_f32(gpu).unwrap(), &v_ref, F32_NMSE);
}

#[test]
fn incremental_attention_matches_reference() {
    let geos = [
        Geo { batch: 3, heads: 2, head_dim: 12, capacity: 13 },
        // Odd head dims, one of them wider than the 64 lanes of a workgroup.
        Geo { batch: 1, heads: 3, head_dim: 7, capacity: 9 },
        Geo { batch: 2, heads: 1, head_dim: 67, capacity: 6 },
        Geo { batch: 1, heads: 1, head_dim: 1, capacity: 3 },
    ];
    for (path, gpu) in gpus() {
        for g in geos {
            // A prefill of several tokens, then single-token steps up to the capacity.
            let mut chunks = vec![g.capacity.min(3)];
            chunks.extend(std::iter::repeat_n(1, g.capacity - chunks[0]));
            run_chunks(gpu, path, g, &chunks, None);
        }
        // Uneven chunks that end one short of the capacity.
        run_chunks(gpu, path, Geo { batch: 2, heads: 3, head_dim: 5, capacity: 11 }, &[1, 4, 2, 3], None);
    }
}

#[test]
fn every_workgroup_size() {
    // The GPU classes' 32–64 lanes (more lanes than keys or channels: idle lanes) and fewer
    // lanes than keys and channels (lanes loop), on both paths.
    let g = Geo { batch: 2, heads: 2, head_dim: 36, capacity: 70 };
    let odd = Geo { batch: 1, heads: 2, head_dim: 67, capacity: 5 };
    for (path, gpu) in gpus() {
        for lanes in [1, 8, 32, 64, 128] {
            run_chunks(gpu, path, g, &[1, 66, 1, 1], Some(lanes));
            run_chunks(gpu, path, odd, &[2, 1, 1], Some(lanes));
        }
    }
    let cache = KvCache::new(gpu(), 1, 1, 4, 4).unwrap();
    let qkv = Tensor::zeros(gpu(), &[1, 1, 12], DType::F32).unwrap();
    let out = Tensor::zeros(gpu(), &[1, 1, 4], DType::F32).unwrap();
    let pos = Position::new(gpu()).unwrap();
    assert!(kv_attend_with_lanes(gpu(), &mut gpu().encoder(), &qkv, &cache, &pos, &out, 0).is_err(), "0 lanes");
}

#[test]
fn prefill_equals_causal_attention() {
    // All T tokens from position 0 is plain causal self-attention: compare with the f64
    // reference of the attention family.
    let (b, t, h, d) = (2, 9, 3, 8);
    for (path, gpu) in gpus() {
        let qkv = random(b * t * 3 * h * d, 5, 1.0);
        let cache = KvCache::new(gpu, b, h, d, 16).unwrap();
        let pos = Position::new(gpu).unwrap();
        let qkv_t = Tensor::from_f32(gpu, &[b, t, 3 * h * d], &qkv).unwrap();
        let out = Tensor::zeros(gpu, &[b, t, h * d], DType::F32).unwrap();
        let mut enc = gpu.encoder();
        kv_append(gpu, &mut enc, &qkv_t, &cache, &pos).unwrap();
        kv_attend(gpu, &mut enc, &qkv_t, &cache, &pos, &out).unwrap();
        gpu.submit(enc).unwrap();
        let want = attention_reference(&qkv, &AttentionParams::new(b, t, h, d).causal(true)).unwrap();
        assert_nmse(&format!("prefill vs causal attention {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
    }
}

#[test]
fn embedding_at_a_position() {
    let (b, t, v, e, s) = (3, 2, 11, 13, 7);
    for (path, gpu) in gpus() {
        let tok = random(v * e, 1, 1.0);
        let posv = random(s * e, 2, 1.0);
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
        let tok_t = Tensor::from_f32(gpu, &[v, e], &tok).unwrap();
        let pos_t = Tensor::from_f32(gpu, &[s, e], &posv).unwrap();
        let ids_t = Tensor::from_u32(gpu, &[b, t], &ids).unwrap();
        let out = Tensor::zeros(gpu, &[b, t, e], DType::F32).unwrap();
        let pos = Position::new(gpu).unwrap();
        for start in [0, 3, s - t] {
            pos.set(gpu, start).unwrap();
            let mut enc = gpu.encoder();
            embed_at(gpu, &mut enc, &ids_t, &tok_t, &pos_t, &pos, &out).unwrap();
            gpu.submit(enc).unwrap();
            let want = reference::embed_at(&ids, t, &tok, &posv, e, start);
            assert_nmse(&format!("embed_at {start} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let gpu = gpu();
    assert!(KvCache::new(gpu, 0, 2, 4, 8).is_err(), "zero batch");
    assert!(KvCache::new(gpu, 1, 2, 4, 0).is_err(), "zero capacity");
    assert!(KvCache::new(gpu, 1, 2, 4, 1025).is_err(), "capacity over the attention limit");
    let cache = KvCache::new(gpu, 2, 2, 4, 5).unwrap();
    let pos = Position::new(gpu).unwrap();
    let mut enc = gpu.encoder();
    let qkv = Tensor::zeros(gpu, &[2, 3, 24], DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &[2, 3, 8], DType::F32).unwrap();
    assert!(kv_append(gpu, &mut enc, &Tensor::zeros(gpu, &[1, 3, 24], DType::F32).unwrap(), &cache, &pos).is_err(), "batch");
    assert!(kv_append(gpu, &mut enc, &Tensor::zeros(gpu, &[2, 3, 23], DType::F32).unwrap(), &cache, &pos).is_err(), "width");
    assert!(kv_append(gpu, &mut enc, &Tensor::from_u32(gpu, &[2, 3, 24], &[0; 144]).unwrap(), &cache, &pos).is_err(), "dtype");
    assert!(kv_attend(gpu, &mut enc, &qkv, &cache, &pos, &Tensor::zeros(gpu, &[2, 3, 9], DType::F32).unwrap()).is_err(), "out shape");
    assert!(kv_attend(gpu, &mut enc, &qkv, &cache, &pos, &qkv).is_err(), "aliasing");
    pos.set(gpu, 3).unwrap();
    assert!(kv_append(gpu, &mut enc, &qkv, &cache, &pos).is_err(), "3 tokens at 3 overflow 5 positions");
    assert!(kv_attend(gpu, &mut enc, &qkv, &cache, &pos, &out).is_err(), "overflow");
    pos.set(gpu, 2).unwrap();
    kv_append(gpu, &mut enc, &qkv, &cache, &pos).unwrap();
    // Embedding: ids must be u32 [B, T], widths must agree, positions must exist.
    let tok = Tensor::zeros(gpu, &[5, 8], DType::F32).unwrap();
    let pe = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let ids = Tensor::from_u32(gpu, &[2, 3], &[0; 6]).unwrap();
    let x = Tensor::zeros(gpu, &[2, 3, 8], DType::F32).unwrap();
    assert!(embed_at(gpu, &mut enc, &ids, &tok, &pe, &pos, &x).is_err(), "3 tokens at 2 past 4 positions");
    pos.set(gpu, 0).unwrap();
    embed_at(gpu, &mut enc, &ids, &tok, &pe, &pos, &x).unwrap();
    assert!(embed_at(gpu, &mut enc, &Tensor::from_i32(gpu, &[2, 3], &[0; 6]).unwrap(), &tok, &pe, &pos, &x).is_err(), "i32 ids");
    assert!(embed_at(gpu, &mut enc, &ids, &tok, &Tensor::zeros(gpu, &[4, 7], DType::F32).unwrap(), &pos, &x).is_err(), "widths");
    assert!(embed_at(gpu, &mut enc, &ids, &tok, &pe, &pos, &Tensor::zeros(gpu, &[2, 3, 9], DType::F32).unwrap()).is_err(), "out shape");
}

/// A `bits`-bit cache filled chunk by chunk with K ranges from the first chunk (so later
/// tokens also clamp): every call's attention against the reference over what the codes
/// decode to, then the GPU's codes and V ranges decoded on the CPU against the reference's
/// caches (the same quantizer and fma per value: exact).
fn run_quantized(gpu: &Gpu, label: &str, g: Geo, bits: u32, chunks: &[usize], lanes: Option<u32>) {
    let Geo { batch, heads, head_dim, capacity } = g;
    let e = heads * head_dim;
    let len = batch * heads * capacity * head_dim;
    let qkvs: Vec<Vec<f32>> = chunks.iter().enumerate().map(|(i, &t)| random(batch * t * 3 * e, 30 + i as u64, 1.5)).collect();
    let (mut k_first, mut v_first) = (vec![0f32; len], vec![0f32; len]);
    reference::kv_append(&mut k_first, &mut v_first, &qkvs[0], batch, chunks[0], heads, head_dim, capacity, 0);
    let k_range = reference::k_range(&k_first, batch, heads, head_dim, capacity, chunks[0], bits);
    let cache = KvCache::new_quantized(gpu, batch, heads, head_dim, capacity, bits, &k_range).unwrap();
    let pos = Position::new(gpu).unwrap();
    let (mut k_ref, mut v_ref) = (vec![0f32; len], vec![0f32; len]);
    let mut start = 0;
    for (qkv, &t) in qkvs.iter().zip(chunks) {
        let got = append_and_attend(gpu, &cache, &pos, qkv, t, start, lanes);
        reference::kv_append_quantized(&mut k_ref, &mut v_ref, qkv, batch, t, heads, head_dim, capacity, start, bits, &k_range);
        let want = reference::kv_attend(qkv, &k_ref, &v_ref, batch, t, heads, head_dim, capacity, start);
        let what = format!("{bits}-bit kv_attend {g:?} {t} tokens at {start} lanes {lanes:?} {label}");
        assert_nmse(&what, &got, &want, F32_NMSE);
        start += t;
    }
    let q = cache.quant.as_ref().unwrap();
    assert_eq!(cache.k.shape, [batch, heads, capacity, row_words(head_dim, bits)]);
    let slots = batch * heads * capacity;
    let v_range = q.v_range.to_vec_f32(gpu).unwrap();
    let k_got = reference::decode_codes(&cache.k.to_vec_u32(gpu).unwrap(), slots, head_dim, bits, |s, d| {
        let r = (s / capacity % heads * head_dim + d) * 2;
        (k_range[r], k_range[r + 1])
    });
    let v_got = reference::decode_codes(&cache.v.to_vec_u32(gpu).unwrap(), slots, head_dim, bits, |s, _| (v_range[2 * s], v_range[2 * s + 1]));
    // Only the filled positions: empty slots hold code 0, which decodes to K's lo.
    for i in (0..len).filter(|i| (i / head_dim) % capacity < start) {
        assert_eq!((k_got[i], v_got[i]), (k_ref[i], v_ref[i]), "{bits}-bit cache value {i} {g:?} {label}");
    }
}

#[test]
fn low_bit_cache_matches_reference() {
    // Head dims that fill whole words at every width (32), leave a partial word (11, 67: wider
    // than 64 lanes) or are a single value (1).
    let geos = [
        Geo { batch: 2, heads: 2, head_dim: 32, capacity: 9 },
        Geo { batch: 1, heads: 3, head_dim: 11, capacity: 7 },
        Geo { batch: 2, heads: 1, head_dim: 67, capacity: 5 },
        Geo { batch: 1, heads: 1, head_dim: 1, capacity: 3 },
    ];
    for (path, gpu) in gpus() {
        for bits in KV_BITS {
            for g in geos {
                let mut chunks = vec![g.capacity.min(3)];
                chunks.extend(std::iter::repeat_n(1, g.capacity - chunks[0]));
                run_quantized(gpu, path, g, bits, &chunks, None);
            }
            for lanes in [1, 8, 64] {
                run_quantized(gpu, path, Geo { batch: 2, heads: 2, head_dim: 36, capacity: 70 }, bits, &[3, 64, 1, 1], Some(lanes));
            }
        }
    }
}

#[test]
fn low_bit_cache_is_close_to_f32() {
    // Quantization error, not only agreement with the reference's codes: with ranges taken
    // from the same values, each K and V value is off by at most half a step, so the
    // attention output moves by a small fraction of its size at 8 bits and more at fewer.
    let (b, t, h, d) = (2, 24, 2, 16);
    let qkv = random(b * t * 3 * h * d, 7, 1.0);
    let want = attention_reference(&qkv, &AttentionParams::new(b, t, h, d).causal(true)).unwrap();
    let len = b * h * t * d;
    let (mut k, mut v) = (vec![0f32; len], vec![0f32; len]);
    reference::kv_append(&mut k, &mut v, &qkv, b, t, h, d, t, 0);
    let mut errors = Vec::new();
    for bits in KV_BITS {
        let k_range = reference::k_range(&k, b, h, d, t, t, bits);
        let cache = KvCache::new_quantized(gpu(), b, h, d, t, bits, &k_range).unwrap();
        let qkv_t = Tensor::from_f32(gpu(), &[b, t, 3 * h * d], &qkv).unwrap();
        let out = Tensor::zeros(gpu(), &[b, t, h * d], DType::F32).unwrap();
        let pos = Position::new(gpu()).unwrap();
        let mut enc = gpu().encoder();
        kv_append(gpu(), &mut enc, &qkv_t, &cache, &pos).unwrap();
        kv_attend(gpu(), &mut enc, &qkv_t, &cache, &pos, &out).unwrap();
        gpu().submit(enc).unwrap();
        errors.push((bits, lowbit::metrics::nmse(&out.to_vec_f32(gpu()).unwrap(), &want)));
    }
    eprintln!("low-bit KV cache, NMSE of the attention output vs f32: {errors:?}");
    // Uniform rounding noise is step²/12 per value; a step is the range / (2^bits − 1), so each
    // bit fewer multiplies the noise by ~4 (the 2-bit step is 85× the 8-bit one: ~7000×).
    assert!(errors[0].1 < 1e-4, "{errors:?}");
    assert!(errors[0].1 < errors[1].1 && errors[1].1 < errors[2].1, "{errors:?}");
    assert!(errors[2].1 < 0.5, "{errors:?}");
}

#[test]
fn low_bit_cache_bad_input_is_an_error() {
    let gpu = gpu();
    let range = [0.0, 0.1].repeat(8);
    for bits in [0, 1, 3, 16, 32] {
        let err = KvCache::new_quantized(gpu, 1, 2, 4, 8, bits, &range).err().expect("unsupported bits");
        assert!(err.to_string().contains("[8, 4, 2]"), "{err}");
    }
    assert!(KvCache::new_quantized(gpu, 1, 2, 4, 8, 4, &range[..14]).is_err(), "range length");
    let mut nan = range.clone();
    nan[3] = f32::NAN;
    assert!(KvCache::new_quantized(gpu, 1, 2, 4, 8, 4, &nan).is_err(), "NaN step");
    let mut negative = range.clone();
    negative[5] = -1.0;
    assert!(KvCache::new_quantized(gpu, 1, 2, 4, 8, 4, &negative).is_err(), "negative step");
    assert!(KvCache::new_quantized(gpu, 1, 2, 4, 1025, 4, &range).is_err(), "capacity");
}

#[test]
fn prior_with_a_low_bit_cache() {
    // The shipped digits prior over one fixed sequence (class 3, then the tokens a greedy f32
    // run picks), prefilled at once and then stepped token by token: the logits of every
    // position with each cache against the f32 cache's. No sampling, so no divergence: what
    // differs is the cache's rounding alone.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/digits-prior");
    let gpu = gpu();
    let mut prior = lowbit::models::prior::Prior::from_pretrained(gpu, &root, lowbit::formats::WeightFormat::F32).unwrap();
    let n = prior.config.tokens_per_image();
    let v = prior.config.vocab_size;
    // Temperature 0: the sampler's argmax.
    let (greedy, mut rng) = (SamplingOptions::new(0.0, 0), Rng::new(0));
    let mut ids = vec![3u32];
    let mut session = prior.session(gpu, 1).unwrap();
    let mut logits = session.step(gpu, &[3]).unwrap();
    let mut want = logits.clone();
    while ids.len() < n {
        let next = sample(&logits, &greedy, &mut rng).unwrap();
        ids.push(next);
        logits = session.step(gpu, &[next]).unwrap();
        want.extend(&logits);
    }
    drop(session);
    assert_eq!(prior.kv_bits(), None);
    let mut cosines = Vec::new();
    for bits in KV_BITS {
        prior.quantize_kv_cache(gpu, bits).unwrap();
        assert_eq!(prior.kv_bits(), Some(bits));
        // Token by token, and as one prefill (whose last logits must match the last step's).
        let mut session = prior.session(gpu, 1).unwrap();
        let got: Vec<f32> = ids.iter().flat_map(|&id| session.step(gpu, &[id]).unwrap()).collect();
        let mut prefill = prior.session(gpu, 1).unwrap();
        let last = prefill.prefill(gpu, &ids, n).unwrap();
        assert_nmse(&format!("{bits}-bit prefill vs steps"), &last, &got[(n - 1) * v..], F32_NMSE);
        let worst = got.chunks(v).zip(want.chunks(v)).map(|(g, w)| lowbit::metrics::cosine(g, w)).fold(1.0, f64::min);
        cosines.push((bits, worst));
    }
    eprintln!("digits prior, worst per-position logits cosine to the f32 cache: {cosines:?}");
    assert!(cosines[0].1 > 0.999, "{cosines:?}");
    assert!(cosines[1].1 > 0.98, "{cosines:?}");
    assert!(cosines[2].1 > 0.5, "{cosines:?}");
}
