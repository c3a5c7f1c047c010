//! `lowbit quantize` as a library call: parse the recipe and methods, calibrate, pack every
//! matrix, and write the quantized checkpoint folder in one step that either completes or
//! leaves nothing behind.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::act_calib;
use super::calibrate::{mean_one, Calibration, Family, Layer, Model, Progress, Reader};
use super::hessians::Hessians;
use super::gptq::{GptqOptions, Hessian};
use crate::models::packed::{Activations, Attention, Description, PackedTensor, Runtime};
use super::{clip, gptq, mixed, recon, rtn};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::kernels::w4a8::ActInput;
use crate::models::vit::backprop::InputMap;
use crate::{invalid, Error, Gpu, Result};

pub use super::methods::{Methods, ACT_METHODS};

/// What a recipe asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// Weight-only: every matrix in one format, activations stay f32.
    Weights { name: String, format: WeightFormat },
    /// Weights and activations at low bit width (W8A8, W6A6, W4A8, W4A4).
    Activations { name: String, weight_bits: u32, act_bits: u32 },
    /// Per-layer bit widths under an average weight-bit budget.
    Mixed { bits: f64 },
}

pub const RECIPES: &str = "w8a16, w4a16, ternary, fp4, mixed:<bits> (weight-only); w8a8, w6a6, w4a8, w4a4 (activations)";

impl Recipe {
    pub fn parse(s: &str) -> Result<Recipe> {
        let weights = |format| Ok(Recipe::Weights { name: s.to_string(), format });
        match s {
            "w8a16" => weights(WeightFormat::Q8 { group: None }),
            "w4a16" => weights(WeightFormat::Q4 { group: 32, zero_point: false }),
            "ternary" => weights(WeightFormat::Ternary),
            "fp4" => weights(WeightFormat::Fp4 { group: 32 }),
            "w8a8" | "w6a6" | "w4a8" | "w4a4" => {
                let (w, a) = s[1..].split_once('a').unwrap();
                Ok(Recipe::Activations { name: s.to_string(), weight_bits: w.parse().unwrap(), act_bits: a.parse().unwrap() })
            }
            _ => match s.strip_prefix("mixed:").map(str::parse::<f64>) {
                Some(Ok(bits)) if bits.is_finite() && bits > 0.0 => Ok(Recipe::Mixed { bits }),
                Some(_) => invalid!("recipe `{s}`: mixed needs an average number of weight bits, e.g. mixed:4.5"),
                None => invalid!("unknown recipe `{s}` (known: {RECIPES})"),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Recipe::Weights { name, .. } | Recipe::Activations { name, .. } => name.clone(),
            Recipe::Mixed { bits } => format!("mixed:{bits}"),
        }
    }
}

/// Everything `lowbit quantize` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub recipe: String,
    pub methods: Option<String>,
    pub calib: Option<PathBuf>,
    /// None: `DEFAULT_CALIB_COUNT`, or `recon::CALIB_COUNT` with `--method recon`.
    pub calib_count: Option<usize>,
    pub seed: u64,
    /// How `mixed:<bits>` measures sensitivities.
    pub sensitivity: mixed::Sensitivity,
    /// The rank of `--method svdquant`'s low-rank branches (None: `DEFAULT_RANK`).
    pub rank: Option<usize>,
    /// Adam steps per block of `--method recon` (None: `recon::DEFAULT_ITERS`).
    pub recon_iters: Option<usize>,
}

/// Calibration images when `--calib-count` is not given (and `recon` is not asked for).
pub const DEFAULT_CALIB_COUNT: usize = 32;

/// SVDQuant's rank when `--rank` is not given (the paper uses 32).
pub const DEFAULT_RANK: usize = 32;

/// What was done, for printing.
pub struct Report {
    /// (key, format, method, relative weight error ‖W−Ŵ‖²/‖W‖²).
    pub layers: Vec<(String, WeightFormat, String, f64)>,
    pub methods: Methods,
    pub packed_bytes: usize,
    pub f32_bytes: usize,
    pub params: usize,
    /// The mixed allocation's own report, when the recipe is mixed.
    pub mixed: Option<mixed::Allocation>,
    /// `--method recon`'s effect per block.
    pub recon: Vec<recon::BlockReport>,
}

/// Packs one matrix with `methods` (GPTQ needs the layer's Hessian).
pub fn quantize_matrix(w: &[f32], rows: usize, cols: usize, format: WeightFormat, methods: Methods, hessian: Option<&Hessian>) -> Result<PackedMatrix> {
    match (methods.gptq, hessian) {
        (true, Some(h)) => gptq::gptq(w, rows, cols, format, h, GptqOptions { clip: methods.clip, ..Default::default() }),
        (true, None) => invalid!("gptq needs calibration inputs for this matrix"),
        (false, _) if methods.clip => clip::clip(w, rows, cols, format),
        (false, _) => rtn::rtn(w, rows, cols, format),
    }
}

/// Quantizes the model at `model_path` into the folder `out` (created; must not exist).
pub fn quantize(gpu: &Gpu, model_path: &Path, opts: &Options, out: &Path) -> Result<Report> {
    let recipe = Recipe::parse(&opts.recipe)?;
    // W6A6/W4A8/W4A4: static activation quantizers, simulated in f32 (`act_calib`).
    let static_act = match recipe {
        Recipe::Activations { weight_bits, act_bits, .. } if (weight_bits, act_bits) != (8, 8) => Some((weight_bits, act_bits)),
        _ => None,
    };
    let methods = match (&opts.methods, static_act) {
        (Some(list), _) => Methods::parse(list)?,
        (None, Some((wb, ab))) => Methods::default_for_activations(wb, ab),
        (None, None) if matches!(recipe, Recipe::Activations { .. }) => Methods::default_for_w8a8(opts.calib.is_some()),
        (None, None) => Methods::default_for(opts.calib.is_some()),
    };
    methods.check_recipe(&recipe)?;
    if opts.rank.is_some() && !methods.svdquant {
        invalid!("--rank sets the rank of --method svdquant's low-rank branch; add svdquant to --method");
    }
    let rank = opts.rank.unwrap_or(DEFAULT_RANK);
    if out.exists() {
        invalid!("--out {}: already exists (choose a new folder; nothing is overwritten)", out.display());
    }
    let mut model = Model::load(model_path)?;
    if model.is_quantized()? {
        invalid!("model {}: already quantized by lowbit quantize; quantize the f32 original instead", model_path.display());
    }
    if methods.sequential && !matches!(model.family, Family::Classifier(_)) {
        invalid!("method sequential runs on classifiers (ViT, Swin); a VQGAN's blocks are not calibrated in order");
    }
    let is_vit = matches!(model.family, Family::Classifier(crate::models::ClassifierConfig::Vit(_)));
    if methods.recon && !is_vit {
        invalid!("method recon differentiates a ViT-family classifier's blocks on the CPU (no Swin, no VQGAN backward pass yet); drop it for this model");
    }
    if opts.recon_iters.is_some() && !methods.recon {
        invalid!("--recon-iters sets the steps of --method recon; add recon to --method");
    }
    if methods.fisher && !is_vit {
        invalid!("method fisher differentiates a ViT-family classifier on the CPU (no Swin, no VQGAN backward pass yet); drop it for this model");
    }
    if matches!(recipe, Recipe::Mixed { .. }) && opts.sensitivity.needs_backward() && !is_vit {
        invalid!("--sensitivity {} differentiates a ViT-family classifier on the CPU (no Swin, no VQGAN backward pass yet); use hessian or output", opts.sensitivity.name());
    }
    match (&recipe, &model.family) {
        (Recipe::Activations { weight_bits: 8, act_bits: 8, .. }, Family::Classifier(_)) => {}
        (Recipe::Activations { name, weight_bits: 8, act_bits: 8 }, _) => invalid!("recipe {name}: int8 activations run in ViT Linear layers only (the W8A8 kernel); quantize a VQGAN with a weight-only recipe"),
        (Recipe::Activations { .. }, Family::Classifier(_)) => {}
        (Recipe::Activations { name, .. }, _) => {
            invalid!("recipe {name}: static activation quantizers are placed in ViT blocks only; quantize a VQGAN with a weight-only recipe ({RECIPES})")
        }
        _ => {}
    }
    let needs_calib = methods.gptq || methods.recon || matches!(recipe, Recipe::Mixed { .. });
    let calib = match &opts.calib {
        Some(dir) => {
            let count = opts.calib_count.unwrap_or(if methods.recon { recon::CALIB_COUNT } else { DEFAULT_CALIB_COUNT });
            let c = Calibration::load(gpu, &model, dir, count, opts.seed)?;
            if methods.recon && c.count() < recon::CALIB_COUNT {
                crate::warn!(
                    "method recon fits each block's rounding to {} calibration images; with fewer than {} it was measured to overfit them (docs/QUANTIZATION.md, \"Calibration images for `recon`\")",
                    c.count(),
                    recon::CALIB_COUNT
                );
            }
            Some(c)
        }
        None if static_act.is_some() => invalid!("recipe {} calibrates static activation scales on images: pass --calib DIR", recipe.name()),
        None if methods.act.smooth => invalid!("method smoothq measures activation ranges on images: pass --calib DIR"),
        None if methods.gptq => invalid!("method gptq needs calibration inputs: pass --calib DIR"),
        None if methods.recon => invalid!("method recon reconstructs blocks on calibration images: pass --calib DIR"),
        None if needs_calib => invalid!("recipe {} measures layer sensitivities on calibration inputs: pass --calib DIR", recipe.name()),
        None => None,
    };
    let layers = model.layers();
    if layers.is_empty() {
        invalid!("model {}: no matrices to quantize", model_path.display());
    }
    // A bad --rank is refused before calibration spends any time (svd_branches checks again
    // on exactly the layers that get a branch).
    if methods.svdquant {
        if let Some(l) = layers.iter().filter(|l| inner_matrix(&l.key)).find(|l| rank == 0 || rank > l.rows().min(l.cols())) {
            invalid!("--rank {rank}: layer {} is {}×{}, so its low-rank branch takes a rank of 1 to {}", l.key, l.rows(), l.cols(), l.rows().min(l.cols()));
        }
    }
    // Activation maps first: RepQ/SmoothQuant fold per-channel maps into the weights every later
    // pass reads. W8A8 quantizes per token at run time and keeps only SmoothQuant's maps.
    let mut repq_grids = HashMap::new();
    if let Some(c) = calib.as_ref().filter(|_| methods.act.repq || methods.act.smooth) {
        let (wb, ab) = static_act.unwrap_or((8, 8));
        let mut progress = Progress::new("folding activation maps", 1);
        (model.weights, repq_grids) = act_calib::fold_channel_maps(gpu, &model, c, ab, wb, methods.act)?;
        progress.step(1);
        progress.finish();
    }
    // `--method fisher` and `--sensitivity fisher` weight rows by the output gradients of one
    // CPU backward pass, and get their Hessians from the same calibration pass.
    // Layers GPTQ cannot see (a VQGAN encoder calibrated with tokens) fall back to clip/rtn.
    // The mixed recipe's sensitivities (but `output`) read the same layer inputs.
    let mixed = matches!(recipe, Recipe::Mixed { .. });
    let mixed_fisher = mixed && opts.sensitivity == mixed::Sensitivity::Fisher;
    let wants_hessians = methods.gptq || (mixed && opts.sensitivity.from_hessians());
    let inner: Vec<&Layer> = layers.iter().filter(|l| inner_matrix(&l.key)).collect();
    let (mut hessians, mut fisher, mut act_points, mut rotation_rows) = (HashMap::new(), None, Vec::new(), None);
    if let Some(c) = &calib {
        let measured = if wants_hessians && (methods.fisher || mixed_fisher) { Some(model.output_sensitivity(c, if methods.fisher { "method fisher" } else { "--sensitivity fisher" })?) } else { None };
        let gptq_rows = measured.as_ref().filter(|_| methods.fisher).map(mean_one);
        // GPTQ's Hessians, and the gradient-weighted ones `--sensitivity fisher` predicts with.
        let mut weightings = vec![gptq_rows.as_ref()];
        if mixed_fisher {
            weightings.extend(measured.as_ref().map(|m| Some(&m.rows)));
        }
        let seen: Vec<Layer> = layers.iter().filter(|l| !l.encoder || c.images.is_some()).cloned().collect();
        // One f32 pass of the folded model serves the activation quantizers' fits, GPTQ's
        // Hessians and the rotation decisions (each pass is a whole forward: three separate
        // passes cost W4A4 on a 518-px ViT-S/14 80 s more when it took 218 s, BENCHMARKS.md).
        let sites = static_act.map(|_| model.act_sites()).transpose()?;
        let mut observed = sites.as_ref().map(act_calib::Observed::new);
        let mut h = wants_hessians.then(|| Hessians::new(&seen, &weightings, c));
        rotation_rows = (static_act.is_some() && methods.rotate).then(|| super::rotate::Rows::new(&inner));
        let mut readers: Vec<&mut dyn Reader> = Vec::new();
        readers.extend(observed.as_mut().map(|r| r as &mut dyn Reader));
        readers.extend(h.as_mut().map(|r| r as &mut dyn Reader));
        readers.extend(rotation_rows.as_mut().map(|r| r as &mut dyn Reader));
        if !readers.is_empty() {
            let mut progress = Progress::new("calibrating (layer inputs)", c.count());
            model.read_pass(gpu, &model.weights, c, &mut readers, Some(&mut progress))?;
            progress.finish();
        }
        if let Some(mut h) = h {
            model.encoder_hessians(gpu, c, &mut h)?;
            let mut maps = h.finish();
            if let (Some(measured), true) = (measured, mixed_fisher) {
                fisher = Some(mixed::FisherInputs { measured, hessians: maps.pop().expect("two weightings") });
            }
            hessians = maps.remove(0);
        }
        if let (Some(sites), Some(observed), Some((_, ab))) = (&sites, &observed, static_act) {
            let mut progress = Progress::new("fitting activation quantizers", 1);
            act_points = act_calib::fit_quantizers(&mut model.weights, sites, observed, &repq_grids, ab, methods.act, opts.seed)?;
            progress.step(1);
            progress.finish();
            if methods.dynamic {
                // The Linear inputs get per-token scales at run time; only the (simulated)
                // post-softmax quantizers stay.
                act_points.retain(|p| p.node.ends_with(".attn"));
            }
        }
    }
    // SVDQuant: every block Linear with an input quantizer gets its low-rank branch (after
    // smoothing, and after the f32 passes above, which must not see the branches); the
    // residual is what the weight methods below quantize, with the same Hessians (same inputs).
    let low_rank = if methods.svdquant { svd_branches(&mut model, &layers, &act_points, rank)? } else { HashMap::new() };
    // QuaRot: W·H and the Hessian of the rotated inputs for every block Linear where the
    // rotation lowers the layer's output error (`quant::rotate`).
    let rotations = match (&rotation_rows, static_act) {
        (Some(rows), Some((_, ab))) => {
            let mut progress = Progress::new("deciding rotations", 1);
            let r = super::rotate::apply(&mut model, &inner, rows, &mut hessians, ActInput::PerToken { bits: ab, zero_point: methods.asymmetric }, methods)?;
            progress.step(1);
            progress.finish();
            r
        }
        _ => super::rotate::Rotations { decisions: BTreeMap::new(), packed: HashMap::new() },
    };
    let (formats, allocation) = match &recipe {
        Recipe::Weights { format, .. } => (layers.iter().map(|l| (l.key.clone(), weight_recipe_format(&l.key, *format))).collect::<HashMap<_, _>>(), None),
        Recipe::Mixed { bits } => {
            let a = mixed::allocate_model(gpu, &model, &layers, calib.as_ref().unwrap(), *bits, methods, &hessians, opts.sensitivity, fisher.as_ref())?;
            (a.formats(), Some(a))
        }
        Recipe::Activations { weight_bits, .. } => (layers.iter().map(|l| (l.key.clone(), activation_recipe_format(&l.key, *weight_bits))).collect(), None),
    };

    let mut report = Report { layers: Vec::new(), methods, packed_bytes: 0, f32_bytes: 0, params: 0, mixed: allocation, recon: Vec::new() };
    let mut packed: Vec<(String, PackedMatrix)> = Vec::new();
    let mut desc = Description::default();
    let progress = Progress::new("quantizing matrices", layers.len());
    // Layers are independent: quantize them on every core (GPTQ dominates on a ViT-S), then
    // record them in key order so the output does not depend on the thread count.
    let quantize_layer = |l: &Layer| -> Result<(PackedMatrix, Methods)> {
        let w = low_rank.get(&l.key).unwrap_or(&model.weights.tensors[&l.key].data);
        let h = hessians.get(&l.key);
        let used = Methods { gptq: methods.gptq && h.is_some(), ..methods };
        let six_bit = matches!(static_act, Some((6, _))) && inner_matrix(&l.key);
        let m = match rotations.packed.get(&l.key) {
            // The rotation decision already made these codes from this weight and Hessian.
            Some(m) if formats[&l.key] == super::rotate::FORMAT && !low_rank.contains_key(&l.key) => Ok(m.clone()),
            _ if six_bit => act_calib::six_bit(w, l.rows(), l.cols(), used.clip),
            _ => quantize_matrix(w, l.rows(), l.cols(), formats[&l.key], used, h),
        };
        progress.tick();
        Ok((m.map_err(|e| Error::Invalid(format!("{}: {e}", l.key)))?, used))
    };
    let results = match &calib {
        Some(c) if methods.sequential => {
            let mut done = super::sequential::quantize(gpu, &model, &layers, c, GptqOptions::default().damp, |l, w, h| {
                let m = quantize_matrix(w, l.rows(), l.cols(), formats[&l.key], methods, Some(h));
                progress.tick();
                m
            })?;
            layers.iter().map(|l| Ok((done.remove(&l.key).expect("every layer quantized"), methods))).collect()
        }
        _ => parallel_map(&layers, quantize_layer),
    };
    progress.finish();
    let mut results: Vec<(PackedMatrix, Methods)> = results.into_iter().collect::<Result<_>>()?;
    if let (Some(c), true) = (&calib, methods.recon) {
        // The per-token quantizers and rotations the W4A8/W4A4 kernel applies and the
        // post-softmax quantizers are part of the blocks it reconstructs; static quantizers of
        // Linear inputs are not (f32 there).
        let quant = match static_act {
            Some((4, ab)) if methods.dynamic => Some(ActInput::PerToken { bits: ab, zero_point: methods.asymmetric }),
            _ => None,
        };
        let inputs = layers
            .iter()
            .filter(|l| inner_matrix(&l.key))
            .map(|l| (l.key.strip_suffix(".weight").unwrap_or(&l.key).to_string(), InputMap { hadamard: rotations.decisions.get(&l.key).filter(|d| d.rotate()).map(|d| d.block), quant, qdrop: None }))
            .filter(|(_, m)| *m != InputMap::default())
            .collect();
        let attention = act_points.iter().filter(|p| p.node.ends_with(".attn")).map(|p| (p.node.clone(), p.quantizer)).collect();
        let maps = recon::QuantizedBlocks { inputs, attention };
        let mut codes: HashMap<&str, &mut PackedMatrix> = layers.iter().map(|l| l.key.as_str()).zip(results.iter_mut().map(|(m, _)| m)).collect();
        let steps = Progress::new("block reconstruction (CPU)", model.block_prefixes()?.len());
        let options = recon::Options { iters: opts.recon_iters.unwrap_or(recon::DEFAULT_ITERS), seed: opts.seed, ..Default::default() };
        report.recon = recon::reconstruct(&model, c, &mut codes, &maps, options, &steps)?;
        steps.finish();
        let blocks: Vec<_> = report.recon.iter().map(|b| json!({"block": b.block, "error_start": b.start, "error_end": b.end, "applied": b.applied, "codes_changed": b.codes_changed})).collect();
        desc.extra.insert("reconstruction".into(), json!(blocks));
        let recon::Options { iters, batch, lr, lambda, qdrop, seed } = options;
        desc.extra.insert("reconstruction_settings".into(), json!({"iters": iters, "batch": batch, "lr": lr, "lambda": lambda, "qdrop": qdrop, "seed": seed}));
    }
    for (l, (m, used)) in layers.iter().zip(results) {
        let format = formats[&l.key];
        // The error of what the layer computes with: codes plus the low-rank branch, if any.
        let mut approx = m.dequantize();
        if let Some(residual) = low_rank.get(&l.key) {
            let w = &model.weights.tensors[&l.key].data;
            approx.iter_mut().zip(w.iter().zip(residual)).for_each(|(a, (w, r))| *a += w - r);
        }
        let err = crate::metrics::nmse(&approx, &model.weights.tensors[&l.key].data);
        let rotation = rotations.decisions.get(&l.key).filter(|d| d.rotate());
        let name = if rotation.is_some() { format!("{}+hadamard", used.name()) } else { used.name() };
        report.layers.push((l.key.clone(), format, name.clone(), err));
        let mut extra = BTreeMap::from([("method".to_string(), json!(name))]);
        if let Some(d) = rotation {
            // The loader rotates this layer's input (`Runtime::hadamard`); the errors are the
            // decision's (the stored q4g32 weights each way, per-token activations, calibration inputs).
            extra.insert("hadamard".to_string(), json!({"block": d.block, "error_plain": d.error_plain, "error_rotated": d.error_rotated}));
        }
        desc.tensors.insert(l.key.clone(), PackedTensor { format: format.name(), shape: l.shape.clone(), extra });
        packed.push((l.key.clone(), m));
    }
    let floats: Vec<(String, Vec<usize>, Vec<f32>)> = {
        let mut names: Vec<&String> = model.weights.tensors.keys().filter(|k| !formats.contains_key(*k)).collect();
        names.sort();
        names.into_iter().map(|k| (k.clone(), model.weights.tensors[k].shape.clone(), model.weights.tensors[k].data.clone())).collect()
    };
    report.params = floats.iter().map(|f| f.2.len()).sum::<usize>() + layers.iter().map(|l| l.rows() * l.cols()).sum::<usize>();
    report.packed_bytes = 4 * floats.iter().map(|f| f.2.len()).sum::<usize>() + packed.iter().map(|(_, m)| m.bytes()).sum::<usize>();
    report.f32_bytes = 4 * report.params;
    desc.extra.insert("recipe".into(), json!(recipe.name()));
    desc.extra.insert("methods".into(), json!(methods.name()));
    let activations = match (&recipe, static_act) {
        (_, Some((4, ab))) if methods.dynamic => format!(
            "integer {ab}-bit per-token dynamic ({}, computed on the GPU for every input{}) in the W4A{ab} kernel at every block Linear; simulated in f32 (post-softmax): {}",
            if methods.asymmetric {
                format!("asymmetric, (max − min) / {} per row and a zero point", (1u32 << ab) - 1)
            } else {
                format!("symmetric, absmax / {} per row", ActInput::per_token_max(ab))
            },
            if methods.rotate { ", after an online block-Hadamard rotation of the input: weights stored as W·H (QuaRot)" } else { "" },
            act_points.iter().map(|p| p.node.as_str()).collect::<Vec<_>>().join(", ")
        ),
        (_, Some((4, ab))) => integer_activations(ab, &act_points),
        (_, Some((_, ab))) => format!("simulated {ab}-bit static per-tensor (fake-quantized in f32 at the `{}` points)", crate::models::packed::ACT_QUANT_KEY),
        (Recipe::Activations { .. }, None) => "int8 per-token dynamic (W8A8 kernel)".to_string(),
        _ => "f32 (weight-only)".to_string(),
    };
    desc.extra.insert("activations".into(), json!(activations));
    if matches!((&recipe, static_act), (Recipe::Activations { .. }, None)) {
        desc.runtime = Some(Runtime { activations: Activations::Int8PerToken, attention: Attention::SageInt8, hadamard: false });
        desc.extra.insert(
            "attention".into(),
            json!("SageAttention: int8 Q·Kᵀ per block (K mean-smoothed), P·V in f16 where the adapter has it"),
        );
    }
    if let Some((4, ab)) = static_act {
        // q4 block Linears with uniform input quantizers run through the W4A8/W4A4 kernel;
        // with `dynamic` every one of them, its input quantized per token at run time.
        let activations = match (methods.dynamic, Activations::per_token(ab, methods.asymmetric)) {
            (false, _) => Activations::IntStatic,
            (true, Some(a)) => a,
            (true, None) => invalid!("method dynamic: {ab}-bit activations have no per-token runtime (w4a8 or w4a4)"),
        };
        desc.runtime = Some(Runtime { activations, attention: Attention::Exact, hadamard: methods.rotate });
    }
    if static_act.is_some() {
        desc.extra.insert(crate::models::packed::ACT_QUANT_KEY.into(), json!(act_points));
        desc.extra.insert(format!("{}_schema", crate::models::packed::ACT_QUANT_KEY), json!(crate::models::packed::ACT_QUANT_SCHEMA));
    }
    if let Some((6, _)) = static_act {
        desc.extra.insert("weight_storage".into(), json!("block Linears: 6-bit codes (±31) stored in q8 words, so the file has int8 size"));
    }
    if methods.svdquant {
        desc.extra.insert(
            "svdquant".into(),
            json!({"rank": rank, "layers": low_rank.len(), "tensors": format!("NODE.{} [rank, in] and NODE.{} [out, rank], f32: the Linear NODE adds x·downᵀ·upᵀ to its 4-bit residual's output", crate::models::block_quant::LOW_RANK_DOWN, crate::models::block_quant::LOW_RANK_UP)}),
        );
    }
    if let Some(c) = &calib {
        desc.extra.insert("calibration".into(), json!({"source": c.source, "count": c.count(), "seed": opts.seed}));
    }
    if let Some(a) = &report.mixed {
        desc.extra.insert("mixed".into(), a.to_json());
    }
    write_folder(&model, &packed, &floats, &desc, out)?;
    Ok(report)
}

/// SVDQuant on every layer whose input has a quantizer (the block Linears): stores each
/// branch's `down`/`up` as f32 tensors of `model` and returns the residuals to quantize. A
/// NoisyQuant layer's bias gets `up·down·noise` back: the branch reads x, not x + noise.
fn svd_branches(model: &mut Model, layers: &[Layer], points: &[crate::models::packed::QuantPoint], rank: usize) -> Result<HashMap<String, Vec<f32>>> {
    use crate::models::block_quant::{LOW_RANK_DOWN, LOW_RANK_UP};
    use crate::models::weights::WeightTensor;
    let node_of = |l: &Layer| l.key.strip_suffix(".weight").map(str::to_string);
    let chosen: Vec<(&Layer, String)> = layers.iter().filter_map(|l| node_of(l).filter(|n| points.iter().any(|p| &p.node == n)).map(|n| (l, n))).collect();
    if chosen.is_empty() {
        invalid!("method svdquant: the model has no block Linear with an activation quantizer to add a low-rank branch to");
    }
    // Every rank is checked before any work, so a bad --rank costs nothing and writes nothing.
    for (l, node) in &chosen {
        if rank == 0 || rank > l.rows().min(l.cols()) {
            invalid!("--rank {rank}: layer {node} is {}×{}, so its low-rank branch takes a rank of 1 to {}", l.rows(), l.cols(), l.rows().min(l.cols()));
        }
    }
    let branches = parallel_map(&chosen, |(l, _)| super::svd::low_rank(&model.weights.tensors[&l.key].data, l.rows(), l.cols(), rank));
    let mut residuals = HashMap::new();
    for ((l, node), branch) in chosen.iter().zip(branches) {
        let (up, down) = branch.map_err(|e| Error::Invalid(format!("{node}: {e}")))?;
        let (rows, cols) = (l.rows(), l.cols());
        residuals.insert(l.key.clone(), super::svd::residual(&model.weights.tensors[&l.key].data, rows, cols, &up, &down, rank));
        let noise = points.iter().find(|p| &p.node == node).and_then(|p| p.noise.clone());
        if let (Some(key), Some(bias)) = (noise, model.weights.tensors.get(&format!("{node}.bias")).map(|b| b.data.clone())) {
            let n = &model.weights.tensors[&key].data;
            let t: Vec<f64> = (0..rank).map(|q| (0..cols).map(|k| down[q * cols + k] as f64 * n[k] as f64).sum()).collect();
            let fixed: Vec<f32> = bias.iter().enumerate().map(|(r, b)| (*b as f64 + (0..rank).map(|q| up[r * rank + q] as f64 * t[q]).sum::<f64>()) as f32).collect();
            model.weights.tensors.get_mut(&format!("{node}.bias")).unwrap().data = fixed;
        }
        model.weights.tensors.insert(format!("{node}.{LOW_RANK_DOWN}"), WeightTensor { shape: vec![rank, cols], data: down });
        model.weights.tensors.insert(format!("{node}.{LOW_RANK_UP}"), WeightTensor { shape: vec![rows, rank], data: up });
    }
    Ok(residuals)
}

/// The description's prose for a W4 static recipe: which quantizers the integer kernel applies
/// (uniform ones at Linear inputs) and which stay simulated in f32 (the others).
fn integer_activations(act_bits: u32, points: &[crate::models::packed::QuantPoint]) -> String {
    use crate::kernels::act_quant::ActQuantizer;
    let is_linear = |p: &&crate::models::packed::QuantPoint| !p.node.ends_with(".attn");
    let integer = points.iter().filter(is_linear).filter(|p| matches!(p.quantizer, ActQuantizer::Uniform { .. })).count();
    let simulated: Vec<String> = points.iter().filter(|p| !is_linear(p) || !matches!(p.quantizer, ActQuantizer::Uniform { .. })).map(|p| p.node.clone()).collect();
    let mut text = format!("integer {act_bits}-bit static per-tensor: {integer} block Linear inputs quantized to int codes inside the W4A{act_bits} kernel (int4 weights × int{} activations, i32 per group)", if act_bits <= 4 { 4 } else { 8 });
    if !simulated.is_empty() {
        text += &format!("; simulated in f32 (post-softmax probabilities before the f32 P·V, non-uniform quantizers): {}", simulated.join(", "));
    }
    text
}

/// The weight format of matrix `key` under a static activation recipe: block Linears at the
/// recipe's bits (6-bit codes live in Q8 words), the patch embedding and head at 8 bits (as
/// RepQ-ViT and PTQ4ViT keep the first and last layers).
fn activation_recipe_format(key: &str, weight_bits: u32) -> WeightFormat {
    let format = if weight_bits == 4 { WeightFormat::Q4 { group: 32, zero_point: false } } else { WeightFormat::Q8 { group: None } };
    weight_recipe_format(key, format)
}

/// The weight format of matrix `key` under a recipe that stores `format` (the weight-only
/// recipes, and the activation recipes through `activation_recipe_format`): a classifier's
/// first and last layers (patch embedding, head) at 8 bits where the format has fewer. The head's error reaches the logits unfiltered:
/// at 8 bits w4a16 gains 4.4 dB (trained heads) to 9.8 dB (the random head) of logits
/// SQNR on the 4-block fixtures (docs/QUANTIZATION.md, "Twelve blocks and a random head"), for
/// 3 % more bytes there and about 1.2 % on a ViT-B.
fn weight_recipe_format(key: &str, format: WeightFormat) -> WeightFormat {
    if inner_matrix(key) || format.bits() >= 8 {
        format
    } else {
        WeightFormat::Q8 { group: None }
    }
}

/// `f` over `items` on up to `available_parallelism` threads, results in `items`' order.
pub(super) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                slots.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_iter().map(|r| r.expect("every item was processed")).collect()
}

/// Whether `key` is a classifier's inner matrix (a block Linear, Swin's patch merging), not its
/// first or last layer (patch embedding, head), which the activation recipes keep at 8 bits.
fn inner_matrix(key: &str) -> bool {
    !(key.starts_with("patch_embed.") || key.starts_with("head.") || key.starts_with("head_dist."))
}

/// Writes into a temporary folder beside `out` and renames it at the end, so a failure leaves
/// no half-written output.
fn write_folder(model: &Model, packed: &[(String, PackedMatrix)], floats: &[(String, Vec<usize>, Vec<f32>)], desc: &Description, out: &Path) -> Result<()> {
    let name = out.file_name().ok_or_else(|| Error::Invalid(format!("--out {}: not a folder name", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let io = |e: std::io::Error, what: &Path| Error::Invalid(format!("{}: {e}", what.display()));
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| io(e, &tmp))?;
        crate::models::packed::save(&tmp.join("model.safetensors"), floats, packed, desc)?;
        let config_name = model.config_path.file_name().unwrap();
        std::fs::copy(&model.config_path, tmp.join(config_name)).map_err(|e| io(e, &model.config_path))?;
        // The SHA-256 of each file, checked at every load (`models::checksums`).
        let files = ["model.safetensors", &config_name.to_string_lossy()];
        let text = crate::models::checksums::record_json(&crate::models::packed::with_checksums(desc, packed), &tmp, &files)?;
        std::fs::write(tmp.join("quantization.json"), text).map_err(|e| io(e, &tmp))?;
        std::fs::rename(&tmp, out).map_err(|e| io(e, out))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
