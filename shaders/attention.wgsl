// Multi-head attention over timm's fused qkv layout: qkv [B, T, 3·H·D] → out [B, T, H·D].
//
// Entries:
//   attend_f32    f32 attention, online softmax (flash style), one query per invocation.
//   attend_f32_pq f32 attention whose normalized probabilities P pass through a static
//                 activation quantizer (`p.pq`) before P·V: two passes over the keys, the
//                 first for each query's max and sum, the second for P̂·V.
//   sage_mean     SageAttention step 1: mean of K over tokens, per (batch, head, channel).
//   sage_quantize SageAttention step 2: Q·scale and K−mean to int8 per block of tokens
//                 (+ V to f16 under F16).
//   attend_sage   SageAttention step 3: int8 QKᵀ, f32 softmax, P·V in f16 (F16) or f32.
//
// Layout on lavapipe: every invocation of a workgroup handles QL queries of the same
// (batch, head), so all lanes read the same K/V words, each loaded value serves QL queries,
// and no barrier is needed anywhere. Each query keeps its row and its output accumulator in
// private arrays of D4 = D/4 vec4s.
//
// Flags: D4_32 / D4_64 / D4_128 size the private arrays (default 16 → D ≤ 64), EXACT when
// D fills them; WIDE (several queries per invocation, CPU adapters);
// F16 (P·V in f16, V stored as f16 by sage_quantize); PACKED_DOT (dot4I8Packed).
// exclusive: D4_32 D4_64 D4_128
// exclusive: ACT_GELU ACT_SWISH
#if F16
enable f16;
#endif

#include attention_params

@group(0) @binding(0) var<uniform> p: Params;
// Bindings are numbered per entry point (each entry uses 1..n contiguously); two globals may
// share a number when no entry uses both.
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
#if F16
@group(0) @binding(1) var<storage, read> v_f16: array<vec4<f16>>;
@group(0) @binding(6) var<storage, read_write> v16_out: array<vec2<u32>>;
#endif
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> k_mean: array<vec4<f32>>;
// int8 Q and K, 4 per word, layout [B, H, T, D/4]; then scales: Q blocks, then K blocks.
@group(0) @binding(3) var<storage, read_write> q8: array<u32>;
@group(0) @binding(4) var<storage, read_write> k8: array<u32>;
@group(0) @binding(5) var<storage, read_write> scales: array<f32>;

override WG: u32 = 64u;

#if D4_128
const D4: u32 = 128u;
#else
#if D4_64
const D4: u32 = 64u;
#else
#if D4_32
const D4: u32 = 32u;
#else
const D4: u32 = 16u;
#endif
#endif
#endif

// Channel quads per head. EXACT (D == 4·D4) makes it a constant so the channel loops can
// unroll and the private arrays get constant indices (registers instead of indexed memory).
#if EXACT
fn quads() -> u32 {
    return D4;
}
#else
fn quads() -> u32 {
    return p.d4;
}
#endif

// Keys per online-softmax step: the running max and rescale are paid once per 8 keys.
const KB: u32 = 8u;
const NEG: f32 = -3.0e38;

// Queries per invocation. Mesa 22's llvmpipe loads storage buffers lane by lane inside loops
// (even at uniform addresses), so on CPU adapters (WIDE) each K/V value loaded should serve
// several queries (fewer for D > 256, whose unrolled loops make llvmpipe's compile slow).
// GPUs want more invocations instead: one query each.
#if WIDE
#if D4_128
const QL: u32 = 2u;
#else
const QL: u32 = 4u;
#endif
#else
const QL: u32 = 1u;
#endif

alias Rows = array<array<vec4<f32>, D4>, QL>;

fn row4() -> u32 {
    return 3u * p.heads * p.d4;
}

// Where a query's keys stop: all tokens, or (causal) itself.
fn key_limit(i: u32) -> u32 {
    return select(p.tokens, i + 1u, p.causal != 0u);
}

// First query of a workgroup; lane `lid` handles queries first + lid + k·WG, k < QL.
fn first_query(wg: vec3<u32>) -> u32 {
    return wg.x * WG * QL;
}

// Keys a workgroup visits: the causal limit of its last query.
fn workgroup_keys(i0: u32) -> u32 {
    return key_limit(min(i0 + WG * QL, p.tokens) - 1u);
}

struct Weights {
    p0: vec4<f32>,  // softmax numerators of keys j0..j0+3, relative to the new max
    p1: vec4<f32>,  // keys j0+4..j0+7
    alpha: f32,     // factor that rescales what was accumulated under the old max
    m: f32,         // the new running max
    l: f32,         // the new running sum
}

// One online-softmax step over 8 scores; masked keys get weight exactly 0.
fn online_step(m: f32, l: f32, s0: vec4<f32>, s1: vec4<f32>, j0: u32, limit: u32) -> Weights {
    let j = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
    let ok0 = j < vec4<u32>(limit);
    let ok1 = j + vec4<u32>(4u) < vec4<u32>(limit);
    let t0 = select(vec4<f32>(NEG), s0, ok0);
    let t1 = select(vec4<f32>(NEG), s1, ok1);
    let mx = max(max(t0.x, t0.y), max(t0.z, t0.w));
    var w: Weights;
    w.m = max(m, max(mx, max(max(t1.x, t1.y), max(t1.z, t1.w))));
    w.alpha = exp(m - w.m);
    w.p0 = select(vec4<f32>(0.0), exp(t0 - vec4<f32>(w.m)), ok0);
    w.p1 = select(vec4<f32>(0.0), exp(t1 - vec4<f32>(w.m)), ok1);
    w.l = l * w.alpha + dot(w.p0, vec4<f32>(1.0)) + dot(w.p1, vec4<f32>(1.0));
    return w;
}

// Output row of query i, head h: [B, T, H·D].
fn out_index(b: u32, i: u32, h: u32) -> u32 {
    return (b * p.tokens + i) * p.heads * p.d4 + h * p.d4;
}

// Token j's vec4 index in qkv of part (0 q, 1 k, 2 v) for head h; clamped to a real token so
// the masked keys of a partial last step still read valid memory.
fn qkv_index(b: u32, j: u32, part: u32, h: u32) -> u32 {
    return (b * p.tokens + min(j, p.tokens - 1u)) * row4() + (part * p.heads + h) * p.d4;
}

// acc = acc·alpha + Σ p·v over the 8 keys from j0, for each of the lane's queries; V read as
// f32 from qkv.
fn accumulate_v_f32(acc: ptr<function, Rows>, w: array<Weights, QL>, b: u32, h: u32, j0: u32) {
    var base: array<u32, 8>;
    for (var k = 0u; k < KB; k++) {
        base[k] = qkv_index(b, j0 + k, 2u, h);
    }
    for (var c = 0u; c < quads(); c++) {
        let v0 = qkv[base[0] + c];
        let v1 = qkv[base[1] + c];
        let v2 = qkv[base[2] + c];
        let v3 = qkv[base[3] + c];
        let v4 = qkv[base[4] + c];
        let v5 = qkv[base[5] + c];
        let v6 = qkv[base[6] + c];
        let v7 = qkv[base[7] + c];
        for (var r = 0u; r < QL; r++) {
            let p0 = w[r].p0;
            let p1 = w[r].p1;
            var a = (*acc)[r][c] * w[r].alpha;
            a += p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3;
            a += p1.x * v4 + p1.y * v5 + p1.z * v6 + p1.w * v7;
            (*acc)[r][c] = a;
        }
    }
}

// Writes acc / l for the lane's queries that exist.
fn write_out(acc: ptr<function, Rows>, l: array<f32, QL>, b: u32, h: u32, i0: u32, lid: u32) {
    for (var r = 0u; r < QL; r++) {
        let i = i0 + r * WG + lid;
        if i < p.tokens {
            let o = out_index(b, i, h);
            for (var c = 0u; c < quads(); c++) {
                out[o + c] = (*acc)[r][c] / l[r];
            }
        }
    }
}

// The invocation's queries (pre-scaled), zeroed accumulators, and the online softmax's start.
fn load_queries(b: u32, h: u32, i0: u32, lid: u32, q: ptr<function, Rows>, acc: ptr<function, Rows>,
                m: ptr<function, array<f32, QL>>, l: ptr<function, array<f32, QL>>, limit: ptr<function, array<u32, QL>>) {
    for (var r = 0u; r < QL; r++) {
        let i = min(i0 + r * WG + lid, p.tokens - 1u);
        let qi = qkv_index(b, i, 0u, h);
        for (var c = 0u; c < quads(); c++) {
            (*q)[r][c] = qkv[qi + c] * p.scale;
            (*acc)[r][c] = vec4<f32>(0.0);
        }
        (*m)[r] = NEG;
        (*l)[r] = 0.0;
        (*limit)[r] = key_limit(i);
    }
}

// Scores of the lane's queries against the 8 keys from j0 (pairs of vec4 per query).
fn scores_f32(q: ptr<function, Rows>, b: u32, h: u32, j0: u32) -> array<vec4<f32>, 2 * QL> {
    var base: array<u32, 8>;
    for (var k = 0u; k < KB; k++) {
        base[k] = qkv_index(b, j0 + k, 1u, h);
    }
    // Zeroed explicitly: Chromium (Tint on SwiftShader) did not re-zero a plain `var s: T;`
    // declared in a loop on each step (this function is called in one), so scores summed
    // across key blocks.
    var s = array<vec4<f32>, 2 * QL>();
    for (var c = 0u; c < quads(); c++) {
        let k0 = qkv[base[0] + c];
        let k1 = qkv[base[1] + c];
        let k2 = qkv[base[2] + c];
        let k3 = qkv[base[3] + c];
        let k4 = qkv[base[4] + c];
        let k5 = qkv[base[5] + c];
        let k6 = qkv[base[6] + c];
        let k7 = qkv[base[7] + c];
        for (var r = 0u; r < QL; r++) {
            let x = (*q)[r][c];
            s[2u * r] += vec4<f32>(dot(x, k0), dot(x, k1), dot(x, k2), dot(x, k3));
            s[2u * r + 1u] += vec4<f32>(dot(x, k4), dot(x, k5), dot(x, k6), dot(x, k7));
        }
    }
    return s;
}

@compute @workgroup_size(WG)
fn attend_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let i0 = first_query(wg);
    var q: Rows;
    var acc: Rows;
    var m: array<f32, QL>;
    var l: array<f32, QL>;
    var limit: array<u32, QL>;
    load_queries(b, h, i0, lid, &q, &acc, &m, &l, &limit);
    let n_keys = workgroup_keys(i0);
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        let s = scores_f32(&q, b, h, j0);
        var w: array<Weights, QL>;
        for (var r = 0u; r < QL; r++) {
            w[r] = online_step(m[r], l[r], s[2u * r], s[2u * r + 1u], j0, limit[r]);
            m[r] = w[r].m;
            l[r] = w[r].l;
        }
        accumulate_v_f32(&acc, w, b, h, j0);
    }
    write_out(&acc, l, b, h, i0, lid);
}

// ---- f32 attention with a post-softmax quantizer ----

#include aq

fn aq_vec4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(aq_apply(v.x, p.pq), aq_apply(v.y, p.pq), aq_apply(v.z, p.pq), aq_apply(v.w, p.pq));
}

@compute @workgroup_size(WG)
fn attend_f32_pq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let i0 = first_query(wg);
    var q: Rows;
    var acc: Rows;
    var m: array<f32, QL>;
    var l: array<f32, QL>;
    var limit: array<u32, QL>;
    load_queries(b, h, i0, lid, &q, &acc, &m, &l, &limit);
    let n_keys = workgroup_keys(i0);
    // Pass 1: each query's max and softmax denominator.
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        let s = scores_f32(&q, b, h, j0);
        for (var r = 0u; r < QL; r++) {
            let w = online_step(m[r], l[r], s[2u * r], s[2u * r + 1u], j0, limit[r]);
            m[r] = w.m;
            l[r] = w.l;
        }
    }
    // Pass 2: the normalized probabilities, quantized, times V (nothing left to rescale).
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        let s = scores_f32(&q, b, h, j0);
        var w: array<Weights, QL>;
        for (var r = 0u; r < QL; r++) {
            let j = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
            let inv = 1.0 / l[r];
            let p0 = aq_vec4(exp(s[2u * r] - vec4<f32>(m[r])) * inv);
            let p1 = aq_vec4(exp(s[2u * r + 1u] - vec4<f32>(m[r])) * inv);
            w[r].p0 = select(vec4<f32>(0.0), p0, j < vec4<u32>(limit[r]));
            w[r].p1 = select(vec4<f32>(0.0), p1, j + vec4<u32>(4u) < vec4<u32>(limit[r]));
            w[r].alpha = 1.0;
        }
        accumulate_v_f32(&acc, w, b, h, j0);
    }
    var one: array<f32, QL>;
    for (var r = 0u; r < QL; r++) {
        one[r] = 1.0;
    }
    write_out(&acc, one, b, h, i0, lid);
}

// ---- SageAttention ----

// sage_mean / sage_quantize run over 1-D item grids.
#include grid

// One item per (batch, head, channel quad). Sequential f32 sum over tokens, which the CPU
// reference reproduces bit for bit.
@compute @workgroup_size(WG)
fn sage_mean(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = grid_item(wg, nwg, lid);
    if n >= p.items { return; }
    let c = n % p.d4;
    let bh = n / p.d4;
    let b = bh / p.heads;
    let h = bh % p.heads;
    var sum = vec4<f32>(0.0);
    for (var j = 0u; j < p.tokens; j++) {
        sum += qkv[qkv_index(b, j, 1u, h) + c];
    }
    k_mean[n] = sum / f32(p.tokens);
}

fn quant_input(kind: u32, b: u32, j: u32, h: u32, c: u32) -> vec4<f32> {
    let x = qkv[qkv_index(b, j, kind, h) + c];
    if kind == 0u {
        return x * p.scale;
    }
    return x - k_mean[(b * p.heads + h) * p.d4 + c];
}

#include common

// One item per (batch, head, block) of Q, then of K (then, under F16, of V converted to f16).
// Each item finds its block's max |x|, then writes x · 127/max rounded.
@compute @workgroup_size(WG)
fn sage_quantize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = grid_item(wg, nwg, lid);
    if n >= p.items { return; }
    let bh_count = p.batch * p.heads;
    let q_items = bh_count * p.n_qb;
    let k_items = bh_count * p.n_kb;
    var kind = 0u;
    var r = n;
    var block = p.q_block;
    var n_blocks = p.n_qb;
    if r >= q_items {
        kind = 1u;
        r -= q_items;
        block = p.k_block;
        n_blocks = p.n_kb;
        if r >= k_items {
            kind = 2u;
            r -= k_items;
        }
    }
    let bh = r / n_blocks;
    let blk = r % n_blocks;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let j_start = blk * block;
    let j_end = min(j_start + block, p.tokens);
#if F16
    if kind == 2u {
        for (var j = j_start; j < j_end; j++) {
            let src = qkv_index(b, j, 2u, h);
            let dst = (bh * p.tokens + j) * p.d4;
            for (var c = 0u; c < quads(); c++) {
                let v = qkv[src + c];
                v16_out[dst + c] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
            }
        }
        return;
    }
#endif
    var amax = 0.0;
    for (var j = j_start; j < j_end; j++) {
        for (var c = 0u; c < quads(); c++) {
            let a = abs(quant_input(kind, b, j, h, c));
            amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
        }
    }
    let inv = select(0.0, 127.0 / amax, amax > 0.0);
    for (var j = j_start; j < j_end; j++) {
        let dst = (bh * p.tokens + j) * p.d4;
        for (var c = 0u; c < quads(); c++) {
            let w = pack_i8(quant_input(kind, b, j, h, c) * inv);
            if kind == 0u {
                q8[dst + c] = w;
            } else {
                k8[dst + c] = w;
            }
        }
    }
    let scale_index = select(bh_count * p.n_qb + bh * p.n_kb + blk, bh * p.n_qb + blk, kind == 0u);
    scales[scale_index] = amax / 127.0;
}

#include sage_qk

@compute @workgroup_size(WG)
fn attend_sage(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let b = wg.z;
    let bh = b * p.heads + h;
    let i0 = first_query(wg);
    var q: array<array<QWord, D4>, QL>;
    var q_scale: array<f32, QL>;
    var acc: Rows;
    var m: array<f32, QL>;
    var l: array<f32, QL>;
    var limit: array<u32, QL>;
    for (var r = 0u; r < QL; r++) {
        let i = min(i0 + r * WG + lid, p.tokens - 1u);
        let qi = (bh * p.tokens + i) * p.d4;
        for (var c = 0u; c < quads(); c++) {
            q[r][c] = q_word(q8[qi + c]);
            acc[r][c] = vec4<f32>(0.0);
        }
        q_scale[r] = scales[bh * p.n_qb + i / p.q_block];
        m[r] = NEG;
        l[r] = 0.0;
        limit[r] = key_limit(i);
    }
    let k_scales = p.batch * p.heads * p.n_qb + bh * p.n_kb;
    let n_keys = workgroup_keys(i0);
    let last = p.tokens - 1u;
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        var base: array<u32, 8>;
        var ks: array<f32, 8>;
        for (var k = 0u; k < KB; k++) {
            let j = min(j0 + k, last);
            base[k] = (bh * p.tokens + j) * p.d4;
            ks[k] = scales[k_scales + j / p.k_block];
        }
        // Zeroed explicitly, as in scores_f32.
        var s = array<vec4<i32>, 2 * QL>();
        for (var c = 0u; c < quads(); c++) {
            let k0 = k8[base[0] + c];
            let k1 = k8[base[1] + c];
            let k2 = k8[base[2] + c];
            let k3 = k8[base[3] + c];
            let k4 = k8[base[4] + c];
            let k5 = k8[base[5] + c];
            let k6 = k8[base[6] + c];
            let k7 = k8[base[7] + c];
            for (var r = 0u; r < QL; r++) {
                let x = q[r][c];
                s[2u * r] += vec4<i32>(qk(x, k0), qk(x, k1), qk(x, k2), qk(x, k3));
                s[2u * r + 1u] += vec4<i32>(qk(x, k4), qk(x, k5), qk(x, k6), qk(x, k7));
            }
        }
        let ks0 = vec4<f32>(ks[0], ks[1], ks[2], ks[3]);
        let ks1 = vec4<f32>(ks[4], ks[5], ks[6], ks[7]);
        var w: array<Weights, QL>;
        for (var r = 0u; r < QL; r++) {
            let f0 = vec4<f32>(s[2u * r]) * q_scale[r] * ks0;
            let f1 = vec4<f32>(s[2u * r + 1u]) * q_scale[r] * ks1;
            w[r] = online_step(m[r], l[r], f0, f1, j0, limit[r]);
            m[r] = w[r].m;
            l[r] = w[r].l;
        }
#if F16
        // P and V in f16, products summed in f16 over the 8 keys, then into the f32 accumulator.
        for (var c = 0u; c < quads(); c++) {
            let v0 = v_f16[base[0] + c];
            let v1 = v_f16[base[1] + c];
            let v2 = v_f16[base[2] + c];
            let v3 = v_f16[base[3] + c];
            let v4 = v_f16[base[4] + c];
            let v5 = v_f16[base[5] + c];
            let v6 = v_f16[base[6] + c];
            let v7 = v_f16[base[7] + c];
            for (var r = 0u; r < QL; r++) {
                let p0 = vec4<f16>(w[r].p0);
                let p1 = vec4<f16>(w[r].p1);
                let sum = p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3 + p1.x * v4 + p1.y * v5 + p1.z * v6 + p1.w * v7;
                acc[r][c] = acc[r][c] * w[r].alpha + vec4<f32>(sum);
            }
        }
#else
        accumulate_v_f32(&acc, w, b, h, j0);
#endif
    }
    write_out(&acc, l, b, h, i0, lid);
}
