//! CPU references of the W4A8/W4A4 kernels: the activation codes bit for bit (the same f32
//! operations as the shader), the GEMM with i64 dot products per group rescaled in f64.

use super::ActInput;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::kernels::elementwise::Activation;
use crate::{invalid, shape_err, Result};

/// Signed activation codes [rows, cols] (code − 2^(bits−1) where the quantizer has a zero
/// point) and per row (scale, dz), the value of code c being (c + dz) · scale, from `x`
/// (+ `noise` per column, when given).
pub fn quantize(x: &[f32], rows: usize, cols: usize, act: ActInput, noise: Option<&[f32]>) -> Result<(Vec<i8>, Vec<[f32; 2]>)> {
    if rows == 0 || cols == 0 || x.len() != rows * cols || noise.is_some_and(|n| n.len() != cols) {
        shape_err!("w4 quantize reference: {} values for {rows}×{cols}", x.len());
    }
    let (top, bits) = match act {
        ActInput::PerToken { bits, .. } | ActInput::Static { bits, .. } => (act.top(), bits),
    };
    let offset = (1u32 << (bits - 1)) as f32;
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![[0f32; 2]; rows];
    for (r, row) in x.chunks(cols).enumerate() {
        let v = |k: usize| noise.map_or(row[k], |n| row[k] + n[k]);
        // The row's range widened to hold 0, as the shader reduces it.
        let (lo, hi) = (0..cols).fold((0f32, 0f32), |(lo, hi), k| (lo.min(v(k)), hi.max(v(k))));
        // WGSL's round() is round-half-to-even.
        let (scale, zero) = match act {
            ActInput::PerToken { zero_point: false, .. } => (hi.max(-lo) / top, offset),
            ActInput::PerToken { zero_point: true, .. } => {
                let scale = (hi - lo) / top;
                (scale, if scale != 0.0 { (-lo / scale).round_ties_even() } else { offset })
            }
            ActInput::Static { scale, zero, .. } => (scale, zero),
        };
        scales[r] = [scale, offset - zero];
        for k in 0..cols {
            codes[r * cols + k] = match act {
                _ if scale == 0.0 => 0,
                ActInput::PerToken { zero_point: false, .. } => (v(k) / scale).round_ties_even().clamp(-top, top) as i8,
                _ => (((v(k) / scale).round_ties_even() + zero).clamp(0.0, top) - offset) as i8,
            };
        }
    }
    Ok((codes, scales))
}

/// `codes` [rows, cols] in the kernel's layout for `storage_bits` (4: nibbles + 8, eight per
/// word; 8: per 8 codes a word of the even ones and a word of the odd ones), rows padded with
/// zero codes to whole 32-code blocks.
pub fn pack(codes: &[i8], rows: usize, cols: usize, storage_bits: u32) -> Vec<u32> {
    let blocks = cols.div_ceil(32) * 4;
    let words = if storage_bits == 4 { blocks } else { 2 * blocks };
    let mut out = vec![0u32; rows * words];
    for r in 0..rows {
        let c = |k: usize| if k < cols { codes[r * cols + k] } else { 0 };
        for b in 0..blocks {
            if storage_bits == 4 {
                out[r * words + b] = (0..8).map(|j| (((c(8 * b + j) as i32 + 8) as u32) & 0xf) << (4 * j)).fold(0, |a, v| a | v);
            } else {
                for half in 0..2 {
                    out[r * words + 2 * b + half] = (0..4).map(|j| (c(8 * b + 2 * j + half) as u8 as u32) << (8 * j)).fold(0, |a, v| a | v);
                }
            }
        }
    }
    out
}

/// The inverse of `pack`: signed codes [rows, cols] from the kernel's layout.
pub fn unpack(words: &[u32], rows: usize, cols: usize, storage_bits: u32) -> Vec<i8> {
    let blocks = cols.div_ceil(32) * 4;
    let per_row = if storage_bits == 4 { blocks } else { 2 * blocks };
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = &words[r * per_row..(r + 1) * per_row];
        out.extend((0..cols).map(|k| {
            let (b, j) = (k / 8, k % 8);
            if storage_bits == 4 {
                (((row[b] >> (4 * j)) & 0xf) as i32 - 8) as i8
            } else {
                (row[2 * b + j % 2] >> (8 * (j / 2))) as u8 as i8
            }
        }));
    }
    out
}

/// The low-rank branch of a Linear, as the graph adds it.
pub struct LowRankRef<'a> {
    pub rank: usize,
    /// [rank, cols] and [rows, rank].
    pub down: &'a [f32],
    pub up: &'a [f32],
    /// The layer's float input [rows of x, cols] (the branch reads x, not its codes).
    pub x: &'a [f32],
}

/// The integer GEMM on signed codes [m, K] with per-row (scale, dz) `scales`: per group an
/// i64 dot plus dz times the group's code sum, scaled in f64; then bias, the low-rank branch
/// and GELU.
pub fn gemm(codes: &[i8], scales: &[[f32; 2]], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, gelu: bool, low_rank: Option<LowRankRef>) -> Result<Vec<f32>> {
    let WeightFormat::Q4 { group, zero_point: false } = w.format else { invalid!("w4 gemm reference: q4 weights without zero points") };
    let (k, n) = (w.cols, w.rows);
    if codes.len() != m * k || scales.len() != m {
        shape_err!("w4 gemm reference: activations don't match {m}×{k}");
    }
    let wc: Vec<i64> = (0..n * k).map(|i| w.code(i / k, i % k) as i64 - 8).collect();
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        let xr = &codes[r * k..(r + 1) * k];
        let [scale, dz] = scales[r];
        let dz = dz as i64;
        for c in 0..n {
            let mut acc = 0f64;
            for g in 0..k.div_ceil(group) {
                let span = g * group..((g + 1) * group).min(k);
                let dot: i64 = span.clone().map(|j| xr[j] as i64 * wc[c * k + j]).sum();
                let sum: i64 = span.map(|j| wc[c * k + j]).sum();
                acc += w.scale(c, g) as f64 * (dot + dz * sum) as f64;
            }
            let mut v = acc * scale as f64 + bias.map_or(0.0, |b| b[c] as f64);
            if let Some(l) = &low_rank {
                for q in 0..l.rank {
                    let t: f64 = (0..k).map(|j| l.x[r * k + j] as f64 * l.down[q * k + j] as f64).sum();
                    v += t * l.up[c * l.rank + q] as f64;
                }
            }
            let v = v as f32;
            out.push(if gelu { Activation::Gelu.reference(v) } else { v });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean squared error of the dequantized codes, (c + dz) · scale, against `x`.
    fn error(x: &[f32], rows: usize, cols: usize, act: ActInput) -> f64 {
        let (codes, scales) = quantize(x, rows, cols, act, None).unwrap();
        let e: f64 = (0..rows * cols)
            .map(|i| {
                let [scale, dz] = scales[i / cols];
                ((codes[i] as f64 + dz as f64) * scale as f64 - x[i] as f64).powi(2)
            })
            .sum();
        e / (rows * cols) as f64
    }

    #[test]
    fn a_zero_point_per_row_spends_every_code_on_one_sided_rows() {
        // Post-GELU-like rows: min ≈ −0.17, max a few units. Symmetric int4 steps are max / 7,
        // asymmetric ones (max + 0.17) / 15: about half, so a quarter of the squared error.
        let (rows, cols) = (16, 96);
        let x: Vec<f32> = (0..rows * cols).map(|i| {
            let t = ((i * 7919) % 1000) as f32 / 1000.0 * 6.0 - 3.0;
            Activation::Gelu.reference(t)
        }).collect();
        let sym = error(&x, rows, cols, ActInput::PerToken { bits: 4, zero_point: false });
        let asym = error(&x, rows, cols, ActInput::PerToken { bits: 4, zero_point: true });
        assert!(asym < 0.5 * sym, "asymmetric {asym} vs symmetric {sym}");
        // 0 keeps an exact code, and every code stays within the 4-bit range.
        let mut with_zero = x.clone();
        with_zero[5] = 0.0;
        let (codes, scales) = quantize(&with_zero, rows, cols, ActInput::PerToken { bits: 4, zero_point: true }, None).unwrap();
        assert_eq!(codes[5] as f32 + scales[0][1], 0.0);
        assert!(codes.iter().all(|c| (-8..=7).contains(c)));
        // An all-zero row: scale 0, every code 0, no NaN.
        let (codes, scales) = quantize(&[0.0; 8], 1, 8, ActInput::PerToken { bits: 4, zero_point: true }, None).unwrap();
        assert_eq!((codes, scales), (vec![0; 8], vec![[0.0, 0.0]]));
    }

}
