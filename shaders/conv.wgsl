// 2-D convolution as an implicit GEMM: out[co, pixel] = bias[co] + Σ_k W[co, k] · x[k, pixel]
// where k = (ci, ky, kx) in PyTorch's weight order and pixel = (b, oy, ox); x[k, pixel] is read
// straight from the NCHW input (zero outside the padding), so no im2col buffer exists. Two
// kernels, one per row of the launch table:
//
// - `conv2d` (CPU adapters). Register tile: each invocation computes 8 output channels × 4
//   consecutive output pixels of one row, so each weight value feeds 4 multiply-adds and each
//   input value 8. All lanes of a workgroup share the same channels: weight loads have the
//   same address in every lane (broadcasts), and lanes differ only in the pixels they read.
// - `conv2d_workgroup` (WORKGROUP; GPUs): the workgroup-tiled core of the GEMM (tile.wgsl),
//   with A read from the input while it is staged and W row-major packed weights.
//
// Weights: any format of shaders/decode.wgsl (FMT_* define; SCALED / ZERO_POINTS for its
// optional bindings).
// Scale groups are whole words (group sizes are multiples of the elements per word, and rows
// start on a word), so scales and zero points are read only where a group starts.
//
// Defines: TOKENS writes [B, Ho·Wo, Cout] (timm's PatchEmbed flatten + transpose) instead of
// NCHW; WORKGROUP picks the GPU kernel.

#include decode

struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    // Zero padding before the first row and column; padding after the last only changes the
    // output size (ho, wo), and reads past the input are zero anyway.
    stride: u32, pad_top: u32, pad_left: u32, k: u32, row_words: u32,
    groups: u32, group_size: u32,
    // This dispatch covers weight rows [co_base, co_base + co_count) (weights split over bindings).
    co_base: u32, co_count: u32,
    // Pixel blocks of 4 along a row, per row, and in all (batch · Ho · blocks_x): `conv2d`.
    blocks_x: u32, blocks: u32,
    // Output pixels in all, batch · Ho · Wo (`conv2d_workgroup`'s M).
    pixels: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if WORKGROUP
@group(0) @binding(4) var<storage, read> w_data: array<u32>;
#else
// Weights re-laid out by tiles of 8 output channels: the words at column word `wi` of the
// tile's 8 rows are adjacent, so two vector loads fetch a word for every channel of the tile.
@group(0) @binding(4) var<storage, read> w_tiles: array<vec4<u32>>;
#endif
#if SCALED
@group(0) @binding(5) var<storage, read> w_scales: array<u32>;
#endif
#if ZERO_POINTS
@group(0) @binding(6) var<storage, read> w_zeros: array<u32>;
#endif

override WG: u32 = 64u;

#if WORKGROUP
#include tile

fn tile_a(m: u32, k: u32) -> f32 {
    let ox = m % p.wo;
    let oy = (m / p.wo) % p.ho;
    let b = m / (p.wo * p.ho);
    let kx = k % p.kw;
    let ky = (k / p.kw) % p.kh;
    let ci = k / (p.kw * p.kh);
    let iy = i32(oy * p.stride + ky) - i32(p.pad_top);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_left);
    if iy < 0 || iy >= i32(p.h) || ix < 0 || ix >= i32(p.w) {
        return 0.0;
    }
    return x[((b * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

fn tile_word(row: u32, w: u32) -> u32 { return w_data[row * p.row_words + w]; }

fn tile_store(m: u32, n: u32, v: f32) {
    let co = p.co_base + n;
    let pixel = m % (p.ho * p.wo);
    let b = m / (p.ho * p.wo);
#if TOKENS
    out[(b * p.ho * p.wo + pixel) * p.cout + co] = v + bias[co];
#else
    out[(b * p.cout + co) * p.ho * p.wo + pixel] = v + bias[co];
#endif
}

fn tile_m() -> u32 { return p.pixels; }
fn tile_n() -> u32 { return p.co_count; }
fn tile_k() -> u32 { return p.k; }
fn tile_stride() -> u32 { return p.row_words; }
fn tile_groups() -> u32 { return p.groups; }
// Scale groups are whole words (the format's group sizes are multiples of its elements per
// word); per-channel and unscaled formats have one group spanning the row.
fn tile_group_words() -> u32 {
    if p.groups <= 1u {
        return p.row_words;
    }
    return p.group_size / PW;
}

@compute @workgroup_size(WG)
fn conv2d_workgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    tile_product(wg.y * BM, wg.x * BN, lid);
}

#else

// The tile lives in vectors and matrices, not arrays: a local array indexed in a loop can
// end up in memory (per-lane scratch on llvmpipe) unless the compiler unrolls every loop.
#if SCALED
// Scale group ids of word `wi` in rows `rows` (groups are whole words).
fn group_ids(rows: vec4<u32>, wi: u32) -> vec4<u32> {
    return rows * p.groups + vec4((wi * PW) / p.group_size);
}
fn scales(g: vec4<u32>) -> vec4<f32> {
    return vec4(group_scale(g.x), group_scale(g.y), group_scale(g.z), group_scale(g.w));
}
fn offsets(g: vec4<u32>) -> vec4<f32> {
    return vec4(group_offset(g.x), group_offset(g.y), group_offset(g.z), group_offset(g.w));
}
#endif

fn decode4(words: vec4<u32>, j: u32, offset: vec4<f32>) -> vec4<f32> {
    return vec4(decode_element(words.x, j, offset.x), decode_element(words.y, j, offset.y),
                decode_element(words.z, j, offset.z), decode_element(words.w, j, offset.w));
}

// acc + x ⊗ w (column c gains x · w[c]), as fused multiply-adds.
fn fma_outer(acc: mat4x4<f32>, x: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(fma(x, vec4(w.x), acc[0]), fma(x, vec4(w.y), acc[1]),
                  fma(x, vec4(w.z), acc[2]), fma(x, vec4(w.w), acc[3]));
}

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wg.x * WG + lid;
    if block >= p.blocks { return; }
    let bx = block % p.blocks_x;
    let oy = (block / p.blocks_x) % p.ho;
    let b = block / (p.blocks_x * p.ho);
    let ox0 = bx * 4u;

    // Rows of this binding's weights, for scales; a partial last tile repeats its last row.
    let row0 = wg.y * 8u;
    let last = vec4(p.co_count - 1u);
    let rows_lo = min(vec4(row0) + vec4(0u, 1u, 2u, 3u), last);
    let rows_hi = min(vec4(row0) + vec4(4u, 5u, 6u, 7u), last);

    // acc_lo[c][t]: channel row0 + c, pixel ox0 + t; acc_hi: channels row0 + 4 + c.
    var acc_lo = mat4x4<f32>();
    var acc_hi = mat4x4<f32>();
    let plane = p.h * p.w;
    var chan_off = b * p.cin * plane;
    var ky = 0u;
    var kx = 0u;
    let iy0 = i32(oy * p.stride) - i32(p.pad_top);
    let ix0 = vec4(i32(ox0 * p.stride) - i32(p.pad_left)) + vec4<i32>(0, 1, 2, 3) * i32(p.stride);

    var scale_lo = vec4(1.0);
    var scale_hi = vec4(1.0);
    var offset_lo = vec4(OFFSET);
    var offset_hi = vec4(OFFSET);
    for (var wi = 0u; wi < p.row_words; wi++) {
        let words_lo = w_tiles[(wg.y * p.row_words + wi) * 2u];
        let words_hi = w_tiles[(wg.y * p.row_words + wi) * 2u + 1u];
#if SCALED
        // Scales change only at group boundaries (per-channel formats: never).
        if (wi * PW) % p.group_size == 0u {
            let g_lo = group_ids(rows_lo, wi);
            let g_hi = group_ids(rows_hi, wi);
            scale_lo = scales(g_lo);
            scale_hi = scales(g_hi);
            offset_lo = offsets(g_lo);
            offset_hi = offsets(g_hi);
        }
#endif
        let nk = min(PW, p.k - wi * PW);
        for (var j = 0u; j < nk; j++) {
            // The 4 input pixels under tap (ky, kx), zero where they fall in the padding.
            let iy = iy0 + i32(ky);
            let ix = ix0 + vec4(i32(kx));
            let ok = (ix >= vec4(0)) & (ix < vec4(i32(p.w))) & vec4(iy >= 0 && iy < i32(p.h));
            let row_off = chan_off + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w;
            let cx = vec4<u32>(clamp(ix, vec4(0), vec4(i32(p.w) - 1)));
            let xv = select(vec4(0.0), vec4(x[row_off + cx.x], x[row_off + cx.y], x[row_off + cx.z], x[row_off + cx.w]), ok);
            acc_lo = fma_outer(acc_lo, xv, decode4(words_lo, j, offset_lo) * scale_lo);
            acc_hi = fma_outer(acc_hi, xv, decode4(words_hi, j, offset_hi) * scale_hi);
            kx++;
            if kx == p.kw {
                kx = 0u;
                ky++;
                if ky == p.kh {
                    ky = 0u;
                    chan_off += plane;
                }
            }
        }
    }

    for (var c = 0u; c < 8u; c++) {
        if row0 + c >= p.co_count { break; }
        let co = p.co_base + row0 + c;
        let v = select(acc_hi[c % 4u], acc_lo[c % 4u], c < 4u) + vec4(bias[co]);
        for (var t = 0u; t < 4u; t++) {
            let ox = ox0 + t;
            if ox >= p.wo { break; }
#if TOKENS
            out[((b * p.ho + oy) * p.wo + ox) * p.cout + co] = v[t];
#else
            out[((b * p.cout + co) * p.ho + oy) * p.wo + ox] = v[t];
#endif
        }
    }
}
#endif
