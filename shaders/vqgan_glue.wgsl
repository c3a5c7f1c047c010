// Layout glue of the VQGAN decoder: the codebook gather and the attention kernel work on
// tokens [B, T, C], the convolutions on NCHW [B, C, T] (T = H·W). One invocation per element,
// 2-D grid past 65535 workgroups; ADD accumulates into `out` (the AttnBlock residual) instead
// of overwriting it.

// `n`: elements; `tokens`: T per image; `channels`: C.
struct Params { n: u32, tokens: u32, channels: u32, pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;
#include grid

// out[b, c, t] (+)= x[b, t, c]. Indexed by the output so the writes are contiguous.
@compute @workgroup_size(WG)
fn tokens_to_nchw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_item(wg, nwg, lid);
    if i >= p.n { return; }
    let t = i % p.tokens;
    let bc = i / p.tokens;
    let c = bc % p.channels;
    let b = bc / p.channels;
    let v = x[(b * p.tokens + t) * p.channels + c];
#if ADD
    out[i] = out[i] + v;
#else
    out[i] = v;
#endif
}
