// 2-D convolution as an implicit GEMM: out[co, pixel] = bias[co] + Σ_k W[co, k] · x[k, pixel]
// where k = (ci, ky, kx) in PyTorch's weight order and x[k, pixel] is read straight from the
// NCHW input (zero outside the padding), so no im2col buffer exists.
//
// Register tile: each invocation computes TCO output channels × 4 consecutive output pixels
// of one row (one vec4 accumulator per channel). All lanes of a workgroup share the same
// channels, so weight words are the same for every lane (broadcast loads, decoded once per
// word) and lanes differ only in the pixels they read.
//
// Weights: any format of shaders/dequant.wgsl (FMT_* define; SCALED for formats with scales).
// Scale groups are whole words (group sizes are multiples of the elements per word, and rows
// start on a word), so scale and zero point are read once per word.
//
// Defines: TOKENS writes [B, Ho·Wo, Cout] (timm's PatchEmbed flatten + transpose) instead of
// NCHW; WIDE_TILE uses 8 channels per invocation instead of 4.

#include dequant

struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    stride: u32, pad: u32, k: u32, row_words: u32,
    groups: u32, group_size: u32,
    // This dispatch covers weight rows [co_base, co_base + co_count) (weights split over bindings).
    co_base: u32, co_count: u32,
    // Pixel blocks of 4 along a row, per row, and in all (batch · Ho · blocks_x).
    blocks_x: u32, blocks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w_data: array<u32>;
#if SCALED
@group(0) @binding(5) var<storage, read> w_scales: array<u32>;
#else
// dequant's w_scale names this array; unscaled formats never call it.
var<private> w_scales: array<u32, 1>;
#endif
#if FMT_Q4Z
@group(0) @binding(6) var<storage, read> w_zeros: array<u32>;
#endif

override WG: u32 = 64u;
#if WIDE_TILE
const TCO: u32 = 8u;
#else
const TCO: u32 = 4u;
#endif

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wg.x * WG + lid;
    if block >= p.blocks { return; }
    let bx = block % p.blocks_x;
    let oy = (block / p.blocks_x) % p.ho;
    let b = block / (p.blocks_x * p.ho);
    let ox0 = bx * 4u;

    // Rows of this binding's weights; a partial last tile repeats its last row (not stored).
    let row0 = wg.y * TCO;
    var rows: array<u32, TCO>;
    for (var c = 0u; c < TCO; c++) {
        rows[c] = min(row0 + c, p.co_count - 1u);
    }

    var acc: array<vec4<f32>, TCO>;
    let plane = p.h * p.w;
    var chan_off = b * p.cin * plane;
    var ky = 0u;
    var kx = 0u;
    let iy0 = i32(oy * p.stride) - i32(p.pad);
    let ix0 = i32(ox0 * p.stride) - i32(p.pad);
    let pix_step = vec4<i32>(0, 1, 2, 3) * i32(p.stride);

    for (var wi = 0u; wi < p.row_words; wi++) {
        var words: array<u32, TCO>;
        var scale: array<f32, TCO>;
        var zero: array<f32, TCO>;
        let k0 = wi * W_PER_WORD;
        for (var c = 0u; c < TCO; c++) {
            words[c] = w_data[rows[c] * p.row_words + wi];
#if SCALED
            let g = rows[c] * p.groups + k0 / p.group_size;
            scale[c] = w_scale(g);
            zero[c] = w_zero(g);
#else
            scale[c] = 1.0;
            zero[c] = 0.0;
#endif
        }
        let nk = min(W_PER_WORD, p.k - k0);
        for (var j = 0u; j < nk; j++) {
            // The 4 input pixels under tap (ky, kx), zero where they fall in the padding.
            let iy = iy0 + i32(ky);
            let ix = vec4<i32>(ix0 + i32(kx)) + pix_step;
            let ok = (ix >= vec4(0)) & (ix < vec4(i32(p.w))) & vec4(iy >= 0 && iy < i32(p.h));
            let row_off = chan_off + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w;
            let cx = vec4<u32>(clamp(ix, vec4(0), vec4(i32(p.w) - 1)));
            let xv = select(vec4(0.0), vec4(x[row_off + cx.x], x[row_off + cx.y], x[row_off + cx.z], x[row_off + cx.w]), ok);
            for (var c = 0u; c < TCO; c++) {
                acc[c] = fma(vec4(w_decode(words[c], j, zero[c]) * scale[c]), xv, acc[c]);
            }
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

    for (var c = 0u; c < TCO; c++) {
        if row0 + c >= p.co_count { break; }
        let co = p.co_base + row0 + c;
        let v = acc[c] + vec4(bias[co]);
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
