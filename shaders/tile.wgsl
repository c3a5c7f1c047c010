// The workgroup-tiled matrix-product core for GPUs (`#include tile`): C[m, n] = Σ_k A[m, k] ·
// W[n, k] over packed weights W. A workgroup owns a BM × BN tile of C and walks K in steps of
// BK: it stages BM × BK values of A and BN × BK weights (each packed word decoded and scaled
// once, while it is staged: weights are never expanded in global memory), then every
// invocation accumulates a TM × TN register block from the staged tiles. Global loads are
// coalesced (consecutive lanes read consecutive k of a row), each staged value is reused
// BN/TN or BM/TM times from workgroup memory, and the inner loop reads vec4s along n.
//
// The includer says where the operands live by defining:
//   tile_a(m, k) -> f32          A[m, k], called with m < tile_m() and k < tile_k() only
//   tile_word(row, w) -> u32     word w of packed weight row `row`
//   tile_store(m, n, v)          the finished C[m, n]
//   tile_m(), tile_n(), tile_k() -> u32, and the weight layout tile_stride() (words per row),
//   tile_groups() (scale groups per row), tile_group_words() (words per group)
// and includes decode.wgsl (with its w_scales / w_zeros bindings) and declares `override WG`,
// which the Rust side sets to (BM / TM) · (BN / TN).

override BM: u32 = 64u; // rows of A per workgroup
override BN: u32 = 64u; // weight rows (columns of C) per workgroup
override BK: u32 = 32u; // k per stage: a multiple of PW (whole words) and of 4
override TM: u32 = 4u;  // rows per invocation, ≤ 8
override TN: u32 = 4u;  // columns per invocation: 4 or 8

// k-major, so a step of the inner loop reads a vec4 of n (and TM scalars of m, the same
// address across the lanes of one row of the invocation grid).
var<workgroup> tile_as: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> tile_ws: array<vec4<f32>, BK * BN / 4u>;

fn staged_a(i: u32) -> f32 {
    return tile_as[i >> 2u][i & 3u];
}

// The tile at (m0, n0) of C, computed by the workgroup's invocation `lid`.
fn tile_product(m0: u32, n0: u32, lid: u32) {
    let tx = lid % (BN / TN);
    let ty = lid / (BN / TN);
    let m_end = tile_m();
    let n_end = tile_n();
    let k_end = tile_k();
    let stride = tile_stride();
    let groups = tile_groups();
    let group_words = tile_group_words();
    // acc[2i + h]: row m0 + ty·TM + i, columns n0 + tx·TN + 4h .. + 4.
    var acc: array<vec4<f32>, 16>;
    let stage_words = BK / PW;
    for (var k0 = 0u; k0 < k_end; k0 += BK) {
        // A: zero past M and past K (padding words decode to −zero, so they need A = 0).
        for (var i = lid; i < BM * BK; i += WG) {
            let mm = i / BK;
            let kk = i % BK;
            var v = 0.0;
            if m0 + mm < m_end && k0 + kk < k_end {
                v = tile_a(m0 + mm, k0 + kk);
            }
            let e = kk * BM + mm;
            tile_as[e >> 2u][e & 3u] = v;
        }
        // Weights: one word per lane per step, decoded and scaled; zero past N and the row.
        for (var i = lid; i < BN * stage_words; i += WG) {
            let r = i / stage_words;
            let w = k0 / PW + i % stage_words;
            var v = mat4x4<f32>();
            if n0 + r < n_end && w < stride {
                let g = (n0 + r) * groups + w / group_words;
                v = decode(tile_word(n0 + r, w), group_offset(g)) * group_scale(g);
            }
            for (var e = 0u; e < PW; e++) {
                let idx = ((i % stage_words) * PW + e) * BN + r;
                tile_ws[idx >> 2u][idx & 3u] = v[e >> 2u][e & 3u];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b0 = tile_ws[(kk * BN + tx * TN) / 4u];
            var b1 = vec4<f32>();
            if TN == 8u {
                b1 = tile_ws[(kk * BN + tx * TN) / 4u + 1u];
            }
            for (var i = 0u; i < TM; i++) {
                let a = vec4<f32>(staged_a(kk * BM + ty * TM + i));
                acc[2u * i] = fma(a, b0, acc[2u * i]);
                if TN == 8u {
                    acc[2u * i + 1u] = fma(a, b1, acc[2u * i + 1u]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tx * TN + j;
            if m < m_end && n < n_end {
                tile_store(m, n, acc[2u * i + j / 4u][j % 4u]);
            }
        }
    }
}
