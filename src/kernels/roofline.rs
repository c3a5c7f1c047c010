//! Roofline probes (`lowbit bench roofline`): what this adapter can attain at best, measured
//! rather than taken from a data sheet: copy bandwidth, f32/f16 FMA rate, packed int8 dot rate
//! and cooperative-matrix rate. `lowbit bench kernels` reports each kernel as a share of the
//! bound that limits it (`Bound`, `Roofline::percent`). Shader: `shaders/roofline.wgsl`.

use super::{params, BenchSize};
use crate::gpu::{AdapterClass, Shader};
use crate::{shader, Error, Gpu, Result};

const SHADER: Shader = shader!("roofline");
const WG: u32 = 256;
/// FLOP (or int8 ops) per loop trip of the arithmetic probes: 8 chains × 4 lanes × 2.
const OPS_PER_TRIP: u64 = 64;
/// Copy buffer size on GPUs: far past any last-level cache (the largest are ~100-250 MiB).
const COPY_BYTES_FULL: u64 = 256 << 20;
const COPY_BYTES_QUICK: u64 = 4 << 20;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    iters: u32,
    mul: f32,
    add: f32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["roofline"], [], "Params", [n, iters, mul, add]);

/// Which roof limits a kernel: memory traffic, or the arithmetic rate of the units it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    Bandwidth,
    F32Flops,
    Int8Ops,
}

impl Bound {
    /// The roof of a benchmark kernel, by its name: GEMMs, convolutions, attention and VQ search
    /// do many FLOP per byte; W8A8 GEMMs run on packed int8 dots; everything else (GEMV,
    /// norms, element-wise ops, the KV-cache read, quantizers) streams memory.
    pub fn for_kernel(kernel: &str) -> Bound {
        match kernel {
            "w8a8_gemm" | "w4a8_gemm" | "w4a4_gemm" => Bound::Int8Ops,
            "gemm" | "conv3x3" | "conv1x1" | "patch_embed" | "attention" | "vq_search" => Bound::F32Flops,
            _ => Bound::Bandwidth,
        }
    }
}

/// The measured roofs a `bench kernels` run needs.
#[derive(Clone, Copy, Debug)]
pub struct Roofline {
    pub copy_gbps: f64,
    pub f32_gflops: Option<f64>,
    /// `None` where the adapter lacks the packed dot (W8A8 then falls back to f32 math).
    pub int8_gops: Option<f64>,
}

impl Roofline {
    /// Measures the roofs `bounds` need (bandwidth always: every roof has a memory side).
    pub fn measure(gpu: &Gpu, size: BenchSize, bounds: &[Bound]) -> Result<Roofline> {
        let copy_gbps = copy_bandwidth(gpu, size, 3)?;
        let int8 = bounds.contains(&Bound::Int8Ops) && gpu.caps.packed_dot;
        let f32_needed = bounds.contains(&Bound::F32Flops) || (bounds.contains(&Bound::Int8Ops) && !int8);
        Ok(Roofline {
            copy_gbps,
            f32_gflops: if f32_needed { Some(f32_fma(gpu, size, 3)?) } else { None },
            int8_gops: if int8 { int8_dot(gpu, size, 3)? } else { None },
        })
    }

    /// `ms` as a percentage of the fastest time the roofline allows for a step that moves
    /// `bytes` and does `flops`: bytes / bandwidth for memory-bound kernels, the larger of that
    /// and flops / peak for compute-bound ones (the int8 peak for W8A8 where the adapter has
    /// it, else f32). `None` if a needed roof was not measured.
    pub fn percent(&self, bound: Bound, bytes: u64, flops: u64, ms: f64) -> Option<f64> {
        let memory_ms = bytes as f64 / (self.copy_gbps * 1e9) * 1e3;
        let peak = match bound {
            Bound::Bandwidth => None,
            Bound::F32Flops => Some(self.f32_gflops?),
            Bound::Int8Ops => Some(self.int8_gops.or(self.f32_gflops)?),
        };
        let compute_ms = peak.map_or(0.0, |p| flops as f64 / (p * 1e9) * 1e3);
        (ms > 0.0).then(|| 100.0 * memory_ms.max(compute_ms) / ms)
    }
}

/// One probe's result for `lowbit bench roofline`: `value` is `None` where the adapter lacks
/// the feature, with the reason in `note`.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub probe: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub note: String,
}

/// Every probe, in the order `lowbit bench roofline` prints them.
pub fn run_all(gpu: &Gpu, size: BenchSize) -> Result<Vec<ProbeResult>> {
    let reps = if size == BenchSize::Quick { 3 } else { 10 };
    let row = |probe: &str, value: Option<f64>, unit, note: &str| ProbeResult {
        probe: probe.into(),
        value,
        unit,
        note: note.into(),
    };
    let copy_bytes = copy_size(gpu, size);
    let mut out = vec![
        row("copy_bandwidth", Some(copy_bandwidth(gpu, size, reps)?), "GB/s", &format!("{} MiB read and {0} MiB written", copy_bytes >> 20)),
        row("f32_fma", Some(f32_fma(gpu, size, reps)?), "GFLOP/s", ""),
    ];
    out.push(match gpu.caps.f16 {
        true => row("f16_fma", f16_fma(gpu, size, reps)?, "GFLOP/s", ""),
        false => row("f16_fma", None, "GFLOP/s", "no shader-f16"),
    });
    out.push(match gpu.caps.packed_dot {
        true => row("int8_dot", int8_dot(gpu, size, reps)?, "GOP/s", "dot4I8Packed"),
        false => row("int8_dot", None, "GOP/s", "no packed_4x8_integer_dot_product"),
    });
    out.push(match CoopConfig::pick(gpu) {
        Ok(cfg) => row(cfg.probe(), Some(coopmat(gpu, cfg, size, reps)?), "GFLOP/s", cfg.describe()),
        Err(why) => row("coopmat_f16", None, "GFLOP/s", &why),
    });
    Ok(out)
}

/// Bytes of each of the copy probe's two buffers: the full size where the binding limit
/// allows, in whole workgroups of vec4s.
fn copy_size(gpu: &Gpu, size: BenchSize) -> u64 {
    let want = if size == BenchSize::Quick { COPY_BYTES_QUICK } else { COPY_BYTES_FULL };
    let cap = gpu.max_binding_size().min(gpu.limits.max_buffer_size);
    let unit = 16 * WG as u64;
    (want.min(cap) / unit).max(1) * unit
}

/// Vec4s each invocation of `copy_runs` copies (the shader's CHUNK).
const COPY_RUN: u64 = 16;

/// Read + write bandwidth of a vec4 copy, in GB/s (bytes read plus bytes written per second):
/// the better of one vec4 per invocation (what GPUs coalesce) and a run of vec4s per
/// invocation (what CPU adapters' SIMD lanes stream best).
pub fn copy_bandwidth(gpu: &Gpu, size: BenchSize, reps: usize) -> Result<f64> {
    let bytes = copy_size(gpu, size);
    let src = storage(gpu, bytes, "roofline src")?;
    let dst = storage(gpu, bytes, "roofline dst")?;
    let mut best = 0f64;
    for (entry, per_invocation) in [("copy", 1), ("copy_runs", COPY_RUN)] {
        let n = (bytes / 16 / per_invocation) as u32;
        let pipe = gpu.pipeline(&SHADER, entry, &[], &[("WG", WG as f64), ("CHUNK", COPY_RUN as f64)])?;
        let p = Params { n, iters: 0, mul: 0.0, add: 0.0 };
        let groups = gpu.grid(n.div_ceil(WG));
        let (ms, _) = gpu.time_step(reps, |enc| gpu.dispatch(enc, &pipe, params(&p), &[&src, &dst], groups))?;
        best = best.max(2.0 * (n as u64 * 16 * per_invocation) as f64 / (ms * 1e-3) / 1e9);
    }
    Ok(best)
}

/// f32 FMA rate in GFLOP/s (an FMA counts as 2 FLOP): the better of 8 chains per invocation
/// (what GPUs need to hide latency) and 2 (what fits a CPU adapter's SIMD registers).
pub fn f32_fma(gpu: &Gpu, size: BenchSize, reps: usize) -> Result<f64> {
    let wide = arithmetic(gpu, "fma_f32", &[], size, reps, OPS_PER_TRIP)?;
    let narrow = arithmetic(gpu, "fma_f32_narrow", &[], size, reps, OPS_PER_TRIP / 4)?;
    Ok(wide.max(narrow))
}

/// f16 FMA rate in GFLOP/s; `None` without shader-f16.
pub fn f16_fma(gpu: &Gpu, size: BenchSize, reps: usize) -> Result<Option<f64>> {
    if !gpu.caps.f16 {
        return Ok(None);
    }
    arithmetic(gpu, "fma_f16", &["F16"], size, reps, OPS_PER_TRIP).map(Some)
}

/// Packed int8 dot rate in GOP/s (each `dot4I8Packed` counts 4 multiplies and 4 adds);
/// `None` without the WGSL packed dot product.
pub fn int8_dot(gpu: &Gpu, size: BenchSize, reps: usize) -> Result<Option<f64>> {
    if !gpu.caps.packed_dot {
        return Ok(None);
    }
    arithmetic(gpu, "dot_i8", &[], size, reps, OPS_PER_TRIP).map(Some)
}

/// Invocations of the arithmetic probes: enough to fill the largest GPUs (~270k resident
/// threads on an H100), fewer on CPU adapters, whose threads run invocations in turn.
fn invocations(gpu: &Gpu, size: BenchSize) -> u32 {
    match (size, gpu.adapter_class) {
        (BenchSize::Quick, _) => 1 << 12,
        (BenchSize::Full, AdapterClass::Cpu) => 1 << 16,
        (BenchSize::Full, _) => 1 << 20,
    }
}

/// Runs one arithmetic probe: the loop count is raised until a step lasts about the target
/// time (long enough to dwarf launch overhead and timer resolution on any adapter).
fn arithmetic(gpu: &Gpu, entry: &str, defines: &[&str], size: BenchSize, reps: usize, ops_per_trip: u64) -> Result<f64> {
    let n = invocations(gpu, size);
    let dst = storage(gpu, 16 * n as u64, "roofline out")?;
    let src = storage(gpu, 16, "roofline unused")?;
    let pipe = gpu.pipeline(&SHADER, entry, defines, &[("WG", WG as f64)])?;
    let groups = gpu.grid(n.div_ceil(WG));
    // The int8 probe ignores these; the FMA chains stay near add / (1 - mul).
    let mut p = Params { n, iters: 16, mul: 0.999, add: 0.001 };
    let ms = calibrate(gpu, size, reps, &mut p.iters, |iters, reps| {
        let p = Params { iters, ..p };
        gpu.time_step(reps, |enc| gpu.dispatch(enc, &pipe, params(&p), &[&src, &dst], groups)).map(|t| t.0)
    })?;
    Ok(n as f64 * p.iters as f64 * ops_per_trip as f64 / (ms * 1e-3) / 1e9)
}

/// Grows `iters` until a step takes the target time, then times `reps` steps at that count.
fn calibrate(gpu: &Gpu, size: BenchSize, reps: usize, iters: &mut u32, mut time: impl FnMut(u32, usize) -> Result<f64>) -> Result<f64> {
    let target_ms = if size == BenchSize::Quick { 2.0 } else if gpu.adapter_class == AdapterClass::Cpu { 50.0 } else { 20.0 };
    const MAX_ITERS: u32 = 1 << 22;
    loop {
        let ms = time(*iters, 1)?;
        if ms >= target_ms / 2.0 || *iters >= MAX_ITERS {
            break;
        }
        let scale = if ms > 0.0 { (target_ms / ms).clamp(2.0, 64.0) } else { 64.0 };
        *iters = ((*iters as f64 * scale) as u32).min(MAX_ITERS);
    }
    time(*iters, reps)
}

fn storage(gpu: &Gpu, bytes: u64, label: &str) -> Result<wgpu::Buffer> {
    gpu.check_binding(bytes, label)?;
    gpu.scoped(|| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}

/// A cooperative-matrix tile configuration the probe shader has: square tiles, A and B of one
/// type, f32 accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopConfig {
    /// 16×16×16, f16 inputs (the shape tensor cores and most Vulkan drivers offer).
    F16x16,
    /// 8×8×8 f32 (the shape wgpu 30 guarantees where it enables the feature).
    F32x8,
}

impl CoopConfig {
    /// The fastest configuration this adapter supports, or why there is none.
    pub fn pick(gpu: &Gpu) -> std::result::Result<CoopConfig, String> {
        use wgpu::CooperativeScalarType as S;
        if !gpu.caps.coopmat {
            return Err("no cooperative matrix (wgpu EXPERIMENTAL_COOPERATIVE_MATRIX)".into());
        }
        let has = |side: u32, ab: S| {
            gpu.coopmat_shapes.iter().any(|s| {
                (s.m_size, s.n_size, s.k_size) == (side, side, side) && s.ab_type == ab && s.cr_type == S::F32
            })
        };
        if gpu.caps.f16 && has(16, S::F16) {
            Ok(CoopConfig::F16x16)
        } else if has(8, S::F32) {
            Ok(CoopConfig::F32x8)
        } else {
            Err(format!("no 16x16x16 f16->f32 or 8x8x8 f32 tile among {} shapes", gpu.coopmat_shapes.len()))
        }
    }

    /// Rows (= columns) of one tile.
    pub fn side(self) -> usize {
        match self {
            CoopConfig::F16x16 => 16,
            CoopConfig::F32x8 => 8,
        }
    }

    fn define(self) -> &'static str {
        match self {
            CoopConfig::F16x16 => "COOP_F16",
            CoopConfig::F32x8 => "COOP_F32",
        }
    }

    pub fn probe(self) -> &'static str {
        match self {
            CoopConfig::F16x16 => "coopmat_f16",
            CoopConfig::F32x8 => "coopmat_f32",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CoopConfig::F16x16 => "16x16x16 f16 -> f32",
            CoopConfig::F32x8 => "8x8x8 f32",
        }
    }

    /// A and B (row-major tiles, one after the other) as the shader reads them.
    fn upload_ab(self, gpu: &Gpu, a: &[f32], b: &[f32]) -> Result<wgpu::Buffer> {
        let ab: Vec<f32> = a.iter().chain(b).copied().collect();
        match self {
            CoopConfig::F32x8 => gpu.upload(bytemuck::cast_slice(&ab), "coopmat ab"),
            CoopConfig::F16x16 => {
                let halves: Vec<half::f16> = ab.iter().map(|&v| half::f16::from_f32(v)).collect();
                gpu.upload(bytemuck::cast_slice(&halves), "coopmat ab")
            }
        }
    }
}

/// The probe shader's workgroups are one subgroup wide. Where the driver picks a smaller
/// subgroup, a workgroup holds several (each computing the same tiles), so the rate counted
/// from one tile per workgroup is a lower bound.
fn coop_workgroup(gpu: &Gpu) -> u32 {
    match gpu.caps.subgroup_max_size {
        0 => 32,
        s => s,
    }
}

/// Cooperative-matrix multiply-add rate in GFLOP/s (2·M·N·K per tile product).
pub fn coopmat(gpu: &Gpu, cfg: CoopConfig, size: BenchSize, reps: usize) -> Result<f64> {
    let t = cfg.side();
    let groups: u32 = match (size, gpu.adapter_class) {
        (BenchSize::Quick, _) => 64,
        (BenchSize::Full, AdapterClass::Cpu) => 256,
        (BenchSize::Full, _) => 16384,
    };
    let ab = cfg.upload_ab(gpu, &vec![0.01; t * t], &vec![0.01; t * t])?;
    let c = storage(gpu, (4 * (groups as usize + 1) * t * t * 4) as u64, "coopmat c")?;
    let pipe = gpu.pipeline(&SHADER, "coop_gemm", &[cfg.define()], &[("WG", coop_workgroup(gpu) as f64)])?;
    // One row of workgroups, never a 2-D grid: the shader has no bounds check to skip an
    // overshoot (naga rejected the early return such a check needs before the coop calls).
    let grid = [groups, 1, 1];
    let mut iters = 16;
    let ms = calibrate(gpu, size, reps, &mut iters, |iters, reps| {
        let p = Params { n: groups, iters, mul: 0.0, add: 0.0 };
        gpu.time_step(reps, |enc| gpu.dispatch(enc, &pipe, params(&p), &[&ab, &c], grid)).map(|t| t.0)
    })?;
    let flops_per_trip = 4.0 * 2.0 * (t * t * t) as f64;
    Ok(groups as f64 * iters as f64 * flops_per_trip / (ms * 1e-3) / 1e9)
}

/// Runs the probe shader once on one workgroup: returns its 4 output tiles, Cj + iters·A·B
/// for the 4 row-major input tiles `c` (the numerical check of the cooperative-matrix path).
pub fn coopmat_tiles(gpu: &Gpu, cfg: CoopConfig, a: &[f32], b: &[f32], c: &[f32], iters: u32) -> Result<Vec<f32>> {
    let tile = cfg.side() * cfg.side();
    if a.len() != tile || b.len() != tile || c.len() != 4 * tile {
        return Err(Error::Shape(format!("coopmat_tiles: A and B need {tile} values, C {}", 4 * tile)));
    }
    let ab = cfg.upload_ab(gpu, a, b)?;
    let mut init = c.to_vec();
    init.resize(8 * tile, 0.0);
    let out = gpu.upload(bytemuck::cast_slice(&init), "coopmat c")?;
    let pipe = gpu.pipeline(&SHADER, "coop_gemm", &[cfg.define()], &[("WG", coop_workgroup(gpu) as f64)])?;
    let mut enc = gpu.encoder();
    let p = Params { n: 1, iters, mul: 0.0, add: 0.0 };
    gpu.dispatch(&mut enc, &pipe, params(&p), &[&ab, &out], [1, 1, 1])?;
    gpu.submit(enc)?;
    let bytes = gpu.read_bytes(&out, (8 * tile * 4) as u64)?;
    Ok(bytes[16 * tile..].chunks_exact(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_get_the_roof_that_limits_them() {
        assert_eq!(Bound::for_kernel("gemv"), Bound::Bandwidth);
        assert_eq!(Bound::for_kernel("layer_norm"), Bound::Bandwidth);
        assert_eq!(Bound::for_kernel("gemm"), Bound::F32Flops);
        assert_eq!(Bound::for_kernel("conv3x3"), Bound::F32Flops);
        assert_eq!(Bound::for_kernel("w8a8_gemm"), Bound::Int8Ops);
    }

    #[test]
    fn percent_is_the_roofline_time_over_the_measured_time() {
        let roofs = Roofline { copy_gbps: 100.0, f32_gflops: Some(1000.0), int8_gops: None };
        // 1 GB at 100 GB/s: 10 ms; measured 20 ms.
        assert_eq!(roofs.percent(Bound::Bandwidth, 1_000_000_000, 0, 20.0), Some(50.0));
        // 100 GFLOP at 1000 GFLOP/s (100 ms) dominates 1 MB of memory traffic.
        let pct = roofs.percent(Bound::F32Flops, 1_000_000, 100_000_000_000, 400.0).unwrap();
        assert!((pct - 25.0).abs() < 1e-9, "{pct}");
        // W8A8 without an int8 roof falls back to the f32 one.
        assert_eq!(roofs.percent(Bound::Int8Ops, 0, 100_000_000_000, 100.0), roofs.percent(Bound::F32Flops, 0, 100_000_000_000, 100.0));
        let memory_only = Roofline { f32_gflops: None, ..roofs };
        assert_eq!(memory_only.percent(Bound::F32Flops, 0, 1, 1.0), None);
    }
}
