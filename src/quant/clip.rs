//! Clipping search: per scale group, shrink the range by each candidate ratio and keep the one
//! with the least squared rounding error (the MSE observer of FQ-ViT/RepQ-ViT's weight
//! quantizers, done per group). A few outliers no longer stretch the grid for the whole group:
//! they get clipped, and the many small weights get finer steps.

use super::rtn::{group_error, group_params, quantize_with, Choice, Group};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::Result;

/// Candidate ratios: 0.20, 0.22, …, 1.0 of the absmax range (8-bit grids on heavy-tailed rows
/// gain from clipping far below 0.5). Ternary's scale is the absmean, which can be too small as
/// well as too large, so it searches 0.5..1.5 instead.
pub fn ratios(format: WeightFormat) -> Vec<f32> {
    let (lo, hi) = if format == WeightFormat::Ternary { (25, 75) } else { (10, 50) };
    (lo..=hi).map(|i| i as f32 * 0.02).collect()
}

/// The group parameters with the least squared error over the candidate ratios.
pub fn best_group(format: WeightFormat, vals: &[f32]) -> Group {
    let mut best = (f64::INFINITY, group_params(format, vals, 1.0));
    for r in ratios(format) {
        let g = group_params(format, vals, r);
        let e = group_error(format, vals, g);
        if e < best.0 {
            best = (e, g);
        }
    }
    best.1
}

/// Codes and group parameters of a row-major matrix with clipping searched per group.
pub fn choose(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Choice> {
    quantize_with(w, rows, cols, format, |vals| best_group(format, vals))
}

pub fn clip(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<PackedMatrix> {
    choose(w, rows, cols, format)?.pack()
}
