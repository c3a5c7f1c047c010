// Helpers every kernel family may include (`#include common`): the GELU's erf, QuickGELU and
// the tanh GELU (element-wise passes only, no define), the activation fused into a producer's
// store (ACT_GELU / ACT_SWISH defines), and int8 packing.

// Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, plenty for f32 activations.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn gelu_erf(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
}

// OpenAI CLIP's x · sigmoid(1.702 x).
fn quick_gelu_of(v: f32) -> f32 {
    return v / (1.0 + exp(-1.702 * v));
}

// GELU's tanh approximation; tanh written through exp with |u| clamped, since WGSL's tanh
// overflows to NaN for large arguments on some drivers.
fn gelu_tanh_of(v: f32) -> f32 {
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    let e = exp(2.0 * u);
    return 0.5 * v * (1.0 + (e - 1.0) / (e + 1.0));
}

// The activation a kernel's defines fuse into its output (identity without one).
fn activate(v: f32) -> f32 {
#if ACT_GELU
    return gelu_erf(v);
#else
#if ACT_SWISH
    return v / (1.0 + exp(-v));
#else
    return v;
#endif
#endif
}

// Four values rounded to int8 codes (clamped to ±127, symmetric), byte 0 first.
fn pack_i8(v: vec4<f32>) -> u32 {
    let i = vec4<i32>(clamp(round(v), vec4<f32>(-127.0), vec4<f32>(127.0)));
    let u = bitcast<vec4<u32>>(i) & vec4<u32>(0xffu);
    return u.x | (u.y << 8u) | (u.z << 16u) | (u.w << 24u);
}

// Sign-extends the four int8 codes of a word (byte 0 first).
fn unpack_i8(word: u32) -> vec4<i32> {
    return bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
}
