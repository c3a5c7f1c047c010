// Element-wise ops over flat f32 tensors: residual add, GELU (erf form), swish, and the
// nearest-neighbour 2× upsample (one invocation per output element).
// One invocation per element; the grid is 2-D when a tensor needs more than 65535 workgroups.

// `h`, `w`: input height and width (upsample only).
struct Params { n: u32, h: u32, w: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

// Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, plenty for f32 activations.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if i >= p.n { return; }
    let x = a[i];
    out[i] = 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}

@compute @workgroup_size(WG)
fn swish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if i >= p.n { return; }
    let x = a[i];
    out[i] = x / (1.0 + exp(-x));
}

// `out += a` (residual add, in place on the residual stream).
@compute @workgroup_size(WG)
fn add_inplace(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if i >= p.n { return; }
    out[i] = out[i] + a[i];
}

// out[bc, y, x] = a[bc, y / 2, x / 2] for NCHW `a`; `n` counts output elements.
@compute @workgroup_size(WG)
fn upsample_nearest2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if i >= p.n { return; }
    let w2 = 2u * p.w;
    let ox = i % w2;
    let row = i / w2; // (bc, oy) flattened
    let oy = row % (2u * p.h);
    let bc = row / (2u * p.h);
    out[i] = a[(bc * p.h + oy / 2u) * p.w + ox / 2u];
}
