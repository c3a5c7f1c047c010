//! `lowbit info PATH`: architecture, parameters, bytes per weight format (for a folder `lowbit
//! quantize` wrote: how it was quantized and how it runs), planned peak GPU memory;
//! `lowbit info --architectures`: the timm architectures lowbit knows.

use std::path::{Path, PathBuf};

use super::model::{load_weights, Runnable};
use crate::graph::plan;
use crate::models::packed::{Activations, Attention, Description};
use crate::models::{checksums, detect, ModelKind, WeightSummary};
use crate::formats::WeightFormat;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A model folder (or its .safetensors file).
    #[arg(value_name = "PATH", required_unless_present = "architectures")]
    pub path: Option<PathBuf>,
    /// List the timm architectures lowbit knows (from tools/gen_architectures.py) and exit.
    #[arg(long)]
    pub architectures: bool,
    /// Batch size for the planned memory.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

pub fn run(gpu: &Gpu, args: InfoArgs) -> anyhow::Result<()> {
    if args.architectures {
        for name in crate::models::timm_config::known_architectures() {
            outln!("{name}");
        }
        return Ok(());
    }
    let Some(path) = &args.path else { anyhow::bail!("pass a model folder (or --architectures)") };
    let weights = load_weights(path)?;
    let summary = WeightSummary::new(&weights)?;
    let kind = detect(path)?;
    outln!("model: {} ({})", path.display(), kind.name());
    print_checksums(path)?;
    let model = if kind == ModelKind::Prior { None } else { Some(Runnable::load(gpu, path, WeightFormat::F32)?) };
    if let Some(m) = &model {
        outln!("architecture: {}", m.describe());
    }
    let params = summary.params();
    let packable: usize = summary.matrices.iter().map(|(_, r, c, _)| r * c).sum();
    outln!("parameters: {params} ({packable} in {} packable matrices, {} kept f32)", summary.matrices.len(), summary.other_params);
    let quantized = summary.is_quantized();
    match Description::of(&weights)? {
        Some(desc) if quantized => print_quantized(&desc, &summary, params),
        _ => {
            outln!("weight bytes per format (packable matrices packed, the rest f32):");
            for f in WeightFormat::all() {
                let b = summary.bytes(f);
                outln!("  {:<10} {:>12} bytes  {:>8.2} MB  {:>5.2} bits/weight", f.name(), b, b as f64 / 1e6, 8.0 * b as f64 / params as f64);
            }
        }
    }
    if let Some(m) = &model {
        let graph = m.graph(gpu, args.batch)?;
        let (nodes, unplanned) = (graph.node_count(), graph.unplanned_bytes());
        let memory = plan(&graph)?;
        let weights = summary.bytes(WeightFormat::F32) as u64;
        let act = memory.peak_bytes();
        outln!(
            "planned peak GPU memory (batch {}, {} weights): {:.2} MB = weights {:.2} MB + activations {:.2} MB in {} buffers ({nodes} nodes; {:.2} MB without reuse)",
            args.batch,
            if quantized { "stored" } else { "f32" },
            (weights + act) as f64 / 1e6,
            weights as f64 / 1e6,
            act as f64 / 1e6,
            memory.buffers.len(),
            unplanned as f64 / 1e6
        );
    }
    Ok(())
}

/// What `lowbit quantize` recorded: recipe, methods, the stored formats and size, and the
/// runtime the engine reads (which kernels the block Linears and attention run in).
fn print_quantized(desc: &Description, summary: &WeightSummary, params: usize) {
    let text = |key: &str| desc.extra.get(key).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    // mixed:<bits> folders also say how the layers' sensitivities were measured.
    let sensitivity = desc.extra.get("mixed").and_then(|m| m["sensitivity"].as_str()).map(|s| format!(", sensitivity {s}")).unwrap_or_default();
    outln!("quantized: recipe {}, methods {}{sensitivity}", text("recipe"), text("methods"));
    let mut formats: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, _, _, stored) in &summary.matrices {
        *formats.entry(stored.map_or("f32".to_string(), |f| f.name())).or_default() += 1;
    }
    let formats: Vec<String> = formats.iter().map(|(f, n)| format!("{n}× {f}")).collect();
    let bytes = summary.bytes(WeightFormat::F32);
    outln!("stored: {} ({} bytes, {:.2} MB, {:.2} bits/weight with the f32 rest)", formats.join(", "), bytes, bytes as f64 / 1e6, 8.0 * bytes as f64 / params as f64);
    let runtime = desc.runtime.unwrap_or_default();
    let activations = match (runtime.activations, runtime.activations.per_token_codes()) {
        (_, Some((bits, false))) => format!("int{bits} per token, symmetric"),
        (_, Some((bits, true))) => format!("int{bits} per token with a zero point per row"),
        (Activations::IntStatic, _) => "static calibrated integer codes".to_string(),
        _ => "f32 (weight-only)".to_string(),
    };
    let rotated = desc.tensors.values().filter(|t| t.extra.contains_key("hadamard")).count();
    let rotation = if runtime.hadamard { format!(", {rotated} block Linears rotated (Hadamard)") } else { String::new() };
    let attention = match runtime.attention {
        Attention::Exact => "exact",
        Attention::SageInt8 => "SageAttention (int8 Q·Kᵀ)",
    };
    outln!("runtime: activations {activations}, attention {attention}{rotation}");
}

/// The SHA-256 of the checkpoint and of each file `quantization.json` records one for, in
/// `sha256sum`'s layout, each with what it was checked against: for an upstream checkpoint,
/// nothing here, so the user can compare it with the hash the model hub lists.
fn print_checksums(path: &Path) -> anyhow::Result<()> {
    let weights = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    let dir = weights.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let record_path = dir.join(checksums::RECORD_FILE);
    let has_record = record_path.is_file();
    let recorded = if has_record {
        checksums::Record::parse(&crate::models::files::read_text(&record_path, "quantization description")?, &record_path.display().to_string())?.checksums
    } else {
        Default::default()
    };
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut files = vec![name.clone()];
    files.extend(recorded.keys().filter(|f| **f != name).cloned());
    outln!("SHA-256:");
    for file in files {
        let got = checksums::sha256_file(&dir.join(&file))?;
        let status = match recorded.get(&file) {
            Some(want) if *want == got => format!("matches {}", checksums::RECORD_FILE),
            Some(want) => format!("DIFFERS from the {want} recorded in {}", checksums::RECORD_FILE),
            None if has_record => format!("no checksum in {}: a lowbit from before checksums wrote it", checksums::RECORD_FILE),
            None => "no checksum recorded: compare it with the one the model's hub lists".to_string(),
        };
        outln!("  {got}  {file}  ({status})");
    }
    Ok(())
}
