//! Flash attention (shaders/flash_attention.wgsl) for GPU-class adapters: a tile of queries per
//! workgroup walks K/V tiles staged in workgroup memory with an online softmax, exact f32 or
//! SageAttention's int8 Q·Kᵀ. `attention` and `sage_attention` pick it through [`kernel_for`].

use super::{size_defines, AttentionParams, Params};
use crate::gpu::{Shader, Tensor};
use crate::kernels::params;
use crate::{invalid, shader, Encoder, Gpu, Result};

const SHADER: Shader = shader!("flash_attention");

/// Which attention kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// shaders/attention.wgsl: each invocation owns whole queries and reads K/V straight from
    /// storage, no barriers (see `Layout`).
    PerQuery,
    /// shaders/flash_attention.wgsl: K/V tiles shared by a workgroup's queries.
    Flash,
}

/// The attention kernel this adapter runs: its row of `kernels::launch`'s table. GPUs get
/// flash: without shared tiles every query would stream all of K and V from memory on its own.
pub fn kernel_for(gpu: &Gpu) -> AttentionKernel {
    crate::kernels::launch::for_class(gpu.class).attention_kernel
}

/// Invocations per workgroup (the shader's WG).
const WORKGROUP: usize = 64;
/// Channel quads per invocation (the shader's QPL).
const QUADS_PER_LANE: usize = 16;

/// The shader's tile for a head width: (D4 capacity, keys per tile BK), as its defines pick them.
fn tile(head_dim: usize) -> (usize, usize) {
    match head_dim.div_ceil(4) {
        0..=16 => (16, 32),
        17..=32 => (32, 12),
        33..=64 => (64, 7),
        _ => (128, 3),
    }
}

/// Queries per workgroup: 64 invocations, split into teams of D4/16 per query.
fn queries_per_workgroup(head_dim: usize) -> usize {
    WORKGROUP / (tile(head_dim).0 / QUADS_PER_LANE)
}

/// Workgroup bytes the entry declares: the tables in the shader are sized for WebGPU's minimum
/// of 16 KiB, so this only fails on an adapter below the standard.
fn check_memory(gpu: &Gpu, head_dim: usize, sage: bool, f16: bool) -> Result<()> {
    let (d4, bk) = tile(head_dim);
    let teams = d4 / QUADS_PER_LANE > 1;
    let v = bk * d4 * if sage && f16 { 8 } else { 16 };
    let k = if sage { bk * d4 * 4 + bk * 4 } else { bk * d4 * 16 };
    let bytes = (k + v + if teams { WORKGROUP * bk * 4 } else { 0 }) as u32;
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    if bytes > limit {
        invalid!("flash attention: head_dim {head_dim} needs {bytes} bytes of workgroup memory, the adapter has {limit}");
    }
    Ok(())
}

fn grid(p: &AttentionParams) -> [u32; 3] {
    [p.tokens.div_ceil(queries_per_workgroup(p.head_dim)) as u32, p.heads as u32, p.batch as u32]
}

/// Exact f32 attention with the flash kernel, on any adapter.
pub fn flash_attention(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, out: &Tensor, p: AttentionParams) -> Result<()> {
    p.validate(gpu)?;
    p.check_tensors(qkv, out)?;
    check_memory(gpu, p.head_dim, false, false)?;
    let pipe = gpu.pipeline(&SHADER, "flash_f32", &size_defines(p.head_dim), &[])?;
    gpu.dispatch(enc, &pipe, params(&Params::new(&p)), &[&qkv.buffer, &out.buffer], grid(&p))
}

/// SageAttention's attention pass with the flash kernel: `u` and `buffers` (V, out, q8, k8,
/// scales) as `sage_attention_with` prepared them for attention.wgsl's attend_sage.
pub(super) fn flash_sage_pass(gpu: &Gpu, enc: &mut Encoder, p: &AttentionParams, u: &Params, f16: bool, buffers: &[&wgpu::Buffer]) -> Result<()> {
    check_memory(gpu, p.head_dim, true, f16)?;
    let mut defines = size_defines(p.head_dim);
    if f16 {
        defines.push("F16");
    }
    if gpu.caps.packed_dot {
        defines.push("PACKED_DOT");
    }
    let pipe = gpu.pipeline(&SHADER, "flash_sage", &defines, &[])?;
    gpu.dispatch(enc, &pipe, params(u), buffers, grid(p))
}
