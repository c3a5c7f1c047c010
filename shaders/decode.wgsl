// The one decoder of packed weight words, included (`#include decode`) by every kernel that
// reads packed matrices: GEMV, GEMM (register- and workgroup-tiled) and convolution.
//
// What a format is comes from `#include format`: constants generated from the format table in
// src/formats/wgsl.rs (W_KIND, W_BITS, PW elements per word, W_MASK, W_XOR, OFFSET, SCALE_MUL),
// selected by the includer's FMT_* define. The constants fold every branch below away.
// The includer declares the bindings these helpers read:
//   w_scales: array<u32>   (define SCALED) f16 scales, two per word, index = row * groups + group
//   w_zeros: array<u32>    (define ZERO_POINTS) 4-bit zero points, eight per word, same index
// Layouts are documented bit by bit in docs/FORMATS.md.
//
// Weights are never expanded in memory: a word is decoded in registers. Integer codes become
// floats with the magic-number trick (bitcast(0x4B000000 | q) = 2^23 + q exactly), and the
// same subtraction removes the zero point: (2^23 + q) − OFFSET = q − zero.

#include format

const MAGIC_BITS: u32 = 0x4B000000u;
// vec4 columns a word's elements fill in decode()'s result.
const NC: u32 = max(PW / 4u, 1u);

// Scale of group `i` (row * groups + group), times SCALE_MUL; 1 for unscaled formats.
fn group_scale(i: u32) -> f32 {
#if SCALED
    let pair = unpack2x16float(w_scales[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u) * SCALE_MUL;
#else
    return 1.0;
#endif
}

// What decoding subtracts for group `i`: OFFSET, plus the group's zero point if it has one.
fn group_offset(i: u32) -> f32 {
#if ZERO_POINTS
    return OFFSET + f32(extractBits(w_zeros[i >> 3u], 4u * (i & 7u), 4u));
#else
    return OFFSET;
#endif
}

fn magic4(q: vec4<u32>, offset: f32) -> vec4<f32> {
    return bitcast<vec4<f32>>(q | vec4<u32>(MAGIC_BITS)) - vec4<f32>(offset);
}

// E2M1 codes (4 bits each, in the low nibble of each lane) → f16 bit patterns: magnitude
// (e e m) to bits 11..9, sign to bit 15. Read as f16 this is value · 2^-14 (code 1 lands on
// the f16 subnormal 2^-15); SCALE_MUL = 2^14 restores it through the group scale.
fn fp4_to_f16_bits(c: vec4<u32>) -> vec4<u32> {
    return ((c & vec4<u32>(7u)) << vec4<u32>(9u)) | ((c & vec4<u32>(8u)) << vec4<u32>(12u));
}

// One packed word → its PW values (unscaled: q − zero for integers), element j in column
// j / 4, lane j % 4 (columns past NC and lanes past PW are zero).
fn decode(word: u32, offset: f32) -> mat4x4<f32> {
    var v = mat4x4<f32>();
    if W_KIND == 1u {
        v[0].x = bitcast<f32>(word);
    } else if W_KIND == 2u {
        v[0] = vec4<f32>(unpack2x16float(word), 0.0, 0.0);
    } else if W_KIND == 3u {
        // Both nibbles of each byte at once: low to bits 11..9 and 15, high to 27..25 and 31.
        let c = vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u);
        let h = ((c & vec4<u32>(7u)) << vec4<u32>(9u)) | ((c & vec4<u32>(8u)) << vec4<u32>(12u))
            | ((c & vec4<u32>(0x70u)) << vec4<u32>(21u)) | ((c & vec4<u32>(0x80u)) << vec4<u32>(24u));
        v[0] = vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
        v[1] = vec4<f32>(unpack2x16float(h.z), unpack2x16float(h.w));
    } else {
        let w4 = vec4<u32>(word ^ W_XOR);
        let lanes = vec4<u32>(0u, 1u, 2u, 3u) * W_BITS;
        for (var c = 0u; c < NC; c++) {
            v[c] = magic4((w4 >> (lanes + vec4<u32>(4u * c * W_BITS))) & vec4<u32>(W_MASK), offset);
        }
    }
    return v;
}

// Element j (0 ≤ j < PW) of a word, unscaled, for kernels that walk elements one at a time.
fn decode_element(word: u32, j: u32, offset: f32) -> f32 {
    if W_KIND == 1u {
        return bitcast<f32>(word);
    } else if W_KIND == 2u {
        let pair = unpack2x16float(word);
        return select(pair.x, pair.y, j == 1u);
    } else if W_KIND == 3u {
        return unpack2x16float(fp4_to_f16_bits(vec4<u32>(word >> (4u * j))).x).x;
    }
    return bitcast<f32>((((word ^ W_XOR) >> (j * W_BITS)) & W_MASK) | MAGIC_BITS) - offset;
}
