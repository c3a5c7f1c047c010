//! Round-to-nearest on each format's grid, one (scale, zero) per group: the building block every
//! method shares. `clip` searches the group parameters, `gptq` chooses the rounding order and
//! compensates the error, and all of them turn their choice into codes here, so the values a
//! method optimizes are exactly the values `PackedMatrix::value` gives the kernels.

use half::f16;

use crate::formats::{fp4_decode, fp4_encode};
use crate::formats::{PackedMatrix, WeightFormat};
use crate::{invalid, Result};

/// The parameters of one scale group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Group {
    /// The f16-rounded scale the kernels multiply by.
    pub scale: f32,
    /// Code of zero: 8 for symmetric Q4, 1 for ternary, searched for Q4 with zero point, 0 else.
    pub zero: u32,
}

/// Formats the quantizer packs (the float formats have no grid to round to).
pub fn check_format(format: WeightFormat) -> Result<()> {
    if matches!(format, WeightFormat::F32 | WeightFormat::F16) {
        invalid!("{} is not a low-bit format; quantize to q8, q4g32, ternary, fp4g32, ...", format.name());
    }
    Ok(())
}

/// Group parameters for `vals` with the range shrunk by `ratio` (1.0 = round-to-nearest's own
/// choice: absmax for symmetric formats, min/max for Q4 with zero point, absmean for ternary).
pub fn group_params(format: WeightFormat, vals: &[f32], ratio: f32) -> Group {
    let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs())) * ratio;
    let (scale, zero) = match format {
        WeightFormat::Q8 { .. } => (absmax / 127.0, 0),
        WeightFormat::Q4 { zero_point: false, .. } => (absmax / 7.0, 8),
        WeightFormat::Q4 { zero_point: true, .. } => {
            let lo = vals.iter().fold(0f32, |m, &v| m.min(v)) * ratio;
            let hi = vals.iter().fold(0f32, |m, &v| m.max(v)) * ratio;
            let s = (hi - lo) / 15.0;
            let z = if s > 0.0 { (-lo / s).round().clamp(0.0, 15.0) as u32 } else { 8 };
            (s, z)
        }
        WeightFormat::Ternary => (ratio * vals.iter().map(|v| v.abs()).sum::<f32>() / vals.len().max(1) as f32, 1),
        WeightFormat::Fp4 { .. } => (absmax / 6.0, 0),
        WeightFormat::F32 | WeightFormat::F16 => (1.0, 0),
    };
    Group { scale: f16::from_f32(scale).to_f32(), zero }
}

/// The nearest code to `v` on the group's grid.
pub fn encode(format: WeightFormat, v: f32, g: Group) -> u32 {
    let x = if g.scale > 0.0 { v / g.scale } else { 0.0 };
    match format {
        WeightFormat::Q8 { .. } => (x.round().clamp(-127.0, 127.0) as i32 as u32) & 0xff,
        WeightFormat::Q4 { .. } => (x.round() + g.zero as f32).clamp(0.0, 15.0) as u32,
        WeightFormat::Ternary => (x.round().clamp(-1.0, 1.0) + 1.0) as u32,
        WeightFormat::Fp4 { .. } => fp4_encode(x),
        WeightFormat::F32 => v.to_bits(),
        WeightFormat::F16 => f16::from_f32(v).to_bits() as u32,
    }
}

/// The value a code stands for (what the kernels compute with).
pub fn decode(format: WeightFormat, code: u32, g: Group) -> f32 {
    match format {
        WeightFormat::Q8 { .. } => (code as u8 as i8) as f32 * g.scale,
        WeightFormat::Q4 { .. } | WeightFormat::Ternary => (code as f32 - g.zero as f32) * g.scale,
        WeightFormat::Fp4 { .. } => fp4_decode(code) * g.scale,
        WeightFormat::F32 => f32::from_bits(code),
        WeightFormat::F16 => f16::from_bits(code as u16).to_f32(),
    }
}

/// `v` rounded onto the group's grid.
pub fn round(format: WeightFormat, v: f32, g: Group) -> f32 {
    decode(format, encode(format, v, g), g)
}

/// Squared error of rounding `vals` with `g`.
pub fn group_error(format: WeightFormat, vals: &[f32], g: Group) -> f64 {
    vals.iter().map(|&v| (v - round(format, v, g)) as f64).map(|e| e * e).sum()
}

/// Codes plus per-group parameters of a whole matrix, before packing.
pub struct Choice {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u32>,
    /// Row-major over (row, group).
    pub groups: Vec<Group>,
}

impl Choice {
    pub fn pack(&self) -> Result<PackedMatrix> {
        let scales: Vec<f32> = self.groups.iter().map(|g| g.scale).collect();
        let zeros: Vec<u32> = if matches!(self.format, WeightFormat::Q4 { zero_point: true, .. }) { self.groups.iter().map(|g| g.zero).collect() } else { Vec::new() };
        PackedMatrix::from_codes(self.format, self.rows, self.cols, &self.codes, &scales, &zeros)
    }
}

/// Quantizes a row-major matrix with the group parameters `params(row values of a group)`
/// returns, rounding every element to nearest.
pub fn quantize_with(w: &[f32], rows: usize, cols: usize, format: WeightFormat, mut params: impl FnMut(&[f32]) -> Group) -> Result<Choice> {
    check_format(format)?;
    if rows == 0 || cols == 0 || w.len() != rows * cols {
        crate::shape_err!("quantize: {} values for a {rows}×{cols} matrix", w.len());
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        invalid!("quantize: weight value {} at index {i} is not finite", w[i]);
    }
    let gs = format.group_size(cols);
    let mut choice = Choice { format, rows, cols, codes: Vec::with_capacity(rows * cols), groups: Vec::new() };
    for row in w.chunks(cols) {
        for vals in row.chunks(gs) {
            let g = params(vals);
            choice.codes.extend(vals.iter().map(|&v| encode(format, v, g)));
            choice.groups.push(g);
        }
    }
    Ok(choice)
}

/// Plain round-to-nearest (the same codes as `PackedMatrix::quantize`).
pub fn rtn(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<PackedMatrix> {
    quantize_with(w, rows, cols, format, |vals| group_params(format, vals, 1.0))?.pack()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtn_matches_the_format_packer() {
        let (rows, cols) = (3, 70);
        let w = crate::synthetic::uniform(rows * cols, 5, 2.0);
        for f in WeightFormat::all().into_iter().filter(|f| f.bits() < 16) {
            let a = rtn(&w, rows, cols, f).unwrap();
            let b = PackedMatrix::quantize(&w, rows, cols, f).unwrap();
            assert_eq!((a.data, a.scales, a.zeros), (b.data, b.scales, b.zeros), "{}", f.name());
        }
    }

    #[test]
    fn from_codes_checks_its_input() {
        let q4z = WeightFormat::Q4 { group: 32, zero_point: true };
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[3; 40], &[0.5; 2], &[8; 2]).is_ok());
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[3; 39], &[0.5; 2], &[8; 2]).is_err(), "codes short");
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[3; 40], &[0.5; 1], &[8; 2]).is_err(), "scales short");
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[3; 40], &[0.5; 2], &[]).is_err(), "zeros missing");
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[16; 40], &[0.5; 2], &[8; 2]).is_err(), "code too wide");
        assert!(PackedMatrix::from_codes(q4z, 1, 40, &[3; 40], &[0.5; 2], &[16; 2]).is_err(), "zero too wide");
        assert!(PackedMatrix::from_codes(WeightFormat::Ternary, 0, 4, &[], &[], &[]).is_err(), "empty");
    }
}
