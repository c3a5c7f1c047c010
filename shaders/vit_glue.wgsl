// Small data-movement kernels that stitch the ViT forward pass together around the GEMM,
// attention and norm kernels. One invocation per output element, 2-D grid past 65535
// workgroups. Each entry has its own bindings, chosen by a define (none: embed_tokens,
// LAYER_SCALE: layer_scale_add, TAKE_TOKEN: take_token), nested so any flag combination
// still declares exactly one consistent set.

// `n`: output elements; `tokens`: tokens per image of the output (embed) or input (take);
// `dim`: embedding width.
struct Params { n: u32, tokens: u32, dim: u32, pad: u32 }

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

// out[b, d] = x[b, 0, d]: the class token, which timm's `global_pool='token'` classifies.
@compute @workgroup_size(WG)
fn take_token(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let b = i / p.dim;
    let d = i % p.dim;
    out[i] = x[b * p.tokens * p.dim + d];
}
#else
@group(0) @binding(1) var<storage, read> patches: array<f32>;
@group(0) @binding(2) var<storage, read> cls: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// out[b, t, d] = (t == 0 ? cls[d] : patches[b, t - 1, d]) + pos[t, d].
@compute @workgroup_size(WG)
fn embed_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let d = i % p.dim;
    let row = i / p.dim;
    let t = row % p.tokens;
    let b = row / p.tokens;
    var v: f32;
    if t == 0u {
        v = cls[d];
    } else {
        v = patches[(b * (p.tokens - 1u) + t - 1u) * p.dim + d];
    }
    out[i] = v + pos[t * p.dim + d];
}
#endif
#endif
