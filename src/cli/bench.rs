//! `lowbit bench kernels`: median time, GB/s, GFLOP/s and share of the roofline of every kernel
//! and format; `lowbit bench roofline`: the adapter's measured roofs; `lowbit bench model`.

use clap::{Args, Subcommand};

use std::path::PathBuf;
use std::time::Instant;

use super::model::{print_profile, weight_summary, Runnable};
use crate::gpu::timing::{median, Clock};
use crate::graph::Plan;
use crate::formats::WeightFormat;
use crate::kernels::{self, roofline, BenchCase, BenchSize};
use crate::models::prior::Prior;
use crate::models::{detect, ModelKind};
use crate::Gpu;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every kernel family on its reference shapes (the ones BENCHMARKS.md reports).
    Kernels(KernelArgs),
    /// One model's forward pass: median latency, images/s, peak GPU memory.
    Model(ModelArgs),
    /// The adapter's roofs: copy bandwidth, f32/f16 FMA, packed int8 dot and
    /// cooperative-matrix rates, each measured by a small WGSL probe.
    Roofline(RooflineArgs),
}

#[derive(Args)]
pub struct RooflineArgs {
    /// One JSON object per line: probe, value, unit, adapter. Probes the adapter lacks
    /// (f16_fma, int8_dot, coopmat_*) are left out of the JSON; the table lists them as
    /// unavailable with the reason.
    #[arg(long)]
    json: bool,
    /// Small buffers and short loops: a smoke test of the probes, not a measurement.
    #[arg(long)]
    quick: bool,
}

#[derive(Args)]
pub struct ModelArgs {
    /// A model folder (timm ViT, taming VQGAN decoder, or a prior: then ms per decode step).
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
    /// One JSON object per line: kernel, format, shape, ms, gbps, gflops, roofline_pct, adapter.
    /// roofline_pct: the median time as a share of the fastest the adapter's measured roofs
    /// (`lowbit bench roofline`) allow for the case's bytes and FLOP.
    #[arg(long)]
    json: bool,
    /// Time every candidate variant of the tuned kernels on this adapter, print the winners and
    /// save them for this adapter (see LOWBIT_TUNING); later runs use them.
    #[arg(long)]
    tune: bool,
    /// Small shapes: a smoke test of the benchmark itself.
    #[arg(long)]
    quick: bool,
    /// Only these families (comma list: matmul, w8a8, w4a8, attention, kv_cache, vq, norm, elementwise, conv, act_quant).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

pub fn run(gpu: &Gpu, cmd: BenchCommand) -> anyhow::Result<()> {
    let emulated = gpu.info.device_type == wgpu::DeviceType::Cpu || ["llvmpipe", "SwiftShader"].iter().any(|n| gpu.info.name.contains(n));
    if emulated {
        crate::warn!("{} runs on the CPU (a software GPU): these timings are not a GPU's", gpu.adapter_name());
    }
    let args = match cmd {
        BenchCommand::Kernels(args) => args,
        BenchCommand::Model(args) => return model(gpu, args),
        BenchCommand::Roofline(args) => return roofline(gpu, args),
    };
    let size = if args.quick { BenchSize::Quick } else { BenchSize::Full };
    let adapter = gpu.adapter_name();
    if !args.json {
        outln!("adapter: {adapter}  (class {:?}, caps {:?})", gpu.class, gpu.caps);
    }
    if args.tune {
        return tune(gpu, size, &args);
    }
    let only = args.only.clone();
    let filter = move |family: &str| only.is_empty() || only.iter().any(|o| o == family);
    let cases = kernels::bench_cases(gpu, size, &filter)?;
    // Measured once per run, for the roofs these cases need.
    let bounds: Vec<roofline::Bound> = cases.iter().map(BenchCase::bound).collect();
    let roofs = roofline::Roofline::measure(gpu, size, &bounds)?;
    if !args.json {
        outln!(
            "roofs: copy {:.2} GB/s, f32 FMA {}, int8 dot {}",
            roofs.copy_gbps,
            roofs.f32_gflops.map_or("not needed".into(), |v| format!("{v:.2} GFLOP/s")),
            roofs.int8_gops.map_or("not measured".into(), |v| format!("{v:.2} GOP/s")),
        );
        outln!(
            "{:<14} {:<22} {:<16} {:>10} {:>9} {:>10} {:>7}  clock",
            "kernel", "format", "shape", "ms", "GB/s", "GFLOP/s", "roof%"
        );
    }
    for case in cases {
        let (bound, bytes, flops) = (case.bound(), case.bytes, case.flops);
        let r = measure(gpu, case, args.reps)?;
        let pct = roofs.percent(bound, bytes, flops, r.ms);
        if args.json {
            outln!(
                "{}",
                serde_json::json!({
                    "kernel": r.kernel, "format": r.format, "shape": r.shape,
                    "ms": r.ms, "gbps": r.gbps, "gflops": r.gflops, "roofline_pct": pct, "adapter": adapter,
                })
            );
        } else {
            outln!(
                "{:<14} {:<22} {:<16} {:>10.3} {:>9.2} {:>10.2} {:>7}  {}",
                r.kernel,
                r.format,
                r.shape,
                r.ms,
                r.gbps,
                r.gflops,
                pct.map_or("-".into(), |p| format!("{p:.1}")),
                if r.clock == Clock::Timestamps { "gpu-timestamps" } else { "wall-clock" }
            );
        }
    }
    if !args.json && filter("attention") {
        let q = kernels::attention::quality(gpu, kernels::attention::SageOptions::default())?;
        outln!(
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
    let plan = kernels::launch::for_class(gpu.class).linear;
    // Fastest variant per problem, in the order the problems come: (problem, variant, ms).
    let mut winners: Vec<(String, String, f64)> = Vec::new();
    for (variant, case) in kernels::matmul::tune_cases(gpu, size)? {
        let r = measure(gpu, case, args.reps)?;
        let problem = format!("{} {} {}", r.kernel, r.format, r.shape);
        if args.json {
            outln!(
                "{}",
                serde_json::json!({
                    "kernel": r.kernel, "format": r.format, "shape": r.shape, "variant": variant,
                    "ms": r.ms, "gbps": r.gbps, "gflops": r.gflops, "adapter": gpu.adapter_name(),
                })
            );
        } else {
            outln!("{problem:<28} {variant:<24} {:>9.3} ms {:>8.2} GB/s {:>8.2} GFLOP/s", r.ms, r.gbps, r.gflops);
        }
        match winners.iter_mut().find(|(p, _, _)| *p == problem) {
            Some(w) if r.ms < w.2 => *w = (problem, variant, r.ms),
            Some(_) => {}
            None => winners.push((problem, variant, r.ms)),
        }
    }
    let pick = |kernel: &str| {
        winners.iter().find(|(p, _, _)| p.starts_with(kernel)).and_then(|(_, v, _)| kernels::matmul::Variant::parse(v))
    };
    let (gemv, gemm) = (pick("gemv"), pick("gemm"));
    if !args.json {
        for (problem, v, t) in &winners {
            let table = if problem.starts_with("gemv") { plan.gemv } else { plan.gemm };
            outln!("fastest for {problem}: {v} ({t:.3} ms); the table's row for {:?} is {}", gpu.class, table.name());
        }
    }
    // Picks from the small shapes of --quick would not say much about real layers.
    if size == BenchSize::Full {
        let path = kernels::launch::save_picks(gpu, gemv, gemm)?;
        if !args.json {
            outln!("saved for {} in {} (used by later runs)", gpu.info.name, path.display());
        }
    }
    Ok(())
}

/// `lowbit bench roofline`: every probe, as a table or JSON lines.
fn roofline(gpu: &Gpu, args: RooflineArgs) -> anyhow::Result<()> {
    let size = if args.quick { BenchSize::Quick } else { BenchSize::Full };
    let adapter = gpu.adapter_name();
    let results = roofline::run_all(gpu, size)?;
    if !args.json {
        outln!("{:<16} {:>12} {:<8} {:<40} note", "probe", "value", "unit", "adapter");
    }
    for r in results {
        match (args.json, r.value) {
            (true, Some(value)) => outln!(
                "{}",
                serde_json::json!({ "probe": r.probe, "value": value, "unit": r.unit, "adapter": adapter })
            ),
            (true, None) => {}
            (false, value) => outln!(
                "{:<16} {:>12} {:<8} {:<40} {}",
                r.probe,
                value.map_or("unavailable".into(), |v| format!("{v:.2}")),
                r.unit,
                adapter,
                r.note
            ),
        }
    }
    Ok(())
}

/// Wall-clock latency of whole forward passes (submit to completion), as a user sees them.
fn model(gpu: &Gpu, args: ModelArgs) -> anyhow::Result<()> {
    if detect(&args.model)? == ModelKind::Prior {
        return prior_model(gpu, args);
    }
    let format = WeightFormat::parse(&args.format)?;
    let runnable = Runnable::load(gpu, &args.model, format)?;
    let weights = weight_summary(&args.model)?.bytes(format) as u64;
    let plan = Plan::new(gpu, runnable.graph(gpu, args.batch.max(1))?)?;
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
        outln!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "task": runnable.name(), "format": format.name(),
                "batch": args.batch, "reps": reps, "median_ms": median_ms, "images_per_s": images_per_s,
                "peak_gpu_bytes": weights + activations, "weight_bytes": weights, "activation_bytes": activations,
                "adapter": gpu.adapter_name(),
            })
        );
    } else {
        outln!("adapter: {}", gpu.adapter_name());
        outln!("model: {}", runnable.describe());
        outln!(
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

/// A prior's decoding speed as `generate` sees it: the class token prefilled, then one step
/// per position (submit, wait for the logits), over `reps` whole sequences after one warm-up
/// sequence. Reports the median milliseconds per step and the dispatches one step records.
fn prior_model(gpu: &Gpu, args: ModelArgs) -> anyhow::Result<()> {
    let format = WeightFormat::parse(&args.format)?;
    let prior = Prior::from_pretrained(gpu, &args.model, format)?;
    let batch = args.batch.max(1);
    let positions = prior.config.block_size;
    let ids = vec![0u32; batch];
    let (mut ms, mut dispatches) = (Vec::new(), 0);
    for sequence in 0..=args.reps.max(1) {
        let mut session = prior.session(gpu, batch)?;
        session.prefill(gpu, &ids, 1)?;
        dispatches = session.step_dispatches(gpu)?;
        for _ in 1..positions {
            let start = Instant::now();
            session.step(gpu, &ids)?;
            if sequence > 0 {
                ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let steps = ms.len();
    let ms_per_step = median(&mut ms);
    let weights = weight_summary(&args.model)?.bytes(format) as u64;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "task": "decode", "format": format.name(),
                "batch": batch, "reps": steps, "median_ms": ms_per_step, "ms_per_step": ms_per_step,
                "steps_per_s": 1e3 / ms_per_step, "dispatches_per_step": dispatches, "weight_bytes": weights,
                "adapter": gpu.adapter_name(),
            })
        );
    } else {
        outln!("adapter: {}", gpu.adapter_name());
        outln!(
            "prior decode batch {batch} ({}): median {ms_per_step:.3} ms per step over {steps} steps ({:.0} steps/s), {dispatches} dispatches per step, weights {:.2} MB",
            format.name(),
            1e3 / ms_per_step,
            weights as f64 / 1e6
        );
    }
    if args.profile {
        let mut session = prior.session(gpu, batch)?;
        session.prefill(gpu, &vec![0; batch * (positions - 1)], positions - 1)?;
        print_profile(&session.profile(gpu, 1)?, 15);
    }
    Ok(())
}
