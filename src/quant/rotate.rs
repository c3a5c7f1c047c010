//! `--method rotate` (with `dynamic`): QuaRot's online Hadamard rotation of block Linear
//! inputs, where it helps. A rotated layer stores W·H and its kernel quantizes H·x per token
//! (`kernels::hadamard`, `kernels::w4a8`): an outlier channel of x is spread over its block,
//! so the per-token absmax, and with it every code's step, shrinks.
//!
//! Rotation does not help everywhere: a post-GELU input is mostly positive, so each block's
//! first Hadamard coefficient (its sum / √block) becomes a new outlier. So each layer is
//! measured on its calibration inputs, both ways, with the q4g32 weights the recipe's methods
//! make each way (GPTQ on the plain or the rotated Hessian, clip, rtn) and the per-token
//! activation quantizer the kernel applies, and rotated only when that lowers ‖X·Wᵀ − X̂·Ŵᵀ‖².

use std::collections::{BTreeMap, HashMap};

use super::act_calib::thin_rows;
use super::dot::gemm;
use super::calibrate::{Layer, Model, Reader};
use crate::models::vit::backprop::NodeInput;
use super::gptq::Hessian;
use super::recipe::{parallel_map, quantize_matrix, Methods};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::kernels::hadamard;
use crate::kernels::w4a8::{reference, ActInput};
use crate::{Error, Result};

/// Calibration rows per layer and pass used for the decision.
const ROWS: usize = 256;
/// The block Linears' weight format in the W4 recipes.
pub const FORMAT: WeightFormat = WeightFormat::Q4 { group: 32, zero_point: false };

/// One layer's measurement: the block size and the output errors without and with rotation.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub block: usize,
    pub error_plain: f64,
    pub error_rotated: f64,
}

impl Decision {
    pub fn rotate(&self) -> bool {
        self.block > 1 && self.error_rotated < self.error_plain
    }
}

/// A·Bᵀ for row-major A [m×k] and B [n×k].
fn product_t(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert!(a.len() == m * k && b.len() == n * k, "product_t: operands are not {m}×{k} and {n}×{k}");
    let mut c = vec![0.0; m * n];
    gemm(m, k, n, (a, k, 1), (b, 1, k), &mut c, n);
    c
}

/// Σ (X·Wᵀ − X̂·Ŵᵀ)² with X̂ the per-token codes (`act`) of `x` [rows×cols], Ŵ the
/// dequantized q4g32 weights `wq` [out×cols] and `exact` = X·Wᵀ.
fn output_error(x: &[f32], wq: &[f32], exact: &[f64], rows: usize, cols: usize, out: usize, act: ActInput) -> Result<f64> {
    let (codes, scales) = reference::quantize(x, rows, cols, act, None)?;
    let xq: Vec<f64> = codes.iter().enumerate().map(|(i, &c)| {
        let [scale, dz] = scales[i / cols];
        (c as f64 + dz as f64) * scale as f64
    }).collect();
    let wq: Vec<f64> = wq.iter().map(|&v| v as f64).collect();
    Ok(product_t(&xq, &wq, rows, cols, out).iter().zip(exact).map(|(y, e)| (y - e).powi(2)).sum())
}

/// What `apply` decided for each layer, by weight key, and the q4g32 weights it measured for
/// the chosen side (what the recipe's methods make of the stored weight and Hessian, so the
/// recipe reuses them instead of running GPTQ a third time).
pub struct Rotations {
    pub decisions: BTreeMap<String, Decision>,
    pub packed: HashMap<String, PackedMatrix>,
}

/// The decision's reader (`calibrate::Reader`): ROWS evenly spaced input rows per pass of each
/// layer's node.
pub struct Rows {
    nodes: Vec<String>,
    rows: HashMap<String, Vec<f32>>,
}

impl Rows {
    pub fn new(layers: &[&Layer]) -> Rows {
        Rows { nodes: layers.iter().map(|l| l.node.clone()).collect(), rows: HashMap::new() }
    }
}

impl Reader for Rows {
    fn nodes(&self) -> Vec<String> {
        self.nodes.clone()
    }

    fn read(&mut self, _first: usize, _count: usize, x: &NodeInput) -> Result<()> {
        self.rows.entry(x.node.to_string()).or_default().extend(thin_rows(x.values, *x.shape.last().unwrap_or(&1), ROWS));
        Ok(())
    }
}

/// Measures every layer of `layers` that the kernel runs (block Linears) on the inputs `rows`
/// read, rotates the weights (W·H) and Hessians of those where rotation lowers the error, and
/// returns every measurement.
pub fn apply(model: &mut Model, layers: &[&Layer], rows: &Rows, hessians: &mut HashMap<String, Hessian>, act: ActInput, methods: Methods) -> Result<Rotations> {
    let rows = &rows.rows;
    if let Some(l) = layers.iter().find(|l| !rows.contains_key(&l.node)) {
        return Err(Error::Invalid(format!("{}: no calibration inputs for the rotation decision", l.key)));
    }
    // Each layer's weights both ways on every core (two GPTQ runs per layer), as the recipe
    // will store them (GPTQ on the plain or the rotated Hessian where it runs GPTQ): with
    // round-to-nearest weights instead, the decision missed what GPTQ compensates, 0.2–2 dB
    // worse end to end (docs/QUANTIZATION.md).
    let (weights, hs) = (&model.weights, &*hessians);
    let quantized = parallel_map(layers, |l| -> Result<(PackedMatrix, Option<PackedMatrix>)> {
        let (n_out, cols) = (l.rows(), l.cols());
        let block = hadamard::block_for(cols);
        let w = &weights.tensors[&l.key].data;
        let h = hs.get(&l.key);
        let used = Methods { gptq: methods.gptq && h.is_some(), ..methods };
        let plain = quantize_matrix(w, n_out, cols, FORMAT, used, h)?;
        if block == 1 {
            return Ok((plain, None));
        }
        let hr = h.map(|h| h.rotated(block)).transpose()?;
        let rotated = quantize_matrix(&hadamard::reference(w, cols, block)?, n_out, cols, FORMAT, used, hr.as_ref())?;
        Ok((plain, Some(rotated)))
    });
    // Then the output errors, one layer at a time, each product on every core.
    let mut measured = Vec::with_capacity(layers.len());
    for (l, q) in layers.iter().zip(quantized) {
        let (plain, rotated) = q?;
        let (n_out, cols) = (l.rows(), l.cols());
        let x = &rows[&l.node];
        let m = x.len() / cols;
        let w: Vec<f64> = model.weights.tensors[&l.key].data.iter().map(|&v| v as f64).collect();
        let exact = product_t(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), &w, m, cols, n_out);
        let error_plain = output_error(x, &plain.dequantize(), &exact, m, cols, n_out, act)?;
        let Some(rotated) = rotated else {
            measured.push((Decision { block: 1, error_plain, error_rotated: error_plain }, plain));
            continue;
        };
        let block = hadamard::block_for(cols);
        let error_rotated = output_error(&hadamard::reference(x, cols, block)?, &rotated.dequantize(), &exact, m, cols, n_out, act)?;
        let d = Decision { block, error_plain, error_rotated };
        measured.push((d, if d.rotate() { rotated } else { plain }));
    }
    let mut out = Rotations { decisions: BTreeMap::new(), packed: HashMap::new() };
    for (l, (d, packed)) in layers.iter().zip(measured) {
        if d.rotate() {
            let cols = l.cols();
            let w = model.weights.tensors.get_mut(&l.key).unwrap();
            w.data = hadamard::reference(&w.data, cols, d.block)?;
            if let Some(h) = hessians.get_mut(&l.key) {
                *h = h.rotated(d.block)?;
            }
        }
        out.decisions.insert(l.key.clone(), d);
        out.packed.insert(l.key.clone(), packed);
    }
    Ok(out)
}
