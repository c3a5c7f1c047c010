//! Shared test helpers: one GPU per test binary, deterministic data, the NMSE assertion.
#![allow(dead_code)]

use std::sync::OnceLock;

use lowbit::{Gpu, GpuOptions};

/// The default adapter (lavapipe in CI), shared by the tests of one binary.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)"))
}

/// The same adapter with shader-f16, subgroups and packed dot switched off, so the fallback
/// kernels run.
pub fn gpu_fallback() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::with_options(&GpuOptions::fallback()).expect("a GPU adapter"))
}

/// The default adapter with the GPU-class kernels forced (`--plan gpu`): on lavapipe this runs
/// the workgroup-tiled kernels a real GPU gets, slowly, against the same references.
pub fn gpu_plan() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::with_options(&GpuOptions::from_env().gpu_plan()).expect("a GPU adapter"))
}

/// The GPU-class kernels with every optional feature switched off.
pub fn gpu_plan_fallback() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::with_options(&GpuOptions::fallback().gpu_plan()).expect("a GPU adapter"))
}

/// Both of the above, for tests that must pass on each path.
pub fn gpus() -> [(&'static str, &'static Gpu); 2] {
    [("native", gpu()), ("fallback", gpu_fallback())]
}

/// Every kernel plan × feature path: the CPU-class kernels (native, fallback) and the
/// GPU-class ones forced on this adapter (native, fallback).
pub fn all_plans() -> [(&'static str, &'static Gpu); 4] {
    [("native", gpu()), ("fallback", gpu_fallback()), ("gpu-plan", gpu_plan()), ("gpu-plan fallback", gpu_plan_fallback())]
}

/// Deterministic pseudo-random values in [-scale, scale).
#[allow(unused_imports)]
pub use lowbit::synthetic::uniform as random;

/// Asserts NMSE(got, want) ≤ bound, printing the value so logs show the margin.
pub fn assert_nmse(what: &str, got: &[f32], want: &[f32], bound: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = lowbit::metrics::nmse(got, want);
    eprintln!("{what}: nmse {e:.3e} (bound {bound:.0e})");
    assert!(e <= bound, "{what}: nmse {e:.3e} > {bound:.0e}");
}

/// The models' parity bar against PyTorch: cosine ≥ 0.99999 and
/// max |error| ≤ 1e-3 · max |reference|.
pub fn assert_parity(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let cos = lowbit::metrics::cosine(got, want);
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: cosine {cos:.8}, max abs err {max_err:.3e} (max |ref| {max_ref:.3})");
    assert!(cos >= 0.99999, "{what}: cosine {cos}");
    assert!(max_err <= 1e-3 * max_ref, "{what}: max abs err {max_err} > 1e-3 × {max_ref}");
}

/// An f32 tensor (shape, values) of a safetensors file that may also hold integer tensors
/// (fixtures' `io.safetensors`, CLI outputs).
pub fn read_f32(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap_or_else(|_| panic!("{}: no tensor {name}", path.display()));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    (view.shape().to_vec(), view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
}

/// f32 ops bound (issue: ≤ 1e-8), quantized GEMM and attention bound (ggml's 5e-4).
pub const F32_NMSE: f64 = 1e-8;
pub const QUANT_NMSE: f64 = 5e-4;

/// A fixture folder of `tests/fixtures`.
pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Runs the `lowbit` binary built for these tests.
pub fn lowbit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lowbit")).args(args).output().expect("running lowbit")
}

/// Runs `lowbit`, requires success, returns its stdout.
pub fn lowbit_ok(args: &[&str]) -> String {
    let out = lowbit(args);
    assert!(out.status.success(), "lowbit {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
