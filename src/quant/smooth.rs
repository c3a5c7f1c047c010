//! SmoothQuant with bias (the SQ-b of MPTQ-ViT): per channel, shift the activation to centre its
//! range (z_c = (max_c + min_c)/2) and divide by s_c = max|X_c − z_c|^α / max|W_c|^(1−α), moving
//! range from the activation's outlier channels into the weights. The map is folded like
//! RepQ-ViT's (`repq.rs`): into the LayerNorm (qkv, fc1) or the V rows of qkv (proj). α is
//! searched per layer on the output error with both operands quantized. A consumer without a
//! bias (`qkv_bias: false`) cannot absorb the shift: there the map is SmoothQuant's own, a
//! scale only (z_c = 0, s_c from max|X_c|).

use super::actq::{fit, Kind};
use super::dot::dot;
use super::repq::ChannelMap;
use crate::Result;

const ALPHAS: [f32; 6] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// Per-row symmetric round-to-nearest at `bits` (the weight grid the search assumes).
pub fn fake_quant_rows(w: &[f32], cols: usize, bits: u32) -> Vec<f32> {
    let top = ((1u32 << (bits - 1)) - 1) as f32;
    w.chunks(cols)
        .flat_map(|row| {
            let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / top;
            row.iter().map(move |&v| if s > 0.0 { (v / s).round().clamp(-top, top) * s } else { 0.0 })
        })
        .collect()
}

/// Output error of quantizing x at `a_bits` and w at `w_bits` after the map (identity: None).
pub fn output_error(x: &[f32], w: &[f32], cols: usize, map: Option<&ChannelMap>, w_bits: u32, a_bits: u32) -> Result<f64> {
    error_against(&products(x, w, cols), x, w, cols, map, w_bits, a_bits)
}

/// x·Wᵀ in f64 (`[rows, out]`): each row of x against each row of w.
fn products(x: &[f32], w: &[f32], cols: usize) -> Vec<f64> {
    let (x, w): (Vec<f64>, Vec<f64>) = (x.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect());
    x.chunks(cols).flat_map(|xr| w.chunks(cols).map(move |wr| dot(xr, wr))).collect()
}

/// `output_error` with x·Wᵀ (`products`) computed once for all the maps of a search.
fn error_against(exact: &[f64], x: &[f32], w: &[f32], cols: usize, map: Option<&ChannelMap>, w_bits: u32, a_bits: u32) -> Result<f64> {
    let (x2, w2) = match map {
        Some(m) => (m.apply(x), w.iter().enumerate().map(|(i, v)| v * m.r[i % cols]).collect::<Vec<f32>>()),
        None => (x.to_vec(), w.to_vec()),
    };
    let q = fit(Kind::Uniform, a_bits, &x2)?;
    let mut x_hat = q.reference(&x2);
    // Back in the original coordinates: the exact output is x·Wᵀ.
    if let Some(m) = map {
        x_hat.iter_mut().enumerate().for_each(|(i, v)| *v = (*v - m.b[i % cols]) * m.r[i % cols]);
    }
    let w_hat = fake_quant_rows(&w2, cols, w_bits);
    let w_back: Vec<f32> = match map {
        Some(m) => w_hat.iter().enumerate().map(|(i, v)| v / m.r[i % cols]).collect(),
        None => w_hat,
    };
    // ‖x̂·Ŵᵀ − x·Wᵀ‖² over the sample rows.
    let sse = products(&x_hat, &w_back, cols).iter().zip(exact).map(|(a, b)| (a - b) * (a - b)).sum();
    Ok(sse)
}

/// The smoothing map with the least output error for input sample `x` [rows, cols] and
/// weight `w` [out, cols], or None when smoothing does not help; with `shift` false, a scale
/// only (for a consumer without a bias to absorb the shift).
pub fn search(x: &[f32], w: &[f32], cols: usize, w_bits: u32, a_bits: u32, shift: bool) -> Result<Option<ChannelMap>> {
    let rows = x.len() / cols;
    let (mut lo, mut hi) = (vec![f32::INFINITY; cols], vec![f32::NEG_INFINITY; cols]);
    for r in 0..rows {
        for c in 0..cols {
            lo[c] = lo[c].min(x[r * cols + c]);
            hi[c] = hi[c].max(x[r * cols + c]);
        }
    }
    let z: Vec<f32> = lo.iter().zip(&hi).map(|(a, b)| if shift { (a + b) / 2.0 } else { 0.0 }).collect();
    let xmax: Vec<f32> = lo.iter().zip(&hi).zip(&z).map(|((a, b), z)| (b - z).max(z - a).max(1e-5)).collect();
    let mut wmax = vec![1e-5f32; cols];
    for row in w.chunks(cols) {
        row.iter().zip(wmax.iter_mut()).for_each(|(v, m)| *m = m.max(v.abs()));
    }
    let exact = products(x, w, cols);
    let mut best = (error_against(&exact, x, w, cols, None, w_bits, a_bits)?, None);
    for alpha in ALPHAS {
        let s: Vec<f32> = xmax.iter().zip(&wmax).map(|(a, w)| (a.powf(alpha) / w.powf(1.0 - alpha)).max(1e-5)).collect();
        let map = ChannelMap { b: z.iter().zip(&s).map(|(z, s)| -z / s).collect(), r: s };
        let e = error_against(&exact, x, w, cols, Some(&map), w_bits, a_bits)?;
        if e < best.0 {
            best = (e, Some(map));
        }
    }
    Ok(best.1)
}
