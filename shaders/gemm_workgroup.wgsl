// Quantized matrix × matrix for GPUs: out[m, col_off + n] = act(Σ_k x[m, k] · W[n, k] + bias[n])
// on the workgroup-tiled core of tile.wgsl. Bindings, decoding, x_value(), load_word() and
// store() come from linear.wgsl (see its defines; x is read through x_value, so the kernel
// runs with or without X_UNIFORM).

#include linear
#include tile

fn tile_a(m: u32, k: u32) -> f32 { return x_value(m, k); }
fn tile_word(row: u32, w: u32) -> u32 { return load_word(row, w); }
fn tile_store(m: u32, n: u32, v: f32) { store(m, n, v); }
fn tile_m() -> u32 { return p.m; }
fn tile_n() -> u32 { return p.n; }
fn tile_k() -> u32 { return p.k; }
fn tile_stride() -> u32 { return p.stride; }
fn tile_groups() -> u32 { return p.groups; }
fn tile_group_words() -> u32 { return p.group_words; }

@compute @workgroup_size(WG)
fn gemm_workgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    tile_product(wg.y * BM, wg.x * BN, lid);
}
