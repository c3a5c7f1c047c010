// The int8 workgroup tile of the integer GEMMs for GPUs (`#include i8_tile`: W8A8's and
// W4A8/W4A4's `gemm_workgroup`). A workgroup owns BM activation rows × BN output channels and
// walks K in stages of BKW int8 words (4 codes each): both operands are staged as int8 words
// in workgroup memory (the includer decodes its weights while staging, once per workgroup),
// then each invocation accumulates an RM × RN block of i32 dot products, one dot4 per pair of
// words. Invocation `lid` owns rows ty·RM .. and channels tx·RN .. of the tile
// (tx = lid % (BN / RN), ty = lid / (BN / RN)); the Rust side sets WG = (BM / RM) · (BN / RN).
//
// dot4 is the product of two words of four int8 codes (PACKED_DOT: dot4I8Packed, else the
// bytes sign-extended and multiplied in i32; the includer's other loops may use it too).
// The includer defines:
//   tile_x_word(m, kw) -> u32  int8 word kw of activation row m, called with m < rows and kw
//                              below the row's words only
// and stages the weights itself into tile_w (word kw of tile channel r at kw · BN + r).

override BM: u32 = 64u;  // activation rows per workgroup
override BN: u32 = 64u;  // output channels per workgroup
override BKW: u32 = 16u; // int8 words of K per stage: a multiple of the weights' words per vec4
override RM: u32 = 4u;   // rows per invocation, ≤ 8
override RN: u32 = 4u;   // channels per invocation: 4 or 8

// k-major: a step of the inner loop reads RM words of x (the same address across the lanes
// of one row of the invocation grid) and a vec4 of channels.
var<workgroup> tile_x: array<u32, BKW * BM>;
var<workgroup> tile_w: array<vec4<u32>, BKW * BN / 4u>;

fn dot4(a: u32, b: u32) -> i32 {
#if PACKED_DOT
    return dot4I8Packed(a, b);
#else
    return dot(unpack_i8(a), unpack_i8(b));
#endif
}

fn dot4x4(a: u32, b: vec4<u32>) -> vec4<i32> {
    return vec4<i32>(dot4(a, b.x), dot4(a, b.y), dot4(a, b.z), dot4(a, b.w));
}

// Stages the activation words k0 .. k0 + BKW of rows m0 .. m0 + BM; zero past the rows and
// past K (`words` per row), where zero codes add nothing.
fn tile_stage_x(m0: u32, k0: u32, rows: u32, words: u32, lid: u32) {
    for (var i = lid; i < BM * BKW; i += WG) {
        let mm = i / BKW;
        let kw = i % BKW;
        var v = 0u;
        if m0 + mm < rows && k0 + kw < words {
            v = tile_x_word(m0 + mm, k0 + kw);
        }
        tile_x[kw * BM + mm] = v;
    }
}

// One word of K from the staged tiles into acc[2i + h]: row ty·RM + i, channels
// tx·RN + 4h .. + 4.
fn tile_mac(kw: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<i32>, 16>>) {
    let b0 = tile_w[(kw * BN + tx * RN) / 4u];
    var b1 = vec4<u32>();
    if RN == 8u {
        b1 = tile_w[(kw * BN + tx * RN) / 4u + 1u];
    }
    for (var i = 0u; i < RM; i++) {
        let a = tile_x[kw * BM + ty * RM + i];
        (*acc)[2u * i] += dot4x4(a, b0);
        if RN == 8u {
            (*acc)[2u * i + 1u] += dot4x4(a, b1);
        }
    }
}
