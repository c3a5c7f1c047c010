//! CPU references of the W4A8/W4A4 kernels: the activation codes bit for bit (the same f32
//! operations as the shader), the GEMM with i64 dot products per group rescaled in f64.

use super::ActInput;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::kernels::elementwise::Activation;
use crate::{invalid, shape_err, Result};

/// Signed activation codes [rows, cols] (code − 2^(bits−1) for a static quantizer) and the
/// scale of each row, from `x` (+ `noise` per column, when given).
pub fn quantize(x: &[f32], rows: usize, cols: usize, act: ActInput, noise: Option<&[f32]>) -> Result<(Vec<i8>, Vec<f32>)> {
    if rows == 0 || cols == 0 || x.len() != rows * cols || noise.is_some_and(|n| n.len() != cols) {
        shape_err!("w4 quantize reference: {} values for {rows}×{cols}", x.len());
    }
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for (r, row) in x.chunks(cols).enumerate() {
        let v = |k: usize| noise.map_or(row[k], |n| row[k] + n[k]);
        let scale = match act {
            ActInput::PerToken { bits } => (0..cols).fold(0f32, |m, k| m.max(v(k).abs())) / ActInput::per_token_max(bits),
            ActInput::Static { scale, .. } => scale,
        };
        scales[r] = scale;
        for k in 0..cols {
            // WGSL's round() is round-half-to-even.
            codes[r * cols + k] = match act {
                ActInput::PerToken { .. } if scale == 0.0 => 0,
                ActInput::PerToken { bits } => {
                    let top = ActInput::per_token_max(bits);
                    (v(k) / scale).round_ties_even().clamp(-top, top) as i8
                }
                ActInput::Static { bits, scale, zero } => {
                    let top = ((1u32 << bits) - 1) as f32;
                    (((v(k) / scale).round_ties_even() + zero).clamp(0.0, top) - (1u32 << (bits - 1)) as f32) as i8
                }
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

/// The integer GEMM on signed codes [m, K] with per-row `scales`: per group an i64 dot plus
/// the zero-point shift times the group's code sum, scaled in f64; then bias, the low-rank
/// branch and GELU.
#[allow(clippy::too_many_arguments)]
pub fn gemm(codes: &[i8], scales: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, act: ActInput, gelu: bool, low_rank: Option<LowRankRef>) -> Result<Vec<f32>> {
    let WeightFormat::Q4 { group, zero_point: false } = w.format else { invalid!("w4 gemm reference: q4 weights without zero points") };
    let (k, n) = (w.cols, w.rows);
    if codes.len() != m * k || scales.len() != m {
        shape_err!("w4 gemm reference: activations don't match {m}×{k}");
    }
    let dz = match act {
        ActInput::PerToken { .. } => 0i64,
        ActInput::Static { bits, zero, .. } => (1i64 << (bits - 1)) - zero as i64,
    };
    let wc: Vec<i64> = (0..n * k).map(|i| w.code(i / k, i % k) as i64 - 8).collect();
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        let xr = &codes[r * k..(r + 1) * k];
        for c in 0..n {
            let mut acc = 0f64;
            for g in 0..k.div_ceil(group) {
                let span = g * group..((g + 1) * group).min(k);
                let dot: i64 = span.clone().map(|j| xr[j] as i64 * wc[c * k + j]).sum();
                let sum: i64 = span.map(|j| wc[c * k + j]).sum();
                acc += w.scale(c, g) as f64 * (dot + dz * sum) as f64;
            }
            let mut v = acc * scales[r] as f64 + bias.map_or(0.0, |b| b[c] as f64);
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
