//! Multi-head self-attention over timm's fused qkv layout, in f32 and SageAttention-style
//! low-bit (int8 QKᵀ, f16 or f32 P·V).
//!
//! Input `qkv [B, T, 3·H·D]` is the output of the fused qkv Linear: per token
//! `[q(all heads) | k | v]`, head h at columns h·D..(h+1)·D of each third. Output
//! `[B, T, H·D]` has the heads concatenated, ready for the proj Linear.
//!
//! SageAttention (Zhang et al. 2024) in three dispatches: the mean of K over tokens
//! (`sage_mean`), int8 quantization of Q·scale and K−mean per block of tokens plus V to f16
//! (`sage_quantize`), then attention from the int8 values (`attend_sage`). Subtracting the
//! mean of K adds the same constant q·mean to every score of a query, which softmax ignores,
//! but it removes the per-channel bias that would otherwise dominate K's int8 range.

mod bench;
mod flash;
pub mod kv_cache;
mod reference;

pub use bench::bench_cases;
pub use flash::{flash_attention, kernel_for, AttentionKernel};

pub use reference::{attention_quantized_reference, attention_reference, realistic_qkv, sage_reference};

use super::act_quant::{ActQuantizer, AqParams};
use super::params;
use crate::gpu::{DType, Shader, Tensor};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("attention");
/// Largest head dimension: the private per-query arrays hold 128 vec4s at most.
pub const MAX_HEAD_DIM: usize = 512;

/// Shape and options of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Multiplies QKᵀ before the softmax; `new` sets the usual D^-0.5.
    pub scale: f32,
    /// Query i sees keys 0..=i only.
    pub causal: bool,
}

impl AttentionParams {
    pub fn new(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Self {
        AttentionParams { batch, tokens, heads, head_dim, scale: (head_dim as f32).powf(-0.5), causal: false }
    }

    pub fn causal(self, causal: bool) -> Self {
        AttentionParams { causal, ..self }
    }

    pub fn qkv_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens, 3 * self.heads * self.head_dim]
    }

    pub fn out_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens, self.heads * self.head_dim]
    }

    fn validate(&self, gpu: &Gpu) -> Result<()> {
        let AttentionParams { batch, tokens, heads, head_dim, scale, .. } = *self;
        if batch == 0 || tokens == 0 || heads == 0 || head_dim == 0 {
            shape_err!("attention: zero-sized dimension in {self:?}");
        }
        if head_dim % 4 != 0 || head_dim > MAX_HEAD_DIM {
            invalid!("attention: head_dim must be a multiple of 4 and at most {MAX_HEAD_DIM}, got {head_dim}");
        }
        if !scale.is_finite() {
            invalid!("attention: scale must be finite, got {scale}");
        }
        let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if batch > max || heads > max {
            invalid!("attention: batch {batch} and heads {heads} must each be at most {max}");
        }
        if tokens > u32::MAX as usize / 4 {
            invalid!("attention: {tokens} tokens is too many");
        }
        Ok(())
    }

    fn check_tensors(&self, qkv: &Tensor, out: &Tensor) -> Result<()> {
        qkv.expect_dtype("attention qkv", DType::F32)?;
        out.expect_dtype("attention out", DType::F32)?;
        qkv.expect_shape("attention qkv", &self.qkv_shape())?;
        out.expect_shape("attention out", &self.out_shape())?;
        if std::sync::Arc::ptr_eq(&qkv.buffer, &out.buffer) {
            invalid!("attention: out must not alias qkv");
        }
        Ok(())
    }
}

/// SageAttention knobs. Blocks are token counts per int8 scale (the paper's 128 for Q and
/// 64 for K); `pv_f16` asks for P·V in f16, used only where the adapter has shader-f16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SageOptions {
    pub q_block: usize,
    pub k_block: usize,
    pub pv_f16: bool,
    /// Query-to-invocation mapping of the per-query attention pass. `None` runs the kernel
    /// `kernel_for` picks (with `Layout::for_gpu`); `Some` forces the per-query kernel.
    pub layout: Option<Layout>,
}

impl Default for SageOptions {
    fn default() -> Self {
        SageOptions { q_block: 128, k_block: 64, pv_f16: true, layout: None }
    }
}

impl SageOptions {
    /// The options as they will run on `gpu` (P·V in f16 only with shader-f16), which is also
    /// what `sage_reference` must be given to reproduce the GPU result.
    pub fn effective(self, gpu: &Gpu) -> Self {
        SageOptions { pv_f16: self.pv_f16 && gpu.caps.f16, ..self }
    }
}

/// Uniform block shared by every entry of shaders/attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    d4: u32,
    scale: f32,
    causal: u32,
    q_block: u32,
    k_block: u32,
    n_qb: u32,
    n_kb: u32,
    items: u32,
    _pad: u32,
    /// attend_f32_pq's post-softmax quantizer (identity elsewhere).
    pq: AqParams,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["attention", "flash_attention"], [], "Params", [batch, tokens, heads, d4, scale, causal, q_block, k_block, n_qb, n_kb, items, pq]);

impl Params {
    fn new(p: &AttentionParams) -> Self {
        Params {
            batch: p.batch as u32,
            tokens: p.tokens as u32,
            heads: p.heads as u32,
            d4: (p.head_dim / 4) as u32,
            scale: p.scale,
            causal: p.causal as u32,
            q_block: 1,
            k_block: 1,
            n_qb: 0,
            n_kb: 0,
            items: 0,
            _pad: 0,
            pq: AqParams::default(),
        }
    }
}

/// Defines that size the shader's per-query arrays for this head dimension (plus EXACT when
/// the head fills them, which lets the channel loops unroll).
fn size_defines(head_dim: usize) -> Vec<&'static str> {
    let d4 = head_dim.div_ceil(4);
    let (define, capacity) = match d4 {
        0..=16 => ("D4_16", 16),
        17..=32 => ("D4_32", 32),
        33..=64 => ("D4_64", 64),
        _ => ("D4_128", 128),
    };
    if d4 == capacity { vec![define, "EXACT"] } else { vec![define] }
}

/// How queries map onto invocations (a column of `kernels::launch`'s table); public so tests
/// can run every mapping on lavapipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Invocations per workgroup.
    pub workgroup: u32,
    /// Several queries per invocation (the shader's WIDE): on CPU adapters, where Mesa 22's
    /// llvmpipe loads storage buffers lane by lane inside loops, each K/V value loaded then
    /// serves several queries. GPUs prefer more invocations with one query each.
    pub wide: bool,
}

impl Layout {
    /// This adapter's row of `kernels::launch`'s table. On CPU adapters a workgroup is one
    /// thread looping over its lanes 8 at a time: small, wide groups keep every core busy.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        crate::kernels::launch::for_class(gpu.class).attention
    }

    /// Queries per invocation: the shader's QL for these defines.
    fn queries_per_lane(&self, head_dim: usize) -> u32 {
        match (self.wide, head_dim.div_ceil(4)) {
            (false, _) => 1,
            (true, 0..=64) => 4,
            (true, _) => 2,
        }
    }

    fn defines(&self, head_dim: usize) -> Vec<&'static str> {
        let mut d = size_defines(head_dim);
        if self.wide {
            d.push("WIDE");
        }
        d
    }

    fn grid(&self, p: &AttentionParams) -> [u32; 3] {
        let per_group = self.workgroup * self.queries_per_lane(p.head_dim);
        [(p.tokens as u32).div_ceil(per_group), p.heads as u32, p.batch as u32]
    }

    fn check(&self, gpu: &Gpu) -> Result<()> {
        let max = gpu.limits.max_compute_invocations_per_workgroup.min(gpu.limits.max_compute_workgroup_size_x);
        if self.workgroup == 0 || self.workgroup > max {
            invalid!("attention: workgroup of {} invocations is out of range", self.workgroup);
        }
        Ok(())
    }

    fn constants(&self) -> [(&'static str, f64); 1] {
        [("WG", self.workgroup as f64)]
    }
}

/// `out = softmax(q·kᵀ·scale [+ causal mask]) · v`, per batch and head, in f32, with the kernel
/// `kernel_for` picks for this adapter.
pub fn attention(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, out: &Tensor, p: AttentionParams) -> Result<()> {
    match kernel_for(gpu) {
        AttentionKernel::Flash => flash_attention(gpu, enc, qkv, out, p),
        AttentionKernel::PerQuery => attention_with_layout(gpu, enc, qkv, out, p, Layout::for_gpu(gpu)),
    }
}

/// `attention` with the per-query kernel and an explicit query-to-invocation mapping.
pub fn attention_with_layout(
    gpu: &Gpu,
    enc: &mut Encoder,
    qkv: &Tensor,
    out: &Tensor,
    p: AttentionParams,
    layout: Layout,
) -> Result<()> {
    p.validate(gpu)?;
    p.check_tensors(qkv, out)?;
    layout.check(gpu)?;
    let pipe = gpu.pipeline(&SHADER, "attend_f32", &layout.defines(p.head_dim), &layout.constants())?;
    gpu.dispatch(enc, &pipe, params(&Params::new(&p)), &[&qkv.buffer, &out.buffer], layout.grid(&p))
}

/// `attention` with the normalized probabilities P quantized by `pq` before P·V (the
/// post-softmax activation quantizer of the W6A6/W4A8/W4A4 recipes, simulated in f32).
///
/// Always the per-query kernel, on GPUs too: quantizing P needs each query's final max and
/// sum before the first P·V term, which a one-pass online softmax (flash) does not have. A
/// two-pass flash variant could serve it; these recipes are accuracy studies, not the fast path.
pub fn attention_quantized(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, out: &Tensor, p: AttentionParams, pq: &ActQuantizer) -> Result<()> {
    attention_quantized_with_layout(gpu, enc, qkv, out, p, pq, Layout::for_gpu(gpu))
}

/// `attention_quantized` with an explicit query-to-invocation mapping.
pub fn attention_quantized_with_layout(
    gpu: &Gpu,
    enc: &mut Encoder,
    qkv: &Tensor,
    out: &Tensor,
    p: AttentionParams,
    pq: &ActQuantizer,
    layout: Layout,
) -> Result<()> {
    p.validate(gpu)?;
    p.check_tensors(qkv, out)?;
    pq.validate()?;
    layout.check(gpu)?;
    let pq = pq.shader_params();
    let constants = [layout.constants()[0], ("AQ_KIND", pq.kind as f64)];
    let pipe = gpu.pipeline(&SHADER, "attend_f32_pq", &layout.defines(p.head_dim), &constants)?;
    let u = Params { pq, ..Params::new(&p) };
    gpu.dispatch(enc, &pipe, params(&u), &[&qkv.buffer, &out.buffer], layout.grid(&p))
}

/// Intermediate buffers of `sage_attention`, reusable across calls of the same shape.
pub struct SageScratch {
    params: AttentionParams,
    opts: SageOptions,
    k_mean: Tensor,
    q8: Tensor,
    k8: Tensor,
    scales: Tensor,
    /// V as f16 pairs, [B, H, T, D/2] words; only when P·V runs in f16.
    v16: Option<Tensor>,
}

impl SageScratch {
    pub fn new(gpu: &Gpu, p: AttentionParams, opts: SageOptions) -> Result<Self> {
        p.validate(gpu)?;
        let opts = opts.effective(gpu);
        if opts.q_block == 0 || opts.k_block == 0 {
            invalid!("sage attention: q_block and k_block must be at least 1, got {opts:?}");
        }
        let bh = p.batch * p.heads;
        let words = bh * p.tokens * p.head_dim / 4;
        let n_blocks = p.tokens.div_ceil(opts.q_block) + p.tokens.div_ceil(opts.k_block);
        Ok(SageScratch {
            params: p,
            opts,
            k_mean: Tensor::zeros(gpu, &[bh, p.head_dim], DType::F32)?,
            q8: Tensor::zeros(gpu, &[words], DType::U32)?,
            k8: Tensor::zeros(gpu, &[words], DType::U32)?,
            scales: Tensor::zeros(gpu, &[bh * n_blocks], DType::F32)?,
            v16: if opts.pv_f16 { Some(Tensor::zeros(gpu, &[words * 2], DType::U32)?) } else { None },
        })
    }
}

/// SageAttention with scratch buffers allocated for this call.
pub fn sage_attention(
    gpu: &Gpu,
    enc: &mut Encoder,
    qkv: &Tensor,
    out: &Tensor,
    p: AttentionParams,
    opts: SageOptions,
) -> Result<()> {
    let scratch = SageScratch::new(gpu, p, opts)?;
    sage_attention_with(gpu, enc, qkv, out, &scratch)
}

/// SageAttention into `out`, using the shape and options `scratch` was made for.
pub fn sage_attention_with(gpu: &Gpu, enc: &mut Encoder, qkv: &Tensor, out: &Tensor, s: &SageScratch) -> Result<()> {
    let (p, opts) = (&s.params, &s.opts);
    p.check_tensors(qkv, out)?;
    let layout = opts.layout.unwrap_or_else(|| Layout::for_gpu(gpu));
    layout.check(gpu)?;
    let prep_defines: &[&str] = if opts.pv_f16 { &["F16"] } else { &[] };
    let mut defines = layout.defines(p.head_dim);
    defines.extend(prep_defines);
    if gpu.caps.packed_dot {
        defines.push("PACKED_DOT");
    }
    let mut u = Params::new(p);
    u.q_block = opts.q_block as u32;
    u.k_block = opts.k_block as u32;
    u.n_qb = p.tokens.div_ceil(opts.q_block) as u32;
    u.n_kb = p.tokens.div_ceil(opts.k_block) as u32;
    let bh = (p.batch * p.heads) as u32;

    // These two passes are light (O(T·D) per head against attention's O(T²·D)).
    const PREP_WG: u32 = 16;
    let prep = [("WG", PREP_WG as f64)];
    u.items = bh * u.d4;
    let mean = gpu.pipeline(&SHADER, "sage_mean", prep_defines, &prep)?;
    gpu.dispatch(enc, &mean, params(&u), &[&qkv.buffer, &s.k_mean.buffer], gpu.grid(u.items.div_ceil(PREP_WG)))?;

    u.items = bh * (u.n_qb + u.n_kb * if opts.pv_f16 { 2 } else { 1 });
    let quant = gpu.pipeline(&SHADER, "sage_quantize", prep_defines, &prep)?;
    let mut bufs = vec![&*qkv.buffer, &*s.k_mean.buffer, &*s.q8.buffer, &*s.k8.buffer, &*s.scales.buffer];
    if let Some(v16) = &s.v16 {
        bufs.push(&v16.buffer);
    }
    gpu.dispatch(enc, &quant, params(&u), &bufs, gpu.grid(u.items.div_ceil(PREP_WG)))?;

    let v = s.v16.as_ref().map_or(&qkv.buffer, |t| &t.buffer);
    let bufs = [v, &*out.buffer, &*s.q8.buffer, &*s.k8.buffer, &*s.scales.buffer];
    // An explicit layout asks for the per-query kernel.
    if opts.layout.is_none() && kernel_for(gpu) == AttentionKernel::Flash {
        return flash::flash_sage_pass(gpu, enc, p, &u, opts.pv_f16, &bufs);
    }
    let attend = gpu.pipeline(&SHADER, "attend_sage", &defines, &layout.constants())?;
    gpu.dispatch(enc, &attend, params(&u), &bufs, layout.grid(p))
}

/// SageAttention's accuracy against the f64 reference.
#[derive(Clone, Copy, Debug)]
pub struct SageQuality {
    pub cosine: f64,
    pub relative_l1: f64,
    pub nmse: f64,
}

/// Sage vs exact attention on the benchmark shape (197 tokens × 12 heads × 64, ViT-B/16) with
/// `realistic_qkv` inputs.
pub fn quality(gpu: &Gpu, opts: SageOptions) -> Result<SageQuality> {
    let p = AttentionParams::new(1, 197, 12, 64);
    let data = realistic_qkv(&p, 7);
    let qkv = Tensor::from_f32(gpu, &p.qkv_shape(), &data)?;
    let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32)?;
    let mut enc = gpu.encoder();
    sage_attention(gpu, &mut enc, &qkv, &out, p, opts)?;
    gpu.submit(enc)?;
    let got = out.to_vec_f32(gpu)?;
    let want = attention_reference(&data, &p)?;
    use crate::metrics::{cosine, nmse, relative_l1};
    Ok(SageQuality { cosine: cosine(&got, &want), relative_l1: relative_l1(&got, &want), nmse: nmse(&got, &want) })
}
