// The static activation quantizers (act_quant.wgsl, and the post-softmax variant of
// attention.wgsl): `aq_apply(v, q)` is the value an integer kernel would see after quantizing v
// with fixed (calibrated) parameters. The CPU reference is `ActQuantizer::apply` in
// src/kernels/act_quant.rs, which performs the same f32 operations.

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

// The quantizer kind (as `q.kind`): a pipeline constant, so each pipeline holds only its own
// code. llvmpipe runs every branch a lane might take under a mask, and a uniform `switch` on
// a uniform-buffer value cost ~30× the arithmetic of one quantizer.
override AQ_KIND: u32 = 0u;

fn aq_apply(v: f32, q: AqParams) -> f32 {
    let top = f32((1u << q.bits) - 1u);
    switch AQ_KIND {
        case 1u: {
            let code = clamp(round(v / q.a) + q.b, 0.0, top);
            return (code - q.b) * q.a;
        }
        case 2u, 3u, 4u: {
            // Codes count halvings (log2), half-halvings (log√2) or steps of 2^(q/r)
            // (AdaLog) below the top value; codes past the last level round to zero.
            if v <= 0.0 { return 0.0; }
            let per = select(select(1.0 / q.b, 2.0, AQ_KIND == 3u), 1.0, AQ_KIND == 2u);
            let code = round(-log2(v / q.a) * per);
            if code > top { return 0.0; }
            let c = i32(max(code, 0.0));
            if AQ_KIND == 2u { return ldexp(q.a, -c); }
            if AQ_KIND == 3u { return ldexp(q.a, -((c + 1) / 2)) * select(1.0, 1.41421356237, (c & 1) == 1); }
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
