// What the linear-layer kernels share (`#include linear`): out[m, col_off + n] =
// act(Σ_k x[m, k] · W[n, k] + bias[n]) over packed weights. The parameter block and bindings,
// x loads (from storage, or staged in a uniform buffer), weight word loads, and the store.
// gemv_q.wgsl, gemm_q.wgsl and gemm_workgroup.wgsl hold the kernels.
//
// Defines: one FMT_* (the weight format, see decode.wgsl), SCALED / ZERO_POINTS (its optional
// bindings), VEC4 (weights read as vec4<u32>: rows padded to 4 words and scale groups made of
// whole vec4s), X_UNIFORM (x staged in a uniform buffer), FLOAT_CHUNK (F32/F16 with VEC4 and
// X_UNIFORM: a vec4 chunk of 4 or 8 weights is decoded and multiplied as a whole, like one word
// of the 4-bit formats), ACT_GELU / ACT_SWISH.

#include common
#include decode

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
#if ZERO_POINTS
@group(0) @binding(6) var<storage, read> w_zeros: array<u32>;
#endif

#if VEC4
const CW: u32 = 4u;
#else
const CW: u32 = 1u;
#endif

// Invocations per workgroup (every linear kernel sets it).
override WG: u32 = 64u;

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
    if W_KIND == 1u {
        v[0] = bitcast<vec4<f32>>(c);
    } else {
        v[0] = vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y));
        v[1] = vec4<f32>(unpack2x16float(c.z), unpack2x16float(c.w));
    }
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

// Element k of x row `xrow` (counted from m_off), from storage or the uniform staging, for
// kernels that stage x themselves. The caller keeps k < K.
fn x_value(xrow: u32, k: u32) -> f32 {
#if X_UNIFORM
    let i = xrow * p.x_pitch * 4u + k;
    return xu[i >> 2u][i & 3u];
#else
    return x[(p.m_off + xrow) * p.k + k];
#endif
}

// Word `w` of weight row `row`, whichever way w_data is declared.
fn load_word(row: u32, w: u32) -> u32 {
    let i = row * p.stride + w;
#if VEC4
    return w_data[i >> 2u][i & 3u];
#else
    return w_data[i];
#endif
}

fn store(m: u32, n: u32, acc: f32) {
    out[(p.m_off + m) * p.out_stride + p.col_off + n] = activate(acc + bias[n]);
}
