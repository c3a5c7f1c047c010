// Quantized matrix × matrix for CPU adapters: out[m, col_off + n] = act(Σ_k x[m, k] · W[n, k]
// + bias[n]). Bindings, decode(), load_x(), load_chunk() and store() come from linear.wgsl (see
// its defines); GPUs get gemm_workgroup.wgsl instead.
//
// Register tiling: a workgroup owns TM rows of x and WG·TN weight rows; each invocation
// computes a TM × TN block of outputs. Every weight word is decoded and scaled once per
// invocation and reused across the TM rows of x; the x loads are the same for all lanes (a
// broadcast on llvmpipe, a cached load on GPUs), so no workgroup memory and no barrier.

#include linear

override TM: u32 = 8u; // ≤ 8
override TN: u32 = 2u; // ≤ 8 (vec4 accumulators were tried: they spill and run 2× slower)

@compute @workgroup_size(WG)
fn gemm_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * TM;
    let first = wg.x * WG * TN + lid;
    var rows: array<u32, 8>;
    var xrows: array<u32, 8>;
    var acc: array<f32, 64>;
    for (var r = 0u; r < TN; r++) {
        rows[r] = min(first + r * WG, p.n - 1u);
    }
    for (var i = 0u; i < TM; i++) {
        xrows[i] = min(m0 + i, p.m - 1u);
        for (var r = 0u; r < TN; r++) {
            acc[i * 8u + r] = 0.0;
        }
    }
    let full = p.k / PW;
    for (var g = 0u; g < p.groups; g++) {
        let w0 = g * p.group_words;
        let w1 = min(w0 + p.group_words, p.stride);
        var off: array<f32, 8>;
        var scale: array<f32, 8>;
        for (var r = 0u; r < TN; r++) {
            off[r] = group_offset(rows[r] * p.groups + g);
            scale[r] = group_scale(rows[r] * p.groups + g);
        }
        for (var w = w0; w < w1; w += CW) {
            var chunk: array<vec4<u32>, 8>;
            for (var r = 0u; r < TN; r++) {
                chunk[r] = load_chunk(rows[r], w);
            }
#if FLOAT_CHUNK
            var wc: array<mat4x4<f32>, 8>;
            for (var r = 0u; r < TN; r++) {
                wc[r] = decode_chunk(chunk[r]);
            }
            for (var i = 0u; i < TM; i++) {
                let xs = load_x_chunk(xrows[i], w);
                for (var r = 0u; r < TN; r++) {
                    acc[i * 8u + r] += chunk_dot(wc[r], xs);
                }
            }
#else
            for (var j = 0u; j < CW; j++) {
                var wv: array<mat4x4<f32>, 8>;
                for (var r = 0u; r < TN; r++) {
                    wv[r] = decode(chunk[r][j], off[r]) * scale[r];
                }
#if X_UNIFORM
                // Staged x is zero-padded past K, so the no-tail body serves every word and the
                // tail copy folds away (compiling both cost ~20% on llvmpipe).
                let whole = true;
#else
                let whole = w + j < full;
#endif
                if whole {
                    for (var i = 0u; i < TM; i++) {
                        let xs = load_x(xrows[i], w + j, false);
                        for (var r = 0u; r < TN; r++) {
                            acc[i * 8u + r] += mdot(wv[r], xs);
                        }
                    }
                } else {
                    for (var i = 0u; i < TM; i++) {
                        let xs = load_x(xrows[i], w + j, true);
                        for (var r = 0u; r < TN; r++) {
                            acc[i * 8u + r] += mdot(wv[r], xs);
                        }
                    }
                }
            }
#endif
        }
    }
    for (var i = 0u; i < TM; i++) {
        for (var r = 0u; r < TN; r++) {
            if m0 + i < p.m && first + r * WG < p.n {
                store(m0 + i, rows[r], acc[i * 8u + r]);
            }
        }
    }
}
