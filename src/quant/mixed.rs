//! Mixed precision (`mixed:<bits>`): each layer gets a sensitivity per candidate format
//! (ternary ≈ 2 bits, q4g128 ≈ 4.1, q4g32 = 4.5, q8 = 8.25 bits per weight with scales), an SQNR:
//! - `hessian` (default; HAWQ-style, from the one calibration pass that collects each layer's
//!   XᵀX): the layer's own output SQNR, tr(W H Wᵀ) / tr(ΔW H ΔWᵀ) with ΔW the round-to-nearest
//!   error in that format; no forward pass per layer and format. The chosen formats are then
//!   quantized with the asked methods (GPTQ, clip).
//! - `output` (MixDQ's measurement): the SQNR of the model's output on the calibration inputs
//!   with only that layer quantized, one forward pass per layer and format.
//!
//! Treating the layers' output noises as independent, the noise of an allocation is the sum of
//! the single-layer noise powers 10^(−SQNR/10); the allocation minimizing it under the byte
//! budget (average bits × matrix parameters / 8) is a multiple-choice knapsack, solved exactly by
//! dynamic programming over sizes in 4-byte words (exact: packed sizes are whole words); budgets
//! above 4 MiB use coarser units with each cost rounded up, so the budget still holds.
//! The greedy allocation (MPTQ-ViT style: start everything at the fewest bits, then repeatedly
//! widen the layer with the best noise reduction per byte that still fits) is reported beside it.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::calibrate::{with_packed, Calibration, Layer, Model, Progress};
use super::gptq::Hessian;
use crate::models::vit::backprop::Measured;
use super::dot::dot_f32;
use super::recipe::{parallel_map, quantize_matrix, Methods};
use crate::formats::WeightFormat;
use crate::{invalid, Gpu, Result};

/// Calibration inputs the sensitivities are measured on (the model runs once per layer and
/// candidate format).
const SENSITIVITY_INPUTS: usize = 16;

/// The formats a layer may get, fewest bits first. q4g128 (≈4.1 bits) beside q4g32 (4.5) gives
/// the allocation a cheap step down for insensitive layers: ternary alone is too lossy to pay
/// for widening the sensitive ones.
pub fn candidates() -> Vec<WeightFormat> {
    vec![
        WeightFormat::Ternary,
        WeightFormat::Q4 { group: 128, zero_point: false },
        WeightFormat::Q4 { group: 32, zero_point: false },
        WeightFormat::Q8 { group: None },
    ]
}

/// How a layer's sensitivity to each format is measured (`--sensitivity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sensitivity {
    #[default]
    Hessian,
    Output,
    /// The model output's SQNR predicted from the layer's error: its Hessian with each input
    /// row weighted by the squared output gradient at that row (`models::vit::backprop`).
    Fisher,
    /// The `hessian` SQNR, the layer's noise scaled by its share of the relevance (LRP-QViT).
    Lrp,
}

impl Sensitivity {
    pub fn parse(name: &str) -> Result<Sensitivity> {
        match name {
            "hessian" => Ok(Sensitivity::Hessian),
            "output" => Ok(Sensitivity::Output),
            "fisher" => Ok(Sensitivity::Fisher),
            "lrp" => Ok(Sensitivity::Lrp),
            _ => invalid!(
                "--sensitivity {name}: expected hessian (the layer's output error from its calibration inputs), output (the model's output, one pass per layer and format), fisher (the model's output error predicted through its gradient) or lrp (hessian weighted by the layer's relevance)"
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sensitivity::Hessian => "hessian",
            Sensitivity::Output => "output",
            Sensitivity::Fisher => "fisher",
            Sensitivity::Lrp => "lrp",
        }
    }

    /// Measured on the Hessian proxy (round-to-nearest candidates, no forward pass per format).
    pub fn from_hessians(self) -> bool {
        self != Sensitivity::Output
    }

    /// Needs the CPU backward pass of a ViT-family classifier.
    pub fn needs_backward(self) -> bool {
        matches!(self, Sensitivity::Fisher | Sensitivity::Lrp)
    }
}

/// Rows of a weight matrix the Hessian proxy evaluates (evenly spaced): the per-row errors of
/// round-to-grid quantization are alike, so a sample estimates the sum closely at a fraction
/// of the rows·cols² cost.
const PROXY_ROWS: usize = 64;

/// Σ over (sampled) rows δ of δᵀHδ, scaled to all rows: the squared error the matrix `d` adds
/// to the layer's output, summed over the calibration inputs H was accumulated from. With
/// `row_weights`, Σ weight·δᵀHδ: the PROXY_ROWS heaviest rows exactly (a LayerScale'd or
/// outlier channel can carry most of the weight), an even sample of the rest scaled to them.
fn hessian_energy(d: &[f32], rows: usize, cols: usize, h: &[f32], row_weights: Option<&[f64]>) -> f64 {
    let energy = |r: usize| {
        let row = &d[r * cols..(r + 1) * cols];
        let mut e = 0f64;
        for (i, &di) in row.iter().enumerate() {
            if di != 0.0 {
                let hi = &h[i * cols..(i + 1) * cols];
                e += di as f64 * dot_f32(hi, row) as f64;
            }
        }
        e
    };
    let sampled = |of: &[usize], weight: &dyn Fn(usize) -> f64| {
        let step = of.len().div_ceil(PROXY_ROWS).max(1);
        let picked: Vec<usize> = of.iter().copied().step_by(step).collect();
        picked.iter().map(|&r| weight(r) * energy(r)).sum::<f64>() * of.len() as f64 / picked.len().max(1) as f64
    };
    match row_weights {
        None => sampled(&(0..rows).collect::<Vec<_>>(), &|_| 1.0),
        Some(w) => {
            let mut order: Vec<usize> = (0..rows).collect();
            order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
            let (heavy, rest) = order.split_at(PROXY_ROWS.min(rows));
            let mut rest = rest.to_vec();
            rest.sort_unstable();
            heavy.iter().map(|&r| w[r] * energy(r)).sum::<f64>() + sampled(&rest, &|r| w[r])
        }
    }
}

/// What `--sensitivity fisher` measures before the allocation (`recipe`, in the calibration
/// pass GPTQ's Hessians come from).
pub struct FisherInputs {
    pub measured: Measured,
    /// Hessians of the rows weighted by `measured.rows`.
    pub hessians: HashMap<String, Hessian>,
}

/// One option for one layer.
#[derive(Clone, Debug)]
pub struct Choice {
    pub format: WeightFormat,
    pub bytes: usize,
    /// Output SQNR (dB) with only this layer in this format.
    pub sqnr_db: f64,
}

impl Choice {
    /// The output noise power relative to the signal (what the allocation adds up).
    pub fn noise(&self) -> f64 {
        10f64.powf(-self.sqnr_db / 10.0)
    }
}

#[derive(Clone, Debug)]
pub struct Allocation {
    /// One name per item: the matrix key, or the node of matrices that share one format.
    pub keys: Vec<String>,
    /// The matrix keys of each item.
    pub members: Vec<Vec<String>>,
    pub params: Vec<usize>,
    pub options: Vec<Vec<Choice>>,
    pub budget_bytes: usize,
    pub exact: Vec<usize>,
    pub greedy: Vec<usize>,
    /// How the options' SQNRs were measured (`Sensitivity::name`).
    pub sensitivity: &'static str,
}

impl Allocation {
    pub fn formats(&self) -> HashMap<String, WeightFormat> {
        self.members.iter().zip(&self.exact).enumerate().flat_map(|(i, (m, &c))| m.iter().map(move |k| (k.clone(), self.options[i][c].format))).collect()
    }

    /// (bytes, predicted noise, predicted SQNR dB, average bits) of a choice per layer.
    pub fn summary(&self, pick: &[usize]) -> (usize, f64, f64, f64) {
        let bytes: usize = pick.iter().enumerate().map(|(i, &c)| self.options[i][c].bytes).sum();
        let noise: f64 = pick.iter().enumerate().map(|(i, &c)| self.options[i][c].noise()).sum();
        let params: usize = self.params.iter().sum();
        (bytes, noise, -10.0 * noise.log10(), 8.0 * bytes as f64 / params as f64)
    }

    /// Every layer in candidate `k` (for comparison at equal format), where all layers have it.
    pub fn uniform(&self, k: usize) -> Option<Vec<usize>> {
        self.options.iter().map(|o| (o.len() > k).then_some(k).or((o.len() == 1).then_some(0))).collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let side = |pick: &[usize]| {
            let (bytes, _, sqnr, bits) = self.summary(pick);
            json!({"bytes": bytes, "average_bits": bits, "predicted_sqnr_db": sqnr,
                   "formats": self.keys.iter().zip(pick).enumerate().map(|(i, (k, &c))| (k.clone(), json!(self.options[i][c].format.name()))).collect::<BTreeMap<_, _>>()})
        };
        json!({"budget_bytes": self.budget_bytes, "sensitivity": self.sensitivity, "exact": side(&self.exact), "greedy": side(&self.greedy),
               "sensitivity_sqnr_db": self.keys.iter().enumerate().map(|(i, k)| (k.clone(), self.options[i].iter().map(|c| (c.format.name(), c.sqnr_db)).collect::<BTreeMap<_, _>>())).collect::<BTreeMap<_, _>>()})
    }
}

/// Exact multiple-choice knapsack: one option per item, total cost ≤ `budget`, least total
/// value. Returns the option per item and the total, or None when even the cheapest options
/// do not fit.
pub fn knapsack(costs: &[Vec<usize>], values: &[Vec<f64>], budget: usize) -> Option<(Vec<usize>, f64)> {
    let n = costs.len();
    // best[c]: least value of the items so far with total cost exactly c.
    let mut best = vec![f64::INFINITY; budget + 1];
    best[0] = 0.0;
    let mut from = vec![vec![u8::MAX; budget + 1]; n];
    for i in 0..n {
        let mut next = vec![f64::INFINITY; budget + 1];
        for (c, &so_far) in best.iter().enumerate().filter(|(_, v)| v.is_finite()) {
            for (k, (&cost, &v)) in costs[i].iter().zip(&values[i]).enumerate() {
                let t = c + cost;
                if t <= budget && so_far + v < next[t] {
                    next[t] = so_far + v;
                    from[i][t] = k as u8;
                }
            }
        }
        best = next;
    }
    let (mut c, total) = best.iter().enumerate().filter(|(_, v)| v.is_finite()).min_by(|a, b| a.1.total_cmp(b.1)).map(|(c, &v)| (c, v))?;
    let mut pick = vec![0; n];
    for i in (0..n).rev() {
        let k = from[i][c] as usize;
        pick[i] = k;
        c -= costs[i][k];
    }
    Some((pick, total))
}

/// The greedy allocation: cheapest option everywhere, then the upgrade with the most value
/// saved per extra cost, while the budget allows.
pub fn greedy(costs: &[Vec<usize>], values: &[Vec<f64>], budget: usize) -> Option<Vec<usize>> {
    let cheapest = |i: usize| (0..costs[i].len()).min_by_key(|&k| costs[i][k]).unwrap();
    let mut pick: Vec<usize> = (0..costs.len()).map(cheapest).collect();
    let mut used: usize = pick.iter().enumerate().map(|(i, &k)| costs[i][k]).sum();
    if used > budget {
        return None;
    }
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for i in 0..costs.len() {
            for k in 0..costs[i].len() {
                let (dc, dv) = (costs[i][k] as f64 - costs[i][pick[i]] as f64, values[i][pick[i]] - values[i][k]);
                if dc <= 0.0 || dv <= 0.0 || used + costs[i][k] - costs[i][pick[i]] > budget {
                    continue;
                }
                if best.is_none_or(|(r, ..)| dv / dc > r) {
                    best = Some((dv / dc, i, k));
                }
            }
        }
        let Some((_, i, k)) = best else { return Some(pick) };
        used = used + costs[i][k] - costs[i][pick[i]];
        pick[i] = k;
    }
}

/// Measures every layer's sensitivity and allocates `bits` average weight bits. Matrices the
/// model runs as one (a VQGAN attention's q, k, v: one stacked conv, one format) are one item.
#[allow(clippy::too_many_arguments)]
pub fn allocate_model(
    gpu: &Gpu,
    model: &Model,
    layers: &[Layer],
    calib: &Calibration,
    bits: f64,
    methods: Methods,
    hessians: &HashMap<String, Hessian>,
    sensitivity: Sensitivity,
    fisher: Option<&FisherInputs>,
) -> Result<Allocation> {
    let mut items: Vec<(String, Vec<&Layer>)> = Vec::new();
    for l in layers {
        match items.iter_mut().find(|(node, _)| *node == l.node) {
            Some((_, members)) => members.push(l),
            None => items.push((l.node.clone(), vec![l])),
        }
    }
    let names: Vec<String> = items.iter().map(|(node, m)| if m.len() == 1 { m[0].key.clone() } else { node.clone() }).collect();
    let params: Vec<usize> = items.iter().map(|(_, m)| m.iter().map(|l| l.rows() * l.cols()).sum()).collect();
    let budget_bytes = (bits * params.iter().sum::<usize>() as f64 / 8.0).floor() as usize;
    // The encoder's effect on the decoder's output is not measured (its tokens are discrete):
    // it gets uniform q4g32 and counts in the budget.
    let formats_of = |m: &[&Layer]| if m[0].encoder { vec![WeightFormat::Q4 { group: 32, zero_point: false }] } else { candidates() };
    // A budget nothing fits is refused before the (slow) sensitivity measurements.
    let cheapest: Vec<Vec<Choice>> = items
        .iter()
        .map(|(_, m)| {
            let f = formats_of(m)[0];
            vec![Choice { format: f, bytes: m.iter().map(|l| f.packed_bytes(l.rows(), l.cols())).sum(), sqnr_db: 0.0 }]
        })
        .collect();
    allocate(names.clone(), params.clone(), cheapest, budget_bytes, bits)?;
    // fisher: the squared output gradient g²[row, channel] of a layer, taken as separable,
    // a[row]·b[channel] (a: its sum over channels, b: its share per channel over the rows),
    // predicts the output noise per image Σ g²·ΔO² ≈ (rows per image / 2)·Σ_j b_j·δ_jᵀ·H_a·δ_j
    // with H_a = 2/n·Σ a·x·xᵀ (the Hessian of rows weighted by a) and δ_j row j of ΔW.
    // Separable, a LayerScale'd or outlier output channel counts as much as its gradient says.
    let fisher = match (sensitivity, fisher) {
        (Sensitivity::Fisher, Some(f)) => {
            let mut scale = HashMap::new();
            for (node, rows) in &f.measured.rows {
                let Some(ch) = f.measured.channels.get(node) else { continue };
                let total: f64 = ch.iter().sum();
                let share: Vec<f64> = ch.iter().map(|&c| if total > 0.0 { c / total } else { 1.0 / ch.len() as f64 }).collect();
                scale.insert(node.clone(), (rows.len() as f64 / calib.count() as f64 / 2.0, share));
            }
            // The signal: the outputs' mean squared norm per calibration image.
            let energy = f.measured.outputs.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / calib.count().max(1) as f64;
            Some((&f.hessians, scale, energy))
        }
        (Sensitivity::Fisher, None) => invalid!("--sensitivity fisher: no gradient-weighted Hessians were measured"),
        _ => None,
    };
    let hessians = fisher.as_ref().map_or(hessians, |f| f.0);
    // lrp: each layer's relevance relative to the mean layer's.
    let relevance = match sensitivity {
        Sensitivity::Lrp => {
            let r = model.relevance(calib)?;
            let mean = r.values().sum::<f64>() / r.len().max(1) as f64;
            Some(r.into_iter().map(|(node, v)| (node, v / mean)).collect::<HashMap<_, _>>())
        }
        _ => None,
    };
    let calib = &calib.first(SENSITIVITY_INPUTS);
    let reference = match sensitivity {
        Sensitivity::Output => model.outputs(gpu, &model.weights, calib)?,
        _ => Vec::new(),
    };
    // The Hessian proxy's H (f32 for speed) and the layer's output energy tr(W H Wᵀ).
    let proxy = |l: &Layer| -> Option<(Vec<f32>, f64)> {
        let h: Vec<f32> = hessians.get(&l.key)?.matrix().iter().map(|&v| v as f32).collect();
        let energy = hessian_energy(&model.weights.tensors[&l.key].data, l.rows(), l.cols(), &h, None);
        Some((h, energy))
    };
    let shapes: HashMap<String, Vec<usize>> = layers.iter().map(|l| (l.key.clone(), l.shape.clone())).collect();
    let progress = std::sync::Mutex::new(Progress::new("measuring layer sensitivities", items.len()));
    let measure = |(node, members): &(String, Vec<&Layer>)| -> Result<Vec<Choice>> {
        let mut opts = Vec::new();
        let proxies: Vec<Option<(Vec<f32>, f64)>> = match sensitivity {
            s if s.from_hessians() && !members[0].encoder => members.iter().map(|l| proxy(l)).collect(),
            _ => Vec::new(),
        };
        for format in formats_of(members) {
            let mut packed = BTreeMap::new();
            for l in members {
                let h = hessians.get(&l.key);
                // The Hessian proxy compares formats on round-to-nearest: GPTQ per layer and
                // format would cost four times the final quantization (248 of 400 s on a
                // ViT-S), for a ranking that hardly changes.
                let used = match sensitivity {
                    Sensitivity::Output => Methods { gptq: methods.gptq && h.is_some(), ..methods },
                    _ => Methods { gptq: false, clip: false, ..methods },
                };
                packed.insert(l.key.clone(), quantize_matrix(&model.weights.tensors[&l.key].data, l.rows(), l.cols(), format, used, h)?);
            }
            let sqnr_db = if members[0].encoder {
                f64::INFINITY
            } else if sensitivity.from_hessians() {
                let (mut signal, mut noise) = (0f64, 0f64);
                for (l, p) in members.iter().zip(&proxies) {
                    let Some((h, energy)) = p else { invalid!("{}: no calibration inputs reached this layer for its sensitivity", l.key) };
                    let w = &model.weights.tensors[&l.key].data;
                    let delta: Vec<f32> = packed[&l.key].dequantize().iter().zip(w).map(|(q, w)| q - w).collect();
                    match &fisher {
                        Some((_, scale, output_energy)) => {
                            let Some((per_image, share)) = scale.get(&l.node) else { invalid!("{}: the backward pass reached no layer `{}`", l.key, l.node) };
                            signal = *output_energy;
                            noise += per_image * hessian_energy(&delta, l.rows(), l.cols(), h, Some(share));
                        }
                        None => {
                            signal += energy;
                            noise += hessian_energy(&delta, l.rows(), l.cols(), h, None);
                        }
                    }
                }
                if let Some(r) = &relevance {
                    let Some(share) = r.get(node) else { invalid!("{node}: the relevance pass reached no such layer") };
                    noise *= share;
                }
                (10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()).min(200.0)
            } else {
                let weights = with_packed(&model.weights, &packed, &shapes)?;
                crate::metrics::sqnr_db(&model.outputs(gpu, &weights, calib)?, &reference).min(200.0)
            };
            opts.push(Choice { format, bytes: packed.values().map(|m| m.bytes()).sum(), sqnr_db });
        }
        progress.lock().unwrap().step(1);
        Ok(opts)
    };
    // The Hessian proxies are arithmetic on the CPU, one layer per core; the output
    // sensitivity runs the model on the GPU once per layer and format, one at a time.
    let options: Vec<Vec<Choice>> = if sensitivity.from_hessians() {
        parallel_map(&items, measure).into_iter().collect::<Result<_>>()?
    } else {
        items.iter().map(measure).collect::<Result<_>>()?
    };
    let progress = progress.into_inner().unwrap();
    progress.finish();
    let mut a = allocate(names, params, options, budget_bytes, bits)?;
    a.members = items.iter().map(|(_, m)| m.iter().map(|l| l.key.clone()).collect()).collect();
    a.sensitivity = sensitivity.name();
    Ok(a)
}

/// The exact and greedy allocations of measured options under `budget_bytes`.
pub fn allocate(keys: Vec<String>, params: Vec<usize>, options: Vec<Vec<Choice>>, budget_bytes: usize, bits: f64) -> Result<Allocation> {
    let least: usize = options.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap_or(0)).sum();
    if least > budget_bytes {
        let total: usize = params.iter().sum();
        invalid!(
            "mixed:{bits}: a budget of {budget_bytes} bytes ({bits} bits × {total} weights) is below the smallest allocation ({least} bytes, {:.2} bits per weight)",
            8.0 * least as f64 / total as f64
        );
    }
    // Packed sizes are whole u32 words, so 4-byte units make the DP exact; budgets past ~4 MiB
    // (1M states) use coarser units, costs rounded up so the budget still holds.
    let unit = 4 * budget_bytes.div_ceil(4 << 20).max(1);
    let costs: Vec<Vec<usize>> = options.iter().map(|o| o.iter().map(|c| c.bytes.div_ceil(unit)).collect()).collect();
    let values: Vec<Vec<f64>> = options.iter().map(|o| o.iter().map(Choice::noise).collect()).collect();
    let budget = budget_bytes / unit;
    let exact = match knapsack(&costs, &values, budget) {
        Some((pick, _)) => pick,
        // Rounding every cost up can push a barely-fitting allocation over; then use bytes.
        None => knapsack(&options.iter().map(|o| o.iter().map(|c| c.bytes).collect()).collect::<Vec<_>>(), &values, budget_bytes).map(|p| p.0).unwrap(),
    };
    let greedy = greedy(&costs, &values, budget).unwrap_or_else(|| exact.clone());
    let members = keys.iter().map(|k| vec![k.clone()]).collect();
    Ok(Allocation { keys, members, params, options, budget_bytes, exact, greedy, sensitivity: Sensitivity::Output.name() })
}
