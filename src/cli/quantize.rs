//! `lowbit quantize --model PATH --recipe RECIPE [--method LIST] [--calib DIR|TOKENS]
//! [--calib-count N] [--seed S] --out DIR`: post-training quantization of a timm ViT or a taming
//! VQGAN into a packed checkpoint folder that every other command loads as it is.

use std::path::PathBuf;

use anyhow::Context;

use crate::quant::recipe::{quantize, Options};
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The f32 model folder (model.safetensors + config.json / config.yaml).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// w8a16, w4a16, ternary, fp4, mixed:<average bits> (e.g. mixed:4.5); w8a8, w6a6, w4a8, w4a4.
    /// Below 8 bits, a classifier's patch embedding and head are stored Q8 (except mixed:, which
    /// chooses per layer).
    #[arg(long, value_name = "RECIPE")]
    pub recipe: String,
    /// Comma list of rtn, clip, gptq, sequential (weights) and, for w6a6/w4a8/w4a4, repq, smoothq, noisy,
    /// log2, adalog, sulq, twin, dynamic, asymmetric, rotate (activations; w8a8 takes smoothq).
    /// Default: gptq,clip when --calib is given (w8a8: and smoothq), else rtn; w4a8
    /// dynamic,asymmetric,smoothq,gptq,clip; w4a4
    /// dynamic,asymmetric,rotate,smoothq,adalog,gptq,clip;
    /// w6a6 repq,adalog,clip (w4: the best measured on the outlier fixtures, docs/QUANTIZATION.md).
    /// svdquant (w4a8/w4a4) adds SVDQuant's low-rank branch (--rank); dynamic (w4a8/w4a4)
    /// quantizes the block Linears' inputs per token at run time instead of with static scales
    /// (symmetric; asymmetric adds a zero point per row);
    /// sequential (with gptq, classifiers) quantizes block after block on the quantized model's
    /// inputs, with the float outputs as target (gains with 64+ calibration images);
    /// recon (ViT family) re-chooses each block's rounding against the float block's output
    /// (BRECQ / I&S-ViT block reconstruction, on the CPU: minutes on small ViTs, --recon-iters).
    #[arg(long, value_name = "LIST")]
    pub method: Option<String>,
    /// Calibration images (a folder, searched recursively) or, for a VQGAN decoder, a
    /// .safetensors file with a `tokens` tensor.
    #[arg(long, value_name = "DIR")]
    pub calib: Option<PathBuf>,
    /// How many calibration images (or token grids) to use, drawn with --seed (default 32;
    /// 128 with recon, which overfits fewer: docs/QUANTIZATION.md).
    #[arg(long, value_name = "N")]
    pub calib_count: Option<usize>,
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// How mixed:<bits> measures each layer's sensitivity: hessian (its output error on the
    /// calibration inputs, from one pass), output (the model's output, one pass per layer
    /// and format: slower), fisher (the model's output error predicted through its gradient,
    /// ViT family) or lrp (hessian weighted by the layer's LRP relevance, ViT family).
    #[arg(long, default_value = "hessian", value_name = "HOW")]
    pub sensitivity: String,
    /// The rank of `--method svdquant`'s low-rank branch per block Linear (default 32; at most
    /// the layer's smaller dimension).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// Adam steps per block of `--method recon` (default 200).
    #[arg(long, value_name = "N")]
    pub recon_iters: Option<usize>,
    /// The output folder (must not exist; written completely or not at all).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(gpu: &Gpu, args: QuantizeArgs) -> anyhow::Result<()> {
    let sensitivity = crate::quant::mixed::Sensitivity::parse(&args.sensitivity)?;
    let opts = Options { recipe: args.recipe.clone(), methods: args.method.clone(), calib: args.calib.clone(), calib_count: args.calib_count, seed: args.seed, sensitivity, rank: args.rank, recon_iters: args.recon_iters };
    let start = std::time::Instant::now();
    // `quantize` writes a temporary folder `.NAME.tmp-PID` beside --out and renames it at the
    // end: registered so that Ctrl-C removes it, and those of killed runs are swept first.
    let name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let prefix = format!(".{name}.tmp-");
    super::interrupt::sweep_stale(parent, |f| f.strip_prefix(&prefix)?.parse().ok());
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    super::interrupt::register(&tmp);
    let report = quantize(gpu, &args.model, &opts, &args.out).with_context(|| format!("quantizing {}", args.model.display()));
    super::interrupt::forget(&tmp);
    let report = report?;
    if let Some(a) = &report.mixed {
        outln!("mixed precision, budget {} bytes of matrices:", a.budget_bytes);
        let measured = match sensitivity {
            crate::quant::mixed::Sensitivity::Hessian => "layer-output SQNR dB per format, from its Hessian",
            crate::quant::mixed::Sensitivity::Output => "model-output SQNR dB per format",
            crate::quant::mixed::Sensitivity::Fisher => "model-output SQNR dB per format, predicted from its gradient-weighted Hessian",
            crate::quant::mixed::Sensitivity::Lrp => "layer-output SQNR dB per format, less its relevance share",
        };
        outln!("  {:<40} {:>9} {:>9}   sensitivity ({measured})", "layer", "exact", "greedy");
        for (i, key) in a.keys.iter().enumerate() {
            let sens: Vec<String> = a.options[i].iter().map(|c| format!("{} {:.1}", c.format.name(), c.sqnr_db)).collect();
            outln!("  {key:<40} {:>9} {:>9}   {}", a.options[i][a.exact[i]].format.name(), a.options[i][a.greedy[i]].format.name(), sens.join(", "));
        }
        let uniform: Vec<(String, Vec<usize>)> = crate::quant::mixed::candidates()
            .iter()
            .enumerate()
            .filter_map(|(k, f)| a.uniform(k).map(|p| (format!("uniform {}", f.name()), p)))
            .collect();
        let rows = [("exact (knapsack DP)".to_string(), a.exact.clone()), ("greedy".to_string(), a.greedy.clone())].into_iter().chain(uniform);
        for (name, pick) in rows {
            let (bytes, noise, sqnr, bits) = a.summary(&pick);
            outln!("  {name:<20} {bytes} bytes, {bits:.3} bits/weight, predicted output SQNR {sqnr:.2} dB (noise {noise:.3e})");
        }
    }
    if !report.recon.is_empty() {
        outln!("block reconstruction (mean squared error of each block's output against the float block, calibration images):");
        for b in &report.recon {
            let what = if b.applied { format!("{} codes changed", b.codes_changed) } else { "not better: start kept".into() };
            outln!("  block {:<3} {:.4e} -> {:.4e}, {what}", b.block, b.start, b.end);
        }
    }
    outln!("{:<40} {:<9} {:<10} {:>12}", "matrix", "format", "method", "weight SQNR");
    for (key, format, method, err) in &report.layers {
        outln!("{key:<40} {:<9} {method:<10} {:>9.2} dB", format.name(), -10.0 * err.log10());
    }
    outln!(
        "{} parameters: {:.3} MB packed (f32 {:.3} MB, {:.2}×) with {} in {:.1} s → {}",
        report.params,
        report.packed_bytes as f64 / 1e6,
        report.f32_bytes as f64 / 1e6,
        report.f32_bytes as f64 / report.packed_bytes as f64,
        report.methods.name(),
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
