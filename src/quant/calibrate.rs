//! What the quantizer needs from a model: its checkpoint and config, the matrices to pack, the
//! calibration inputs (an image folder, or VQ tokens for a decoder), the inputs each matrix sees
//! on them (for GPTQ's Hessians: read back from an unshared `Plan`, or on a CPU adapter from the
//! CPU ViT, `Forward`), and the model's output on them with any set of weights (for the
//! mixed-precision sensitivities).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::models::vit::backprop::{CpuVit, Measured, NodeInput, Sensitivity};
use crate::gpu::AdapterClass;
use crate::graph::Plan;
use crate::models::vqgan::{TokenGrid, VqganConfig, VqganDecoder, VqganEncoder};
use crate::models::{detect, load_image, preprocess, Classifier, ClassifierConfig, ModelKind, Weights, WeightSummary};
use crate::formats::WeightFormat;
use crate::synthetic::Rng;
use crate::{invalid, Error, Gpu, Result};

/// Images (or token grids) per calibration forward pass.
pub(super) const BATCH: usize = 8;

#[derive(Clone, Debug)]
pub enum Family {
    /// A timm classifier (ViT family or Swin).
    Classifier(ClassifierConfig),
    Vqgan(VqganConfig),
}

/// Where calibration's float forward passes run (`Model::forward_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The model's graph on the adapter, read back from an unshared `Plan`: every family, and
    /// the only choice on a real GPU.
    Adapter,
    /// `CpuVit` (ViT-family classifiers calibrated on images). Where the adapter is the CPU
    /// itself, the same f32 pass runs faster here: GPTQ's calibration step over 8 images of a
    /// 518-pixel ViT-S/14 took 51.2 s, against 133.8 s through lavapipe (2 cores, BENCHMARKS.md).
    Cpu,
}

/// Something that reads node inputs from a calibration pass (`Model::read_pass`).
pub trait Reader {
    /// The graph nodes whose first input it reads.
    fn nodes(&self) -> Vec<String>;
    /// One node's input on the pass over calibration inputs `first..first + count`.
    fn read(&mut self, first: usize, count: usize, x: &NodeInput) -> Result<()>;
}

/// A checkpoint the quantizer reads.
pub struct Model {
    pub family: Family,
    pub weights: Weights,
    pub weights_path: PathBuf,
    pub config_path: PathBuf,
}

/// One matrix to pack: the checkpoint key, its shape, and the graph node whose input it
/// multiplies.
#[derive(Clone, Debug)]
pub struct Layer {
    pub key: String,
    pub shape: Vec<usize>,
    pub node: String,
    /// The VQGAN encoder's layers see images; everything else the model's own input.
    pub encoder: bool,
}

impl Layer {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    pub fn cols(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let (family, (weights_path, config_path)) = match detect(path)? {
            ModelKind::Vit => {
                let files = crate::models::weights::resolve_checkpoint(path, None, "config.json")?;
                (Family::Classifier(ClassifierConfig::load(&files.1)?), files)
            }
            ModelKind::Vqgan => {
                let files = VqganConfig::resolve(path, None)?;
                (Family::Vqgan(VqganConfig::load(&files.1)?), files)
            }
            ModelKind::Prior => invalid!("model {}: a minGPT prior is not quantized by `lowbit quantize` (quantize its VQGAN)", path.display()),
        };
        let weights = Weights::load(&weights_path)?;
        Ok(Model { family, weights, weights_path, config_path })
    }

    pub fn is_quantized(&self) -> Result<bool> {
        Ok(WeightSummary::new(&self.weights)?.is_quantized())
    }

    /// Where the static activation quantizers of the W6A6/W4A8/W4A4 recipes sit.
    pub fn act_sites(&self) -> Result<super::act_calib::Sites> {
        let mut sites = super::act_calib::Sites::default();
        match &self.family {
            Family::Classifier(ClassifierConfig::Vit(c)) => (0..c.depth).for_each(|n| sites.add_block(&format!("blocks.{n}"), c.embed_dim, c.num_heads)),
            Family::Classifier(ClassifierConfig::Swin(c)) => {
                for (i, s) in c.stages()?.iter().enumerate() {
                    if i > 0 {
                        // Patch merging: the post-LN 2×2 concatenation feeds `reduction`.
                        let m = format!("layers.{i}.downsample");
                        sites.norm_linears.push((format!("{m}.norm"), format!("{m}.reduction"), 2 * s.dim));
                        sites.linears.push((format!("{m}.reduction"), false));
                    }
                    for j in 0..s.depth {
                        sites.add_block(&format!("layers.{i}.blocks.{j}"), s.dim, s.heads);
                        // Window attention adds a bias to its scores and runs in f32: no
                        // post-softmax quantizer.
                        sites.attentions.pop();
                    }
                }
            }
            Family::Vqgan(_) => invalid!("static activation quantization runs on classifiers (ViT, Swin), not on a VQGAN"),
        }
        Ok(sites)
    }

    /// A classifier's blocks in the order the forward pass runs them, as key prefixes
    /// (`--method sequential` calibrates them one after the other).
    pub fn block_prefixes(&self) -> Result<Vec<String>> {
        match &self.family {
            Family::Classifier(ClassifierConfig::Vit(c)) => Ok((0..c.depth).map(|n| format!("blocks.{n}")).collect()),
            Family::Classifier(ClassifierConfig::Swin(c)) => {
                let mut out = Vec::new();
                for (i, s) in c.stages()?.iter().enumerate() {
                    if i > 0 {
                        out.push(format!("layers.{i}.downsample"));
                    }
                    out.extend((0..s.depth).map(|j| format!("layers.{i}.blocks.{j}")));
                }
                Ok(out)
            }
            Family::Vqgan(_) => invalid!("sequential calibration runs on classifiers (ViT, Swin), not on a VQGAN"),
        }
    }

    /// Runs the model once with weights `a` and once with `b` on each calibration batch and
    /// hands `visit` each layer's input rows under both: the same tokens, row for row.
    pub fn paired_inputs(&self, gpu: &Gpu, a: &Weights, b: &Weights, calib: &Calibration, layers: &[&Layer], mut visit: impl FnMut(&Layer, &[f32], &[f32]) -> Result<()>) -> Result<()> {
        let (model_a, model_b) = (self.build(gpu, a)?, self.build(gpu, b)?);
        for batch in calib.batches()? {
            let mut rows: [HashMap<&str, Vec<f32>>; 2] = Default::default();
            for (model, rows) in [&model_a, &model_b].into_iter().zip(&mut rows) {
                let plan = Plan::unshared(gpu, model.graph(batch.count(), calib)?)?;
                batch.set(gpu, &plan)?;
                plan.run(gpu)?;
                for l in layers {
                    if !rows.contains_key(l.node.as_str()) {
                        let (inputs, output) = plan.node_values(&l.node)?;
                        rows.insert(&l.node, super::hessians::input_rows(&inputs[0].to_vec_f32(gpu)?, &inputs[0].shape, &output.shape, l)?.0);
                    }
                }
            }
            for l in layers {
                visit(l, &rows[0][l.node.as_str()], &rows[1][l.node.as_str()])?;
            }
        }
        Ok(())
    }

    pub fn has_encoder(&self) -> bool {
        matches!(self.family, Family::Vqgan(_)) && self.weights.contains("encoder.conv_in.weight")
    }

    /// The matrices the model's loaders read through `Weights::matrix`, sorted by key. Tensors
    /// of a checkpoint the model never reads (a VQGAN's discriminator) stay as they are.
    pub fn layers(&self) -> Vec<Layer> {
        let summary = WeightSummary::new(&self.weights).unwrap_or_default();
        let mut out = Vec::new();
        for (key, _, _, _) in &summary.matrices {
            let Some(t) = self.weights.tensors.get(key) else { continue };
            let base = key.strip_suffix(".weight").unwrap_or(key);
            let (node, encoder) = match self.family {
                Family::Classifier(_) => (base.to_string(), false),
                Family::Vqgan(_) => {
                    let side = ["decoder.", "post_quant_conv"].iter().any(|p| key.starts_with(p));
                    let enc = ["encoder.", "quant_conv"].iter().any(|p| key.starts_with(p));
                    // WeTok's adaptive norms feed a per-image affine computed on the CPU, not a
                    // matrix the kernels read.
                    if (!side && !enc) || key.contains(".adaptive.") {
                        continue;
                    }
                    // q, k and v run as one stacked 1×1 conv node.
                    let node = match base.rsplit_once('.') {
                        Some((attn, "q" | "k" | "v")) => format!("{attn}.q/k/v"),
                        _ => base.to_string(),
                    };
                    (node, enc)
                }
            };
            out.push(Layer { key: key.clone(), shape: t.shape.clone(), node, encoder });
        }
        out
    }

    /// The ViT, or the VQGAN decoder, built from `w` with matrices as stored (f32 otherwise).
    fn build(&self, gpu: &Gpu, w: &Weights) -> Result<Built> {
        Ok(match &self.family {
            Family::Classifier(c) => Built::Classifier(Box::new(Classifier::new(gpu, c, w, WeightFormat::F32)?)),
            Family::Vqgan(c) => Built::Decoder(Box::new(VqganDecoder::new(gpu, c, w, WeightFormat::F32)?)),
        })
    }

    /// The model's output on the calibration inputs with weights `w`, concatenated over
    /// batches: logits for a classifier, decoded images for a VQGAN.
    pub fn outputs(&self, gpu: &Gpu, w: &Weights, calib: &Calibration) -> Result<Vec<f32>> {
        let model = self.build(gpu, w)?;
        let mut out = Vec::new();
        let mut plan: Option<(usize, Plan)> = None;
        for batch in calib.batches()? {
            let n = batch.count();
            if plan.as_ref().is_none_or(|(b, _)| *b != n) {
                plan = Some((n, Plan::new(gpu, model.graph(n, calib)?)?));
            }
            let p = &plan.as_ref().unwrap().1;
            batch.set(gpu, p)?;
            out.extend(p.run(gpu)?[0].to_vec_f32(gpu)?);
        }
        Ok(out)
    }

    /// `Forward::Cpu` for a ViT calibrated on images when the adapter is the CPU (lavapipe,
    /// SwiftShader) and the CPU pass sees every node of `nodes`; else `Forward::Adapter`.
    pub fn forward_for(&self, gpu: &Gpu, calib: &Calibration, nodes: &[String]) -> Forward {
        let vit = matches!(self.family, Family::Classifier(ClassifierConfig::Vit(_))) && calib.tokens.is_none() && calib.images.is_some();
        if vit && gpu.adapter_class == AdapterClass::Cpu && nodes.iter().all(|n| CpuVit::sees(n)) {
            Forward::Cpu
        } else {
            Forward::Adapter
        }
    }

    /// Runs the model with weights `w` over the calibration batches and hands the first input
    /// of each node in `nodes` and its shape to `visit` (`forward_for` picks where).
    pub fn visit_inputs(&self, gpu: &Gpu, w: &Weights, calib: &Calibration, nodes: &[String], mut visit: impl FnMut(&str, &[f32], &[usize]) -> Result<()>) -> Result<()> {
        let on = self.forward_for(gpu, calib, nodes);
        self.visit_inputs_on(on, gpu, w, calib, nodes, None, |_, _, x| visit(x.node, x.values, x.shape))
    }

    /// `visit_inputs` on `on`, handing `visit` the pass's first calibration input and its
    /// count beside each node's input (with its output's shape); `progress` steps per pass.
    /// Nodes come in `nodes` order on the adapter, in forward order on the CPU.
    #[allow(clippy::too_many_arguments)] // visit_inputs' arguments plus where, progress, and the pass
    pub fn visit_inputs_on(&self, on: Forward, gpu: &Gpu, w: &Weights, calib: &Calibration, nodes: &[String], mut progress: Option<&mut Progress>, mut visit: impl FnMut(usize, usize, NodeInput) -> Result<()>) -> Result<()> {
        enum Runner<'v> {
            Cpu(Box<CpuVit<'v>>),
            Graph(Built),
        }
        let runner = match (&self.family, on) {
            (Family::Classifier(ClassifierConfig::Vit(c)), Forward::Cpu) => Runner::Cpu(Box::new(CpuVit::new(c, w)?)),
            (_, Forward::Cpu) => invalid!("the CPU forward pass runs ViT-family classifiers only"),
            (_, Forward::Adapter) => Runner::Graph(self.build(gpu, w)?),
        };
        let wanted: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        let mut first = 0;
        for batch in calib.batches()? {
            let count = batch.count();
            match (&runner, &batch) {
                (Runner::Cpu(vit), Batch::Pixels(pixels, _)) => {
                    let mut seen = HashSet::new();
                    vit.visit_inputs(pixels, &|node| wanted.contains(node), &mut |x| {
                        seen.insert(x.node.to_string());
                        visit(first, count, x)
                    })?;
                    if let Some(missing) = nodes.iter().find(|n| !seen.contains(n.as_str())) {
                        invalid!("{missing}: the CPU forward pass has no such node");
                    }
                }
                (Runner::Cpu(_), Batch::Ids(..)) => invalid!("the CPU forward pass runs on images, not tokens"),
                (Runner::Graph(model), _) => {
                    let plan = Plan::unshared(gpu, model.graph(count, calib)?)?;
                    batch.set(gpu, &plan)?;
                    plan.run(gpu)?;
                    for node in nodes {
                        let (inputs, output) = plan.node_values(node)?;
                        let values = inputs[0].to_vec_f32(gpu)?;
                        visit(first, count, NodeInput { node, values: &values, shape: &inputs[0].shape, out_shape: &output.shape })?;
                    }
                }
            }
            first += count;
            if let Some(p) = progress.as_deref_mut() {
                p.step(count);
            }
        }
        Ok(())
    }

    /// Runs the model with weights `w` once over the calibration set and hands each of
    /// `readers` the inputs of the nodes it asks for: whatever reads the same f32 model shares
    /// one pass (each costs a whole forward: 17 s for a 518-px ViT-S/14 on 8 images on
    /// 2 cores with the CPU ViT). No pass when no reader wants a node.
    pub fn read_pass(&self, gpu: &Gpu, w: &Weights, calib: &Calibration, readers: &mut [&mut dyn Reader], progress: Option<&mut Progress>) -> Result<()> {
        let wants: Vec<Vec<String>> = readers.iter().map(|r| r.nodes()).collect();
        let mut nodes: Vec<String> = Vec::new();
        for n in wants.iter().flatten() {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        if nodes.is_empty() {
            return Ok(());
        }
        let on = self.forward_for(gpu, calib, &nodes);
        self.visit_inputs_on(on, gpu, w, calib, &nodes, progress, |first, count, x| {
            for (r, want) in readers.iter_mut().zip(&wants) {
                if want.iter().any(|n| n == x.node) {
                    r.read(first, count, &x)?;
                }
            }
            Ok(())
        })
    }

    /// The CPU ViT and the calibration images in passes of BATCH, for the backward passes of
    /// `--method fisher` and `--sensitivity fisher|lrp` (`what` names the option).
    fn vit_batches<'a>(&'a self, calib: &'a Calibration, what: &str) -> Result<(CpuVit<'a>, Vec<&'a [f32]>, usize)> {
        let Family::Classifier(ClassifierConfig::Vit(c)) = &self.family else {
            invalid!("{what} differentiates a ViT-family classifier (on the CPU); this model is not one");
        };
        let Some((pixels, [_, ch, h, w])) = &calib.images else { invalid!("{what} needs calibration images") };
        let vit = CpuVit::new(c, &self.weights).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        Ok((vit, pixels.chunks(BATCH * ch * h * w).collect(), ch * h * w))
    }

    /// Per layer (graph node) and input row, over the calibration images in order, the
    /// expected squared gradient of the model's output at the row's output, and its sums per
    /// output channel, and the model's outputs (`CpuVit::sensitivity`).
    pub fn output_sensitivity(&self, calib: &Calibration, what: &str) -> Result<Measured> {
        let (vit, batches, per_image) = self.vit_batches(calib, what)?;
        let mut all = Measured { rows: Sensitivity::new(), channels: HashMap::new(), outputs: Vec::new() };
        let mut progress = Progress::new("output gradients (CPU backward passes)", calib.count());
        for (i, chunk) in batches.into_iter().enumerate() {
            let m = vit.sensitivity(chunk, i as u64).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
            progress.step(chunk.len() / per_image);
            for (node, rows) in m.rows {
                all.rows.entry(node).or_default().extend(rows);
            }
            for (node, ch) in m.channels {
                let acc = all.channels.entry(node).or_insert_with(|| vec![0.0; ch.len()]);
                acc.iter_mut().zip(ch).for_each(|(a, b)| *a += b);
            }
            all.outputs.extend(m.outputs);
        }
        progress.finish();
        Ok(all)
    }

    /// `--sensitivity lrp`: each layer's relevance over the calibration images
    /// (`CpuVit::relevance`), by graph node.
    pub fn relevance(&self, calib: &Calibration) -> Result<HashMap<String, f64>> {
        let (vit, batches, per_image) = self.vit_batches(calib, "--sensitivity lrp")?;
        let mut all = HashMap::new();
        let mut progress = Progress::new("relevance (CPU backward passes)", calib.count());
        for chunk in batches {
            progress.step(chunk.len() / per_image);
            for (node, r) in vit.relevance(chunk).map_err(|e| Error::Invalid(format!("--sensitivity lrp: {e}")))? {
                *all.entry(node).or_insert(0.0) += r;
            }
        }
        progress.finish();
        Ok(all)
    }

}

enum Built {
    Classifier(Box<Classifier>),
    Decoder(Box<VqganDecoder>),
}

impl Built {
    fn graph(&self, n: usize, calib: &Calibration) -> Result<crate::graph::Graph> {
        match self {
            Built::Classifier(m) => m.graph(n),
            Built::Decoder(m) => {
                let Some(t) = &calib.tokens else { invalid!("decoder calibration needs tokens") };
                m.graph(n, t.height, t.width)
            }
        }
    }
}

/// `--method fisher`'s row weights: `Measured::rows` scaled to mean 1 per layer (a row the
/// output ignores, a patch token after the last attention of a class-token model, gets 0).
pub fn mean_one(m: &Measured) -> Sensitivity {
    let mut all = m.rows.clone();
    for rows in all.values_mut() {
        let mean = rows.iter().map(|&v| v as f64).sum::<f64>() / rows.len().max(1) as f64;
        let scale = if mean > 0.0 { 1.0 / mean } else { 0.0 };
        rows.iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
    }
    all
}

/// Calibration inputs: preprocessed images (ViT input, or a VQGAN encoder's [−1, 1] images)
/// and, for a VQGAN, token grids for its decoder.
#[derive(Default)]
pub struct Calibration {
    pub images: Option<(Vec<f32>, [usize; 4])>,
    pub tokens: Option<TokenGrid>,
    /// Where they came from, recorded in the checkpoint.
    pub source: String,
}

/// One forward pass worth of calibration inputs.
pub enum Batch<'a> {
    Pixels(&'a [f32], usize),
    Ids(Vec<u32>, usize),
}

impl Batch<'_> {
    pub fn count(&self) -> usize {
        match self {
            Batch::Pixels(_, n) | Batch::Ids(_, n) => *n,
        }
    }
    pub fn set(&self, gpu: &Gpu, plan: &Plan) -> Result<()> {
        match self {
            Batch::Pixels(p, _) => plan.set_input(gpu, 0, p),
            Batch::Ids(ids, _) => plan.set_input(gpu, 0, ids),
        }
    }
}

impl Calibration {
    pub fn count(&self) -> usize {
        match (&self.tokens, &self.images) {
            (Some(t), _) => t.batch,
            (None, Some((_, s))) => s[0],
            _ => 0,
        }
    }

    /// The first `n` inputs (the mixed-precision search runs the model many times: a smaller
    /// set keeps it affordable).
    pub fn first(&self, n: usize) -> Calibration {
        let images = self.images.as_ref().map(|(p, s)| {
            let k = n.min(s[0]);
            (p[..k * s[1] * s[2] * s[3]].to_vec(), [k, s[1], s[2], s[3]])
        });
        let tokens = self.tokens.as_ref().map(|t| {
            let k = n.min(t.batch);
            let mut dims = t.dims();
            dims[0] = k;
            TokenGrid::new(&dims, t.ids[..k * t.height * t.width * t.codes_per_position()].to_vec()).unwrap()
        });
        Calibration { images, tokens, source: self.source.clone() }
    }

    /// The model's own inputs in passes of BATCH: tokens when there are (a decoder), else images.
    pub fn batches(&self) -> Result<Vec<Batch<'_>>> {
        if let Some(t) = &self.tokens {
            // The decoder's input order: position-major, each image's ids contiguous.
            let per = t.height * t.width * t.codes_per_position();
            return Ok(t.position_major().chunks(BATCH * per).map(|c| Batch::Ids(c.to_vec(), c.len() / per)).collect());
        }
        let Some((pixels, [_, c, h, w])) = &self.images else { invalid!("no calibration inputs") };
        Ok(pixels.chunks(BATCH * c * h * w).map(|p| Batch::Pixels(p, p.len() / (c * h * w))).collect())
    }

    /// Reads `path`: an image folder (searched recursively; PNG/JPEG), or for a VQGAN a
    /// `.safetensors` file with a `tokens` tensor. `count` images are drawn with `seed` when the
    /// folder has more; the same seed always picks the same images.
    pub fn load(gpu: &Gpu, model: &Model, path: &Path, count: usize, seed: u64) -> Result<Calibration> {
        if count == 0 {
            invalid!("--calib-count must be at least 1");
        }
        let is_tokens = path.is_file() && path.extension().is_some_and(|e| e == "safetensors");
        match (&model.family, is_tokens) {
            (Family::Classifier(_), true) => invalid!("calibration {}: a classifier calibrates on an image folder, not tokens", path.display()),
            (Family::Vqgan(c), true) => {
                let all = TokenGrid::load(path, "tokens")?;
                all.check_codebooks(&c.codebook_sizes(), "model")?;
                // One image's ids: its h·w positions times the ids per position.
                let per = all.height * all.width * all.codes_per_position();
                let picked = pick(all.batch, count, seed);
                let ids = picked.iter().flat_map(|&i| all.ids[i * per..(i + 1) * per].iter().copied()).collect();
                let mut dims = all.dims();
                dims[0] = picked.len();
                let tokens = TokenGrid::new(&dims, ids)?;
                Ok(Calibration { images: None, tokens: Some(tokens), source: path.display().to_string() })
            }
            (family, false) => {
                let files = find_images(path).map_err(|e| Error::Invalid(format!("calibration {e}")))?;
                let chosen: Vec<&PathBuf> = pick(files.len(), count, seed).into_iter().map(|i| &files[i]).collect();
                let mut progress = Progress::new("reading calibration images", chosen.len());
                let mut pixels = Vec::new();
                let (c, h, w) = match family {
                    Family::Classifier(cfg) => (3, cfg.preprocess().input_size.0, cfg.preprocess().input_size.1),
                    Family::Vqgan(cfg) => (cfg.ddconfig.in_channels, cfg.ddconfig.resolution, cfg.ddconfig.resolution),
                };
                for f in &chosen {
                    let img = load_image(f)?;
                    let chw = match family {
                        Family::Classifier(cfg) => preprocess(&img, cfg.preprocess())?,
                        Family::Vqgan(_) => signed_center_crop(&img, h, w).map_err(|e| Error::Invalid(format!("image {}: {e}", f.display())))?,
                    };
                    pixels.extend(chw);
                    progress.step(1);
                }
                progress.finish();
                let images = (pixels, [chosen.len(), c, h, w]);
                let tokens = match family {
                    Family::Vqgan(cfg) => {
                        if !model.has_encoder() {
                            invalid!("calibration {}: this VQGAN has no encoder to turn images into tokens; pass a tokens .safetensors", path.display());
                        }
                        let encoder = VqganEncoder::new(gpu, cfg, &model.weights, WeightFormat::F32)?;
                        let t = crate::Tensor::from_f32(gpu, &images.1, &images.0)?;
                        Some(encoder.encode(gpu, &t)?)
                    }
                    Family::Classifier(_) => None,
                };
                Ok(Calibration { images: Some(images), tokens, source: path.display().to_string() })
            }
        }
    }
}

/// The center `h`×`w` crop as CHW in taming's [−1, 1], as `lowbit encode` feeds the encoder.
pub fn signed_center_crop(img: &image::RgbImage, h: usize, w: usize) -> std::result::Result<Vec<f32>, String> {
    let (ih, iw) = (img.height() as usize, img.width() as usize);
    if ih < h || iw < w {
        return Err(format!("{iw}×{ih} is smaller than the model's {w}×{h} input"));
    }
    Ok(crate::models::images::rgb_to_signed_chw(img, h, w))
}

/// Every PNG/JPEG under `dir`, sorted by path (so a seed means the same images everywhere).
/// Each folder and image counts once, however many links lead to it: a link loop
/// (`loop -> ..`) ends instead of counting the same images again and again.
pub fn find_images(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::collections::HashSet;
    fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::Invalid(format!("folder {}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::Invalid(format!("folder {}: {e}", dir.display())))?.path();
            let is_image = || path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"));
            if !(path.is_dir() || is_image()) {
                continue;
            }
            // A dangling link has no canonical path: skipped like any non-image.
            let Ok(real) = path.canonicalize() else { continue };
            if !seen.insert(real) {
                continue;
            }
            if path.is_dir() {
                walk(&path, seen, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        invalid!("folder {}: not a folder", dir.display());
    }
    let mut out = Vec::new();
    let mut seen = HashSet::from_iter(dir.canonicalize().ok());
    walk(dir, &mut seen, &mut out)?;
    if out.is_empty() {
        invalid!("folder {}: no PNG or JPEG images in it", dir.display());
    }
    out.sort();
    Ok(out)
}

/// `count` of `n` indices (all of them, in order, when count ≥ n), chosen by a seeded shuffle.
pub fn pick(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if count >= n {
        return idx;
    }
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let u = (rng.next_f32() + 1.0) * 0.5;
        idx.swap(i, ((u * (i + 1) as f32) as usize).min(i));
    }
    idx.truncate(count);
    idx.sort();
    idx
}

pub use crate::log::Progress;

/// `w` with `packed` matrices replacing their f32 tensors, as `lowbit quantize` stores them.
pub fn with_packed(w: &Weights, packed: &BTreeMap<String, crate::formats::PackedMatrix>, shapes: &HashMap<String, Vec<usize>>) -> Result<Weights> {
    let mut out = w.clone();
    let mut desc = crate::models::packed::Description::of(w)?.unwrap_or_default();
    for (key, m) in packed {
        out.tensors.remove(key);
        for (name, shape, words) in crate::models::packed::tensors(key, m) {
            out.words.insert(name, (shape, words));
        }
        desc.tensors.insert(key.clone(), crate::models::packed::PackedTensor { format: m.format.name(), shape: shapes[key].clone(), extra: Default::default() });
    }
    out.metadata.insert(crate::models::packed::METADATA_KEY.into(), serde_json::to_string(&desc).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(out)
}
