// W4A8 / W4A4: 4-bit group-wise weights (q4gG, symmetric, code − 8) times 8-bit or 4-bit
// integer activations, with exact integer dot products inside each scale group of K:
//   out[m, n] = sx[m] · Σ_g sw[n, g] · (Σ_{k∈g} xc[m, k] · wc[n, k] + dz[m] · Σ_{k∈g} wc[n, k]) + bias[n]
// where xc = activation code − 2^(bits−1) (signed, fits int8) and dz[m] = 2^(bits−1) − zero[m]
// folds an asymmetric quantizer's zero point back in (Σ wc per group is precomputed); each
// activation row carries (sx, dz): dz is 0 for symmetric per-token codes, the same for every
// row under a static quantizer, the row's own under an asymmetric per-token one. The group sum
// stays an i32 (|Σ| ≤ 128 · 128 · 8), dz · Σ wc is an integer too, so f32 holds the group's
// total exactly, and it is scaled once per group.
//
// Both operands are unpacked to int8 words in registers: a weight word holds codes k0..k7 as
// nibbles; `nib_lo` gives (k0, k2, k4, k6) and `nib_hi` (k1, k3, k5, k7) as int8 bytes. 8-bit
// activation codes are stored in that same even/odd order (two words per 8 codes), 4-bit ones as
// nibbles like the weights (one word per 8 codes, unpacked the same way), so the products
// pair up without shuffles.
//
// Variants (defines): QUANTIZE selects the activation quantizer (DYNAMIC: per token, min/max
// with a zero point per row, or with SYMMETRIC absmax without one; else the static uniform
// quantizer of the checkpoint; NOISE adds NoisyQuant's noise
// first; A4 packs 4-bit codes); otherwise the GEMMs (`gemm` for CPU adapters and GEMV,
// `gemm_workgroup` for GPUs): PACKED_DOT uses dot4I8Packed, else bytes
// are sign-extended and multiplied in i32; GEMV computes one activation row per tile; GELU
// fuses the activation; LOW_RANK adds SVDQuant's low-rank branch t · upᵀ (t = x · downᵀ, made
// by a small f32 GEMM before) to the output.

// The quantize-only and GEMM-only flags never go together; ACT_* come from common.
// exclusive: DYNAMIC GEMV
// exclusive: NOISE LOW_RANK
// exclusive: ACT_GELU ACT_SWISH

#include common

struct Params {
    rows: u32,        // M: activation rows (tokens)
    cols: u32,        // quantize: K; GEMM: output channels in this weight part
    x_vecs: u32,      // vec4 words per activation row (2 per weight vec4 at 8 bits, 1 at 4 bits)
    out_stride: u32,  // GEMM: output channels of the whole layer (N)
    col_offset: u32,  // GEMM: first output channel of this weight part
    w_vecs: u32,      // vec4 words (32 codes) per padded weight row
    groups: u32,      // GEMM: scale groups per weight row
    group_vecs: u32,  // GEMM: weight vec4s per group (G / 32)
    scale: f32,       // quantize (static): activation scale
    zero: f32,        // quantize (static): zero code
    top: f32,         // quantize: largest code, 2^bits − 1, or 2^(bits−1) − 1 when symmetric
    offset: f32,      // quantize: 2^(bits−1), subtracted from the codes
    rank: u32,        // GEMM with LOW_RANK: columns of t
}

@group(0) @binding(0) var<uniform> p: Params;

// (k0, k2, k4, k6) of a word of eight 4-bit codes (offset 8) as sign-extended int8 bytes:
// code ^ 8 is the value in 4-bit two's complement; its sign bit becomes 0xF0 (0x08 · 0x1E).
fn nib_lo(w: u32) -> u32 {
    let y = (w & 0x0F0F0F0Fu) ^ 0x08080808u;
    return y | ((y & 0x08080808u) * 0x1Eu);
}

fn nib_hi(w: u32) -> u32 {
    return nib_lo(w >> 4u);
}

#if QUANTIZE
@group(0) @binding(1) var<storage, read> x: array<f32>;
#if NOISE
@group(0) @binding(2) var<storage, read> noise: array<f32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<vec2<f32>>;
#else
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<vec2<f32>>;
#endif

override WG: u32 = 64u;
#include grid
var<workgroup> partial_lo: array<f32, WG>;
var<workgroup> partial_hi: array<f32, WG>;

fn input(base: u32, k: u32) -> f32 {
#if NOISE
    return x[base + k] + noise[k];
#else
    return x[base + k];
#endif
}

// The signed code of one value: exactly the CPU reference's f32 operations (and, for the
// static quantizer, `aq_apply`'s), so codes match the simulated quantizer's. `zero` is the
// zero code of an asymmetric quantizer (unused when symmetric).
fn code(v: f32, scale: f32, zero: f32) -> i32 {
    if scale == 0.0 {
        return 0;
    }
#if SYMMETRIC
    return i32(clamp(round(v / scale), -p.top, p.top));
#else
    return i32(clamp(round(v / scale) + zero, 0.0, p.top) - p.offset);
#endif
}

// One workgroup per row; each lane writes the words of whole 8-code blocks. Codes past K are
// zero (the weights' padding nibbles are −8, so the activation must cancel them).
@compute @workgroup_size(WG)
fn quantize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = grid_group(wg, nwg);
    // No early return: the barrier below must be reached by the whole workgroup.
    let live = row < p.rows;
    let r = min(row, p.rows - 1u);
    let base = r * p.cols;
    let blocks = p.x_vecs * 4u;
#if A4
    let per_block = 1u;
#else
    let per_block = 2u;
#endif
    let nblocks = blocks / per_block;

#if DYNAMIC
    // The row's range, widened to hold 0 (so 0 has an exact code).
    var lo = 0.0;
    var hi = 0.0;
    for (var k = lid; k < p.cols; k += WG) {
        let v = input(base, k);
        lo = min(lo, v);
        hi = max(hi, v);
    }
    partial_lo[lid] = lo;
    partial_hi[lid] = hi;
    workgroupBarrier();
    for (var i = 0u; i < WG; i++) {
        lo = min(lo, partial_lo[i]);
        hi = max(hi, partial_hi[i]);
    }
#if SYMMETRIC
    // p.top = 2^(bits−1) − 1: 127 for int8 codes, 7 for int4 ones.
    let scale = max(hi, -lo) / p.top;
    let zero = p.offset;
#else
    // p.top = 2^bits − 1 steps over [lo, hi]; the zero code maps 0 exactly.
    let scale = (hi - lo) / p.top;
    var zero = p.offset;
    if scale != 0.0 {
        zero = round(-lo / scale);
    }
#endif
#else
    let scale = p.scale;
    let zero = p.zero;
#endif

    for (var b = lid; b < nblocks; b += WG) {
        var c: array<i32, 8>;
        for (var j = 0u; j < 8u; j++) {
            let k = 8u * b + j;
            c[j] = 0;
            if k < p.cols {
                c[j] = code(input(base, k), scale, zero);
            }
        }
        if live {
#if A4
            var word = 0u;
            for (var j = 0u; j < 8u; j++) {
                word |= ((bitcast<u32>(c[j]) + 8u) & 0xfu) << (4u * j);
            }
            codes[r * blocks + b] = word;
#else
            var even = 0u;
            var odd = 0u;
            for (var j = 0u; j < 4u; j++) {
                even |= (bitcast<u32>(c[2u * j]) & 0xffu) << (8u * j);
                odd |= (bitcast<u32>(c[2u * j + 1u]) & 0xffu) << (8u * j);
            }
            codes[r * blocks + 2u * b] = even;
            codes[r * blocks + 2u * b + 1u] = odd;
#endif
        }
    }
    if live && lid == 0u {
        // (sx, dz): what the GEMM multiplies by and adds back per weight code.
        scales[r] = vec2<f32>(scale, p.offset - zero);
    }
}
#else
@group(0) @binding(1) var<storage, read> x_codes: array<vec4<u32>>;
// Per activation row: (scale, dz).
@group(0) @binding(2) var<storage, read> x_scales: array<vec2<f32>>;
// Weight rows padded with zero words to whole vec4s (32 codes), `w_vecs` per row.
@group(0) @binding(3) var<storage, read> w_data: array<vec4<u32>>;
// Per output channel and group of this part: (scale, Σ codes of the group).
@group(0) @binding(4) var<storage, read> w_groups: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
#if LOW_RANK
// SVDQuant: t = x · downᵀ [M, rank] and this part's rows of up [N, rank].
@group(0) @binding(7) var<storage, read> lr_t: array<f32>;
@group(0) @binding(8) var<storage, read> lr_up: array<f32>;
#endif

override WG: u32 = 64u;
// Activation rows one workgroup covers (a multiple of TM): large on CPU adapters so the
// workgroup's weight rows stay in cache while all those rows reuse them.
override ROWS_PER_WG: u32 = 32u;

#if GEMV
const TM: u32 = 1u;
#else
const TM: u32 = 4u;
#endif

// 32 codes as eight int8 words, in the order (k0 k2 k4 k6), (k1 k3 k5 k7), (k8 ...), ...
struct Op32 {
    a: vec4<u32>,
    b: vec4<u32>,
}

fn from_nibbles(w: vec4<u32>) -> Op32 {
    return Op32(vec4<u32>(nib_lo(w.x), nib_hi(w.x), nib_lo(w.y), nib_hi(w.y)),
                vec4<u32>(nib_lo(w.z), nib_hi(w.z), nib_lo(w.w), nib_hi(w.w)));
}

// The activation codes against weight vec4 `v` of the row starting at vec4 `base`.
fn x_op(base: u32, v: u32) -> Op32 {
#if A4
    return from_nibbles(x_codes[base + v]);
#else
    return Op32(x_codes[base + 2u * v], x_codes[base + 2u * v + 1u]);
#endif
}

// dot4 comes with `i8_tile` (included below, for `gemm_workgroup`).
fn dot32(w: Op32, x: Op32) -> i32 {
    return dot4(w.a.x, x.a.x) + dot4(w.a.y, x.a.y) + dot4(w.a.z, x.a.z) + dot4(w.a.w, x.a.w)
         + dot4(w.b.x, x.b.x) + dot4(w.b.y, x.b.y) + dot4(w.b.z, x.b.z) + dot4(w.b.w, x.b.w);
}

// Rescale, add the bias and the low-rank branch, apply the fused activation, store.
fn store(m: u32, c: u32, acc: f32) {
    var v = acc * x_scales[m].x + bias[c];
#if LOW_RANK
    var lr = 0.0;
    for (var r = 0u; r < p.rank; r++) {
        lr += lr_t[m * p.rank + r] * lr_up[c * p.rank + r];
    }
    v += lr;
#endif
#if GELU
    v = gelu_erf(v);
#endif
    out[m * p.out_stride + p.col_offset + c] = v;
}

// Lanes take neighbouring output channels (channel = col0 + j · WG, j < 4) and share TM
// activation rows, so activation loads are the same address for every lane and only weight
// loads differ per lane. Each weight vec4 is unpacked once and used for all TM rows.
@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col0 = wg.x * WG * 4u + lid;
    let cols = col0 + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
    // Past-the-end channels read the last valid row and are not stored.
    let last = min(cols, vec4<u32>(p.cols - 1u));
    let w_base = last * p.w_vecs;
    let g_base = last * p.groups;

    let row_end = min(p.rows, (wg.y + 1u) * ROWS_PER_WG);
    for (var m0 = wg.y * ROWS_PER_WG; m0 < row_end; m0 += TM) {
        var acc: array<vec4<f32>, TM>;
        var x_base: array<u32, TM>;
        var dz: array<f32, TM>;
        for (var i = 0u; i < TM; i++) {
            acc[i] = vec4<f32>(0.0);
            let m = min(m0 + i, p.rows - 1u);
            x_base[i] = m * p.x_vecs;
            dz[i] = x_scales[m].y;
        }
        for (var g = 0u; g < p.groups; g++) {
            var iacc: array<vec4<i32>, TM>;
            for (var i = 0u; i < TM; i++) {
                iacc[i] = vec4<i32>(0);
            }
            let v_end = min((g + 1u) * p.group_vecs, p.w_vecs);
            for (var v = g * p.group_vecs; v < v_end; v++) {
                var xs: array<Op32, TM>;
                for (var i = 0u; i < TM; i++) {
                    xs[i] = x_op(x_base[i], v);
                }
                for (var j = 0u; j < 4u; j++) {
                    let w = from_nibbles(w_data[w_base[j] + v]);
                    for (var i = 0u; i < TM; i++) {
                        iacc[i][j] += dot32(w, xs[i]);
                    }
                }
            }
            // The group's integer sums, exact, scaled once (the zero-point term is an integer
            // too: f32 holds it exactly).
            var s: vec4<f32>;
            var wsum: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                let gp = w_groups[g_base[j] + g];
                s[j] = gp.x;
                wsum[j] = gp.y;
            }
            for (var i = 0u; i < TM; i++) {
                acc[i] += s * (vec4<f32>(iacc[i]) + wsum * dz[i]);
            }
        }
        for (var i = 0u; i < TM; i++) {
            let m = m0 + i;
            for (var j = 0u; j < 4u; j++) {
                if m < row_end && cols[j] < p.cols {
                    store(m, cols[j], acc[i][j]);
                }
            }
        }
    }
}

// ---- GPUs: the int8 tiles of W8A8 (`i8_tile`): weights are unpacked from nibbles to int8
// words while they are staged (once per workgroup, not per use), in the activations' even/odd
// order, so the inner loop is W8A8's; the RM × RN block of i32 sums is flushed into f32 with
// the group's scale whenever a scale group of K ends.

// Int8 word `i` (4 codes, even/odd order) of activation row `m`.
fn tile_x_word(m: u32, i: u32) -> u32 {
    let base = m * p.x_vecs;
#if A4
    let w = x_codes[base + i / 8u][(i / 2u) % 4u];
    return select(nib_lo(w), nib_hi(w), i % 2u == 1u);
#else
    return x_codes[base + i / 4u][i % 4u];
#endif
}

#include i8_tile

@compute @workgroup_size(WG)
fn gemm_workgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    let tx = lid % (BN / RN);
    let ty = lid / (BN / RN);
    let words = p.w_vecs * 8u;          // int8 words per (padded) row
    let group_words = p.group_vecs * 8u;
    // [2i + h]: row m0 + ty·RM + i, channels n0 + tx·RN + 4h .. + 4.
    var iacc: array<vec4<i32>, 16>;
    var acc: array<vec4<f32>, 16>;
    var dz: array<f32, 8>;
    for (var i = 0u; i < RM; i++) {
        dz[i] = x_scales[min(m0 + ty * RM + i, p.rows - 1u)].y;
    }
    for (var k0 = 0u; k0 < words; k0 += BKW) {
        tile_stage_x(m0, k0, p.rows, words, lid);
        // One weight vec4 (32 codes → 8 int8 words) per lane.
        for (var i = lid; i < BN * BKW / 8u; i += WG) {
            let r = i / (BKW / 8u);
            let v4 = k0 / 8u + i % (BKW / 8u);
            var w = Op32(vec4<u32>(), vec4<u32>());
            if n0 + r < p.cols && v4 < p.w_vecs {
                w = from_nibbles(w_data[(n0 + r) * p.w_vecs + v4]);
            }
            let kw = 8u * (i % (BKW / 8u));
            for (var j = 0u; j < 8u; j++) {
                let e = (kw + j) * BN + r;
                tile_w[e >> 2u][e & 3u] = select(w.a[j % 4u], w.b[j % 4u], j >= 4u);
            }
        }
        workgroupBarrier();
        for (var kw = 0u; kw < BKW; kw++) {
            tile_mac(kw, tx, ty, &iacc);
            // The end of a scale group (uniform: the same k for the whole workgroup).
            let k = k0 + kw;
            if k < words && ((k + 1u) % group_words == 0u || k + 1u == words) {
                let g = k / group_words;
                for (var h = 0u; h < RN / 4u; h++) {
                    var s: vec4<f32>;
                    var wsum: vec4<f32>;
                    for (var j = 0u; j < 4u; j++) {
                        let c = min(n0 + tx * RN + 4u * h + j, p.cols - 1u);
                        let gp = w_groups[c * p.groups + g];
                        s[j] = gp.x;
                        wsum[j] = gp.y;
                    }
                    for (var i = 0u; i < RM; i++) {
                        acc[2u * i + h] += s * (vec4<f32>(iacc[2u * i + h]) + wsum * dz[i]);
                        iacc[2u * i + h] = vec4<i32>(0);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM; i++) {
        let m = m0 + ty * RM + i;
        for (var j = 0u; j < RN; j++) {
            let c = n0 + tx * RN + j;
            if m < p.rows && c < p.cols {
                store(m, c, acc[2u * i + j / 4u][j % 4u]);
            }
        }
    }
}
#endif
