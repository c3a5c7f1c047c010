// Incremental decoding for causal transformers: token + position embedding at a position,
// appending K and V to per-layer caches, and causal attention of new queries over the cache.
//
// The start position of the tokens a call processes is read from a one-word storage buffer
// (`position[0]`), not from the uniform parameters: every decoding step then records the same
// dispatches with the same parameters, and only that word (and the new token ids) change
// between steps.
//
// Layouts: qkv [B, T, 3E] as the fused q|k|v Linear writes it (head h of each third at
// columns h·D..(h+1)·D); caches [B, H, S, D] (S = capacity) in f32, or their low-bit codes
// and ranges with QUANT; out [B, T, E], heads side by side.

#include grid

struct Params {
    batch: u32,
    tokens: u32,    // T: new tokens per sequence in this call
    heads: u32,
    head_dim: u32,
    capacity: u32,  // S: positions the caches (and pos_emb) hold
    vocab: u32,
    scale: f32,     // multiplies q·k before the softmax
    items: u32,     // embed / kv_append: work items in the grid
}

@group(0) @binding(0) var<uniform> p: Params;
// Bindings are numbered per entry point (each uses 1..n contiguously); globals that no entry
// uses together share numbers.
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> tok_emb: array<f32>;
@group(0) @binding(3) var<storage, read> pos_emb: array<f32>;
@group(0) @binding(4) var<storage, read> embed_position: array<u32>;
@group(0) @binding(5) var<storage, read_write> x_out: array<f32>;

// exclusive: QUANT VEC4
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> position: array<u32>;
#if QUANT
// Low-bit caches (KIVI / VidKV style). Codes of BITS bits, packed from the low end into u32
// words, ceil(D / (32 / BITS)) words per (b, h, position) slot; x ≈ lo + code·step with
// code in 0..2^BITS - 1. K is quantized per channel, with ranges calibrated beforehand
// (k_range[(h·D + d)·2 + {0, 1}] = lo, step): K's outliers sit in fixed channels, which
// then keep their own scale. V is quantized per token, its range taken at append
// (v_range[slot·2 + {0, 1}]): attention mixes V over tokens, and each token keeps its scale.
@group(0) @binding(3) var<storage, read_write> k_codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_codes: array<u32>;
@group(0) @binding(5) var<storage, read> k_range: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_range: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
override BITS: u32 = 8u;
override PER_WORD: u32 = 32u / BITS;
#else
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#endif
#if VEC4
// attend with D % 4 == 0: q and K read four channels per load (fewer, wider loads on
// llvmpipe, which issues storage loads lane by lane).
@group(0) @binding(1) var<storage, read> qkv4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> k_cache4: array<vec4<f32>>;
#endif

override WG: u32 = 64u;

fn embd() -> u32 {
    return p.heads * p.head_dim;
}

// x[b, t] = tok_emb[ids[b, t]] + pos_emb[start + t]. Ids are range-checked on the CPU; the
// clamps only keep a bad call inside the buffers.
@compute @workgroup_size(WG)
fn embed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = grid_item(wg, nwg, lid);
    if n >= p.items { return; }
    let e_dim = embd();
    let e = n % e_dim;
    let row = n / e_dim;
    let t = row % p.tokens;
    let id = min(ids[row], p.vocab - 1u);
    let pos = min(embed_position[0] + t, p.capacity - 1u);
    x_out[n] = tok_emb[id * e_dim + e] + pos_emb[pos * e_dim + e];
}

// The cache slot of sequence b, head h, position pos: slots are [B, H, S].
fn slot_index(b: u32, h: u32, pos: u32) -> u32 {
    return (b * p.heads + h) * p.capacity + pos;
}

#if QUANT
fn top_code() -> u32 {
    return (1u << BITS) - 1u;
}

fn row_words() -> u32 {
    return (p.head_dim + PER_WORD - 1u) / PER_WORD;
}

// Round to nearest (ties to even, as Rust's round_ties_even in the reference) and clamp.
fn quantize(x: f32, lo: f32, step: f32) -> u32 {
    if step <= 0.0 { return 0u; }
    return u32(clamp(round((x - lo) / step), 0.0, f32(top_code())));
}

fn code_at(word: u32, i: u32) -> f32 {
    return f32((word >> (i * BITS)) & top_code());
}

// One item per (b, t, h): this token's V range over the head's channels, then the K and V
// codes of the head, a word at a time.
@compute @workgroup_size(WG)
fn kv_append(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = grid_item(wg, nwg, lid);
    if n >= p.items { return; }
    let e_dim = embd();
    let h = n % p.heads;
    let row = n / p.heads;
    let t = row % p.tokens;
    let b = row / p.tokens;
    let pos = position[0] + t;
    if pos >= p.capacity { return; }
    let k0 = row * 3u * e_dim + e_dim + h * p.head_dim;
    let v0 = k0 + e_dim;
    var lo = qkv[v0];
    var hi = lo;
    for (var d = 1u; d < p.head_dim; d++) {
        lo = min(lo, qkv[v0 + d]);
        hi = max(hi, qkv[v0 + d]);
    }
    let step = (hi - lo) / f32(top_code());
    let slot = slot_index(b, h, pos);
    v_range[slot * 2u] = lo;
    v_range[slot * 2u + 1u] = step;
    let words = row_words();
    for (var w = 0u; w < words; w++) {
        var kw = 0u;
        var vw = 0u;
        for (var i = 0u; i < PER_WORD; i++) {
            let d = w * PER_WORD + i;
            if d >= p.head_dim { break; }
            let kr = (h * p.head_dim + d) * 2u;
            kw |= quantize(qkv[k0 + d], k_range[kr], k_range[kr + 1u]) << (i * BITS);
            vw |= quantize(qkv[v0 + d], lo, step) << (i * BITS);
        }
        k_codes[slot * words + w] = kw;
        v_codes[slot * words + w] = vw;
    }
}

// q · k for the key in `slot`, K decoded channel by channel.
fn key_score(q0: u32, h: u32, slot: u32) -> f32 {
    let words = row_words();
    var s = 0.0;
    for (var w = 0u; w < words; w++) {
        let word = k_codes[slot * words + w];
        for (var i = 0u; i < PER_WORD; i++) {
            let d = w * PER_WORD + i;
            if d >= p.head_dim { break; }
            let kr = (h * p.head_dim + d) * 2u;
            s = fma(qkv[q0 + d], fma(code_at(word, i), k_range[kr + 1u], k_range[kr]), s);
        }
    }
    return s;
}

fn value_at(slot: u32, d: u32) -> f32 {
    let word = v_codes[slot * row_words() + d / PER_WORD];
    return fma(code_at(word, d % PER_WORD), v_range[slot * 2u + 1u], v_range[slot * 2u]);
}
#else
// One item per (b, t, channel): copies that channel's k and v into the caches at start + t.
@compute @workgroup_size(WG)
fn kv_append(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = grid_item(wg, nwg, lid);
    if n >= p.items { return; }
    let e_dim = embd();
    let e = n % e_dim;
    let row = n / e_dim;
    let t = row % p.tokens;
    let b = row / p.tokens;
    let pos = position[0] + t;
    // The CPU checks start + T ≤ S before recording; never write past a sequence's slots.
    if pos >= p.capacity { return; }
    let dst = slot_index(b, e / p.head_dim, pos) * p.head_dim + e % p.head_dim;
    k_cache[dst] = qkv[row * 3u * e_dim + e_dim + e];
    v_cache[dst] = qkv[row * 3u * e_dim + 2u * e_dim + e];
}

fn key_score(q0: u32, h: u32, slot: u32) -> f32 {
    let kj = slot * p.head_dim;
#if VEC4
    var s4 = vec4(0.0);
    for (var c = 0u; c < p.head_dim; c += 4u) {
        s4 = fma(qkv4[(q0 + c) / 4u], k_cache4[(kj + c) / 4u], s4);
    }
    return s4.x + s4.y + s4.z + s4.w;
#else
    var s = 0.0;
    for (var c = 0u; c < p.head_dim; c++) {
        s = fma(qkv[q0 + c], k_cache[kj + c], s);
    }
    return s;
#endif
}

fn value_at(slot: u32, d: u32) -> f32 {
    return v_cache[slot * p.head_dim + d];
}
#endif

// Scores of one query against every cached key: keys per workgroup are capped by this
// (4 KiB of workgroup memory; the Rust side rejects larger caches).
const MAX_KEYS: u32 = 1024u;
var<workgroup> scores: array<f32, MAX_KEYS>;

// One workgroup per (b, t, h). Query t (at position start + t) sees cache positions
// 0..=start + t, appended by the caller before. Phases separated by barriers:
// 1. lane j scores keys j, j + WG, ... into workgroup memory;
// 2. every lane reads all scores for their max (the same addresses in every lane:
//    broadcasts), then lane j turns its scores into softmax numerators, each exp once;
// 3. every lane sums the numerators, and lane d accumulates output channels d, d + WG, ...
//    of V.
// Each K and V value is loaded once per workgroup, which matters on CPU adapters where
// llvmpipe loads storage lane by lane; and any head dimension works.
@compute @workgroup_size(WG)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so every lane reaches the barrier even past the grid's end.
    let w = wg.x + wg.y * nwg.x;
    let in_grid = w < p.batch * p.tokens * p.heads;
    let h = w % p.heads;
    let row = w / p.heads;
    let t = row % p.tokens;
    let b = row / p.tokens;
    let e_dim = embd();
    let q0 = row * 3u * e_dim + h * p.head_dim;
    let keys = select(0u, min(min(position[0] + t + 1u, p.capacity), MAX_KEYS), in_grid);
    let slot0 = slot_index(b, h, 0u);

    for (var j = lid; j < keys; j += WG) {
        scores[j] = key_score(q0, h, slot0 + j) * p.scale;
    }
    workgroupBarrier();

    // Softmax numerators replace the scores, each exp computed once.
    var m = -3.0e38;
    for (var j = 0u; j < keys; j++) {
        m = max(m, scores[j]);
    }
    workgroupBarrier();
    for (var j = lid; j < keys; j += WG) {
        scores[j] = exp(scores[j] - m);
    }
    workgroupBarrier();
    if !in_grid { return; }
    var l = 0.0;
    for (var j = 0u; j < keys; j++) {
        l += scores[j];
    }
    for (var d = lid; d < p.head_dim; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < keys; j++) {
            acc = fma(scores[j], value_at(slot0 + j, d), acc);
        }
        out[row * e_dim + h * p.head_dim + d] = acc / l;
    }
}
