// W8A8: per-token dynamic int8 quantization of activations, and the int8 × int8 GEMM with i32
// accumulation. Codes are packed four per u32, LSB first, rows padded with zero codes to whole
// words: the same layout as the Q8 weight rows, so both operands stream word by word.
//
// Variants (defines): QUANTIZE selects the quantization entry and its bindings, otherwise the GEMMs
// (`gemm` for CPU adapters and GEMV, `gemm_workgroup` for GPUs); PACKED_DOT uses dot4I8Packed,
// else bytes are sign-extended and multiplied in i32; GEMV computes one activation row per tile
// instead of four; GELU fuses the activation.

#include common

struct Params {
    rows: u32,        // M: activation rows (tokens)
    cols: u32,        // quantize: K; GEMM: output channels in this weight part
    row_words: u32,   // ceil(K / 4)
    out_stride: u32,  // GEMM: output channels of the whole layer (N)
    col_offset: u32,  // GEMM: first output channel of this weight part
    w_vecs: u32,      // GEMM: vec4 words per (padded) weight row
}

@group(0) @binding(0) var<uniform> p: Params;

#if QUANTIZE
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

// Lanes per row: 8 (one SIMD batch) on CPU adapters, more on GPUs.
override WG: u32 = 64u;
#include grid
var<workgroup> partial_max: array<f32, WG>;

// One workgroup per row. The max needs a single barrier: every lane then reads all partial
// maxima itself (same addresses for all lanes, cheap everywhere) instead of a barrier-per-level
// tree, which matters on CPU adapters where a barrier is a coroutine switch.
@compute @workgroup_size(WG)
fn quantize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = grid_group(wg, nwg);
    // No early return: the barrier below must be reached by the whole workgroup.
    let live = row < p.rows;
    let r = min(row, p.rows - 1u);
    let base = r * p.cols;

    var amax = 0.0;
    for (var w = lid; w < p.row_words; w += WG) {
        for (var j = 0u; j < 4u; j++) {
            let k = 4u * w + j;
            if k < p.cols {
                amax = max(amax, abs(x[base + k]));
            }
        }
    }
    partial_max[lid] = amax;
    workgroupBarrier();
    for (var i = 0u; i < WG; i++) {
        amax = max(amax, partial_max[i]);
    }

    // Exactly the CPU reference's arithmetic (f32 divide, round half to even), so codes match bit for bit.
    let scale = amax / 127.0;
    for (var w = lid; w < p.row_words; w += WG) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let k = 4u * w + j;
            if k < p.cols && scale > 0.0 {
                let q = i32(clamp(round(x[base + k] / scale), -127.0, 127.0));
                word |= (bitcast<u32>(q) & 0xffu) << (8u * j);
            }
        }
        if live {
            codes[r * p.row_words + w] = word;
        }
    }
    if live && lid == 0u {
        scales[r] = scale;
    }
}
#else
@group(0) @binding(1) var<storage, read> x_codes: array<u32>;
@group(0) @binding(2) var<storage, read> x_scales: array<f32>;
// Weight rows padded with zero codes to whole vec4s (16 codes), `w_vecs` per row: one load
// fetches 16 codes. The activation words read against that padding may belong to the next row
// (or be clamped past the end); they are multiplied by zero.
@group(0) @binding(3) var<storage, read> w_data: array<vec4<u32>>;
// Per output channel of this part: (weight scale, bias).
@group(0) @binding(4) var<storage, read> w_rows: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;
// Activation rows one `gemm` workgroup covers (a multiple of TM). On CPU adapters a large value
// keeps the workgroup's weight rows in cache while all those activation rows reuse them; GPUs
// want more workgroups instead.
override ROWS_PER_WG: u32 = 32u;

#if GEMV
const TM: u32 = 1u;
#else
const TM: u32 = 4u;
#endif

// 16 codes in the form the dot product wants them: as stored, or sign-extended once so that
// an operand reused against several others is unpacked only once.
#if PACKED_DOT
alias Operand = vec4<u32>;
fn operand(v: vec4<u32>) -> Operand {
    return v;
}
fn dot16(a: Operand, b: vec4<u32>) -> i32 {
    return dot4I8Packed(a.x, b.x) + dot4I8Packed(a.y, b.y) + dot4I8Packed(a.z, b.z) + dot4I8Packed(a.w, b.w);
}
#else
struct Operand { x: vec4<i32>, y: vec4<i32>, z: vec4<i32>, w: vec4<i32> }
fn operand(v: vec4<u32>) -> Operand {
    return Operand(unpack_i8(v.x), unpack_i8(v.y), unpack_i8(v.z), unpack_i8(v.w));
}
fn dot16(a: Operand, b: vec4<u32>) -> i32 {
    return dot(a.x, unpack_i8(b.x)) + dot(a.y, unpack_i8(b.y)) + dot(a.z, unpack_i8(b.z)) + dot(a.w, unpack_i8(b.w));
}
#endif

// Four consecutive activation words (16 codes) starting at word `i`.
fn x_vec(i: u32) -> vec4<u32> {
    return vec4<u32>(x_codes[i], x_codes[i + 1u], x_codes[i + 2u], x_codes[i + 3u]);
}

// Rescale the integer sum, add the bias, apply the fused activation, store.
fn store(m: u32, c: u32, acc: i32) {
    let sb = w_rows[c];
    var v = f32(acc) * x_scales[m] * sb.x + sb.y;
#if GELU
    v = gelu_erf(v);
#endif
    out[m * p.out_stride + p.col_offset + c] = v;
}

// Lanes take neighbouring output channels (channel = col0 + j * WG, j < 4) and share TM
// activation rows, so activation loads are the same address for every lane (a broadcast) and
// only weight loads differ per lane. Used for GEMV and on GPUs.
@compute @workgroup_size(WG)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col0 = wg.x * WG * 4u + lid;
    let cols = col0 + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
    // Past-the-end channels read the last valid row and are not stored.
    let w_base = min(cols, vec4<u32>(p.cols - 1u)) * p.w_vecs;

    let row_end = min(p.rows, (wg.y + 1u) * ROWS_PER_WG);
    for (var m0 = wg.y * ROWS_PER_WG; m0 < row_end; m0 += TM) {
        var acc: array<vec4<i32>, TM>;
        var x_base: array<u32, TM>;
        for (var i = 0u; i < TM; i++) {
            acc[i] = vec4<i32>(0);
            x_base[i] = min(m0 + i, p.rows - 1u) * p.row_words;
        }
        for (var kv = 0u; kv < p.w_vecs; kv++) {
            var xs: array<vec4<u32>, TM>;
            for (var i = 0u; i < TM; i++) {
                xs[i] = x_vec(x_base[i] + 4u * kv);
            }
            for (var j = 0u; j < 4u; j++) {
                let w = operand(w_data[w_base[j] + kv]);
                for (var i = 0u; i < TM; i++) {
                    acc[i][j] += dot16(w, xs[i]);
                }
            }
        }
        for (var i = 0u; i < TM; i++) {
            let m = m0 + i;
            for (var j = 0u; j < 4u; j++) {
                if m < row_end && cols[j] < p.cols {
                    store(m, cols[j], acc[i][j]);
                }
            }
        }
    }
}

// ---- GPUs: int8 tiles in workgroup memory (`i8_tile`), 16-byte weight loads coalesced
// across lanes.

fn tile_x_word(m: u32, kw: u32) -> u32 {
    return x_codes[m * p.row_words + kw];
}

#include i8_tile

@compute @workgroup_size(WG)
fn gemm_workgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    let tx = lid % (BN / RN);
    let ty = lid / (BN / RN);
    // acc[2i + h]: row m0 + ty·RM + i, channels n0 + tx·RN + 4h .. + 4.
    var acc: array<vec4<i32>, 16>;
    for (var k0 = 0u; k0 < p.row_words; k0 += BKW) {
        tile_stage_x(m0, k0, p.rows, p.row_words, lid);
        // Weight rows: one vec4 (16 codes) per lane; rows are padded to whole vec4s.
        for (var i = lid; i < BN * BKW / 4u; i += WG) {
            let r = i / (BKW / 4u);
            let v4 = k0 / 4u + i % (BKW / 4u);
            var v = vec4<u32>();
            if n0 + r < p.cols && v4 < p.w_vecs {
                v = w_data[(n0 + r) * p.w_vecs + v4];
            }
            let kw = 4u * (i % (BKW / 4u));
            for (var j = 0u; j < 4u; j++) {
                let e = (kw + j) * BN + r;
                tile_w[e >> 2u][e & 3u] = v[j];
            }
        }
        workgroupBarrier();
        for (var kw = 0u; kw < BKW; kw++) {
            tile_mac(kw, tx, ty, &acc);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM; i++) {
        let m = m0 + ty * RM + i;
        for (var j = 0u; j < RN; j++) {
            let c = n0 + tx * RN + j;
            if m < p.rows && c < p.cols {
                store(m, c, acc[2u * i + j / 4u][j % 4u]);
            }
        }
    }
}
#endif
