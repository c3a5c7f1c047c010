// The Swin-specific kernels around the shared GEMM and norm kernels:
// - gather_rows (GATHER): out row k of image b = x row idx[k] of image b, `dim` wide. With
//   per-image index tables built at load, one kernel does the cyclic shift + window
//   partition, its inverse, and patch merging's 2×2 concatenation. One invocation per
//   output element.
// - window_attention (none): softmax(q·kᵀ·scale + bias) · v per window and head, where `bias`
//   [nW, heads, N, N] is the relative-position bias plus the shifted-window mask, and window
//   b uses bias window b % nW (timm's `attn.view(-1, nW, heads, N, N) + mask`). One
//   invocation per (window, head, query), online softmax in one pass over the keys.

// gather: `n` output elements, `dim` row width, `tokens` output rows and `heads` input rows
// per image. attention: `n` = windows·heads·tokens,
// `tokens` N, `heads`, `dim` head_dim, `bias_windows` nW, `scale` as f32 bits.
struct Params { n: u32, tokens: u32, heads: u32, dim: u32, bias_windows: u32, scale: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;
// Largest head_dim the per-invocation accumulator holds (Swin uses 32).
const MAX_HEAD_DIM: u32 = 64u;

#include grid

#if GATHER
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let row = i / p.dim;
    let image = row / p.tokens;
    out[i] = x[(image * p.heads + idx[row % p.tokens]) * p.dim + i % p.dim];
}
#else
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn window_attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = grid_item(wg, nwg, lid);
    if item >= p.n { return; }
    let n = p.tokens;
    let i = item % n;
    let h = (item / n) % p.heads;
    let b = item / (n * p.heads);
    let width = p.heads * p.dim;
    let row0 = b * n * 3u * width;
    let q0 = row0 + i * 3u * width + h * p.dim;
    let bias0 = (((b % p.bias_windows) * p.heads + h) * n + i) * n;
    let scale = bitcast<f32>(p.scale);
    var acc: array<f32, MAX_HEAD_DIM>;
    for (var d = 0u; d < p.dim; d++) { acc[d] = 0.0; }
    var m = -3.4e38;
    var l = 0.0;
    for (var j = 0u; j < n; j++) {
        let k0 = row0 + j * 3u * width + width + h * p.dim;
        var s = 0.0;
        for (var d = 0u; d < p.dim; d++) { s += qkv[q0 + d] * qkv[k0 + d]; }
        s = s * scale + bias[bias0 + j];
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * correction + e;
        let v0 = k0 + width;
        for (var d = 0u; d < p.dim; d++) { acc[d] = acc[d] * correction + e * qkv[v0 + d]; }
        m = m_new;
    }
    let o0 = (b * n + i) * width + h * p.dim;
    for (var d = 0u; d < p.dim; d++) { out[o0 + d] = acc[d] / l; }
}
#endif
