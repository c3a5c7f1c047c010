// Static activation fake-quantization: x → the value an integer kernel would see after
// quantizing x with fixed (calibrated) parameters, written back in f32, in place.
//
// Entries:
//   act_quant        x[i] = Q(x[i])
//   act_quant_noise  x[i] = Q(x[i] + noise[i mod channels])   (NoisyQuant; the Linear's bias
//                    already holds −noise·W)
//
// The quantizer (`aq_apply`, shaders/aq.wgsl, shared with attention.wgsl's post-softmax
// variant) is chosen by the pipeline constant AQ_KIND (= `q.kind`); its parameters sit in a..d
// of the uniform block.

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

#include grid
#include aq

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
