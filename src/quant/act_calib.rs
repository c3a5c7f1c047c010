//! Calibration of the static activation quantizers of the W6A6/W4A8/W4A4 recipes on a ViT:
//!
//! 1. (repq / smoothq) One float pass collects the post-LayerNorm inputs of qkv and fc1 (and,
//!    for smoothq, proj's input); each gets its per-channel map folded into the weights
//!    (`repq.rs`, `smooth.rs`), which leaves the float model's function unchanged.
//! 2. A float pass of the folded model ("parallel" calibration, as PTQ4ViT: every quantizer sees
//!    float inputs) collects every block Linear's input and the attention probabilities
//!    (`Observed`, read in the same pass as GPTQ's Hessians and the rotation rows), and each
//!    quantizer is fitted on them (`fit_quantizers`, `actq::fit`); NoisyQuant searches its
//!    noise, and AdaLog its post-GELU shift (`gelu_shift`), here.
//!
//! The result is the folded weights plus the list of quantizers the checkpoint records.

use std::collections::HashMap;

use super::actq::{fit, per_channel, Kind};
use crate::models::packed::QuantPoint;
use super::calibrate::{Calibration, Model, Reader};
use crate::models::vit::backprop::NodeInput;
use super::repq::{fold_attention_v, fold_layer_norm, repq_map};
use super::{gelu_shift, noisy, smooth};
use crate::kernels::act_quant::ActQuantizer;
use crate::models::weights::WeightTensor;
use crate::models::Weights;
use super::recipe::parallel_map;
use crate::{invalid, Error, Gpu, Result};

/// Rows of each Linear's input kept for the searches (evenly spaced over calibration).
const ROWS: usize = 2048;
/// Rows the output-error searches (NoisyQuant, SmoothQuant) multiply through the weights.
const SEARCH_ROWS: usize = 256;

/// The activation methods of `--method` (the weight methods are `recipe::Methods`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActMethods {
    pub repq: bool,
    pub smooth: bool,
    pub noisy: bool,
    /// The post-softmax quantizer (None: RepQ's log√2 with repq, else uniform).
    pub softmax: Option<Kind>,
    /// The post-GELU quantizer (None: uniform).
    pub gelu: Option<Kind>,
}

impl ActMethods {
    pub fn any(&self) -> bool {
        *self != ActMethods::default()
    }

    /// The names `--method` takes, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = [(self.repq, "repq"), (self.smooth, "smoothq"), (self.noisy, "noisy")].iter().filter(|f| f.0).map(|f| f.1).collect();
        match self.softmax {
            Some(Kind::Log2) => out.push("log2"),
            Some(Kind::AdaLog) => out.push("adalog"),
            Some(Kind::Sulq) => out.push("sulq"),
            Some(Kind::Twin { .. }) => out.push("twin"),
            _ => {}
        }
        out
    }

    /// The post-softmax (and post-GELU) quantizers of one of log2/adalog/sulq/twin.
    pub fn set_quantizers(&mut self, softmax: Kind, gelu: Option<Kind>) -> Result<()> {
        if self.softmax.is_some() {
            invalid!("methods log2, adalog, sulq and twin each choose the post-softmax quantizer; pick one");
        }
        self.softmax = Some(softmax);
        self.gelu = gelu;
        Ok(())
    }

    fn softmax_kind(&self) -> Kind {
        self.softmax.unwrap_or(if self.repq { Kind::LogSqrt2 } else { Kind::Uniform })
    }
}

/// What calibration made: the folded f32 weights (with NoisyQuant's noise tensors added) and
/// the quantizers.
pub struct Prepared {
    pub weights: Weights,
    pub points: Vec<QuantPoint>,
}

/// Where a model's static activation quantizers sit, as graph node names (the checkpoint's
/// key prefixes), so one calibration serves every family.
#[derive(Default)]
pub struct Sites {
    /// (LayerNorm, the Linear reading it, width): RepQ-ViT / SmoothQuant fold their
    /// per-channel map into the pair (a block's norm1→qkv and norm2→fc1, Swin's patch merging
    /// norm→reduction).
    pub norm_linears: Vec<(String, String, usize)>,
    /// (qkv, proj, width): SmoothQuant folds proj's input map into qkv's V rows.
    pub v_proj: Vec<(String, String, usize)>,
    /// Every Linear whose input gets a quantizer, and whether that input is post-GELU.
    pub linears: Vec<(String, bool)>,
    /// Attention nodes (their post-softmax quantizer), with the head count.
    pub attentions: Vec<(String, usize)>,
}

impl Sites {
    /// A ViT block (or a Swin block) at `prefix` with `heads` heads of total width `dim`.
    pub fn add_block(&mut self, prefix: &str, dim: usize, heads: usize) {
        let p = |name: &str| format!("{prefix}.{name}");
        self.norm_linears.push((p("norm1"), p("attn.qkv"), dim));
        self.norm_linears.push((p("norm2"), p("mlp.fc1"), dim));
        self.v_proj.push((p("attn.qkv"), p("attn.proj"), dim));
        for (l, post_gelu) in [("attn.qkv", false), ("attn.proj", false), ("mlp.fc1", false), ("mlp.fc2", true)] {
            self.linears.push((p(l), post_gelu));
        }
        self.attentions.push((p("attn"), heads));
    }
}

/// Calibrates the activation quantizers at `act_bits` (weights will be `weight_bits`) of
/// `model` on `calib`: both stages, stage 2 on a pass of its own (`quantize` reads that pass
/// together with GPTQ's Hessians and the rotation rows instead).
pub fn prepare(gpu: &Gpu, model: &Model, calib: &Calibration, act_bits: u32, weight_bits: u32, m: ActMethods, seed: u64) -> Result<Prepared> {
    let (mut w, repq_grids) = fold_channel_maps(gpu, model, calib, act_bits, weight_bits, m)?;
    let sites = model.act_sites()?;
    let mut seen = Observed::new(&sites);
    model.read_pass(gpu, &w, calib, &mut [&mut seen], None)?;
    let points = fit_quantizers(&mut w, &sites, &seen, &repq_grids, act_bits, m, seed)?;
    Ok(Prepared { weights: w, points })
}

/// Stage 2's reader (`calibrate::Reader`): on the folded model, every quantized Linear's input
/// (thinned to ROWS rows per pass) and a sample of every attention's probabilities (from its
/// qkv input).
pub struct Observed {
    linears: Vec<String>,
    heads: HashMap<String, usize>,
    rows: HashMap<String, Vec<f32>>,
    probs: HashMap<String, Vec<f32>>,
}

impl Observed {
    pub fn new(sites: &Sites) -> Observed {
        let linears = sites.linears.iter().map(|l| l.0.clone()).collect();
        let heads = sites.attentions.iter().cloned().collect();
        Observed { linears, heads, rows: HashMap::new(), probs: HashMap::new() }
    }
}

impl Reader for Observed {
    fn nodes(&self) -> Vec<String> {
        let mut nodes = self.linears.clone();
        nodes.extend(self.heads.keys().cloned());
        nodes
    }

    fn read(&mut self, _first: usize, _count: usize, x: &NodeInput) -> Result<()> {
        if let Some(&h) = self.heads.get(x.node) {
            self.probs.entry(x.node.to_string()).or_default().extend(softmax_sample(x.values, x.shape, h)?);
        } else {
            let width = *x.shape.last().unwrap_or(&1);
            self.rows.entry(x.node.to_string()).or_default().extend(thin_rows(x.values, width, ROWS));
        }
        Ok(())
    }
}

/// Stage 2: the quantizers the checkpoint records, each site's fitted at `act_bits` on what
/// `seen` read from the folded weights `w` (stage 1's, with RepQ's fitted grids in
/// `repq_grids`); NoisyQuant's noise and AdaLog's post-GELU shift are folded into `w`'s biases
/// (and added as noise tensors). The other passes that read the folded
/// model (GPTQ's Hessians, the rotation decisions) read it before these folds: an f32 forward
/// does not add the noise back, so the folded biases would shift what the next blocks see.
pub fn fit_quantizers(w: &mut Weights, sites: &Sites, seen: &Observed, repq_grids: &HashMap<String, ActQuantizer>, act_bits: u32, m: ActMethods, seed: u64) -> Result<Vec<QuantPoint>> {
    let (inputs, probs) = (&seen.rows, &seen.probs);
    let mut points = Vec::new();
    for (i, (node, post_gelu)) in sites.linears.iter().enumerate() {
        let Some(x) = inputs.get(node) else { invalid!("{node}: the calibration pass read no input for its quantizer") };
        let kind = if *post_gelu { m.gelu.unwrap_or(Kind::Uniform) } else { Kind::Uniform };
        let bias_key = format!("{node}.bias");
        let quantizer = match repq_grids.get(node) {
            Some(q) => *q,
            // AdaLog on fc2's input: the shift that makes GELU outputs non-negative moves into
            // the bias (`gelu_shift`, below); without a bias to hold it, the plain uniform grid.
            None if kind == Kind::AdaLog => fit(Kind::Uniform, act_bits, x)?,
            None => fit(kind, act_bits, x)?,
        };
        let mut point = QuantPoint { node: node.clone(), quantizer, noise: None };
        // At 8 bits the uniform grid already holds post-GELU values (measured: ±1 dB either
        // way on the fixtures) and keeps fc2 in the integer kernel, so the shift is for ≤ 6.
        if kind == Kind::AdaLog && act_bits <= 6 && w.tensors.contains_key(&bias_key) {
            let cols = w.tensors[&format!("{node}.weight")].shape[1];
            let sample = thin_rows(x, cols, SEARCH_ROWS);
            if let Some((q, shift)) = gelu_shift::search(&sample, weight(w, node)?, cols, act_bits, &quantizer)? {
                point = QuantPoint { node: node.clone(), quantizer: q, noise: Some(fold_input_offset(w, node, vec![shift; cols])) };
            }
        }
        if m.noisy && point.noise.is_none() && matches!(point.quantizer, ActQuantizer::Uniform { .. }) && w.tensors.contains_key(&bias_key) {
            let cols = w.tensors[&format!("{node}.weight")].shape[1];
            let sample = thin_rows(x, cols, SEARCH_ROWS);
            // One noise seed per Linear: block × 16 + its place in the block.
            let site_seed = seed ^ ((i / 4) * 16 + i % 4) as u64;
            if let Some(found) = noisy::search(&sample, weight(w, node)?, cols, &quantizer, site_seed)? {
                point = QuantPoint { node: node.clone(), quantizer: found.quantizer, noise: Some(fold_input_offset(w, node, found.noise)) };
            }
        }
        points.push(point);
        // A block's attention quantizer follows its Linears' (the order checkpoints record).
        let block = |n: &str| n.rsplit_once(".attn.").or_else(|| n.rsplit_once(".mlp.")).map(|(b, _)| b.to_string());
        let next_block = sites.linears.get(i + 1).and_then(|(n, _)| block(n));
        if let Some(b) = block(node).filter(|b| Some(b) != next_block.as_ref()) {
            let attn = format!("{b}.attn");
            if let Some(p) = probs.get(&attn) {
                let quantizer = softmax_quantizer(m.softmax_kind(), act_bits, p)?;
                points.push(QuantPoint { node: attn, quantizer, noise: None });
            }
        }
    }
    Ok(points)
}

/// Stage 1 (and all that `w8a8` with `smoothq` needs, its activations being
/// quantized per token at run time): RepQ-ViT's or SmoothQuant's per-channel maps, measured on
/// the calibration inputs and folded into the LayerNorms (qkv, fc1) and, for SmoothQuant, V's
/// rows of qkv (proj). The folded weights compute the same function in f32. With RepQ, the
/// grid each folded input was fitted on.
pub fn fold_channel_maps(gpu: &Gpu, model: &Model, calib: &Calibration, act_bits: u32, weight_bits: u32, m: ActMethods) -> Result<(Weights, HashMap<String, ActQuantizer>)> {
    if m.repq && m.smooth {
        invalid!("methods repq and smoothq both reparameterize the LayerNorms; pick one");
    }
    let sites = model.act_sites()?;
    let mut w = model.weights.clone();
    let mut repq_grids: HashMap<String, ActQuantizer> = HashMap::new();
    if m.repq || m.smooth {
        let mut nodes: Vec<String> = sites.norm_linears.iter().map(|s| s.1.clone()).collect();
        if m.smooth {
            nodes.extend(sites.v_proj.iter().map(|s| s.1.clone()));
        }
        let inputs = collect_rows(gpu, model, &w, calib, &nodes)?;
        let input = |node: &str| inputs.get(node).ok_or_else(|| Error::Invalid(format!("{node}: the calibration pass read no input for its quantizer")));
        // SmoothQuant's searches (7 maps each, through the whole weight) on every core. Each
        // reads only its own layer's weight, which no fold changes before its search (a
        // LayerNorm's fold changes qkv or fc1; V's, qkv's V rows and proj after proj's
        // search), so searching them all first and folding in order gives the same weights.
        let (norm_maps, v_maps) = if m.smooth {
            let norm = parallel_map(&sites.norm_linears, |(_, node, d)| smooth::search(&thin_rows(input(node)?, *d, SEARCH_ROWS), weight(&w, node)?, *d, weight_bits, act_bits, w.contains(&format!("{node}.bias"))));
            // The shift moves into V's bias (and proj's): without both, a scale only.
            let v = parallel_map(&sites.v_proj, |(qkv, proj, d)| {
                let shift = w.contains(&format!("{qkv}.bias")) && w.contains(&format!("{proj}.bias"));
                smooth::search(&thin_rows(input(proj)?, *d, SEARCH_ROWS), weight(&w, proj)?, *d, weight_bits, act_bits, shift)
            });
            (norm.into_iter().collect::<Result<Vec<_>>>()?, v.into_iter().collect::<Result<Vec<_>>>()?)
        } else {
            (Vec::new(), Vec::new())
        };
        for (i, (norm, node, d)) in sites.norm_linears.iter().enumerate() {
            if m.repq {
                let (mut map, scale, zero) = repq_map(&per_channel(input(node)?, *d, act_bits)?);
                if w.contains(&format!("{node}.bias")) {
                    repq_grids.insert(node.clone(), ActQuantizer::Uniform { bits: act_bits, scale, zero });
                } else {
                    // A Linear without bias (qkv_bias: false) cannot absorb RepQ's shift: keep
                    // only the per-channel scale, and fit the grid on the folded input in stage 2.
                    map.b.iter_mut().for_each(|b| *b = 0.0);
                }
                fold_layer_norm(&mut w, norm, &[node], &map)?;
            } else if let Some(map) = &norm_maps[i] {
                fold_layer_norm(&mut w, norm, &[node], map)?;
            }
        }
        for ((qkv, proj, _), map) in sites.v_proj.iter().zip(&v_maps) {
            if let Some(map) = map {
                fold_attention_v(&mut w, qkv, proj, map)?;
            }
        }
    }
    Ok((w, repq_grids))
}

/// Records a per-channel offset added to `node`'s input before its quantizer (NoisyQuant's
/// noise, AdaLog's post-GELU shift): the Linear's bias takes −W·offset, so the float function
/// is unchanged, and the checkpoint keeps the offset as `{node}.act_noise`, whose key this
/// returns. The caller has checked that the Linear has a bias.
fn fold_input_offset(w: &mut Weights, node: &str, offset: Vec<f32>) -> String {
    let wt = w.tensors[&format!("{node}.weight")].data.clone();
    noisy::fold_bias(&mut w.tensors.get_mut(&format!("{node}.bias")).unwrap().data, &wt, &offset);
    let key = format!("{node}.act_noise");
    w.tensors.insert(key.clone(), WeightTensor { shape: vec![offset.len()], data: offset });
    key
}

/// The post-softmax quantizer. A uniform grid at 8 bits or more covers all of [0, 1]: an MSE
/// fit clips the top to what calibration saw, and a held-out image's sharper attention peaks
/// then lose the most (measured: 32 → 38 dB logits SQNR for w4a8 on photo-vit with the fixed
/// grid, docs/QUANTIZATION.md). Below 8 bits the step matters more than the rare peaks: fitted.
fn softmax_quantizer(kind: Kind, act_bits: u32, p: &[f32]) -> Result<ActQuantizer> {
    if kind == Kind::Uniform && act_bits >= 8 {
        return Ok(super::actq::uniform(act_bits, 0.0, 1.0, ((1u32 << act_bits) - 1) as f32));
    }
    fit(kind, act_bits, p)
}

fn weight<'a>(w: &'a Weights, node: &str) -> Result<&'a [f32]> {
    match w.tensors.get(&format!("{node}.weight")) {
        Some(t) => Ok(&t.data),
        None => invalid!("{node}: no f32 weight"),
    }
}

/// At most `max` evenly spaced rows of `width` values.
pub(super) fn thin_rows(x: &[f32], width: usize, max: usize) -> Vec<f32> {
    let rows = x.len() / width;
    let step = rows.div_ceil(max).max(1);
    x.chunks(width).step_by(step).flatten().copied().collect()
}

/// Each node's input rows over the calibration set (thinned to ROWS per pass).
fn collect_rows(gpu: &Gpu, model: &Model, w: &Weights, calib: &Calibration, nodes: &[String]) -> Result<HashMap<String, Vec<f32>>> {
    let mut out: HashMap<String, Vec<f32>> = HashMap::new();
    model.visit_inputs(gpu, w, calib, nodes, |node, x, shape| {
        out.entry(node.to_string()).or_default().extend(thin_rows(x, *shape.last().unwrap_or(&1), ROWS));
        Ok(())
    })?;
    Ok(out)
}

/// Normalized attention probabilities of some queries (every query up to 64 per batch and
/// head) from the fused qkv [B, T, 3·H·D], as the attention kernel computes them.
fn softmax_sample(qkv: &[f32], shape: &[usize], heads: usize) -> Result<Vec<f32>> {
    let &[b, t, width] = shape else { invalid!("attention input {shape:?} is not [B, T, 3·H·D]") };
    let hd = width / 3;
    let dim = hd / heads;
    let scale = (dim as f64).powf(-0.5);
    let step = t.div_ceil(64).max(1);
    let mut out = Vec::new();
    let mut s = vec![0f64; t];
    for bi in 0..b {
        let row = |j: usize| &qkv[(bi * t + j) * width..(bi * t + j + 1) * width];
        for h in 0..heads {
            for i in (0..t).step_by(step) {
                let q = &row(i)[h * dim..(h + 1) * dim];
                for (j, sj) in s.iter_mut().enumerate() {
                    let k = &row(j)[hd + h * dim..hd + (h + 1) * dim];
                    *sj = q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale;
                }
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                out.extend(s.iter().map(|v| ((v - mx).exp() / l) as f32));
            }
        }
    }
    Ok(out)
}

/// A matrix on a 6-bit symmetric grid (codes ±31, one f16 scale per row) stored in the Q8
/// format: the kernels read it as int8, the file has int8 size. `clip` searches each row's
/// range as `clip.rs` does.
pub fn six_bit(w: &[f32], rows: usize, cols: usize, clip: bool) -> Result<crate::formats::PackedMatrix> {
    use crate::quant::rtn::{quantize_with, Group};
    let format = crate::formats::WeightFormat::Q8 { group: None };
    let code = |v: f32, s: f32| if s > 0.0 { (v / s).round().clamp(-31.0, 31.0) } else { 0.0 };
    let ratios = if clip { crate::quant::clip::ratios(format) } else { vec![1.0] };
    let mut choice = quantize_with(w, rows, cols, format, |vals| {
        let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut best = (f64::INFINITY, 0f32);
        for &r in &ratios {
            let s = half::f16::from_f32(absmax * r / 31.0).to_f32();
            let e: f64 = vals.iter().map(|&v| (v - code(v, s) * s) as f64).map(|e| e * e).sum();
            if e < best.0 {
                best = (e, s);
            }
        }
        Group { scale: best.1, zero: 0 }
    })?;
    // quantize_with rounded on Q8's ±127 range: clamp onto the 6-bit grid.
    for (i, c) in choice.codes.iter_mut().enumerate() {
        *c = (code(w[i], choice.groups[i / cols].scale) as i32 as u32) & 0xff;
    }
    choice.pack()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_8_bit_post_softmax_grid_covers_every_probability() {
        // Calibration attention that never exceeds 0.245.
        let p: Vec<f32> = (0..1000).map(|i| (i % 50) as f32 / 200.0).collect();
        let q = softmax_quantizer(Kind::Uniform, 8, &p).unwrap();
        for v in [0.0f32, 0.004, 0.245, 0.9, 1.0] {
            assert!((q.apply(v) - v).abs() <= 0.5 / 255.0 + 1e-6, "{v} → {}", q.apply(v));
        }
        // Below 8 bits the MSE fit stays, and clips to what calibration saw.
        assert!(softmax_quantizer(Kind::Uniform, 4, &p).unwrap().apply(1.0) < 0.5);
        assert!(matches!(softmax_quantizer(Kind::AdaLog, 8, &p).unwrap(), ActQuantizer::AdaLog { .. }));
    }
}
