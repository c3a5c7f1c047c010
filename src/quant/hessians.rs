//! GPTQ's Hessians: XᵀX of the rows each matrix multiplies on the calibration set (for a
//! conv, its im2col patches), optionally weighted per row by the output gradients of
//! `--method fisher` / `--sensitivity fisher`. `Hessians` reads them from a calibration pass
//! (`calibrate::Reader`), so the recipes that read other things from the same pass (the
//! activation ranges and rotation decisions of W4A8/W4A4) run the model once.

use std::collections::{HashMap, HashSet};

use super::calibrate::{Calibration, Family, Layer, Model, Progress, Reader, BATCH};
use super::gptq::Hessian;
use crate::formats::WeightFormat;
use crate::graph::Plan;
use crate::models::vit::backprop::{NodeInput, Sensitivity};
use crate::models::vqgan::VqganEncoder;
use crate::{invalid, Gpu, Result};

/// Input rows per matrix and pass that reach the Hessian: a conv sees one row per output pixel,
/// and a few thousand rows already pin down a Hessian of a few hundred columns.
const ROWS_PER_PASS: usize = 2048;

/// The Hessians of `layers`, once per weighting (None: every row counts once), filled by the
/// passes that read them: the model's own inputs through `Reader`, a VQGAN encoder's images
/// through `Model::encoder_hessians`.
pub struct Hessians<'a> {
    layers: Vec<&'a Layer>,
    weightings: Vec<Option<&'a Sensitivity>>,
    images: usize,
    out: Vec<HashMap<String, Hessian>>,
}

impl<'a> Hessians<'a> {
    pub fn new(layers: &'a [Layer], weightings: &[Option<&'a Sensitivity>], calib: &Calibration) -> Hessians<'a> {
        let out = weightings.iter().map(|_| layers.iter().map(|l| (l.key.clone(), Hessian::new(l.cols()))).collect()).collect();
        Hessians { layers: layers.iter().collect(), weightings: weightings.to_vec(), images: calib.count(), out }
    }

    /// One map per weighting, by weight key.
    pub fn finish(self) -> Vec<HashMap<String, Hessian>> {
        self.out
    }
}

impl Reader for Hessians<'_> {
    /// The nodes whose inputs the model's own pass hands over (not the VQGAN encoder's).
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        for l in self.layers.iter().filter(|l| !l.encoder) {
            if !nodes.contains(&l.node) {
                nodes.push(l.node.clone());
            }
        }
        nodes
    }

    fn read(&mut self, first: usize, count: usize, x: &NodeInput) -> Result<()> {
        let weights: Vec<Option<RowWeights>> = self.weightings.iter().map(|w| w.map(|all| RowWeights { all, images: self.images, first, count })).collect();
        let users: Vec<&Layer> = self.layers.iter().copied().filter(|l| !l.encoder && l.node == x.node).collect();
        let rows = input_rows(x.values, x.shape, x.out_shape, users[0])?;
        add_to_hessians(&users, &rows, &weights, &mut self.out)
    }
}

impl Model {
    /// XᵀX of the inputs each layer multiplies on the calibration set, under the f32 weights.
    pub fn hessians(&self, gpu: &Gpu, layers: &[Layer], calib: &Calibration, progress: &mut Progress) -> Result<HashMap<String, Hessian>> {
        Ok(self.weighted_hessians(gpu, layers, calib, &[None], progress)?.remove(0))
    }

    /// `hessians` once per entry of `weightings`, from one pass: with row weights
    /// (`output_sensitivity`), Σ w·x·xᵀ.
    pub fn weighted_hessians(&self, gpu: &Gpu, layers: &[Layer], calib: &Calibration, weightings: &[Option<&Sensitivity>], progress: &mut Progress) -> Result<Vec<HashMap<String, Hessian>>> {
        let mut h = Hessians::new(layers, weightings, calib);
        self.read_pass(gpu, &self.weights, calib, &mut [&mut h], Some(progress))?;
        self.encoder_hessians(gpu, calib, &mut h)?;
        Ok(h.finish())
    }

    /// Fills the Hessians of `h`'s VQGAN encoder layers (if any) from its own passes over the
    /// calibration images (unweighted: the gradient weightings are a ViT's).
    pub fn encoder_hessians(&self, gpu: &Gpu, calib: &Calibration, h: &mut Hessians) -> Result<()> {
        let enc: Vec<&Layer> = h.layers.iter().copied().filter(|l| l.encoder).collect();
        if enc.is_empty() {
            return Ok(());
        }
        let Family::Vqgan(c) = &self.family else { invalid!("encoder layers belong to a VQGAN") };
        let Some((pixels, [_, ch, height, width])) = &calib.images else {
            invalid!("gptq on the VQGAN encoder needs calibration images (--calib DIR), not tokens");
        };
        let encoder = VqganEncoder::new(gpu, c, &self.weights, WeightFormat::F32)?;
        let per = ch * height * width;
        let unweighted: Vec<Option<RowWeights>> = h.weightings.iter().map(|_| None).collect();
        for chunk in pixels.chunks(BATCH * per) {
            let n = chunk.len() / per;
            let plan = Plan::unshared(gpu, encoder.graph(n, *height, *width)?)?;
            plan.set_input(gpu, 0, chunk)?;
            plan.run(gpu)?;
            accumulate(gpu, &plan, &enc, &unweighted, &mut h.out)?;
        }
        Ok(())
    }
}

/// The row weights of one calibration pass: images `first..first + count` of `images`.
struct RowWeights<'a> {
    all: &'a Sensitivity,
    images: usize,
    first: usize,
    count: usize,
}

impl<'a> RowWeights<'a> {
    /// The pass's weights of the input rows of `node` (`rows` of them), if it has any.
    fn of(&self, node: &str, rows: usize) -> Result<Option<&'a [f32]>> {
        let Some(all) = self.all.get(node) else { return Ok(None) };
        let per = all.len() / self.images;
        if per * self.count != rows {
            invalid!("{node} multiplies {rows} rows in this pass, its gradient weights say {}", per * self.count);
        }
        Ok(Some(&all[self.first * per..(self.first + self.count) * per]))
    }
}

/// Reads back each layer's input and adds its rows to the layer's Hessian in each of `out`
/// (`add_to_hessians`).
fn accumulate(gpu: &Gpu, plan: &Plan, layers: &[&Layer], weights: &[Option<RowWeights>], out: &mut [HashMap<String, Hessian>]) -> Result<()> {
    let mut done: HashSet<&str> = HashSet::new();
    for l in layers {
        if !done.insert(&l.node) {
            continue;
        }
        let (inputs, output) = plan.node_values(&l.node)?;
        let users: Vec<&Layer> = layers.iter().copied().filter(|u| u.node == l.node).collect();
        let rows = input_rows(&inputs[0].to_vec_f32(gpu)?, &inputs[0].shape, &output.shape, l)?;
        add_to_hessians(&users, &rows, weights, out)?;
    }
    Ok(())
}

/// Adds one node's input rows (`input_rows`) to the Hessian of each layer in `users` (the
/// layers that multiply that input) in each of `out`, scaled by √weight where that one's
/// `weights` has the node.
fn add_to_hessians(users: &[&Layer], (rows, total, step): &(Vec<f32>, usize, usize), weights: &[Option<RowWeights>], out: &mut [HashMap<String, Hessian>]) -> Result<()> {
    for l in users {
        for (w, hessians) in weights.iter().zip(out.iter_mut()) {
            let h = hessians.get_mut(&l.key).unwrap();
            match w.as_ref().map(|w| w.of(&l.node, *total)).transpose()?.flatten() {
                Some(w) => h.add_rows(&rows.chunks(l.cols()).enumerate().flat_map(|(k, row)| row.iter().map(move |v| v * w[k * step].sqrt())).collect::<Vec<f32>>())?,
                None => h.add_rows(rows)?,
            }
        }
    }
    Ok(())
}

/// The rows a layer multiplies: the last axis of tokens, or im2col patches of an NCHW map (in
/// the weight's [cin, kh, kw] order), thinned to at most ROWS_PER_PASS evenly spaced rows; with
/// the count before thinning and the step (kept row k is row k·step).
pub(super) fn input_rows(x: &[f32], in_shape: &[usize], out_shape: &[usize], l: &Layer) -> Result<(Vec<f32>, usize, usize)> {
    let cols = l.cols();
    if in_shape.len() != 4 {
        let rows = x.len() / cols;
        let step = rows.div_ceil(ROWS_PER_PASS).max(1);
        return Ok((x.chunks(cols).step_by(step).flatten().copied().collect(), rows, step));
    }
    let [b, c, h, w] = [in_shape[0], in_shape[1], in_shape[2], in_shape[3]];
    let (kh, kw) = (l.shape.get(2).copied().unwrap_or(1), l.shape.get(3).copied().unwrap_or(1));
    if c * kh * kw != cols {
        invalid!("{}: input has {c} channels, the weight expects {}", l.key, cols / (kh * kw));
    }
    // The conv's geometry from its output size: same-size (padding k/2), patchify (stride k),
    // or taming's Downsample (stride 2, one row/column of zeros at the bottom/right).
    let out_pixels: usize = if out_shape.len() == 4 { out_shape[2] * out_shape[3] } else { out_shape[1] };
    let (stride, pad, oh, ow) = if out_pixels == h * w {
        (1, (kh / 2, kw / 2), h, w)
    } else if out_pixels == (h / kh) * (w / kw) {
        (kh, (0, 0), h / kh, w / kw)
    } else if out_pixels == (h / 2) * (w / 2) {
        (2, (0, 0), h / 2, w / 2)
    } else {
        invalid!("{}: cannot tell the conv geometry of {h}×{w} → {out_pixels} pixels", l.key);
    };
    let total = b * oh * ow;
    let step = total.div_ceil(ROWS_PER_PASS).max(1);
    let mut rows = Vec::with_capacity(total.div_ceil(step) * cols);
    for p in (0..total).step_by(step) {
        let (n, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (y, xx) = ((oy * stride + ky) as isize - pad.0 as isize, (ox * stride + kx) as isize - pad.1 as isize);
                    let inside = y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w;
                    rows.push(if inside { x[((n * c + ci) * h + y as usize) * w + xx as usize] } else { 0.0 });
                }
            }
        }
    }
    Ok((rows, total, step))
}

