//! Linear layers on packed low-bit weights: `out = act(x · Wᵀ + b)` with a GEMV kernel for a
//! few rows of x (`shaders/gemv_q.wgsl`) and a register-tiled GEMM for many
//! (`shaders/gemm_q.wgsl`). Weights stay packed on the GPU and are decoded in registers.
//! Which kernel shape ([`Variant`]) runs on which adapter is decided in `kernels::launch`.

mod bench;
mod variant;

pub use bench::{bench_cases, candidates, tune_cases};
pub use variant::{Plan, Variant};

use std::ops::Range;
use std::sync::OnceLock;

use super::elementwise::Activation;
use super::gpu_matrix::{GpuMatrix, RowLayout};
use super::{launch, params};
use crate::gpu::{DType, Shader, Tensor};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{shader, Encoder, Error, Gpu, Result};

const GEMV: Shader = shader!("gemv_q");
/// Register-tiled GEMM for CPU adapters.
const GEMM: Shader = shader!("gemm_q");
/// Workgroup-tiled GEMM for GPUs.
const GEMM_WORKGROUP: Shader = shader!("gemm_workgroup");

/// Matches `struct Params` in shaders/linear.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    stride: u32,
    group_words: u32,
    groups: u32,
    out_stride: u32,
    col_off: u32,
    x_pitch: u32,
    m_off: u32,
    _pad: [u32; 2],
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["gemv_q", "gemm_q", "gemm_workgroup"], ["FMT_Q8"], "Params", [m, n, k, stride, group_words, groups, out_stride, col_off, x_pitch, m_off]);

/// A Linear layer's weights on the GPU: each weight row padded to a multiple of four words
/// so kernels may read whole vec4<u32>s, split by output rows over storage bindings.
#[derive(Clone)]
pub struct QLinear {
    format: WeightFormat,
    in_features: usize,
    out_features: usize,
    bytes: usize,
    weights: GpuMatrix,
    /// The bias of each block of `weights`' rows.
    biases: Vec<wgpu::Buffer>,
    /// Scale groups per row as the kernels see them, and words per group: one group spanning
    /// the padded row for unscaled and per-channel formats.
    groups: u32,
    group_words: u32,
    /// Uniform buffer GEMV stages x in (see X_UNIFORM in gemv_q.wgsl), made on first use.
    x_staging: OnceLock<wgpu::Buffer>,
}

/// Bytes of the X_UNIFORM staging buffer (`array<vec4<f32>, 4096>` in the shader).
const X_STAGING_BYTES: u64 = 65536;

impl QLinear {
    /// Uploads `w` (`out_features × in_features`) and an optional bias of `out_features`.
    pub fn new(gpu: &Gpu, w: &PackedMatrix, bias: Option<&[f32]>) -> Result<QLinear> {
        if w.rows == 0 || w.cols == 0 {
            return Err(Error::Shape(format!("empty {}×{} weight", w.rows, w.cols)));
        }
        if w.data.len() != w.rows * w.row_words {
            return Err(Error::Shape(format!("packed weight has {} words, expected {}", w.data.len(), w.rows * w.row_words)));
        }
        if let Some(b) = bias {
            if b.len() != w.rows {
                return Err(Error::Shape(format!("bias has {} values, the layer {} outputs", b.len(), w.rows)));
            }
        }
        let per_word = w.format.per_word();
        let gs = w.format.group_size(w.cols);
        if gs != 0 && gs < w.cols && !gs.is_multiple_of(per_word) {
            return Err(Error::Invalid(format!("{}: group size {gs} is not whole words", w.format.name())));
        }
        let weights = GpuMatrix::upload(gpu, w, RowLayout::RowMajor { align: 4 }, "weights")?;
        let (groups, group_words) = if gs == 0 || gs >= w.cols { (1, weights.stride) } else { (w.groups, gs / per_word) };
        let zeros = vec![0f32; w.rows];
        let bias = bias.unwrap_or(&zeros);
        let biases = weights.blocks.iter().map(|b| gpu.upload(bytemuck::cast_slice(&bias[b.rows.clone()]), "bias")).collect::<Result<_>>()?;
        Ok(QLinear {
            format: w.format,
            in_features: w.cols,
            out_features: w.rows,
            bytes: w.bytes(),
            weights,
            biases,
            groups: groups as u32,
            group_words: group_words as u32,
            x_staging: OnceLock::new(),
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of packed weights, scales and zero points (as `PackedMatrix::bytes`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Storage bindings the weights were split into.
    pub fn chunks(&self) -> usize {
        self.weights.blocks.len()
    }
}

/// `out = act(x · Wᵀ + b)` for `x` of shape [..., in_features] and `out` [..., out_features],
/// with the variant `kernels::launch` picks for this adapter.
pub fn linear(gpu: &Gpu, enc: &mut Encoder, layer: &QLinear, x: &Tensor, out: &Tensor, act: Option<Activation>) -> Result<()> {
    let m = check_args(layer, x, out)?;
    linear_with(gpu, enc, layer, x, out, act, variant_for(gpu, m, layer.out_features()))
}

/// The variant `linear` runs for `m` rows of x and `n` outputs on this adapter: the launch
/// table's (or `--tune`'s) pick, spread over at least two workgroups per thread of a CPU
/// adapter (llvmpipe runs one thread per core).
pub fn variant_for(gpu: &Gpu, m: usize, n: usize) -> Variant {
    // Asked once per process: `available_parallelism` reads cgroup files, and this runs for
    // every Linear of every recorded pass (each decode step).
    static THREADS: OnceLock<usize> = OnceLock::new();
    let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(4, |t| t.get()));
    launch::linear_plan(gpu).for_rows(m).spread(n, 2 * threads)
}

/// `linear` with a forced kernel variant (for tuning and for testing every variant).
pub fn linear_with(
    gpu: &Gpu,
    enc: &mut Encoder,
    layer: &QLinear,
    x: &Tensor,
    out: &Tensor,
    act: Option<Activation>,
    variant: Variant,
) -> Result<()> {
    let m = check_args(layer, x, out)?;
    let mut defines = layer.format.wgsl_defines();
    if let Some(act) = act {
        match act.fused_define() {
            Some(define) => defines.push(define),
            None => crate::invalid!("linear: {act:?} is not fused into the Linear kernels (run it as an element-wise pass)"),
        }
    }
    let x_pitch = staged_pitch(gpu, layer, variant);
    if x_pitch > 0 {
        defines.push("X_UNIFORM");
        if layer.format.per_word() < 4 {
            defines.push("FLOAT_CHUNK");
        }
    }
    // Slices of x rows: all of them, or as many as fit the uniform staging buffer.
    let per_slice = if x_pitch > 0 { (X_STAGING_BYTES / (x_pitch as u64 * 16)) as usize } else { m };
    for start in (0..m).step_by(per_slice) {
        let rows = per_slice.min(m - start);
        if x_pitch > 0 {
            stage_x(gpu, enc, layer, x, start..start + rows, x_pitch)?;
        }
        dispatch_slice(gpu, enc, layer, x, out, &defines, variant, start, rows, x_pitch)?;
    }
    Ok(())
}

/// Dispatches every weight chunk for rows `m_off..m_off + m` of x.
#[allow(clippy::too_many_arguments)]
fn dispatch_slice(
    gpu: &Gpu,
    enc: &mut Encoder,
    layer: &QLinear,
    x: &Tensor,
    out: &Tensor,
    defines: &[&'static str],
    variant: Variant,
    m_off: usize,
    m: usize,
    x_pitch: u32,
) -> Result<()> {
    let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
    for (c, bias) in layer.weights.blocks.iter().zip(&layer.biases) {
        // gemv_coop reads one word per lane (gemv_wide a vec4, where groups are whole vec4s);
        // gemm_workgroup reads one word per lane while staging (coalesced across lanes).
        let vec4 = layer.group_words.is_multiple_of(4) && !matches!(variant, Variant::GemvCoop { .. } | Variant::GemmWorkgroup { .. });
        let variant = match variant {
            Variant::GemvWide { wg, team } if !vec4 => Variant::GemvCoop { wg, team },
            v => v,
        };
        let mut defs = defines.to_vec();
        if vec4 {
            defs.push("VEC4");
        }
        let n = c.rows.len();
        let (shader, entry, constants, groups) = match variant {
            Variant::GemvRows { wg, rows } => {
                check_range("rows", rows, 1, 16)?;
                let consts = vec![("WG", wg as f64), ("ROWS", rows as f64)];
                (&GEMV, "gemv_rows", consts, [n.div_ceil((wg * rows) as usize), m, 1])
            }
            Variant::GemvCoop { wg, team } | Variant::GemvWide { wg, team } => {
                if !team.is_power_of_two() || wg % team != 0 {
                    return Err(Error::Invalid(format!("gemv_coop needs power-of-two teams that divide the workgroup, got {team} of {wg}")));
                }
                // subgroupAdd stands in for the team's reduction only when every subgroup is
                // exactly one team.
                let c = gpu.caps;
                if c.subgroups && c.subgroup_min_size == team && c.subgroup_max_size == team {
                    defs.push("SUBGROUPS");
                }
                let [gx, gy, _] = gpu.grid(n.div_ceil((wg / team) as usize) as u32);
                (&GEMV, "gemv_coop", vec![("WG", wg as f64), ("TEAM", team as f64)], [gx as usize, gy as usize, m])
            }
            Variant::GemmTiled { wg, tm, tn } => {
                check_range("tm", tm, 1, 8)?;
                check_range("tn", tn, 1, 8)?;
                let consts = vec![("WG", wg as f64), ("TM", tm as f64), ("TN", tn as f64)];
                (&GEMM, "gemm_tiled", consts, [n.div_ceil((wg * tn) as usize), m.div_ceil(tm as usize), 1])
            }
            Variant::GemmWorkgroup { bm, bn, tm, tn } => {
                let t = WorkgroupTile::new(gpu, layer.format, bm, bn, tm, tn)?;
                let consts = vec![("WG", t.invocations as f64), ("BM", bm as f64), ("BN", bn as f64), ("BK", t.bk as f64), ("TM", tm as f64), ("TN", tn as f64)];
                (&GEMM_WORKGROUP, "gemm_workgroup", consts, [n.div_ceil(bn as usize), m.div_ceil(bm as usize), 1])
            }
        };
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Invalid(format!("linear: {m} rows of x need a {groups:?} grid, over the limit {max}")));
        }
        let pipe = gpu.pipeline(shader, entry, &defs, &constants)?;
        let p = Params {
            m: m as u32,
            n: n as u32,
            k: layer.in_features as u32,
            stride: layer.weights.stride as u32,
            group_words: layer.group_words,
            groups: layer.groups,
            out_stride: layer.out_features as u32,
            col_off: c.rows.start as u32,
            x_pitch,
            m_off: m_off as u32,
            _pad: [0; 2],
        };
        let x_buf = match (x_pitch, layer.x_staging.get()) {
            (0, _) => &*x.buffer,
            (_, Some(staged)) => staged,
            (_, None) => return Err(Error::Invalid("linear: x was not staged".into())),
        };
        let mut buffers = vec![x_buf, bias, &*out.buffer, &c.data];
        buffers.extend(c.scales.iter().chain(&c.zeros));
        gpu.dispatch(enc, &pipe, params(&p), &buffers, groups.map(|g| g as u32))?;
    }
    Ok(())
}

/// Row pitch (vec4s) of x staged in a uniform buffer for this variant, or 0 when the kernel
/// reads x from storage: staging suits the CPU-oriented variants, when at least one padded row
/// fits the staging buffer, on formats with ≥ 4 elements per word, or F32/F16 read a vec4 chunk
/// at a time (FLOAT_CHUNK: rows padded to whole chunks).
fn staged_pitch(gpu: &Gpu, layer: &QLinear, variant: Variant) -> u32 {
    let per_word = layer.format.per_word();
    let pitch = layer.weights.stride as u64 * per_word as u64 / 4;
    let fits = pitch * 16 <= X_STAGING_BYTES.min(gpu.limits.max_uniform_buffer_binding_size);
    let wanted = matches!(variant, Variant::GemvRows { .. } | Variant::GemmTiled { .. });
    let whole_words = per_word >= 4 || layer.group_words.is_multiple_of(4);
    if wanted && whole_words && fits { pitch as u32 } else { 0 }
}

/// Copies x rows `rows` into the layer's uniform staging buffer, each zero-padded to `pitch`
/// vec4s (the padded weight row, so the kernel needs no masking).
fn stage_x(gpu: &Gpu, enc: &mut Encoder, layer: &QLinear, x: &Tensor, rows: Range<usize>, pitch: u32) -> Result<()> {
    let buf = match layer.x_staging.get() {
        Some(b) => b,
        None => {
            let b = gpu.scoped(|| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("x staging"),
                    size: X_STAGING_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            layer.x_staging.get_or_init(|| b)
        }
    };
    let k = layer.in_features as u64;
    let raw = enc.raw();
    raw.clear_buffer(buf, 0, None);
    for (i, row) in rows.enumerate() {
        raw.copy_buffer_to_buffer(&x.buffer, row as u64 * k * 4, buf, i as u64 * pitch as u64 * 16, k * 4);
    }
    Ok(())
}

/// A `GemmWorkgroup` tile (shaders/tile.wgsl, used by the GEMM and the convolution) checked
/// against this adapter, with the k step it stages.
pub(crate) struct WorkgroupTile {
    pub bk: u32,
    pub invocations: u32,
}

impl WorkgroupTile {
    pub fn new(gpu: &Gpu, format: WeightFormat, bm: u32, bn: u32, tm: u32, tn: u32) -> Result<Self> {
        let variant = Variant::GemmWorkgroup { bm, bn, tm, tn };
        let bad = |why: String| Err(Error::Invalid(format!("{}: {why}", variant.name())));
        check_range("tm", tm, 1, 8)?;
        if tn != 4 && tn != 8 {
            return bad(format!("tn must be 4 or 8, got {tn}"));
        }
        if bm == 0 || bn == 0 || !bm.is_multiple_of(tm) || !bn.is_multiple_of(tn) || !bm.is_multiple_of(4) {
            return bad("the tile must be a multiple of 4 rows and of the per-invocation block".into());
        }
        let invocations = (bm / tm) * (bn / tn);
        if invocations > gpu.limits.max_compute_invocations_per_workgroup || invocations > gpu.limits.max_compute_workgroup_size_x {
            return bad(format!("{invocations} invocations per workgroup exceed this adapter's limit"));
        }
        // The deepest k step whose staged x and weights fit the workgroup memory: whole words
        // of every format (PW ≤ 16 divides 16 and 32) and whole vec4s.
        let limit = gpu.limits.max_compute_workgroup_storage_size;
        let per_wg = |bk: u32| (bm + bn) * bk * 4;
        let Some(bk) = [32, 16].into_iter().find(|&bk| per_wg(bk) <= limit) else {
            return bad(format!("needs {} bytes of workgroup memory, the adapter has {limit}", per_wg(16)));
        };
        debug_assert_eq!(bk % format.per_word() as u32, 0);
        Ok(WorkgroupTile { bk, invocations })
    }
}

fn check_range(what: &str, v: u32, lo: u32, hi: u32) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::Invalid(format!("variant {what} = {v} outside {lo}..={hi}")));
    }
    Ok(())
}

/// Rows of x (all leading dimensions flattened) after checking x and out against the layer.
fn check_args(layer: &QLinear, x: &Tensor, out: &Tensor) -> Result<usize> {
    x.expect_dtype("linear input", DType::F32)?;
    out.expect_dtype("linear output", DType::F32)?;
    let (k, n) = (layer.in_features, layer.out_features);
    if x.shape.last() != Some(&k) {
        return Err(Error::Shape(format!("linear: input {:?} must end in in_features = {k}", x.shape)));
    }
    let m = x.numel() / k;
    let want: Vec<usize> = x.shape[..x.shape.len() - 1].iter().copied().chain([n]).collect();
    if out.shape != want && out.shape != [m, n] {
        return Err(Error::Shape(format!("linear: output {:?} should be {want:?} for input {:?}", out.shape, x.shape)));
    }
    if m == 0 || m > u32::MAX as usize {
        return Err(Error::Shape(format!("linear: {m} rows of input")));
    }
    Ok(m)
}

/// CPU reference: `act(x · Wᵀ + b)` with the exact weights the GPU decodes, in f64.
pub fn linear_reference(w: &PackedMatrix, bias: Option<&[f32]>, x: &[f32], m: usize, act: Option<Activation>) -> Vec<f32> {
    let (k, n) = (w.cols, w.rows);
    assert_eq!(x.len(), m * k, "linear_reference: x is not {m}×{k}");
    let wd = w.dequantize();
    let mut out = Vec::with_capacity(m * n);
    for xr in x.chunks(k) {
        for (j, wr) in wd.chunks(k).enumerate() {
            let dot: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let v = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
            out.push(act.map_or(v, |a| a.reference(v)));
        }
    }
    out
}
