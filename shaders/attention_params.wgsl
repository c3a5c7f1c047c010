// The parameter block of attention.wgsl and flash_attention.wgsl: one Rust struct
// (`Params` in src/kernels/attention/mod.rs) feeds both families.

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    d4: u32,         // head_dim / 4
    scale: f32,      // softmax scale, applied to q (the sage kernels fold it into q8)
    causal: u32,
    q_block: u32,    // sage: tokens per Q quantization block
    k_block: u32,    // sage: tokens per K quantization block
    n_qb: u32,       // sage: Q blocks per (batch, head)
    n_kb: u32,
    items: u32,      // sage_mean / sage_quantize: work items in the grid
    _pad: u32,
    pq: AqParams,    // attend_f32_pq: the post-softmax quantizer
}

#include aq
