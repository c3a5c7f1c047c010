//! Plain-Rust references for the VQ kernels (f64 arithmetic), plus the CPU-side id checks.

use super::Metric;
use crate::{Error, Result};

/// Rows scaled to unit length, as `torch.nn.functional.normalize` (eps 1e-12: zero rows stay
/// zero). The cosine codebook is stored this way, so lookups return these rows.
pub fn normalize_rows(data: &[f32], d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks(d) {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(1e-12);
        out.extend(row.iter().map(|&v| (v as f64 / norm) as f32));
    }
    out
}

/// The distance the search minimizes: ‖x − c‖² (cosine: of the l2-normalized vectors, which is
/// 2 − 2·cos).
pub fn distance(metric: Metric, x: &[f32], c: &[f32]) -> f64 {
    let (nx, nc) = match metric {
        Metric::L2 => (1.0, 1.0),
        Metric::Cosine => (norm(x).max(1e-12), norm(c).max(1e-12)),
    };
    x.iter().zip(c).map(|(&a, &b)| (a as f64 / nx - b as f64 / nc).powi(2)).sum()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt()
}

/// Nearest code of each row of `x` [n, d] in `codes` [k, d] → (indices, distances). Ties go to
/// the lowest index.
pub fn search_reference(metric: Metric, x: &[f32], codes: &[f32], d: usize) -> (Vec<u32>, Vec<f32>) {
    let mut idx = Vec::new();
    let mut dist = Vec::new();
    for row in x.chunks(d) {
        let mut best = (f64::INFINITY, 0u32);
        for (i, c) in codes.chunks(d).enumerate() {
            let e = distance(metric, row, c);
            if e < best.0 {
                best = (e, i as u32);
            }
        }
        idx.push(best.1);
        dist.push(best.0 as f32);
    }
    (idx, dist)
}

/// Rows of `codes` [k, d] picked by `ids`.
pub fn gather_reference(codes: &[f32], d: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter().flat_map(|&i| codes[i as usize * d..(i as usize + 1) * d].iter().copied()).collect()
}

/// LFQ decode: each id's `bits` bits, LSB first, → +1.0 (set) / −1.0 (clear).
pub fn lfq_decode_reference(ids: &[u32], bits: u32) -> Vec<f32> {
    ids.iter().flat_map(|&id| (0..bits).map(move |b| if id >> b & 1 == 1 { 1.0 } else { -1.0 })).collect()
}

/// LFQ encode: `x` [.., groups·bits] → one id per group of `bits` values, bit i set where
/// value i is positive (sign quantization; index = Σ bit_i·2^i).
pub fn lfq_encode_reference(x: &[f32], bits: u32) -> Vec<u32> {
    x.chunks(bits as usize)
        .map(|g| g.iter().enumerate().map(|(i, &v)| ((v > 0.0) as u32) << i).sum())
        .collect()
}

/// A token id as the caller holds it (u32, i32, i64, usize).
pub trait TokenId: Copy + std::fmt::Display {
    /// The row it names, or None when negative.
    fn row(self) -> Option<u64>;
}

impl TokenId for u32 {
    fn row(self) -> Option<u64> {
        Some(self as u64)
    }
}
impl TokenId for usize {
    fn row(self) -> Option<u64> {
        Some(self as u64)
    }
}
impl TokenId for i32 {
    fn row(self) -> Option<u64> {
        u64::try_from(self).ok()
    }
}
impl TokenId for i64 {
    fn row(self) -> Option<u64> {
        u64::try_from(self).ok()
    }
}

/// Errors on the first id outside a codebook of `k` entries (the CPU-side check for ids the
/// caller already holds).
pub fn check_ids<T: TokenId>(ids: &[T], k: usize) -> Result<()> {
    match ids.iter().position(|&id| id.row().is_none_or(|r| r >= k as u64)) {
        Some(pos) => Err(bad_id(ids[pos], pos, k)),
        None => Ok(()),
    }
}

pub(crate) fn bad_id(id: impl std::fmt::Display, pos: usize, k: usize) -> Error {
    Error::Invalid(format!("token id {id} at position {pos} is outside the codebook of {k} entries"))
}
