// Quantized matrix × vector: out[m, col_off + n] = act(Σ_k x[m, k] · W[n, k] + bias[n]).
//
// This file also holds what the GEMM kernels share (bindings, weight decoding, x loads,
// activations): the Rust side compiles gemm_q.wgsl as this file followed by gemm_q.wgsl.
//
// Defines: one FMT_* (F32, F16, Q8, Q4, Q4Z, TERNARY, FP4), SCALED (the format has f16
// scales), VEC4 (weights read as vec4<u32>: rows padded to 4 words and scale groups made of
// whole vec4s), FLOAT_CHUNK (F32/F16 with VEC4 and X_UNIFORM: a vec4 chunk of 4 or 8 weights is
// decoded and multiplied as a whole, like one word of the 4-bit formats), ACT_GELU / ACT_SWISH, SUBGROUPS (gemv_coop's reduction: one team = one subgroup).
//
// Weights are never expanded: each packed u32 is decoded in registers. Integer codes become
// floats with the magic-number trick (bitcast(0x4B000000 | q) = 2^23 + q exactly), and the
// same subtraction removes the zero point: (2^23 + q) − (2^23 + zero) = q − zero.

struct Params {
    m: u32,
    // Output rows (weight rows) of this chunk.
    n: u32,
    k: u32,
    // u32 words per weight row (row_words padded to a multiple of 4).
    stride: u32,
    // Words per scale group (the whole padded row for per-channel formats).
    group_words: u32,
    groups: u32,
    // Row length of `out` (all chunks) and where this chunk's columns start.
    out_stride: u32,
    col_off: u32,
    // X_UNIFORM: vec4s per staged x row.
    x_pitch: u32,
    // First row of x (and out) this dispatch covers; `m` counts from it.
    m_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if X_UNIFORM
// x staged by the Rust side in a uniform buffer, rows zero-padded to `x_pitch` vec4s (so no
// masking). On llvmpipe (Mesa 22) a uniform load is one gather while a storage load loops over
// the SIMD lanes, and x is read once per weight word.
@group(0) @binding(1) var<uniform> xu: array<vec4<f32>, 4096>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if VEC4
@group(0) @binding(4) var<storage, read> w_data: array<vec4<u32>>;
#else
@group(0) @binding(4) var<storage, read> w_data: array<u32>;
#endif
#if SCALED
@group(0) @binding(5) var<storage, read> w_scales: array<u32>;
#endif
#if FMT_Q4Z
@group(0) @binding(6) var<storage, read> w_zeros: array<u32>;
#endif

// Elements per word, vec4 columns they fill, the code offset subtracted after the magic
// number, and a factor folded into each group scale (FP4 decodes to value · 2^-14).
const MAGIC: f32 = 8388608.0;
#if FMT_F32
const PW: u32 = 1u;
const OFFSET: f32 = 0.0;
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_F16
const PW: u32 = 2u;
const OFFSET: f32 = 0.0;
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_Q8
const PW: u32 = 4u;
const OFFSET: f32 = 8388736.0; // 2^23 + 128: bytes are read as offset binary (code ^ 0x80)
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_Q4
const PW: u32 = 8u;
const OFFSET: f32 = 8388616.0; // 2^23 + 8
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_Q4Z
const PW: u32 = 8u;
const OFFSET: f32 = 8388608.0; // plus the group's zero point
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_TERNARY
const PW: u32 = 16u;
const OFFSET: f32 = 8388609.0; // 2^23 + 1
const SCALE_MUL: f32 = 1.0;
#endif
#if FMT_FP4
const PW: u32 = 8u;
const OFFSET: f32 = 0.0;
const SCALE_MUL: f32 = 16384.0;
#endif
const NC: u32 = max(PW / 4u, 1u);
const LANES: u32 = min(PW, 4u);
#if VEC4
const CW: u32 = 4u;
#else
const CW: u32 = 1u;
#endif

// Scale of group `i` (row * groups + group), times SCALE_MUL; 1 for unscaled formats.
fn group_scale(i: u32) -> f32 {
#if SCALED
    let pair = unpack2x16float(w_scales[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u) * SCALE_MUL;
#else
    return 1.0;
#endif
}

// What decode() subtracts for group `i`.
fn group_offset(i: u32) -> f32 {
#if FMT_Q4Z
    return OFFSET + f32(extractBits(w_zeros[i >> 3u], 4u * (i & 7u), 4u));
#else
    return OFFSET;
#endif
}

fn magic4(q: vec4<u32>, offset: f32) -> vec4<f32> {
    return bitcast<vec4<f32>>(q | vec4<u32>(0x4B000000u)) - vec4<f32>(offset);
}

// One packed word → its PW values (q − zero, unscaled), element j in column j/4, lane j%4.
fn decode(word: u32, offset: f32) -> mat4x4<f32> {
    var v = mat4x4<f32>();
    let w4 = vec4<u32>(word);
#if FMT_F32
    v[0] = vec4<f32>(bitcast<f32>(word), 0.0, 0.0, 0.0);
#endif
#if FMT_F16
    v[0] = vec4<f32>(unpack2x16float(word), 0.0, 0.0);
#endif
#if FMT_Q8
    v[0] = magic4(((w4 ^ vec4<u32>(0x80808080u)) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu), offset);
#endif
#if FMT_Q4
    v[0] = magic4((w4 >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(0xFu), offset);
    v[1] = magic4((w4 >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(0xFu), offset);
#endif
#if FMT_Q4Z
    v[0] = magic4((w4 >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(0xFu), offset);
    v[1] = magic4((w4 >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(0xFu), offset);
#endif
#if FMT_TERNARY
    v[0] = magic4((w4 >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u), offset);
    v[1] = magic4((w4 >> vec4<u32>(8u, 10u, 12u, 14u)) & vec4<u32>(3u), offset);
    v[2] = magic4((w4 >> vec4<u32>(16u, 18u, 20u, 22u)) & vec4<u32>(3u), offset);
    v[3] = magic4((w4 >> vec4<u32>(24u, 26u, 28u, 30u)) & vec4<u32>(3u), offset);
#endif
#if FMT_FP4
    // E2M1 → f16 bits: magnitude (e e m) to bits 11..9, sign to bit 15. Read as f16 this is
    // value · 2^-14 (code 1 lands on the f16 subnormal 2^-15); SCALE_MUL restores it.
    let c = w4 >> vec4<u32>(0u, 8u, 16u, 24u);
    let h = ((c & vec4<u32>(7u)) << vec4<u32>(9u)) | ((c & vec4<u32>(8u)) << vec4<u32>(12u))
        | ((c & vec4<u32>(0x70u)) << vec4<u32>(21u)) | ((c & vec4<u32>(0x80u)) << vec4<u32>(24u));
    v[0] = vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
    v[1] = vec4<f32>(unpack2x16float(h.z), unpack2x16float(h.w));
#endif
    return v;
}

// The PW x values of word `w` of x row `xrow`. In the tail (`tail` is a literal at each call
// site, so the branch folds away) values past K read as 0: padding codes decode to −zero.
fn load_x(xrow: u32, w: u32, tail: bool) -> mat4x4<f32> {
#if X_UNIFORM
    // Only for PW ≥ 4.
    let b = xrow * p.x_pitch + w * (PW / 4u);
    var u = mat4x4<f32>();
    u[0] = xu[b];
    if NC >= 2u {
        u[1] = xu[b + 1u];
    }
    if NC >= 4u {
        u[2] = xu[b + 2u];
        u[3] = xu[b + 3u];
    }
    return u;
#else
    let k = w * PW;
    let base = (p.m_off + xrow) * p.k + k;
    if tail {
        let last = (p.m_off + xrow) * p.k + p.k - 1u;
        return mat4x4<f32>(x_tail4(base, k, last), x_tail4(base + 4u, k + 4u, last),
                           x_tail4(base + 8u, k + 8u, last), x_tail4(base + 12u, k + 12u, last));
    }
    // Whole vec4s only: a word's elements never straddle a 4-aligned boundary of `k`.
    var v = mat4x4<f32>();
    if PW == 1u {
        v[0].x = x[base];
    } else if PW == 2u {
        v[0] = vec4<f32>(x[base], x[base + 1u], 0.0, 0.0);
    } else {
        v[0] = x4(base);
    }
    if NC >= 2u {
        v[1] = x4(base + 4u);
    }
    if NC >= 4u {
        v[2] = x4(base + 8u);
        v[3] = x4(base + 12u);
    }
    return v;
#endif
}

#if FLOAT_CHUNK
// F32 and F16 read whole chunks: one vec4<u32> is 4 f32 or 8 f16 weights, so the loops pay
// their per-word costs (x loads, loop control) once per 4-8 weights instead of per 1-2.
fn decode_chunk(c: vec4<u32>) -> mat4x4<f32> {
    var v = mat4x4<f32>();
#if FMT_F32
    v[0] = bitcast<vec4<f32>>(c);
#else
    v[0] = vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y));
    v[1] = vec4<f32>(unpack2x16float(c.z), unpack2x16float(c.w));
#endif
    return v;
}

// x values of the chunk at word `w` of row `xrow` (4 for F32, 8 for F16). The Rust side
// sets FLOAT_CHUNK with X_UNIFORM only; the storage path (masked past K) keeps every define
// combination valid.
fn load_x_chunk(xrow: u32, w: u32) -> mat4x4<f32> {
    var u = mat4x4<f32>();
#if X_UNIFORM
    let b = xrow * p.x_pitch + w * PW / 4u;
    u[0] = xu[b];
    if PW == 2u {
        u[1] = xu[b + 1u];
    }
#else
    let k = w * PW;
    let row = (p.m_off + xrow) * p.k;
    let last = row + p.k - 1u;
    u[0] = x_tail4(row + k, k, last);
    if PW == 2u {
        u[1] = x_tail4(row + k + 4u, k + 4u, last);
    }
#endif
    return u;
}

fn chunk_mul(a: mat4x4<f32>, b: mat4x4<f32>) -> vec4<f32> {
    var s = a[0] * b[0];
    if PW == 2u {
        s += a[1] * b[1];
    }
    return s;
}

fn chunk_dot(a: mat4x4<f32>, b: mat4x4<f32>) -> f32 {
    var s = dot(a[0], b[0]);
    if PW == 2u {
        s += dot(a[1], b[1]);
    }
    return s;
}
#endif

#if !X_UNIFORM

fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

// x[i..i+4] for elements k..k+4 of a row whose last element is x[last]; lanes with k ≥ K
// read 0 (lanes past the word's own PW elements meet zero weights).
fn x_tail4(i: u32, k: u32, last: u32) -> vec4<f32> {
    let ok = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k);
    let v = vec4<f32>(x[min(i, last)], x[min(i + 1u, last)], x[min(i + 2u, last)], x[min(i + 3u, last)]);
    return select(vec4<f32>(0.0), v, ok);
}
#endif

// Lane-wise products summed over the used columns: kept as a vec4 so the horizontal sum is
// paid once per group instead of once per word.
fn mmul(a: mat4x4<f32>, b: mat4x4<f32>) -> vec4<f32> {
    var s = a[0] * b[0];
    for (var c = 1u; c < NC; c++) {
        s += a[c] * b[c];
    }
    return s;
}

fn mdot(a: mat4x4<f32>, b: mat4x4<f32>) -> f32 {
    var s = dot(a[0], b[0]);
    for (var c = 1u; c < NC; c++) {
        s += dot(a[c], b[c]);
    }
    return s;
}

// Word chunk starting at word `w` of weight row `row` (CW words, the rest zero).
fn load_chunk(row: u32, w: u32) -> vec4<u32> {
#if VEC4
    return w_data[(row * p.stride + w) >> 2u];
#else
    return vec4<u32>(w_data[row * p.stride + w], 0u, 0u, 0u);
#endif
}

// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), as shaders/elementwise.wgsl.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn activate(v: f32) -> f32 {
#if ACT_GELU
    return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
#else
#if ACT_SWISH
    return v / (1.0 + exp(-v));
#else
    return v;
#endif
#endif
}

fn store(m: u32, n: u32, acc: f32) {
    out[(p.m_off + m) * p.out_stride + p.col_off + n] = activate(acc + bias[n]);
}

// ---- GEMV, CPU adapters: each invocation owns ROWS rows (lid, lid + WG, ...), so the x
// loads are the same for every lane (cheap on llvmpipe) and reused across the ROWS rows; no
// barriers. The group's dot product is summed unscaled and scaled once per group.

override WG: u32 = 64u;
#include grid
override ROWS: u32 = 4u; // ≤ 16

// One word (`j`, a literal at each call) of every row's chunk. Spelled out word by word in
// rows_chunk: as a loop over j, the chunk arrays were indexed dynamically and the kernel ran
// 5-20% slower on llvmpipe (NIR did not unroll the nested loops).
fn rows_word(s: ptr<function, array<vec4<f32>, 16>>, chunk: ptr<function, array<vec4<u32>, 16>>,
             off: ptr<function, array<f32, 16>>, xs: mat4x4<f32>, j: u32) {
    for (var r = 0u; r < ROWS; r++) {
        (*s)[r] += mmul(decode((*chunk)[r][j], (*off)[r]), xs);
    }
}

// The CW words at word `w`; `tail` (a literal) masks x past K.
fn rows_chunk(s: ptr<function, array<vec4<f32>, 16>>, chunk: ptr<function, array<vec4<u32>, 16>>,
              off: ptr<function, array<f32, 16>>, m: u32, w: u32, tail: bool) {
    rows_word(s, chunk, off, load_x(m, w, tail), 0u);
    if CW == 4u {
        rows_word(s, chunk, off, load_x(m, w + 1u, tail), 1u);
        rows_word(s, chunk, off, load_x(m, w + 2u, tail), 2u);
        rows_word(s, chunk, off, load_x(m, w + 3u, tail), 3u);
    }
}

@compute @workgroup_size(WG)
fn gemv_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = wg.y;
    let first = wg.x * WG * ROWS + lid;
    var rows: array<u32, 16>;
    var acc: array<f32, 16>;
    for (var r = 0u; r < ROWS; r++) {
        rows[r] = min(first + r * WG, p.n - 1u);
        acc[r] = 0.0;
    }
    // Words whose elements are all < K: no masking needed.
    let full = p.k / PW;
    for (var g = 0u; g < p.groups; g++) {
        let w0 = g * p.group_words;
        let w1 = min(w0 + p.group_words, p.stride);
        var off: array<f32, 16>;
        var s: array<vec4<f32>, 16>;
        for (var r = 0u; r < ROWS; r++) {
            off[r] = group_offset(rows[r] * p.groups + g);
            s[r] = vec4<f32>(0.0);
        }
        for (var w = w0; w < w1; w += CW) {
            var chunk: array<vec4<u32>, 16>;
            for (var r = 0u; r < ROWS; r++) {
                chunk[r] = load_chunk(rows[r], w);
            }
#if FLOAT_CHUNK
            let xs = load_x_chunk(m, w);
            for (var r = 0u; r < ROWS; r++) {
                s[r] += chunk_mul(decode_chunk(chunk[r]), xs);
            }
#else
#if X_UNIFORM
            // Staged x is zero-padded past K, so no tail: one copy of the loop body (two
            // identical copies cost 10-15% on llvmpipe).
            rows_chunk(&s, &chunk, &off, m, w, false);
#else
            if w + CW <= full {
                rows_chunk(&s, &chunk, &off, m, w, false);
            } else {
                rows_chunk(&s, &chunk, &off, m, w, true);
            }
#endif
#endif
        }
        for (var r = 0u; r < ROWS; r++) {
            acc[r] += dot(s[r], vec4<f32>(group_scale(rows[r] * p.groups + g)));
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if first + r * WG < p.n {
            store(m, rows[r], acc[r]);
        }
    }
}

// ---- GEMV, discrete GPUs: teams of TEAM lanes, one weight row per team and WG/TEAM rows per
// workgroup. The workgroup stages XT values of x in workgroup memory (x is read once per word
// per lane otherwise: 8 loads per 4-byte Q4 word, which made global x traffic, not weights, the
// bottleneck on an H100), then each team's lanes walk their row's words side by side
// (coalesced loads) and reduce: with SUBGROUPS the team is one subgroup (the Rust side sets it
// only when the subgroup size is fixed and equal to TEAM) and subgroupAdd needs no barrier;
// otherwise a shared-memory tree per team.

#if !X_UNIFORM
override TEAM: u32 = 32u;
const XT: u32 = 2048u;
var<workgroup> xs: array<vec4<f32>, XT / 4u>;
var<workgroup> partial: array<f32, WG>;

// The PW staged x values of tile word `lw`, laid out like decode()'s output.
fn xs_word(lw: u32) -> mat4x4<f32> {
    var v = mat4x4<f32>();
    let b = lw * PW;
    if PW == 1u {
        v[0].x = xs[b >> 2u][b & 3u];
    } else if PW == 2u {
        let q = xs[b >> 2u];
        v[0] = select(vec4<f32>(q.x, q.y, 0.0, 0.0), vec4<f32>(q.z, q.w, 0.0, 0.0), (b & 2u) != 0u);
    } else {
        for (var c = 0u; c < NC; c++) {
            v[c] = xs[(b >> 2u) + c];
        }
    }
    return v;
}

@compute @workgroup_size(WG)
fn gemv_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
             @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
#if SUBGROUPS
    let team = sg_id;
    let lane = sg_lane;
#else
    let team = lid / TEAM;
    let lane = lid % TEAM;
#endif
    let row_id = grid_group(wg, nwg) * (WG / TEAM) + team;
    let m = wg.z;
    let row = min(row_id, p.n - 1u);
    let xbase = (p.m_off + m) * p.k;
    let tile_words = XT / PW;
    var acc = 0.0;
    for (var t0 = 0u; t0 < p.stride; t0 += tile_words) {
        workgroupBarrier();
        for (var i = lid; i < XT / 4u; i += WG) {
            let k = t0 * PW + 4u * i;
            let ok = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k);
            let last = xbase + p.k - 1u;
            let v = vec4<f32>(x[min(xbase + k, last)], x[min(xbase + k + 1u, last)],
                              x[min(xbase + k + 2u, last)], x[min(xbase + k + 3u, last)]);
            xs[i] = select(vec4<f32>(0.0), v, ok);
        }
        workgroupBarrier();
        let end = min(t0 + tile_words, p.stride);
        for (var w = t0 + lane; w < end; w += TEAM) {
            let g = row * p.groups + w / p.group_words;
            let word = load_chunk(row, w).x;
            acc += mdot(decode(word, group_offset(g)), xs_word(w - t0)) * group_scale(g);
        }
    }
#if SUBGROUPS
    let total = subgroupAdd(acc);
    if lane == 0u && row_id < p.n {
        store(m, row, total);
    }
#else
    partial[lid] = acc;
    workgroupBarrier();
    for (var half = TEAM / 2u; half > 0u; half >>= 1u) {
        if lane < half {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if lane == 0u && row_id < p.n {
        store(m, row, partial[lid]);
    }
#endif
}
#endif
