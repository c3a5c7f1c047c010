//! `lowbit bench kernels`: median time, GB/s and GFLOP/s of every kernel and format.

use clap::{Args, Subcommand};

use std::path::PathBuf;
use std::time::Instant;

use super::model::{print_profile, weight_summary, Runnable};
use crate::gpu::timing::{median, Clock};
use crate::graph::Plan;
use crate::quant::WeightFormat;
use crate::kernels::{self, BenchCase, BenchSize};
use crate::Gpu;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every kernel family on the reference shapes.
    Kernels(KernelArgs),
    /// One model's forward pass: median latency, images/s, peak GPU memory.
    Model(ModelArgs),
}

#[derive(Args)]
pub struct ModelArgs {
    /// A model folder (timm ViT or taming VQGAN decoder).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// One JSON object: model, task, format, batch, median_ms, images_per_s, peak_gpu_bytes, ...
    #[arg(long)]
    json: bool,
    /// Weight format (f32, f16, q8, q4g32, ...).
    #[arg(long, default_value = "f32", value_name = "FMT")]
    format: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs (at least 10; the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also print GPU time per node.
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
pub struct KernelArgs {
    /// One JSON object per line: kernel, format, shape, ms, gbps, gflops, adapter.
    #[arg(long)]
    json: bool,
    /// Time every candidate variant of the tuned kernels on this adapter, print the winners and
    /// save them for this adapter (see LOWBIT_TUNING); later runs use them.
    #[arg(long)]
    tune: bool,
    /// Small shapes: a smoke test of the benchmark itself.
    #[arg(long)]
    quick: bool,
    /// Only these families (comma list: matmul, w8a8, attention, kv_cache, vq, norm, elementwise, conv, act_quant).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

pub fn run(gpu: &Gpu, cmd: BenchCommand) -> anyhow::Result<()> {
    let args = match cmd {
        BenchCommand::Kernels(args) => args,
        BenchCommand::Model(args) => return model(gpu, args),
    };
    let size = if args.quick { BenchSize::Quick } else { BenchSize::Full };
    let adapter = gpu.adapter_name();
    if !args.json {
        println!("adapter: {adapter}  (class {:?}, caps {:?})", gpu.class, gpu.caps);
    }
    if args.tune {
        return tune(gpu, size, &args);
    }
    let only = args.only.clone();
    let filter = move |family: &str| only.is_empty() || only.iter().any(|o| o == family);
    let cases = kernels::bench_cases(gpu, size, &filter)?;
    if !args.json {
        println!("{:<14} {:<22} {:<16} {:>10} {:>9} {:>10}  clock", "kernel", "format", "shape", "ms", "GB/s", "GFLOP/s");
    }
    for case in cases {
        let r = measure(gpu, case, args.reps)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "kernel": r.kernel, "format": r.format, "shape": r.shape,
                    "ms": r.ms, "gbps": r.gbps, "gflops": r.gflops, "adapter": adapter,
                })
            );
        } else {
            println!(
                "{:<14} {:<22} {:<16} {:>10.3} {:>9.2} {:>10.2}  {}",
                r.kernel,
                r.format,
                r.shape,
                r.ms,
                r.gbps,
                r.gflops,
                if r.clock == Clock::Timestamps { "gpu-timestamps" } else { "wall-clock" }
            );
        }
    }
    if !args.json && filter("attention") {
        let q = kernels::attention::quality(gpu, kernels::attention::SageOptions::default())?;
        println!(
            "SageAttention vs exact attention on 197x12x64: cosine {:.6}, relative L1 {:.4}, NMSE {:.2e}",
            q.cosine, q.relative_l1, q.nmse
        );
    }
    Ok(())
}

pub struct Measured {
    pub kernel: String,
    pub format: String,
    pub shape: String,
    pub ms: f64,
    pub gbps: f64,
    pub gflops: f64,
    pub clock: Clock,
}

pub fn measure(gpu: &Gpu, mut case: BenchCase, reps: usize) -> anyhow::Result<Measured> {
    let (ms, clock) = gpu.time_step(reps.max(1), |enc| (case.step)(gpu, enc))?;
    Ok(Measured {
        gbps: case.bytes as f64 / (ms * 1e-3) / 1e9,
        gflops: case.flops as f64 / (ms * 1e-3) / 1e9,
        kernel: case.kernel,
        format: case.format,
        shape: case.shape,
        ms,
        clock,
    })
}

fn tune(gpu: &Gpu, size: BenchSize, args: &KernelArgs) -> anyhow::Result<()> {
    let plan = kernels::tuning::table_plan(gpu.class);
    // Fastest variant per problem, in the order the problems come: (problem, variant, ms).
    let mut winners: Vec<(String, String, f64)> = Vec::new();
    for (variant, case) in kernels::tuning::tune_cases(gpu, size)? {
        let r = measure(gpu, case, args.reps)?;
        let problem = format!("{} {} {}", r.kernel, r.format, r.shape);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "kernel": r.kernel, "format": r.format, "shape": r.shape, "variant": variant,
                    "ms": r.ms, "gbps": r.gbps, "gflops": r.gflops, "adapter": gpu.adapter_name(),
                })
            );
        } else {
            println!("{problem:<28} {variant:<24} {:>9.3} ms {:>8.2} GB/s {:>8.2} GFLOP/s", r.ms, r.gbps, r.gflops);
        }
        match winners.iter_mut().find(|(p, _, _)| *p == problem) {
            Some(w) if r.ms < w.2 => *w = (problem, variant, r.ms),
            Some(_) => {}
            None => winners.push((problem, variant, r.ms)),
        }
    }
    let pick = |kernel: &str| {
        winners.iter().find(|(p, _, _)| p.starts_with(kernel)).and_then(|(_, v, _)| kernels::tuning::Variant::parse(v))
    };
    let (gemv, gemm) = (pick("gemv"), pick("gemm"));
    if !args.json {
        for (problem, v, t) in &winners {
            let table = if problem.starts_with("gemv") { plan.gemv } else { plan.gemm };
            println!("fastest for {problem}: {v} ({t:.3} ms); the table's row for {:?} is {}", gpu.class, table.name());
        }
    }
    // Picks from the small shapes of --quick would not say much about real layers.
    if size == BenchSize::Full {
        let path = kernels::tuning::save_picks(gpu, gemv, gemm)?;
        if !args.json {
            println!("saved for {} in {} (used by later runs)", gpu.info.name, path.display());
        }
    }
    Ok(())
}

/// Wall-clock latency of whole forward passes (submit to completion), as a user sees them.
fn model(gpu: &Gpu, args: ModelArgs) -> anyhow::Result<()> {
    let format = WeightFormat::parse(&args.format)?;
    let runnable = Runnable::load(gpu, &args.model, format)?;
    let weights = weight_summary(&args.model)?.bytes(format) as u64;
    let plan = Plan::new(gpu, runnable.graph(args.batch.max(1))?)?;
    runnable.random_input(gpu, &plan, 1)?;
    plan.run(gpu)?;
    gpu.wait()?;
    let reps = args.reps.max(10);
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        plan.run(gpu)?;
        gpu.wait()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let median_ms = median(&mut ms);
    let images_per_s = args.batch as f64 / (median_ms * 1e-3);
    let activations = plan.peak_bytes();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "task": runnable.name(), "format": format.name(),
                "batch": args.batch, "reps": reps, "median_ms": median_ms, "images_per_s": images_per_s,
                "peak_gpu_bytes": weights + activations, "weight_bytes": weights, "activation_bytes": activations,
                "adapter": gpu.adapter_name(),
            })
        );
    } else {
        println!("adapter: {}", gpu.adapter_name());
        println!("model: {}", runnable.describe());
        println!(
            "{} batch {} ({}): median {median_ms:.2} ms over {reps} runs, {images_per_s:.2} images/s, peak GPU memory {:.2} MB (weights {:.2} + activations {:.2})",
            runnable.name(),
            args.batch,
            format.name(),
            (weights + activations) as f64 / 1e6,
            weights as f64 / 1e6,
            activations as f64 / 1e6
        );
    }
    if args.profile {
        print_profile(&plan.profile(gpu)?.1, 15);
    }
    Ok(())
}
