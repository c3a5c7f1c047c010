// Flash attention for GPUs over timm's fused qkv layout: qkv [B, T, 3·H·D] → out [B, T, H·D].
//
// Entries:
//   flash_f32   exact attention in f32.
//   flash_sage  SageAttention's attention pass: int8 Q·Kᵀ from the int8 Q, K and scales that
//               attention.wgsl's sage_mean / sage_quantize wrote, f32 softmax, P·V in f16 (F16)
//               or f32. Same quantized inputs, so it matches the sage CPU reference.
//
// One workgroup takes a tile of BQ queries of one (batch, head) and walks the keys BK at a
// time: the invocations copy a K tile and a V tile into workgroup memory together (coalesced
// loads, each value then read by every query of the tile), and each query keeps a running max
// and sum (online softmax), so the T×T scores never exist anywhere.
//
// Wide heads are split across S invocations ("a team") per query, each holding QPL = 16
// channel quads of the query and of its output accumulator: private arrays stay small
// enough for registers up to D = 512 (VQGAN's mid-block). A team's partial scores meet in
// workgroup memory; every member sums them in the same order, so all of them see identical
// scores and take identical softmax steps.
//
// Defines: D4_16 / D4_32 / D4_64 / D4_128 (head_dim/4 rounded up to one of them; exactly one is
// given), EXACT (head_dim/4 equals it), F16, PACKED_DOT (dot4I8Packed).
// exclusive: D4_16 D4_32 D4_64 D4_128
// exclusive: ACT_GELU ACT_SWISH
#if F16
enable f16;
#endif

#include attention_params

@group(0) @binding(0) var<uniform> p: Params;
// flash_sage reads V from v_f16 under F16; no entry uses both globals of binding 1.
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
#if F16
@group(0) @binding(1) var<storage, read> v_f16: array<vec4<f16>>;
#endif
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
// int8 Q and K, 4 per word, layout [B, H, T, D/4]; scales: Q blocks, then K blocks.
@group(0) @binding(3) var<storage, read> q8: array<u32>;
@group(0) @binding(4) var<storage, read> k8: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<f32>;

#include common

const WG: u32 = 64u;
// Channel quads per invocation.
const QPL: u32 = 16u;

// BK per head width so that K + V tiles (f32) and the team's partial scores fit the 16 KiB
// every WebGPU adapter offers: 2·BK·D4·16 bytes + (S > 1) WG·BK·4 bytes.
#if D4_128
const D4: u32 = 128u;
const BK: u32 = 3u;
#else
#if D4_64
const D4: u32 = 64u;
const BK: u32 = 7u;
#else
#if D4_32
const D4: u32 = 32u;
const BK: u32 = 12u;
#else
// D4_16, the default.
const D4: u32 = 16u;
const BK: u32 = 32u;
#endif
#endif
#endif

// Invocations per query, and queries per workgroup.
const S: u32 = D4 / QPL;
const BQ: u32 = WG / S;
const NEG: f32 = -3.0e38;

var<workgroup> v_tile: array<vec4<f32>, BK * D4>;
var<workgroup> k_tile: array<vec4<f32>, BK * D4>;
// flash_sage's K tile: int8 words and each key's scale.
var<workgroup> k_words: array<u32, BK * D4>;
var<workgroup> k_scale: array<f32, BK>;
#if F16
var<workgroup> v16_tile: array<vec4<f16>, BK * D4>;
#endif
#if !D4_16
var<workgroup> partial: array<f32, WG * BK>;
#endif

// What one invocation is responsible for.
struct Lane {
    b: u32,
    h: u32,
    i: u32,       // its query (may be past the last token in the last tile: not written)
    iq: u32,      // the query clamped to a real token, for loads
    c0: u32,      // first channel quad it owns
    nq: u32,      // how many it owns (0 for team members past a narrow head's end)
    limit: u32,   // keys 0..limit are visible to the query
    n_keys: u32,  // keys the workgroup visits: the causal limit of its last query
}

fn key_limit(i: u32) -> u32 {
    return select(p.tokens, i + 1u, p.causal != 0u);
}

fn lane_of(wg: vec3<u32>, lid: u32) -> Lane {
    var l: Lane;
    l.h = wg.y;
    l.b = wg.z;
    l.i = wg.x * BQ + lid / S;
    l.iq = min(l.i, p.tokens - 1u);
    l.c0 = (lid % S) * QPL;
#if EXACT
    l.nq = QPL;
#else
    l.nq = min(QPL, p.d4 - min(p.d4, l.c0));
#endif
    l.limit = key_limit(l.iq);
    l.n_keys = key_limit(min(wg.x * BQ + BQ, p.tokens) - 1u);
    return l;
}

// Token j's vec4 index in qkv of part (0 q, 1 k, 2 v) for head h.
fn qkv_index(b: u32, j: u32, part: u32, h: u32) -> u32 {
    return (b * p.tokens + j) * 3u * p.heads * p.d4 + (part * p.heads + h) * p.d4;
}

// Token j of a tile, clamped to a real token: the keys past the end of a partial last tile
// load valid memory and get weight 0.
fn tile_token(j0: u32, key: u32) -> u32 {
    return min(j0 + key, p.tokens - 1u);
}

// Every member of a query's team gets the sum of the team's partial scores, in member order.
fn team_scores(s: array<f32, BK>, lid: u32) -> array<f32, BK> {
#if D4_16
    return s;
#else
    for (var j = 0u; j < BK; j++) {
        partial[lid * BK + j] = s[j];
    }
    workgroupBarrier();
    let first = (lid / S) * S;
    var t: array<f32, BK>;
    for (var j = 0u; j < BK; j++) {
        var sum = 0.0;
        for (var r = 0u; r < S; r++) {
            sum += partial[(first + r) * BK + j];
        }
        t[j] = sum;
    }
    return t;
#endif
}

struct Softmax {
    m: f32,       // running max
    l: f32,       // running sum of exp(score - m)
}

struct Step {
    w: array<f32, BK>,  // exp(score - new max), 0 for masked keys
    alpha: f32,         // rescales what was accumulated under the old max
}

// One online-softmax step over the tile's scores.
fn online_step(state: ptr<function, Softmax>, s: array<f32, BK>, j0: u32, limit: u32) -> Step {
    var mx = (*state).m;
    for (var j = 0u; j < BK; j++) {
        if j0 + j < limit {
            mx = max(mx, s[j]);
        }
    }
    var step: Step;
    step.alpha = exp((*state).m - mx);
    var sum = 0.0;
    for (var j = 0u; j < BK; j++) {
        step.w[j] = select(0.0, exp(s[j] - mx), j0 + j < limit);
        sum += step.w[j];
    }
    (*state).m = mx;
    (*state).l = (*state).l * step.alpha + sum;
    return step;
}

fn write_out(lane: Lane, acc: ptr<function, array<vec4<f32>, QPL>>, l: f32) {
    if lane.i >= p.tokens {
        return;
    }
    let o = (lane.b * p.tokens + lane.i) * p.heads * p.d4 + lane.h * p.d4 + lane.c0;
    for (var k = 0u; k < QPL; k++) {
        if k < lane.nq {
            out[o + k] = (*acc)[k] / l;
        }
    }
}

// acc = acc·alpha + Σ_j w_j·V_j over the f32 V tile.
fn accumulate_f32(lane: Lane, acc: ptr<function, array<vec4<f32>, QPL>>, step: Step) {
    for (var k = 0u; k < QPL; k++) {
        if k < lane.nq {
            var a = (*acc)[k] * step.alpha;
            for (var j = 0u; j < BK; j++) {
                a += step.w[j] * v_tile[j * D4 + lane.c0 + k];
            }
            (*acc)[k] = a;
        }
    }
}

@compute @workgroup_size(WG)
fn flash_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lane_of(wg, lid);
    var q: array<vec4<f32>, QPL>;
    var acc: array<vec4<f32>, QPL>;
    let qi = qkv_index(lane.b, lane.iq, 0u, lane.h) + lane.c0;
    for (var k = 0u; k < QPL; k++) {
        if k < lane.nq {
            q[k] = qkv[qi + k] * p.scale;
        }
        acc[k] = vec4<f32>(0.0);
    }
    var state = Softmax(NEG, 0.0);
    let n_tile = BK * p.d4;
    for (var j0 = 0u; j0 < lane.n_keys; j0 += BK) {
        for (var e = lid; e < n_tile; e += WG) {
            let key = e / p.d4;
            let c = e % p.d4;
            let j = tile_token(j0, key);
            k_tile[key * D4 + c] = qkv[qkv_index(lane.b, j, 1u, lane.h) + c];
            v_tile[key * D4 + c] = qkv[qkv_index(lane.b, j, 2u, lane.h) + c];
        }
        workgroupBarrier();
        var s: array<f32, BK>;
        for (var j = 0u; j < BK; j++) {
            var d = 0.0;
            for (var k = 0u; k < QPL; k++) {
                if k < lane.nq {
                    d += dot(q[k], k_tile[j * D4 + lane.c0 + k]);
                }
            }
            s[j] = d;
        }
        let step = online_step(&state, team_scores(s, lid), j0, lane.limit);
        accumulate_f32(lane, &acc, step);
        // The next tile overwrites what this one read.
        workgroupBarrier();
    }
    write_out(lane, &acc, state.l);
}

// ---- SageAttention ----

#include sage_qk

@compute @workgroup_size(WG)
fn flash_sage(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lane_of(wg, lid);
    let bh = lane.b * p.heads + lane.h;
    var q: array<QWord, QPL>;
    var acc: array<vec4<f32>, QPL>;
    let qi = (bh * p.tokens + lane.iq) * p.d4 + lane.c0;
    for (var k = 0u; k < QPL; k++) {
        if k < lane.nq {
            q[k] = q_word(q8[qi + k]);
        }
        acc[k] = vec4<f32>(0.0);
    }
    let q_scale = scales[bh * p.n_qb + lane.iq / p.q_block];
    let k_scales = p.batch * p.heads * p.n_qb + bh * p.n_kb;
    var state = Softmax(NEG, 0.0);
    let n_tile = BK * p.d4;
    for (var j0 = 0u; j0 < lane.n_keys; j0 += BK) {
        for (var e = lid; e < n_tile; e += WG) {
            let key = e / p.d4;
            let c = e % p.d4;
            let j = tile_token(j0, key);
            let row = (bh * p.tokens + j) * p.d4 + c;
            k_words[key * D4 + c] = k8[row];
#if F16
            v16_tile[key * D4 + c] = v_f16[row];
#else
            v_tile[key * D4 + c] = qkv[qkv_index(lane.b, j, 2u, lane.h) + c];
#endif
        }
        if lid < BK {
            k_scale[lid] = scales[k_scales + tile_token(j0, lid) / p.k_block];
        }
        workgroupBarrier();
        // Integer partial dots are exact in f32 (|Σ| ≤ 512 · 127² < 2^24), so the team's sum
        // is the exact integer dot product whatever the split.
        var s: array<f32, BK>;
        for (var j = 0u; j < BK; j++) {
            var d = 0;
            for (var k = 0u; k < QPL; k++) {
                if k < lane.nq {
                    d += qk(q[k], k_words[j * D4 + lane.c0 + k]);
                }
            }
            s[j] = f32(d);
        }
        s = team_scores(s, lid);
        for (var j = 0u; j < BK; j++) {
            // The order of attention.wgsl's attend_sage and of the CPU reference.
            s[j] = s[j] * q_scale * k_scale[j];
        }
        let step = online_step(&state, s, j0, lane.limit);
#if F16
        // Each product P·V in f16 (P rounded to f16), summed in f32.
        for (var k = 0u; k < QPL; k++) {
            if k < lane.nq {
                var a = acc[k] * step.alpha;
                for (var j = 0u; j < BK; j++) {
                    a += vec4<f32>(f16(step.w[j]) * v16_tile[j * D4 + lane.c0 + k]);
                }
                acc[k] = a;
            }
        }
#else
        accumulate_f32(lane, &acc, step);
#endif
        workgroupBarrier();
    }
    write_out(lane, &acc, state.l);
}
