// Quantized matrix × vector (a few rows of x): out[m, col_off + n] = act(x[m] · W[n] + bias[n]).
// Two shapes: gemv_rows for CPU adapters, gemv_coop for GPUs (with VEC4: gemv_wide). Bindings, decoding and loads
// come from linear.wgsl (see its defines); SUBGROUPS switches gemv_coop's reduction to
// subgroupAdd (one team = one subgroup).

#include linear
#include grid

// ---- GEMV, CPU adapters: each invocation owns ROWS rows (lid, lid + WG, ...), so the x
// loads are the same for every lane (cheap on llvmpipe) and reused across the ROWS rows; no
// barriers. The group's dot product is summed unscaled and scaled once per group.

override ROWS: u32 = 4u; // ≤ 16

// One word (`j`, a literal at each call) of every row's chunk. Spelled out word by word in
// rows_chunk: as a loop over j, the chunk arrays were indexed dynamically and the kernel ran
// 5-20% slower on llvmpipe (NIR did not unroll the nested loops).
fn rows_word(s: ptr<function, array<vec4<f32>, 16>>, chunk: ptr<function, array<vec4<u32>, 16>>,
             off: ptr<function, array<f32, 16>>, xs: mat4x4<f32>, j: u32) {
    for (var r = 0u; r < ROWS; r++) {
        (*s)[r] += mmul(decode((*chunk)[r][j], (*off)[r]), xs);
    }
}

// The CW words at word `w`; `tail` (a literal) masks x past K.
fn rows_chunk(s: ptr<function, array<vec4<f32>, 16>>, chunk: ptr<function, array<vec4<u32>, 16>>,
              off: ptr<function, array<f32, 16>>, m: u32, w: u32, tail: bool) {
    rows_word(s, chunk, off, load_x(m, w, tail), 0u);
    if CW == 4u {
        rows_word(s, chunk, off, load_x(m, w + 1u, tail), 1u);
        rows_word(s, chunk, off, load_x(m, w + 2u, tail), 2u);
        rows_word(s, chunk, off, load_x(m, w + 3u, tail), 3u);
    }
}

@compute @workgroup_size(WG)
fn gemv_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = wg.y;
    let first = wg.x * WG * ROWS + lid;
    var rows: array<u32, 16>;
    var acc: array<f32, 16>;
    for (var r = 0u; r < ROWS; r++) {
        rows[r] = min(first + r * WG, p.n - 1u);
        acc[r] = 0.0;
    }
    // Words whose elements are all < K: no masking needed.
    let full = p.k / PW;
    for (var g = 0u; g < p.groups; g++) {
        let w0 = g * p.group_words;
        let w1 = min(w0 + p.group_words, p.stride);
        var off: array<f32, 16>;
        var s: array<vec4<f32>, 16>;
        for (var r = 0u; r < ROWS; r++) {
            off[r] = group_offset(rows[r] * p.groups + g);
            s[r] = vec4<f32>(0.0);
        }
        for (var w = w0; w < w1; w += CW) {
            var chunk: array<vec4<u32>, 16>;
            for (var r = 0u; r < ROWS; r++) {
                chunk[r] = load_chunk(rows[r], w);
            }
#if FLOAT_CHUNK
            let xs = load_x_chunk(m, w);
            for (var r = 0u; r < ROWS; r++) {
                s[r] += chunk_mul(decode_chunk(chunk[r]), xs);
            }
#else
#if X_UNIFORM
            // Staged x is zero-padded past K, so no tail: one copy of the loop body (two
            // identical copies cost 10-15% on llvmpipe).
            rows_chunk(&s, &chunk, &off, m, w, false);
#else
            if w + CW <= full {
                rows_chunk(&s, &chunk, &off, m, w, false);
            } else {
                rows_chunk(&s, &chunk, &off, m, w, true);
            }
#endif
#endif
        }
        for (var r = 0u; r < ROWS; r++) {
            acc[r] += dot(s[r], vec4<f32>(group_scale(rows[r] * p.groups + g)));
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if first + r * WG < p.n {
            store(m, rows[r], acc[r]);
        }
    }
}

// ---- GEMV, discrete GPUs: teams of TEAM lanes, one weight row per team and WG/TEAM rows per
// workgroup. The workgroup stages XT values of x in workgroup memory (x is read once per word
// per lane otherwise: 8 loads per 4-byte Q4 word, which made global x traffic, not weights, the
// bottleneck on an H100), then each team's lanes walk their row's words side by side
// (coalesced loads) and reduce: with SUBGROUPS the team is one subgroup (the Rust side sets it
// only when the subgroup size is fixed and equal to TEAM) and subgroupAdd needs no barrier;
// otherwise a shared-memory tree per team.

#if !X_UNIFORM
override TEAM: u32 = 32u;
const XT: u32 = 2048u;
var<workgroup> xs: array<vec4<f32>, XT / 4u>;
var<workgroup> partial: array<f32, WG>;

// The PW staged x values of tile word `lw`, laid out like decode()'s output.
fn xs_word(lw: u32) -> mat4x4<f32> {
    var v = mat4x4<f32>();
    let b = lw * PW;
    if PW == 1u {
        v[0].x = xs[b >> 2u][b & 3u];
    } else if PW == 2u {
        let q = xs[b >> 2u];
        v[0] = select(vec4<f32>(q.x, q.y, 0.0, 0.0), vec4<f32>(q.z, q.w, 0.0, 0.0), (b & 2u) != 0u);
    } else {
        for (var c = 0u; c < NC; c++) {
            v[c] = xs[(b >> 2u) + c];
        }
    }
    return v;
}

@compute @workgroup_size(WG)
fn gemv_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
             @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
#if SUBGROUPS
    let team = sg_id;
    let lane = sg_lane;
#else
    let team = lid / TEAM;
    let lane = lid % TEAM;
#endif
    let row_id = grid_group(wg, nwg) * (WG / TEAM) + team;
    let m = wg.z;
    let row = min(row_id, p.n - 1u);
    let xbase = (p.m_off + m) * p.k;
    let tile_words = XT / PW;
    var acc = 0.0;
    for (var t0 = 0u; t0 < p.stride; t0 += tile_words) {
        workgroupBarrier();
        for (var i = lid; i < XT / 4u; i += WG) {
            let k = t0 * PW + 4u * i;
            let ok = vec4<u32>(k) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k);
            let last = xbase + p.k - 1u;
            let v = vec4<f32>(x[min(xbase + k, last)], x[min(xbase + k + 1u, last)],
                              x[min(xbase + k + 2u, last)], x[min(xbase + k + 3u, last)]);
            xs[i] = select(vec4<f32>(0.0), v, ok);
        }
        workgroupBarrier();
        let end = min(t0 + tile_words, p.stride);
#if VEC4
        // gemv_wide: 16-byte loads, a lane takes 4 consecutive words (one scale group: groups
        // are whole vec4s under VEC4) per step. The four words are spelled out: indexing the
        // vec4 in a loop spilled to local memory on NVIDIA.
        for (var w = t0 + 4u * lane; w < end; w += 4u * TEAM) {
            let g = row * p.groups + w / p.group_words;
            let c = load_chunk(row, w);
            let off = group_offset(g);
            let lw = w - t0;
            let s = mdot(decode(c.x, off), xs_word(lw)) + mdot(decode(c.y, off), xs_word(lw + 1u))
                  + mdot(decode(c.z, off), xs_word(lw + 2u)) + mdot(decode(c.w, off), xs_word(lw + 3u));
            acc += s * group_scale(g);
        }
#else
        for (var w = t0 + lane; w < end; w += TEAM) {
            let g = row * p.groups + w / p.group_words;
            let word = load_chunk(row, w).x;
            acc += mdot(decode(word, group_offset(g)), xs_word(w - t0)) * group_scale(g);
        }
#endif
    }
#if SUBGROUPS
    let total = subgroupAdd(acc);
    if lane == 0u && row_id < p.n {
        store(m, row, total);
    }
#else
    partial[lid] = acc;
    workgroupBarrier();
    for (var half = TEAM / 2u; half > 0u; half >>= 1u) {
        if lane < half {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if lane == 0u && row_id < p.n {
        store(m, row, partial[lid]);
    }
#endif
}
#endif
