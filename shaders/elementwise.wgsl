// Element-wise ops over flat f32 tensors: residual add, GELU (erf form), QuickGELU, tanh GELU,
// swish, and the
// nearest-neighbour 2× upsample.
// One invocation per element; the grid is 2-D when a tensor needs more than 65535 workgroups.

// `w`: input width (upsample only).
struct Params { n: u32, w: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

#include grid

#include common

@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let x = a[i];
    out[i] = gelu_erf(x);
}

@compute @workgroup_size(WG)
fn swish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let x = a[i];
    out[i] = x / (1.0 + exp(-x));
}

@compute @workgroup_size(WG)
fn quick_gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    out[i] = quick_gelu_of(a[i]);
}

@compute @workgroup_size(WG)
fn gelu_tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    out[i] = gelu_tanh_of(a[i]);
}

// `out += a` (residual add, in place on the residual stream).
@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    out[i] = out[i] + a[i];
}

// out[bc, y, x] = a[bc, y / 2, x / 2] for NCHW `a`. One invocation per input element writes
// its 2×2 block: one division per four outputs (vector integer division is slow on CPUs).
// `n` counts input elements.
@compute @workgroup_size(WG)
fn upsample_nearest2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    // Input row r = (bc, y) becomes output rows 2r and 2r + 1, each 2w wide.
    let r = i / p.w;
    let o = r * 4u * p.w + 2u * (i - r * p.w);
    let v = a[i];
    out[o] = v;
    out[o + 1u] = v;
    out[o + 2u * p.w] = v;
    out[o + 2u * p.w + 1u] = v;
}
