// Weight decoding shared by every kernel that reads packed matrices (gemv_q, gemm_q, conv).
// Included with `#include dequant`. The including shader picks the format with one define
// (FMT_F32, FMT_F16, FMT_Q8, FMT_Q4, FMT_Q4Z, FMT_TERNARY, FMT_FP4), sets SCALED for the
// formats with scales, and declares the bindings these helpers read:
//   w_scales: array<u32> (SCALED) f16 scales, two per word, index = row * groups + group
//   w_zeros: array<u32>  (FMT_Q4Z) 4-bit zero points, eight per word, same index
// Layouts are documented bit by bit in docs/FORMATS.md.

#if FMT_F32
const W_BITS: u32 = 32u;
#endif
#if FMT_F16
const W_BITS: u32 = 16u;
#endif
#if FMT_Q8
const W_BITS: u32 = 8u;
#endif
#if FMT_Q4
const W_BITS: u32 = 4u;
#endif
#if FMT_Q4Z
const W_BITS: u32 = 4u;
#endif
#if FMT_TERNARY
const W_BITS: u32 = 2u;
#endif
#if FMT_FP4
const W_BITS: u32 = 4u;
#endif
const W_PER_WORD: u32 = 32u / W_BITS;

#if SCALED
fn w_scale(i: u32) -> f32 {
    let pair = unpack2x16float(w_scales[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
#endif

// E2M1 magnitudes: code & 7 → {0, 0.5, 1, 1.5, 2, 3, 4, 6}; bit 3 is the sign.
fn fp4_value(code: u32) -> f32 {
    let e = (code >> 1u) & 3u;
    let m = f32(code & 1u);
    let mag = select(ldexp(1.0 + 0.5 * m, i32(e) - 1), 0.5 * m, e == 0u);
    return select(mag, -mag, (code & 8u) != 0u);
}

// Element j (0 ≤ j < W_PER_WORD) of a packed word as the unscaled value: the integer
// q − zero for integer formats, the float itself for F32/F16/FP4. `zero` is ignored by
// formats without one.
fn w_decode(word: u32, j: u32, zero: f32) -> f32 {
#if FMT_F32
    return bitcast<f32>(word);
#endif
#if FMT_F16
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, j == 1u);
#endif
#if FMT_Q8
    return f32(extractBits(bitcast<i32>(word), 8u * j, 8u));
#endif
#if FMT_Q4
    return f32(extractBits(word, 4u * j, 4u)) - 8.0;
#endif
#if FMT_Q4Z
    return f32(extractBits(word, 4u * j, 4u)) - zero;
#endif
#if FMT_TERNARY
    return f32(extractBits(word, 2u * j, 2u)) - 1.0;
#endif
#if FMT_FP4
    return fp4_value(extractBits(word, 4u * j, 4u));
#endif
}

// Zero point of scale group `i` (FMT_Q4Z), else 0.
fn w_zero(i: u32) -> f32 {
#if FMT_Q4Z
    return f32(extractBits(w_zeros[i >> 3u], 4u * (i & 7u), 4u));
#else
    return 0.0;
#endif
}
