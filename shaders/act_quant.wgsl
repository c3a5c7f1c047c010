// Static activation fake-quantization: x → the value an integer kernel would see after
// quantizing x with fixed (calibrated) parameters, written back in f32, in place.
//
// Entries:
//   act_quant        x[i] = Q(x[i])
//   act_quant_noise  x[i] = Q(x[i] + noise[i mod channels])   (NoisyQuant; the Linear's bias
//                    already holds −noise·W)
//
// The quantizer is chosen by the pipeline constant KIND (= `q.kind`); its parameters sit in
// a..d of the uniform block. The CPU reference is `ActQuantizer::apply` in src/kernels/act_quant.rs, which
// performs the same f32 operations. shaders/attention.wgsl carries a copy of `aq_apply` for
// its post-softmax variant (the preprocessor only includes its own fragments).

// kind: 1 uniform (a scale, b zero), 2 log2 (a Δ), 3 log√2 (a Δ), 4 AdaLog (a scale,
// b q/r), 5 SULQ (a η, b m, c δ), 6 twin softmax (a low-range step, b high-range step),
// 7 twin GELU (a negative-range step, b positive-range step). Anything else: identity.
struct AqParams {
    kind: u32,
    bits: u32,
    a: f32,
    b: f32,
    c: f32,
    d: f32,
    _p0: u32,
    _p1: u32,
}

struct Params {
    q: AqParams,
    n: u32,
    channels: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> noise: array<f32>;

override WG: u32 = 256u;
// The quantizer kind (as `q.kind`): a pipeline constant, so each pipeline holds only its own
// code. llvmpipe runs every branch a lane might take under a mask, and a uniform `switch` on
// a uniform-buffer value cost ~30× the arithmetic of one quantizer.
override KIND: u32 = 0u;

#include grid

fn aq_apply(v: f32, q: AqParams) -> f32 {
    let top = f32((1u << q.bits) - 1u);
    switch KIND {
        case 1u: {
            let code = clamp(round(v / q.a) + q.b, 0.0, top);
            return (code - q.b) * q.a;
        }
        case 2u, 3u, 4u: {
            // Codes count halvings (log2), half-halvings (log√2) or steps of 2^(q/r)
            // (AdaLog) below the top value; codes past the last level round to zero.
            if v <= 0.0 { return 0.0; }
            let per = select(select(1.0 / q.b, 2.0, KIND == 3u), 1.0, KIND == 2u);
            let code = round(-log2(v / q.a) * per);
            if code > top { return 0.0; }
            let c = i32(max(code, 0.0));
            if KIND == 2u { return ldexp(q.a, -c); }
            if KIND == 3u { return ldexp(q.a, -((c + 1) / 2)) * select(1.0, 1.41421356237, (c & 1) == 1); }
            return q.a * exp2(-f32(c) * q.b);
        }
        case 5u: {
            // Uniform in log2(x + η) over [m, m + δ·top].
            let t = v + q.a;
            var code = 0.0;
            if t > 0.0 { code = clamp(round((log2(t) - q.b) / q.c), 0.0, top); }
            return exp2(code * q.c + q.b) - q.a;
        }
        case 6u: {
            // Two uniform ranges of bits−1 bits each: fine steps near 0, coarse up to 1.
            let half = f32((1u << (q.bits - 1u)) - 1u);
            let lo = round(max(v, 0.0) / q.a);
            if lo <= half { return lo * q.a; }
            return min(round(v / q.b), half) * q.b;
        }
        case 7u: {
            let half = f32((1u << (q.bits - 1u)) - 1u);
            if v < 0.0 { return max(round(v / q.a), -half) * q.a; }
            return min(round(v / q.b), half) * q.b;
        }
        default: {
            return v;
        }
    }
}

@compute @workgroup_size(WG)
fn act_quant(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    x[i] = aq_apply(x[i], p.q);
}

@compute @workgroup_size(WG)
fn act_quant_noise(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    x[i] = aq_apply(x[i] + noise[i % p.channels], p.q);
}
