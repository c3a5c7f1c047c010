//! Per-channel → per-tensor reparameterization (RepQ-ViT), and the folding it shares with
//! SmoothQuant (`smooth.rs`): a per-channel affine map x' = x/r + b on a Linear's input is
//! absorbed by the layer producing x (a LayerNorm's affine, or the V rows of qkv for the proj
//! input) and undone by the Linear's weights and bias, so the float model computes the same
//! function while its activations get a range one per-tensor quantizer fits.
//!
//! Producer: row c of its output gets ·1/r_c and +b_c. Consumer Linear y = Wx + β:
//! W' = W·diag(r), β' = β − W'·b, so W'x' + β' = W(x + r⊙b) + β − W r⊙b = Wx + β.

use crate::models::Weights;
use crate::{invalid, Error, Result};

/// A per-channel affine map x' = x/r + b.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMap {
    pub r: Vec<f32>,
    pub b: Vec<f32>,
}

impl ChannelMap {
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let c = self.r.len();
        x.iter().enumerate().map(|(i, &v)| v / self.r[i % c] + self.b[i % c]).collect()
    }

    fn check(&self) -> Result<()> {
        if self.r.len() != self.b.len() || self.r.iter().any(|&r| !(r.is_finite() && r > 0.0)) || self.b.iter().any(|b| !b.is_finite()) {
            invalid!("reparameterization: per-channel factors must be finite and > 0");
        }
        Ok(())
    }
}

/// RepQ-ViT's map from per-channel uniform grids (scale s_c, zero z_c) to one per-tensor grid
/// (s̃ = mean s, z̃ = round(mean z)): r = s/s̃, b = s̃(z − z̃). Quantizing x' with (s̃, z̃) then
/// equals quantizing each channel of x with its own (s_c, z_c).
pub fn repq_map(per_channel: &[(f32, f32)]) -> (ChannelMap, f32, f32) {
    let n = per_channel.len() as f32;
    let s_mean = per_channel.iter().map(|p| p.0).sum::<f32>() / n;
    let z_mean = (per_channel.iter().map(|p| p.1).sum::<f32>() / n).round();
    let r = per_channel.iter().map(|p| p.0 / s_mean).collect();
    let b = per_channel.iter().map(|p| s_mean * (p.1 - z_mean)).collect();
    (ChannelMap { r, b }, s_mean, z_mean)
}

fn tensor_mut<'a>(w: &'a mut Weights, key: &str, len: usize) -> Result<&'a mut Vec<f32>> {
    let t = w.tensors.get_mut(key).ok_or_else(|| Error::Invalid(format!("reparameterization: no f32 tensor `{key}`")))?;
    if t.data.len() != len {
        invalid!("reparameterization: `{key}` has {} values, expected {len}", t.data.len());
    }
    Ok(&mut t.data)
}

/// Folds `map` into the LayerNorm `norm` (γ' = γ/r, β' = β/r + b) and into every Linear in
/// `linears` that reads its output.
pub fn fold_layer_norm(w: &mut Weights, norm: &str, linears: &[&str], map: &ChannelMap) -> Result<()> {
    map.check()?;
    let c = map.r.len();
    let gamma = tensor_mut(w, &format!("{norm}.weight"), c)?;
    gamma.iter_mut().zip(&map.r).for_each(|(g, r)| *g /= r);
    let beta = tensor_mut(w, &format!("{norm}.bias"), c)?;
    beta.iter_mut().zip(map.r.iter().zip(&map.b)).for_each(|(v, (r, b))| *v = *v / r + b);
    for l in linears {
        fold_consumer(w, l, map)?;
    }
    Ok(())
}

/// Folds `map` into the V rows of `qkv` (its output rows 2C..3C, which become the attention
/// output's channels: each row of P sums to 1, so a shift of V shifts the output alike) and
/// the proj Linear reading the attention output.
pub fn fold_attention_v(w: &mut Weights, qkv: &str, proj: &str, map: &ChannelMap) -> Result<()> {
    map.check()?;
    let c = map.r.len();
    let weight = tensor_mut(w, &format!("{qkv}.weight"), 3 * c * c)?;
    for (row, r) in weight[2 * c * c..].chunks_mut(c).zip(&map.r) {
        row.iter_mut().for_each(|v| *v /= r);
    }
    let bias_key = format!("{qkv}.bias");
    if w.tensors.contains_key(&bias_key) {
        let bias = tensor_mut(w, &bias_key, 3 * c)?;
        bias[2 * c..].iter_mut().zip(map.r.iter().zip(&map.b)).for_each(|(v, (r, b))| *v = *v / r + b);
    } else if map.b.iter().any(|&b| b != 0.0) {
        invalid!("reparameterization: {qkv} has no bias to absorb a shift");
    }
    fold_consumer(w, proj, map)
}

/// W' = W·diag(r), β' = β − W'·b for the Linear `linear` ([out, in] weight, [out] bias).
pub fn fold_consumer(w: &mut Weights, linear: &str, map: &ChannelMap) -> Result<()> {
    let c = map.r.len();
    let key = format!("{linear}.weight");
    let rows = w.tensors.get(&key).map(|t| t.data.len() / c).ok_or_else(|| Error::Invalid(format!("reparameterization: no f32 tensor `{key}`")))?;
    let weight = tensor_mut(w, &key, rows * c)?;
    let mut shift = vec![0f64; rows];
    for (row, s) in weight.chunks_mut(c).zip(shift.iter_mut()) {
        for ((v, r), b) in row.iter_mut().zip(&map.r).zip(&map.b) {
            *v *= r;
            *s += *v as f64 * *b as f64;
        }
    }
    let bias_key = format!("{linear}.bias");
    if !w.tensors.contains_key(&bias_key) {
        if shift.iter().any(|&s| s != 0.0) {
            invalid!("reparameterization: {linear} has no bias to absorb a shift");
        }
        return Ok(());
    }
    let bias = tensor_mut(w, &bias_key, rows)?;
    bias.iter_mut().zip(&shift).for_each(|(v, s)| *v = (*v as f64 - s) as f32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::act_quant::ActQuantizer;

    #[test]
    fn per_tensor_grid_after_the_map_equals_per_channel_grids() {
        let per_channel = [(0.1f32, 3.0f32), (0.4, 8.0), (0.05, 12.0)];
        let (map, s, z) = repq_map(&per_channel);
        let x = crate::synthetic::uniform(300, 4, 2.0);
        let xq = map.apply(&x);
        let q = ActQuantizer::Uniform { bits: 4, scale: s, zero: z };
        for (i, (&v, &v2)) in x.iter().zip(&xq).enumerate() {
            let (sc, zc) = per_channel[i % 3];
            let own = ActQuantizer::Uniform { bits: 4, scale: sc, zero: zc }.apply(v);
            // Undo the map on the per-tensor result: x̂ = r·(x̂' − b).
            let back = map.r[i % 3] * (q.apply(v2) - map.b[i % 3]);
            assert!((own - back).abs() <= 1e-4 * (1.0 + own.abs()), "{i}: {own} vs {back}");
        }
    }
}
