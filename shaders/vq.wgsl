// VQ codebook kernels: nearest-code search, embedding gather by token id, LFQ bit decoding.
// One entry per define (PREPARE, SEARCH, REDUCE, DISTANCE, GATHER, LFQ) so each pipeline
// declares only the bindings it uses; UBO reads the codes from uniform blocks (see UBO_VEC4S).
//
// The search runs in three passes so that a codebook of any size works:
//   prepare:  rows of x (l2-normalized for the cosine metric) → zero-padded vec4 rows
//   search:   each workgroup scans one split of one codebook chunk for 4·WG vectors, writes
//             its best (score, index) per vector, score = ‖c‖² − 2·x·c
//   reduce:   per vector, the best over all splits → index
//   distance: (optional, per chunk) ‖x − c‖² of the chosen codes, recomputed directly because
//             ‖x‖² + score loses most of its digits to cancellation when x is near c
// Ties go to the lowest index: codes are scanned in increasing order, splits are reduced in
// increasing order, and only a strictly smaller score replaces the best.
// exclusive: PREPARE SEARCH REDUCE DISTANCE GATHER LFQ

override WG: u32 = 64u;

// Largest finite f32 (rounded from just below it: the browsers' WGSL compilers reject a literal
// above f32::MAX such as 3.4028235e38); a score never starts out better than this.
const BIG: f32 = 3.40282346e38;

// vec4s in one uniform block of codes (64 KiB, WebGPU's default uniform binding limit). On a
// CPU rasterizer uniform-buffer reads are far cheaper than storage reads, so there codes are
// streamed through blocks of this size, one dispatch per block (the UBO define).
const UBO_VEC4S: u32 = 4096u;

#include grid

struct SearchParams {
    n: u32,         // vectors
    d: u32,         // dimensions
    d4: u32,        // vec4s per padded row
    stride: u32,    // elements between rows of x (prepare) or of the outputs (reduce)
    offset: u32,    // first column of x (prepare) or output column (reduce)
    normalize: u32, // prepare: l2-normalize x (cosine metric)
    codes: u32,     // search: codes in this chunk
    code_base: u32, // search: global index of the chunk's first code
    per_split: u32, // search: codes one workgroup scans, a multiple of 8
    slot_base: u32, // search: first partial slot of this chunk; reduce: number of slots
}

#if PREPARE
@group(0) @binding(0) var<uniform> p: SearchParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xp: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn prepare(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = grid_item(wg, nwg, lid);
    if v >= p.n { return; }
    let base = v * p.stride + p.offset;
    var scale = 1.0;
    if p.normalize != 0u {
        var ss = 0.0;
        for (var j = 0u; j < p.d; j++) {
            let t = x[base + j];
            ss += t * t;
        }
        // As torch.nn.functional.normalize: a zero vector stays zero.
        scale = 1.0 / max(sqrt(ss), 1e-12);
    }
    for (var j4 = 0u; j4 < p.d4; j4++) {
        var q = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let j = j4 * 4u + c;
            if j < p.d {
                q[c] = x[base + j] * scale;
            }
        }
        xp[v * p.d4 + j4] = q;
    }
}
#endif

#if SEARCH
@group(0) @binding(0) var<uniform> p: SearchParams;
@group(0) @binding(1) var<storage, read> xp: array<vec4<f32>>;
#if UBO
@group(0) @binding(2) var<uniform> codes: array<vec4<f32>, UBO_VEC4S>;
#else
@group(0) @binding(2) var<storage, read> codes: array<vec4<f32>>;
#endif
@group(0) @binding(3) var<storage, read> code_norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<vec2<u32>>;

// Best (score, code) so far of each of the lane's 4 vectors.
var<private> best: array<f32, 4>;
var<private> best_i: array<u32, 4>;

// Codes c + k .. c + k + 3, clamped to `last`: a short final block re-scans the last code in
// its spare slots (same score, same index, so nothing changes).
fn block_codes(c: u32, k: u32, last: u32) -> vec4<u32> {
    return min(vec4<u32>(c + k) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
}

fn dots8(xv: vec4<f32>, c: array<vec4<f32>, 8>, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    *lo += vec4<f32>(dot(xv, c[0]), dot(xv, c[1]), dot(xv, c[2]), dot(xv, c[3]));
    *hi += vec4<f32>(dot(xv, c[4]), dot(xv, c[5]), dot(xv, c[6]), dot(xv, c[7]));
}

fn norms4(i: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(code_norms[i.x], code_norms[i.y], code_norms[i.z], code_norms[i.w]);
}

// In code order, and only a strictly smaller score wins, so ties keep the lowest index.
fn pick(dots: vec4<f32>, norms: vec4<f32>, i: vec4<u32>, r: u32) {
    let s = norms - 2.0 * dots;
    for (var q = 0u; q < 4u; q++) {
        if s[q] < best[r] { best[r] = s[q]; best_i[r] = i[q]; }
    }
}

// A register tile like a GEMM micro-kernel: each lane scores 4 vectors (v, v + WG, v + 2·WG,
// v + 3·WG) against a block of 8 codes, 4 dimensions per step, so every loaded value feeds
// several multiply-adds (loads are what a CPU rasterizer pays most for: a lane-by-lane loop).
// All lanes read the same codes at the same time (a broadcast on a GPU).
@compute @workgroup_size(WG)
fn search(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v0 = wg.x * WG * 4u + lid;
    let vs = vec4<u32>(v0, v0 + WG, v0 + 2u * WG, v0 + 3u * WG);
    // Lanes past the last vector redo the last one and skip the write (no divergent exit).
    let rows = min(vs, vec4<u32>(p.n - 1u)) * p.d4;
    let first = wg.y * p.per_split;
    let end = min(first + p.per_split, p.codes);
    let last = end - 1u;
    for (var r = 0u; r < 4u; r++) {
        best[r] = BIG;
        best_i[r] = first;
    }
    for (var c = first; c < end; c += 8u) {
        let i0 = block_codes(c, 0u, last);
        let i1 = block_codes(c, 4u, last);
        let r0 = i0 * p.d4;
        let r1 = i1 * p.d4;
        var a0 = vec4<f32>(0.0); var b0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0);
        var a2 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0);
        var a3 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
        for (var j = 0u; j < p.d4; j++) {
            let cs = array<vec4<f32>, 8>(codes[r0.x + j], codes[r0.y + j], codes[r0.z + j], codes[r0.w + j],
                                         codes[r1.x + j], codes[r1.y + j], codes[r1.z + j], codes[r1.w + j]);
            dots8(xp[rows.x + j], cs, &a0, &b0);
            dots8(xp[rows.y + j], cs, &a1, &b1);
            dots8(xp[rows.z + j], cs, &a2, &b2);
            dots8(xp[rows.w + j], cs, &a3, &b3);
        }
        // Loaded once per block for all 4 vectors: with few dimensions they would rival the scan.
        let n0 = norms4(i0);
        let n1 = norms4(i1);
        pick(a0, n0, i0, 0u); pick(b0, n1, i1, 0u);
        pick(a1, n0, i0, 1u); pick(b1, n1, i1, 1u);
        pick(a2, n0, i0, 2u); pick(b2, n1, i1, 2u);
        pick(a3, n0, i0, 3u); pick(b3, n1, i1, 3u);
    }
    for (var r = 0u; r < 4u; r++) {
        if vs[r] < p.n {
            partial[(p.slot_base + wg.y) * p.n + vs[r]] = vec2<u32>(bitcast<u32>(best[r]), best_i[r] + p.code_base);
        }
    }
}
#endif

#if REDUCE
@group(0) @binding(0) var<uniform> p: SearchParams;
@group(0) @binding(1) var<storage, read> partial: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;

@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = grid_item(wg, nwg, lid);
    if v >= p.n { return; }
    var best = partial[v];
    for (var s = 1u; s < p.slot_base; s++) {
        let cand = partial[s * p.n + v];
        if bitcast<f32>(cand.x) < bitcast<f32>(best.x) { best = cand; }
    }
    indices[v * p.stride + p.offset] = best.y;
}
#endif

#if DISTANCE
@group(0) @binding(0) var<uniform> p: SearchParams;
@group(0) @binding(1) var<storage, read> xp: array<vec4<f32>>;
#if UBO
@group(0) @binding(2) var<uniform> codes: array<vec4<f32>, UBO_VEC4S>;
#else
@group(0) @binding(2) var<storage, read> codes: array<vec4<f32>>;
#endif
@group(0) @binding(3) var<storage, read> indices: array<u32>;
@group(0) @binding(4) var<storage, read_write> distances: array<f32>;

@compute @workgroup_size(WG)
fn distance(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = grid_item(wg, nwg, lid);
    if v >= p.n { return; }
    let o = v * p.stride + p.offset;
    let c = indices[o] - p.code_base;
    // Wrapping: codes before this chunk give huge values.
    if c >= p.codes { return; }
    var sum = 0.0;
    for (var j = 0u; j < p.d4; j++) {
        let e = xp[v * p.d4 + j] - codes[c * p.d4 + j];
        sum += dot(e, e);
    }
    distances[o] = sum;
}
#endif

struct LookupParams {
    count: u32,      // token ids to look up
    d: u32,          // values per id: code dimensions (gather) or bits (lfq)
    d4: u32,         // vec4s per padded code row
    k: u32,          // ids must be below this
    start: u32,      // gather: first code of this chunk
    len: u32,        // gather: codes in this chunk
    id_stride: u32,  // ids: position of id t is t * id_stride + id_offset
    id_offset: u32,
    out_stride: u32, // output row t starts at t * out_stride + out_offset
    out_offset: u32,
    check: u32,      // this dispatch reports (and zeroes) out-of-range ids
}

#if GATHER
@group(0) @binding(0) var<uniform> p: LookupParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if UBO
@group(0) @binding(2) var<uniform> codes: array<vec4<f32>, UBO_VEC4S>;
#else
@group(0) @binding(2) var<storage, read> codes: array<vec4<f32>>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> first_bad: array<atomic<u32>>;

// One invocation per output value. i32 ids arrive as their bits: a negative id reads as a
// huge u32, so the one range check `id >= k` catches both.
@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.count * p.d { return; }
    let t = i / p.d;
    let j = i % p.d;
    let pos = t * p.id_stride + p.id_offset;
    let id = ids[pos];
    let o = t * p.out_stride + p.out_offset + j;
    if id >= p.k {
        if p.check != 0u {
            out[o] = 0.0;
            if j == 0u { atomicMin(&first_bad[0], pos); }
        }
        return;
    }
    if id < p.start || id - p.start >= p.len { return; }
    out[o] = codes[(id - p.start) * p.d4 + j / 4u][j % 4u];
}
#endif

#if LFQ
@group(0) @binding(0) var<uniform> p: LookupParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> first_bad: array<atomic<u32>>;

// Bit b (LSB first) of each group's id → +1 if set, −1 if not.
@compute @workgroup_size(WG)
fn lfq_decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.count * p.d { return; }
    let t = i / p.d;
    let b = i % p.d;
    let id = ids[t];
    if id >= p.k {
        out[i] = 0.0;
        if b == 0u { atomicMin(&first_bad[0], t); }
        return;
    }
    out[i] = select(-1.0, 1.0, ((id >> b) & 1u) != 0u);
}
#endif
