//! Issue 14 item 4, long runs: consecutive jobs in one process, through the viewer's engine
//! (generate, classify, round trip) and the command line (`cli::run_args`: classify, decode),
//! switching precision (f32, f16, q8, q4g32) between jobs, with flat memory.
//!
//! Memory is the process's resident set (/proc/self/statm). On lavapipe that includes the GPU
//! memory too (its buffers are ordinary allocations of this process), so a leaked tensor, plan
//! or staging buffer shows up here as well as a leaked image.
//!
//! `LOWBIT_SOAK_JOBS=N` sets the count (default 40, under a minute on two cores); the figure
//! for 1,000 jobs is in docs/RELIABILITY.md.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use lowbit::formats::WeightFormat;
use lowbit::viewer::engine::{Engine, ModelName, Recipe};
use lowbit::{Gpu, GpuOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

const PRECISIONS: [&str; 4] = ["f32", "f16", "q8", "q4g32"];

/// Job `i`: one of five kinds, at one of four precisions (the two cycles are coprime, so
/// every kind meets every precision).
fn job(i: usize, engine: &mut Engine, gpu: &Gpu, scratch: &Path, tokens: &Path) -> anyhow::Result<()> {
    let precision = PRECISIONS[i % PRECISIONS.len()];
    let recipe = Recipe::format(WeightFormat::parse(precision)?);
    let samples = root().join("assets/samples");
    match i % 5 {
        0 => drop(engine.generate(&recipe, i % 10, i as u64)?),
        1 => drop(engine.classify(&recipe, &samples.join(format!("digit-{}-{}.png", i % 10, i % 2)))?),
        2 => drop(engine.roundtrip(&recipe, ModelName::PhotoVqgan, &scratch.join(["photo-astronaut.png", "photo-chelsea.png", "photo-coffee.png"][i % 3]))?),
        3 => {
            let model = root().join("assets/models/digits-vit");
            let image = samples.join(format!("digit-{}-0.png", i % 10));
            lowbit::cli::run_args(gpu, &["--quiet", "classify", "--model", s(&model), "--format", precision, s(&image)])?
        }
        _ => {
            let model = root().join("assets/models/digits-vqgan");
            let out = scratch.join("decoded.png");
            lowbit::cli::run_args(gpu, &["--quiet", "decode", "--model", s(&model), "--format", precision, "--tokens", s(tokens), "--out", s(&out), "--force"])?
        }
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn consecutive_jobs_switching_precision_keep_memory_flat() {
    let jobs: usize = std::env::var("LOWBIT_SOAK_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
    // Both cycles once over (5 kinds × 4 precisions): every model of every recipe loaded.
    let warmup = 20;
    assert!(jobs >= warmup + 20, "LOWBIT_SOAK_JOBS must be at least {}", warmup + 20);
    let scratch = std::env::temp_dir().join(format!("lowbit-soak-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    // The CLI decode jobs' tokens: a generated digit's.
    let gpu = Gpu::with_options(&GpuOptions::from_env()).unwrap();
    let mut engine = Engine::new(Gpu::with_options(&GpuOptions::from_env()).unwrap(), root().join("assets"));
    // The round trips' photographs: 48×48 crops, so that photo-vqgan (the slowest model on
    // lavapipe, ~40 s per 128² round trip on a busy 2-core machine) does not set the pace.
    for name in ["photo-astronaut.png", "photo-chelsea.png", "photo-coffee.png"] {
        let photo = image::open(root().join("assets/samples").join(name)).unwrap().to_rgb8();
        let (x, y) = ((photo.width() - 48) / 2, (photo.height() - 48) / 2);
        image::imageops::crop_imm(&photo, x, y, 48, 48).to_image().save(scratch.join(name)).unwrap();
    }
    let tokens = scratch.join("tokens.safetensors");
    engine.generate(&Recipe::f32(), 3, 0).unwrap().tokens.save(&tokens, "tokens").unwrap();

    let start = Instant::now();
    let rss_start = rss();
    let mut samples = Vec::with_capacity(jobs);
    let kinds = ["generate", "classify", "round trip", "cli classify", "cli decode"];
    let mut per_kind = [0.0f64; 5];
    for i in 0..jobs {
        let t = Instant::now();
        if let Err(e) = job(i, &mut engine, &gpu, &scratch, &tokens) {
            panic!("job {i} ({} at {}) failed: {e:#}", kinds[i % 5], PRECISIONS[i % 4]);
        }
        per_kind[i % 5] += t.elapsed().as_secs_f64();
        samples.push(rss());
    }
    let times: Vec<String> = kinds.iter().zip(per_kind).map(|(k, t)| format!("{k} {:.0} ms", 1e3 * t / (jobs / 5) as f64)).collect();
    eprintln!("soak: mean time per job: {}", times.join(", "));
    let seconds = start.elapsed().as_secs_f64();

    // After the warm-up cycle the models are loaded and the caches full: from there on the
    // resident set only wanders by the allocator's noise. The noise is measured on the first
    // post-warm-up cycle (its max − min); the last cycle may sit above that cycle's minimum by
    // twice the noise plus 8 MiB (what glibc's arenas keep or return from one job to the
    // next). A leak of one 32×32 decode per job (12 KiB of f32) across 1,000 jobs is 12 MiB;
    // anything that holds a plan, a model or an image per job grows by far more.
    let cycle = &samples[warmup..warmup + 20];
    let (lo, hi) = (*cycle.iter().min().unwrap(), *cycle.iter().max().unwrap());
    let noise = hi - lo;
    let last = &samples[jobs - 20..];
    let end_min = *last.iter().min().unwrap();
    let bound = 2 * noise + (8 << 20);
    eprintln!(
        "soak: {jobs} jobs in {seconds:.1} s ({:.0} ms/job); RSS {:.1} MiB at start, {:.1} MiB after warm-up (noise {:.1} MiB), {:.1} MiB at the end (min of the last cycle {:.1} MiB), bound +{:.1} MiB",
        1e3 * seconds / jobs as f64,
        mib(rss_start),
        mib(lo),
        mib(noise),
        mib(*samples.last().unwrap()),
        mib(end_min),
        mib(bound)
    );
    assert!(end_min <= lo + bound, "resident memory grew from {:.1} MiB to {:.1} MiB over {} jobs after the warm-up", mib(lo), mib(end_min), jobs - warmup);
    let _ = std::fs::remove_dir_all(&scratch);
}
