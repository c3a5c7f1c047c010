// Small data-movement kernels that stitch the ViT forward pass together around the GEMM,
// attention and norm kernels. One invocation per output element (per row for QK_NORM), 2-D
// grid past 65535 workgroups. Each entry has its own bindings, chosen by a define (none:
// embed_tokens, LAYER_SCALE: layer_scale_add, TAKE_TOKEN: take_token, POOL: pool_tokens,
// QK_NORM: qk_norm, HALF_SUM: half_sum), nested so any flag combination still declares
// exactly one consistent set.

// `n`: output elements (rows for qk_norm); `tokens`: tokens per image (heads for qk_norm);
// `dim`: embedding width (head_dim for qk_norm); `prefix`: prefix tokens (embed, pool) or the
// token taken (take); `mode`: pool kind (0 avg, 1 max, 2 avgmax); `eps`: qk_norm's eps bits.
struct Params { n: u32, tokens: u32, dim: u32, prefix: u32, mode: u32, eps: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

#include grid

#if LAYER_SCALE
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> residual: array<f32>;

// residual += gamma ⊙ x (timm's LayerScale fused into the residual add).
@compute @workgroup_size(WG)
fn layer_scale_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    residual[i] = residual[i] + gamma[i % p.dim] * x[i];
}
#else
#if TAKE_TOKEN
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// out[b, d] = x[b, prefix, d]: the class (or distillation) token the head reads.
@compute @workgroup_size(WG)
fn take_token(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let b = i / p.dim;
    let d = i % p.dim;
    out[i] = x[(b * p.tokens + p.prefix) * p.dim + d];
}
#else
#if POOL
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// out[b, d] = avg / max / (avg + max) / 2 of x[b, t, d] over tokens t ≥ prefix (timm's
// `global_pool_nlc`; prefix is 0 with `pool_include_prefix`).
@compute @workgroup_size(WG)
fn pool_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let b = i / p.dim;
    let d = i % p.dim;
    var sum = 0.0;
    var top = -3.4028235e38;
    for (var t = p.prefix; t < p.tokens; t++) {
        let v = x[(b * p.tokens + t) * p.dim + d];
        sum += v;
        top = max(top, v);
    }
    let mean = sum / f32(p.tokens - p.prefix);
    var v = mean;
    if p.mode == 1u {
        v = top;
    } else if p.mode == 2u {
        v = 0.5 * (top + mean);
    }
    out[i] = v;
}
#else
#if QK_NORM
@group(0) @binding(1) var<storage, read> affine: array<f32>;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;

// LayerNorm over head_dim of every query and key head of qkv [rows, 3, heads, head_dim], in
// place (timm's `q_norm` / `k_norm`). `affine` is [q weight, q bias, k weight, k bias].
// One invocation per (row, q or k, head).
@compute @workgroup_size(WG)
fn qk_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let hd = p.dim;
    let heads = p.tokens;
    let h = i % heads;
    let s = (i / heads) % 2u;
    let row = i / (2u * heads);
    let base = (row * 3u + s) * heads * hd + h * hd;
    var sum = 0.0;
    for (var j = 0u; j < hd; j++) {
        sum += qkv[base + j];
    }
    let mean = sum / f32(hd);
    var var_sum = 0.0;
    for (var j = 0u; j < hd; j++) {
        let c = qkv[base + j] - mean;
        var_sum += c * c;
    }
    let inv = inverseSqrt(var_sum / f32(hd) + bitcast<f32>(p.eps));
    let w = s * 2u * hd;
    for (var j = 0u; j < hd; j++) {
        qkv[base + j] = (qkv[base + j] - mean) * inv * affine[w + j] + affine[w + hd + j];
    }
}
#else
#if HALF_SUM
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;

// acc = (acc + x) / 2: the distilled model's two heads averaged at inference.
@compute @workgroup_size(WG)
fn half_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    acc[i] = (acc[i] + x[i]) / 2.0;
}
#else
@group(0) @binding(1) var<storage, read> patches: array<f32>;
@group(0) @binding(2) var<storage, read> prefix_tokens: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// out[b, t, d] = (t < prefix ? prefix_tokens[t, d] : patches[b, t - prefix, d]) + pos[t, d]
// (pos rows of prefix tokens are zero for `no_embed_class`).
@compute @workgroup_size(WG)
fn embed_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let d = i % p.dim;
    let row = i / p.dim;
    let t = row % p.tokens;
    let b = row / p.tokens;
    var v: f32;
    if t < p.prefix {
        v = prefix_tokens[t * p.dim + d];
    } else {
        v = patches[(b * (p.tokens - p.prefix) + t - p.prefix) * p.dim + d];
    }
    out[i] = v + pos[t * p.dim + d];
}
#endif
#endif
#endif
#endif
#endif
