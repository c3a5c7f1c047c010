// 2-D convolution for GPUs as an implicit GEMM on the workgroup-tiled core (tile.wgsl):
// C[pixel, co] = Σ_k x[k, pixel] · W[co, k] + bias[co], with k = (ci, ky, kx) in PyTorch's
// weight order and pixel = (b, oy, ox). A is read straight from the NCHW input while it is
// staged (zero in the padding), so no im2col buffer exists; W is row-major packed weights of
// any format (FMT_* define; SCALED / ZERO_POINTS for its optional bindings).
//
// Defines: TOKENS writes [B, Ho·Wo, Cout] (timm's PatchEmbed flatten + transpose) instead of
// NCHW.

#include decode

// As struct Params in conv.wgsl (one Rust struct serves both); blocks_x and blocks are unused.
struct Params {
    cin: u32, h: u32, w: u32, cout: u32,
    ho: u32, wo: u32, kh: u32, kw: u32,
    stride: u32, pad_top: u32, pad_left: u32, k: u32, row_words: u32,
    groups: u32, group_size: u32,
    co_base: u32, co_count: u32,
    blocks_x: u32, blocks: u32,
    // Output pixels in all: batch · Ho · Wo.
    pixels: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w_data: array<u32>;
#if SCALED
@group(0) @binding(5) var<storage, read> w_scales: array<u32>;
#endif
#if ZERO_POINTS
@group(0) @binding(6) var<storage, read> w_zeros: array<u32>;
#endif

override WG: u32 = 256u;

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
