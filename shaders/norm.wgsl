// Row-wise normalizations: LayerNorm (timm), GroupNorm (taming's Normalize, optional fused
// swish) and softmax. One workgroup per row (a GroupNorm "row" is one (batch, group) block,
// contiguous in NCHW); lanes stride over the row and combine partial results through
// workgroup memory. With ROW_PER_LANE each invocation owns a whole row instead: no barriers,
// which is what CPU adapters want for many short rows (barriers are coroutine switches there).
//
// Defines: AFFINE (layer_norm / group_norm: weight + bias bindings), SWISH (group_norm's fused
// nonlinearity), INPLACE (softmax reading and writing one buffer), SUBGROUPS (reduce inside a
// subgroup first: fewer workgroup-memory round trips on GPUs that have it).
// exclusive: AFFINE INPLACE

struct Params {
    rows: u32,
    // Elements per row.
    n: u32,
    // GroupNorm: channels per group, pixels per channel, groups per image.
    channels_per_group: u32,
    pixels: u32,
    groups: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if INPLACE
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
fn load(i: u32) -> f32 { return out[i]; }
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
fn load(i: u32) -> f32 { return x[i]; }
#if AFFINE
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#else
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif
#endif

override WG: u32 = 64u;
#include grid
const MAX_WG: u32 = 256u;

// Two independent slots, so a second reduction never overwrites partials that slower lanes
// are still reading from the first: one barrier per reduction instead of two.
var<workgroup> partials: array<f32, 512>;
var<private> subgroup_width: u32 = 1u;

#if ROW_PER_LANE
fn combine(v: f32, lid: u32, slot: u32, is_max: bool) -> f32 {
    return v;
}
#else
// Every lane gets the combined value. The final pass over the partials is done by every lane
// (same addresses for all: broadcast loads) rather than a barrier-heavy tree.
fn combine(v: f32, lid: u32, slot: u32, is_max: bool) -> f32 {
#if SUBGROUPS
    let part = select(subgroupAdd(v), subgroupMax(v), is_max);
    // Subgroups of a 1-D workgroup are runs of consecutive invocation indices.
    let count = (WG + subgroup_width - 1u) / subgroup_width;
    if lid % subgroup_width == 0u {
        partials[slot * MAX_WG + lid / subgroup_width] = part;
    }
#else
    let count = WG;
    partials[slot * MAX_WG + lid] = v;
#endif
    workgroupBarrier();
    var acc = partials[slot * MAX_WG];
    for (var i = 1u; i < count; i++) {
        let q = partials[slot * MAX_WG + i];
        acc = select(acc + q, max(acc, q), is_max);
    }
    return acc;
}
#endif

// This invocation's row, and where it starts and strides in that row.
fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
#if ROW_PER_LANE
    return grid_item(wg, nwg, lid);
#else
    return grid_group(wg, nwg);
#endif
}
#if ROW_PER_LANE
fn first(lid: u32) -> u32 { return 0u; }
fn step_size() -> u32 { return 1u; }
#else
fn first(lid: u32) -> u32 { return lid; }
fn step_size() -> u32 { return WG; }
#endif

// Two passes (mean, then the variance of x − mean): no cancellation for rows with a large mean.
// Both sum x − pivot (the row's first element) rather than x: for a near-constant row (a
// GroupNorm group of 1000 ± 0.001) the f32 sum of x would lose the spread entirely, while
// x − pivot is exact and small. Returns (pivot, mean − pivot, 1/std); the mean itself is never
// rounded to f32 (at 1000 its rounding alone is a tenth of such a row's spread).
fn centre_rstd(base: u32, lid: u32) -> vec3<f32> {
    let pivot = load(base);
    var s = 0.0;
    for (var i = first(lid); i < p.n; i += step_size()) {
        s += load(base + i) - pivot;
    }
    let shift = combine(s, lid, 0u, false) / f32(p.n);
    var v = 0.0;
    for (var i = first(lid); i < p.n; i += step_size()) {
        let d = (load(base + i) - pivot) - shift;
        v += d * d;
    }
    let var_ = combine(v, lid, 1u, false) / f32(p.n);
    return vec3(pivot, shift, 1.0 / sqrt(var_ + p.eps));
}

// x − mean, from `centre_rstd`'s pivot and shift.
fn centred(v: f32, m: vec3<f32>) -> f32 {
    return (v - m.x) - m.y;
}

#if AFFINE
@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#if SUBGROUPS
              @builtin(subgroup_size) sg_size: u32,
#endif
              @builtin(local_invocation_index) lid: u32) {
#if SUBGROUPS
    subgroup_width = sg_size;
#endif
    let row = row_index(wg, nwg, lid);
    if row >= p.rows { return; }
    let base = row * p.n;
    let m = centre_rstd(base, lid);
    for (var i = first(lid); i < p.n; i += step_size()) {
        out[base + i] = centred(load(base + i), m) * m.z * weight[i] + bias[i];
    }
}

@compute @workgroup_size(WG)
fn group_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#if SUBGROUPS
              @builtin(subgroup_size) sg_size: u32,
#endif
              @builtin(local_invocation_index) lid: u32) {
#if SUBGROUPS
    subgroup_width = sg_size;
#endif
    let row = row_index(wg, nwg, lid);
    if row >= p.rows { return; }
    let base = row * p.n;
    let m = centre_rstd(base, lid);
    let first_channel = (row % p.groups) * p.channels_per_group;
    for (var c = 0u; c < p.channels_per_group; c++) {
        // Normalize, then one multiply-add. Folding the mean into the bias (x·a + (bias −
        // mean·a)) would save a subtraction but cancel catastrophically where the mean is large
        // against the spread (near-constant groups): ops_check's `near-constant` case.
        let a = m.z * weight[first_channel + c];
        let b = bias[first_channel + c];
        let start = base + c * p.pixels;
        for (var i = first(lid); i < p.pixels; i += step_size()) {
            var y = centred(load(start + i), m) * a + b;
#if SWISH
            y = y / (1.0 + exp(-y));
#endif
            out[start + i] = y;
        }
    }
}
#else
@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#if SUBGROUPS
           @builtin(subgroup_size) sg_size: u32,
#endif
           @builtin(local_invocation_index) lid: u32) {
#if SUBGROUPS
    subgroup_width = sg_size;
#endif
    let row = row_index(wg, nwg, lid);
    if row >= p.rows { return; }
    let base = row * p.n;
    var m = -3.0e38;
    for (var i = first(lid); i < p.n; i += step_size()) {
        m = max(m, load(base + i));
    }
    let row_max = combine(m, lid, 0u, true);
    var s = 0.0;
    for (var i = first(lid); i < p.n; i += step_size()) {
        s += exp(load(base + i) - row_max);
    }
    let inv = 1.0 / combine(s, lid, 1u, false);
    // Each lane rewrites only the elements it read, so in place is safe.
    for (var i = first(lid); i < p.n; i += step_size()) {
        out[base + i] = exp(load(base + i) - row_max) * inv;
    }
}
#endif
