// Roofline probes (`lowbit bench roofline`): the adapter's attainable copy bandwidth and its
// peak arithmetic rates, each from the simplest loop that can reach it. Kernels' numbers are
// reported as a share of these (`roofline_pct` in `lowbit bench kernels`).
//
// The arithmetic probes run CHAINS independent dependency chains per invocation so that a
// GPU's pipelines stay full, feed each chain's result into its next step (nothing can be
// hoisted out of the loop), take the trip count from a uniform (nothing can be folded), and
// store the sum of the chains (nothing can be dropped). Their start values come from `src`
// (zeros) so that every probe has the same bindings as `copy`.
// exclusive: F16 COOP_F32 COOP_F16
#if F16
enable f16;
#endif
#if COOP_F16
enable f16;
enable wgpu_cooperative_matrix;
#endif
#if COOP_F32
enable wgpu_cooperative_matrix;
#endif

// `n`: work items (vec4s for `copy`, invocations otherwise); `iters`: loop trips; `mul`, `add`:
// the chains' coefficients (|mul| < 1 keeps the values bounded).
struct Params { n: u32, iters: u32, mul: f32, add: f32 }

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

#include grid

#if !COOP_F32
#if !COOP_F16
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

// One 16-byte load and store per invocation: the widest access WGSL offers, coalesced across
// a GPU's subgroup.
@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    dst[i] = src[i];
}

// CPU adapters run a workgroup's invocations as SIMD lanes of one thread, so each invocation
// copies a contiguous run of CHUNK vec4s instead (`n` counts runs here).
override CHUNK: u32 = 16u;

@compute @workgroup_size(WG)
fn copy_runs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    // The same trip count in every lane (a lane-dependent bound makes llvmpipe mask the loop).
    for (var j = 0u; j < CHUNK; j++) {
        dst[i * CHUNK + j] = src[i * CHUNK + j];
    }
}

// 8 chains of vec4 FMAs: 64 FLOP per loop trip.
@compute @workgroup_size(WG)
fn fma_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let m = vec4<f32>(p.mul);
    let a = vec4<f32>(p.add);
    let s = src[0].x + f32(i & 255u) * 1e-3;
    var x0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var x1 = x0 + 0.01; var x2 = x0 + 0.02; var x3 = x0 + 0.03;
    var x4 = x0 + 0.04; var x5 = x0 + 0.05; var x6 = x0 + 0.06; var x7 = x0 + 0.07;
    for (var k = 0u; k < p.iters; k++) {
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x4 = fma(x4, m, a); x5 = fma(x5, m, a); x6 = fma(x6, m, a); x7 = fma(x7, m, a);
    }
    dst[i] = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
}

// 2 chains of vec4 FMAs (16 FLOP per trip) for CPU adapters: there each invocation's vec4 is
// 4 SIMD registers, and the 8 chains above would spill AVX2's 16.
@compute @workgroup_size(WG)
fn fma_f32_narrow(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let m = vec4<f32>(p.mul);
    let a = vec4<f32>(p.add);
    let s = src[0].x + f32(i & 255u) * 1e-3;
    var x0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var x1 = x0 + 0.01;
    for (var k = 0u; k < p.iters; k++) {
        x0 = fma(x0, m, a); x1 = fma(x1, m, a);
    }
    dst[i] = x0 + x1;
}

// 8 chains of packed int8 dot products (4 multiplies + 4 adds each, plus the accumulate):
// each chain's sum is the next step's packed operand.
@compute @workgroup_size(WG)
fn dot_i8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let b = 0x01fe03fdu ^ p.iters;
    var x0 = i32(i) + bitcast<i32>(src[0].x); var x1 = x0 + 1; var x2 = x0 + 2; var x3 = x0 + 3;
    var x4 = x0 + 4; var x5 = x0 + 5; var x6 = x0 + 6; var x7 = x0 + 7;
    for (var k = 0u; k < p.iters; k++) {
        x0 = dot4I8Packed(bitcast<u32>(x0), b) + x0; x1 = dot4I8Packed(bitcast<u32>(x1), b) + x1;
        x2 = dot4I8Packed(bitcast<u32>(x2), b) + x2; x3 = dot4I8Packed(bitcast<u32>(x3), b) + x3;
        x4 = dot4I8Packed(bitcast<u32>(x4), b) + x4; x5 = dot4I8Packed(bitcast<u32>(x5), b) + x5;
        x6 = dot4I8Packed(bitcast<u32>(x6), b) + x6; x7 = dot4I8Packed(bitcast<u32>(x7), b) + x7;
    }
    dst[i] = vec4<f32>(f32((x0 + x1) + (x2 + x3)), f32((x4 + x5) + (x6 + x7)), 0.0, 0.0);
}
#endif
#endif

#if F16
// `fma_f32` in f16: 8 chains of vec4<f16> FMAs, 64 FLOP per loop trip.
@compute @workgroup_size(WG)
fn fma_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let m = vec4<f16>(f16(p.mul));
    let a = vec4<f16>(f16(p.add));
    let s = f16(src[0].x) + f16(i & 255u) * 1e-3h;
    var x0 = vec4<f16>(s, s + 0.1h, s + 0.2h, s + 0.3h);
    var x1 = x0 + 0.01h; var x2 = x0 + 0.02h; var x3 = x0 + 0.03h;
    var x4 = x0 + 0.04h; var x5 = x0 + 0.05h; var x6 = x0 + 0.06h; var x7 = x0 + 0.07h;
    for (var k = 0u; k < p.iters; k++) {
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x4 = fma(x4, m, a); x5 = fma(x5, m, a); x6 = fma(x6, m, a); x7 = fma(x7, m, a);
    }
    dst[i] = vec4<f32>(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)));
}
#endif

// Cooperative-matrix GEMM tiles: each subgroup loads A and B (row-major tiles at the start of
// `ab`) and four accumulators C0..C3 (tiles 0..3 of `c`; distinct so no compiler merges the
// chains), runs Cj += A·B `iters` times and stores Cj + iters·A·B as tile 4 + 4g + j of `c`
// (the tests check them). Workgroups are one subgroup wide (WG = the subgroup size).
#if COOP_F32
@group(0) @binding(1) var<storage, read> ab: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG)
fn coop_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = coopLoadT<coop_mat8x8<f32, A>>(&ab[0], 8u);
    let b = coopLoadT<coop_mat8x8<f32, B>>(&ab[64], 8u);
    var acc0 = coopLoadT<coop_mat8x8<f32, C>>(&c[0], 8u);
    var acc1 = coopLoadT<coop_mat8x8<f32, C>>(&c[64], 8u);
    var acc2 = coopLoadT<coop_mat8x8<f32, C>>(&c[128], 8u);
    var acc3 = coopLoadT<coop_mat8x8<f32, C>>(&c[192], 8u);
    for (var k = 0u; k < p.iters; k++) {
        acc0 = coopMultiplyAdd(a, b, acc0); acc1 = coopMultiplyAdd(a, b, acc1);
        acc2 = coopMultiplyAdd(a, b, acc2); acc3 = coopMultiplyAdd(a, b, acc3);
    }
    let out = 4u * (1u + grid_group(wg, nwg)) * 64u;
    coopStoreT(acc0, &c[out], 8u);
    coopStoreT(acc1, &c[out + 64u], 8u);
    coopStoreT(acc2, &c[out + 128u], 8u);
    coopStoreT(acc3, &c[out + 192u], 8u);
}
#endif
#if COOP_F16
@group(0) @binding(1) var<storage, read> ab: array<f16>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG)
fn coop_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = coopLoadT<coop_mat16x16<f16, A>>(&ab[0], 16u);
    let b = coopLoadT<coop_mat16x16<f16, B>>(&ab[256], 16u);
    var acc0 = coopLoadT<coop_mat16x16<f32, C>>(&c[0], 16u);
    var acc1 = coopLoadT<coop_mat16x16<f32, C>>(&c[256], 16u);
    var acc2 = coopLoadT<coop_mat16x16<f32, C>>(&c[512], 16u);
    var acc3 = coopLoadT<coop_mat16x16<f32, C>>(&c[768], 16u);
    for (var k = 0u; k < p.iters; k++) {
        acc0 = coopMultiplyAdd(a, b, acc0); acc1 = coopMultiplyAdd(a, b, acc1);
        acc2 = coopMultiplyAdd(a, b, acc2); acc3 = coopMultiplyAdd(a, b, acc3);
    }
    let out = 4u * (1u + grid_group(wg, nwg)) * 256u;
    coopStoreT(acc0, &c[out], 16u);
    coopStoreT(acc1, &c[out + 256u], 16u);
    coopStoreT(acc2, &c[out + 512u], 16u);
    coopStoreT(acc3, &c[out + 768u], 16u);
}
#endif
