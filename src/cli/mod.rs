//! The `lowbit` command line: a thin layer over library calls.

// First, so that `outln!` is in scope in every command's module.
#[macro_use]
pub(crate) mod output;
mod bench;
mod classify;
mod codec;
mod compare;
mod decode;
mod demo;
mod demo_codec;
mod encode;
mod eval;
mod info;
mod interrupt;
mod label;
mod model;
mod quantize;
mod generate;
mod test_ops;
#[cfg(all(feature = "viewer", not(target_arch = "wasm32")))]
mod viewer;

use clap::{Parser, Subcommand};

use crate::{Gpu, GpuOptions};

#[derive(Parser)]
#[command(name = "lowbit", version, about = "Quantized vision models on any GPU (wgpu/WGSL)")]
struct Cli {
    /// Use the first adapter whose name contains this text (see `lowbit devices`).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Switch off optional GPU features to use the fallback kernels: f16,subgroups,packed_dot,coopmat or all.
    #[arg(long, global = true, value_name = "LIST")]
    disable: Option<String>,
    /// Which kernels run: `auto` (the launch table's row for this adapter), `cpu` (the
    /// llvmpipe-tuned ones) or `gpu` (the workgroup-tiled GPU ones), on any adapter.
    #[arg(long, global = true, value_name = "auto|cpu|gpu")]
    plan: Option<String>,
    /// Print nothing on stderr but errors (no progress bars, no warnings).
    #[arg(long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print each step's time (calibration, quantization, encode/decode) on stderr.
    #[arg(long, global = true)]
    verbose: bool,
    /// Load folders written by `lowbit quantize` without checking their files against the
    /// SHA-256 checksums in quantization.json.
    #[arg(long, global = true)]
    no_verify: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the end-to-end showcase and print what it measured.
    Demo(demo::DemoArgs),
    /// Benchmarks: `lowbit bench kernels [--json] [--tune]`, `bench roofline [--json]`, `bench model`.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Classify images with a timm classifier (the ViT family or Swin).
    Classify(classify::ClassifyArgs),
    /// Compress images to a .lbt file: VQGAN tokens, rANS-coded under a prior or a uniform model.
    Compress(codec::CompressArgs),
    /// Restore a .lbt file's tokens exactly and decode them to images.
    Decompress(codec::DecompressArgs),
    /// Decode VQ tokens to images with a taming-transformers VQGAN decoder.
    Decode(decode::DecodeArgs),
    /// Encode images to VQ tokens with a taming-transformers VQGAN encoder.
    Encode(encode::EncodeArgs),
    /// Architecture, parameters, bytes per weight format and planned peak GPU memory of a model.
    Info(info::InfoArgs),
    /// Top-1/top-5 accuracy of a classifier on an ImageFolder (DIR/<class>/<image>).
    Eval(eval::EvalArgs),
    /// SQNR/cosine (and PSNR/SSIM for decoders) of a model's outputs against a reference's.
    Compare(compare::CompareArgs),
    /// Post-training quantization of a timm classifier (ViT family, Swin) or a VQGAN into a packed checkpoint folder.
    Quantize(quantize::QuantizeArgs),
    /// Generate images of a class: a minGPT prior samples VQ tokens, the VQGAN decodes them.
    Generate(generate::GenerateArgs),
    /// List the GPU adapters wgpu can see, with their optional features and limits.
    Devices,
    /// Check every kernel and variant against its CPU reference on this adapter (NMSE per case).
    TestOps(test_ops::TestOpsArgs),
    /// Interactive window over the shipped models (generate, round-trip, classify, precision).
    #[cfg(all(feature = "viewer", not(target_arch = "wasm32")))]
    Viewer(viewer::ViewerArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    interrupt::install();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    crate::log::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => crate::log::Verbosity::Quiet,
        (_, true) => crate::log::Verbosity::Verbose,
        _ => crate::log::Verbosity::Normal,
    });
    crate::models::checksums::set_verify(!cli.no_verify);
    let mut opts = GpuOptions::from_env();
    if cli.adapter.is_some() {
        opts.adapter = cli.adapter.clone();
    }
    if let Some(plan) = &cli.plan {
        opts.plan = crate::gpu::KernelPlan::parse(plan).map_err(|e| anyhow::anyhow!("--plan: {e}"))?;
    }
    if let Some(list) = &cli.disable {
        opts.disable(list).map_err(|e| anyhow::anyhow!("--disable: {e}"))?;
    }
    match cli.command {
        Command::Devices => devices(&opts),
        Command::Bench { what } => bench::run(&Gpu::with_options(&opts)?, what),
        Command::Demo(args) => demo::run(&Gpu::with_options(&opts)?, args),
        Command::Classify(args) => classify::run(&Gpu::with_options(&opts)?, args),
        Command::Compress(args) => codec::compress(&Gpu::with_options(&opts)?, args),
        Command::Decompress(args) => codec::decompress(&Gpu::with_options(&opts)?, args),
        Command::Decode(args) => decode::run(&Gpu::with_options(&opts)?, args),
        Command::Encode(args) => encode::run(&Gpu::with_options(&opts)?, args),
        Command::Info(args) => info::run(&Gpu::with_options(&opts)?, args),
        Command::Eval(args) => eval::run(&Gpu::with_options(&opts)?, args),
        Command::Compare(args) => compare::run(&Gpu::with_options(&opts)?, args),
        Command::Quantize(args) => quantize::run(&Gpu::with_options(&opts)?, args),
        Command::Generate(args) => generate::run(&Gpu::with_options(&opts)?, args),
        Command::TestOps(args) => test_ops::run(&Gpu::with_options(&opts)?, args),
        // The viewer opens its own device (eframe's, shared with the engine).
        #[cfg(all(feature = "viewer", not(target_arch = "wasm32")))]
        Command::Viewer(args) => viewer::run(opts, args),
    }
}

/// Runs one command line (the words after `lowbit`) on an open device, in this process: what
/// the soak test (tests/soak.rs) repeats to check that commands leave nothing behind. The
/// commands that open a device of their own (devices, viewer) or have none are refused.
pub fn run_args(gpu: &Gpu, args: &[&str]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("lowbit").chain(args.iter().copied()))?;
    match cli.command {
        Command::Classify(args) => classify::run(gpu, args),
        Command::Decode(args) => decode::run(gpu, args),
        Command::Encode(args) => encode::run(gpu, args),
        Command::Generate(args) => generate::run(gpu, args),
        Command::Demo(args) => demo::run(gpu, args),
        Command::Quantize(args) => quantize::run(gpu, args),
        Command::Info(args) => info::run(gpu, args),
        _ => anyhow::bail!("`{}` does not run in-process; run the lowbit binary", args.first().unwrap_or(&"")),
    }
}

fn devices(opts: &GpuOptions) -> anyhow::Result<()> {
    for info in Gpu::adapters() {
        outln!("{} ({:?}, {:?}, driver {})", info.name, info.backend, info.device_type, info.driver);
    }
    let gpu = Gpu::with_options(opts)?;
    let c = gpu.caps;
    outln!("\nselected: {}  class {:?}, kernel plan {:?}", gpu.adapter_name(), gpu.adapter_class, gpu.class);
    outln!(
        "  shader-f16 {}  subgroups {} (size {}..{})  packed_4x8_integer_dot_product {}  timestamps {}  cooperative matrix {}",
        c.f16, c.subgroups, c.subgroup_min_size, c.subgroup_max_size, c.packed_dot, c.timestamps, c.coopmat
    );
    for s in &gpu.coopmat_shapes {
        outln!("    coopmat {}x{}x{} {:?} -> {:?}", s.m_size, s.n_size, s.k_size, s.ab_type, s.cr_type);
    }
    outln!(
        "  max storage binding {} MiB, max buffer {} MiB, workgroup memory {} KiB",
        gpu.max_binding_size() >> 20,
        gpu.limits.max_buffer_size >> 20,
        gpu.limits.max_compute_workgroup_storage_size >> 10
    );
    Ok(())
}
