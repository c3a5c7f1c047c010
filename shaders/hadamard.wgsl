// Normalized block-diagonal Walsh–Hadamard transform of every row (QuaRot's online rotation of
// a Linear's input): each row of `cols` values is cut into blocks of `block` (a power of two
// dividing cols) and each block x becomes H x / √block, H the Sylvester Hadamard matrix. The
// Linear's weight was multiplied by the same (symmetric, orthogonal) matrix when quantized, so
// (W·H)(H·x) = W·x, while the rotated x spreads an outlier channel over its whole block.
//
// One invocation per block: a copy, log2(block) in-place butterfly stages over the output,
// and the normalization, in the CPU reference's order (`kernels::hadamard::reference`).

struct Params {
    rows: u32,
    cols: u32,
    block: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;
#include grid

@compute @workgroup_size(WG)
fn rotate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let item = grid_item(wg, nwg, lid);
    // Rows are contiguous and cols is a multiple of block, so blocks are too.
    if item >= p.rows * (p.cols / p.block) {
        return;
    }
    let base = item * p.block;
    for (var i = 0u; i < p.block; i++) {
        y[base + i] = x[base + i];
    }
    for (var h = 1u; h < p.block; h *= 2u) {
        for (var i = 0u; i < p.block; i += 2u * h) {
            for (var j = i; j < i + h; j++) {
                let a = y[base + j];
                let b = y[base + j + h];
                y[base + j] = a + b;
                y[base + j + h] = a - b;
            }
        }
    }
    let norm = 1.0 / sqrt(f32(p.block));
    for (var i = 0u; i < p.block; i++) {
        y[base + i] *= norm;
    }
}
