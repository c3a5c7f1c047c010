//! One module per WGSL kernel family. Each module holds the dispatch code, its plain-Rust CPU
//! reference (`reference` submodule or `*_reference` fns), and its benchmark cases; its shader
//! is `shaders/<family>.wgsl`.

pub mod act_quant;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod hadamard;
pub mod gpu_matrix;
pub mod launch;
pub mod matmul;
pub mod norm;
pub mod roofline;
pub mod vq;
pub mod w4a8;
pub mod w8a8;

pub use roofline::Bound;

use crate::{Encoder, Gpu, Result};

/// One benchmark: `step` records the kernel's dispatches; the numbers derive from its
/// metadata.
pub struct BenchCase {
    pub kernel: String,
    pub format: String,
    pub shape: String,
    /// Bytes of weights (or the equivalent streamed operand) one step reads, for GB/s.
    pub bytes: u64,
    pub flops: u64,
    pub step: BenchStep,
}

impl BenchCase {
    /// The roof this case is measured against (`roofline_pct` in `lowbit bench kernels`),
    /// derived from the kernel's name so the families' cases need not say it.
    pub fn bound(&self) -> Bound {
        Bound::for_kernel(&self.kernel)
    }
}

/// Records one benchmark step's dispatches.
pub type BenchStep = Box<dyn FnMut(&Gpu, &mut Encoder) -> Result<()>>;

/// A family's `bench_cases`.
type FamilyBenches = fn(&Gpu, BenchSize) -> Result<Vec<BenchCase>>;

/// Which benchmark shapes to build: the reference sizes BENCHMARKS.md reports, or small ones
/// for a smoke test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSize {
    Full,
    Quick,
}

/// Every family's benchmark cases, in the order `lowbit bench kernels` prints them.
pub fn bench_cases(gpu: &Gpu, size: BenchSize, filter: &dyn Fn(&str) -> bool) -> Result<Vec<BenchCase>> {
    let mut cases = Vec::new();
    let families: [(&str, FamilyBenches); 10] = [
        ("matmul", matmul::bench_cases),
        ("w8a8", w8a8::bench_cases),
        ("w4a8", w4a8::bench_cases),
        ("attention", attention::bench_cases),
        ("kv_cache", attention::kv_cache::bench_cases),
        ("vq", vq::bench_cases),
        ("norm", norm::bench_cases),
        ("elementwise", elementwise::bench_cases),
        ("conv", conv::bench_cases),
        ("act_quant", act_quant::bench_cases),
    ];
    for (name, f) in families {
        if filter(name) {
            cases.extend(f(gpu, size)?);
        }
    }
    Ok(cases)
}

/// Bytes of a `#[repr(C)]` parameter block.
pub(crate) fn params<T: bytemuck::Pod>(p: &T) -> &[u8] {
    bytemuck::bytes_of(p)
}

/// Every parameter block a kernel family passes to its shaders (tests/contracts.rs).
pub fn params_layouts() -> Vec<&'static crate::gpu::contract::ParamsLayout> {
    vec![
        &act_quant::AQ_PARAMS_LAYOUT,
        &act_quant::PARAMS_LAYOUT,
        &attention::PARAMS_LAYOUT,
        &attention::kv_cache::PARAMS_LAYOUT,
        &conv::PARAMS_LAYOUT,
        &elementwise::PARAMS_LAYOUT,
        &hadamard::PARAMS_LAYOUT,
        &matmul::PARAMS_LAYOUT,
        &norm::PARAMS_LAYOUT,
        &roofline::PARAMS_LAYOUT,
        &vq::SEARCH_PARAMS_LAYOUT,
        &vq::LOOKUP_PARAMS_LAYOUT,
        &w8a8::PARAMS_LAYOUT,
        &w4a8::PARAMS_LAYOUT,
    ]
}
