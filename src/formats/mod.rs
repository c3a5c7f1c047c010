//! Packing of every weight format, bit by bit as in `docs/FORMATS.md`.
//!
//! A matrix is `rows` output channels × `cols` inputs (a Linear's `weight`, or a conv weight
//! flattened to [out, in·kh·kw]). Each row is packed into whole u32 words, elements LSB first,
//! so a kernel reading row `r` starts at word `r * row_words`. Scales are f16, two per word,
//! numbered row-major over (row, group): scale `i` is the half `i & 1` of word `i >> 1`.
//! Q4 zero points are 4-bit, eight per word, numbered the same way.

pub mod wgsl;

use half::f16;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    /// int8 symmetric; `group: None` is one scale per output channel.
    Q8 { group: Option<usize> },
    /// 4-bit, group size 32/64/128, symmetric (q − 8) or with a 4-bit zero point (q − z).
    Q4 { group: usize, zero_point: bool },
    /// BitNet b1.58: {−1, 0, +1} in 2 bits, one absmean scale per output channel.
    Ternary,
    /// FP4 E2M1 with one f16 scale per group (16 or 32), as MXFP4/NVFP4.
    Fp4 { group: usize },
}

/// E2M1 magnitudes for codes 0..7 (bit 3 is the sign).
pub const FP4_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

impl WeightFormat {
    /// Bits per stored weight element.
    pub fn bits(self) -> usize {
        match self {
            WeightFormat::F32 => 32,
            WeightFormat::F16 => 16,
            WeightFormat::Q8 { .. } => 8,
            WeightFormat::Q4 { .. } | WeightFormat::Fp4 { .. } => 4,
            WeightFormat::Ternary => 2,
        }
    }

    pub fn per_word(self) -> usize {
        32 / self.bits()
    }

    /// Elements sharing one scale; `cols` for per-channel formats, 0 for unscaled floats.
    /// Bytes of a `rows × cols` matrix packed in this format (what `PackedMatrix::bytes`
    /// reports after `quantize`).
    pub fn packed_bytes(self, rows: usize, cols: usize) -> usize {
        let gs = self.group_size(cols);
        let groups = if gs == 0 { 0 } else { cols.div_ceil(gs) };
        let zeros = if matches!(self, WeightFormat::Q4 { zero_point: true, .. }) { (rows * groups).div_ceil(8) } else { 0 };
        4 * (rows * cols.div_ceil(self.per_word()) + (rows * groups).div_ceil(2) + zeros)
    }

    pub fn group_size(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 => 0,
            WeightFormat::Q8 { group } => group.unwrap_or(cols),
            WeightFormat::Q4 { group, .. } | WeightFormat::Fp4 { group } => group,
            WeightFormat::Ternary => cols,
        }
    }

    /// Short name used by the CLI, benchmarks and file metadata: f32, f16, q8, q8g32, q4g32,
    /// q4g128z, ternary, fp4g32, ...
    pub fn name(self) -> String {
        match self {
            WeightFormat::F32 => "f32".into(),
            WeightFormat::F16 => "f16".into(),
            WeightFormat::Q8 { group: None } => "q8".into(),
            WeightFormat::Q8 { group: Some(g) } => format!("q8g{g}"),
            WeightFormat::Q4 { group, zero_point } => format!("q4g{group}{}", if zero_point { "z" } else { "" }),
            WeightFormat::Ternary => "ternary".into(),
            WeightFormat::Fp4 { group } => format!("fp4g{group}"),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("unknown weight format `{s}` (f32, f16, q8, q8g32, q4g32, q4g64z, ternary, fp4g32, ...)"));
        let group = |t: &str| -> Result<usize> { t.parse().map_err(|_| bad()) };
        let f = match s {
            "f32" => WeightFormat::F32,
            "f16" => WeightFormat::F16,
            "q8" => WeightFormat::Q8 { group: None },
            "ternary" => WeightFormat::Ternary,
            "q4" => WeightFormat::Q4 { group: 32, zero_point: false },
            "fp4" => WeightFormat::Fp4 { group: 32 },
            _ => {
                if let Some(g) = s.strip_prefix("q8g") {
                    WeightFormat::Q8 { group: Some(group(g)?) }
                } else if let Some(rest) = s.strip_prefix("q4g") {
                    let (g, z) = match rest.strip_suffix('z') {
                        Some(g) => (g, true),
                        None => (rest, false),
                    };
                    WeightFormat::Q4 { group: group(g)?, zero_point: z }
                } else if let Some(g) = s.strip_prefix("fp4g") {
                    WeightFormat::Fp4 { group: group(g)? }
                } else {
                    return Err(bad());
                }
            }
        };
        f.validate()?;
        Ok(f)
    }

    fn validate(self) -> Result<()> {
        let ok = match self {
            WeightFormat::Q8 { group: Some(g) } => g >= 4 && g % 4 == 0,
            WeightFormat::Q4 { group, .. } => matches!(group, 32 | 64 | 128),
            WeightFormat::Fp4 { group } => matches!(group, 16 | 32),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            let allowed = match self {
                WeightFormat::Q8 { .. } => "a multiple of 4",
                WeightFormat::Q4 { .. } => "32, 64 or 128",
                _ => "16 or 32",
            };
            Err(Error::Invalid(format!("format {}: group size must be {allowed}", self.name())))
        }
    }

    /// Every format the kernels support, for tests and benchmarks.
    pub fn all() -> Vec<WeightFormat> {
        vec![
            WeightFormat::F32,
            WeightFormat::F16,
            WeightFormat::Q8 { group: None },
            WeightFormat::Q8 { group: Some(32) },
            WeightFormat::Q4 { group: 32, zero_point: false },
            WeightFormat::Q4 { group: 64, zero_point: true },
            WeightFormat::Q4 { group: 128, zero_point: false },
            WeightFormat::Ternary,
            WeightFormat::Fp4 { group: 32 },
        ]
    }
}

/// A packed weight matrix, ready to upload as-is.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    /// u32 words per row of `data`.
    pub row_words: usize,
    /// Scale groups per row (0 for F32/F16).
    pub groups: usize,
    pub data: Vec<u32>,
    /// f16 scales, two per word (empty for F32/F16).
    pub scales: Vec<u32>,
    /// 4-bit zero points, eight per word (Q4 with zero point only).
    pub zeros: Vec<u32>,
}

impl PackedMatrix {
    /// Quantizes a row-major `rows × cols` f32 matrix with round-to-nearest.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Self> {
        format.validate()?;
        if rows == 0 || cols == 0 {
            return Err(Error::Shape(format!("cannot pack a {rows}×{cols} matrix")));
        }
        if w.len() != rows * cols {
            return Err(Error::Shape(format!("weight has {} values, expected {rows}×{cols}", w.len())));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("weight value {} at index {i} is not finite", w[i])));
        }
        let per_word = format.per_word();
        let row_words = cols.div_ceil(per_word);
        let gs = format.group_size(cols);
        let groups = if gs == 0 { 0 } else { cols.div_ceil(gs) };
        let mut data = vec![0u32; rows * row_words];
        let mut scales_f = vec![0f32; rows * groups];
        let mut zeros_q = vec![0u32; if matches!(format, WeightFormat::Q4 { zero_point: true, .. }) { rows * groups } else { 0 }];
        let bits = format.bits();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let mut codes = vec![0u32; cols];
            match format {
                WeightFormat::F32 => codes.iter_mut().zip(row).for_each(|(c, v)| *c = v.to_bits()),
                WeightFormat::F16 => codes.iter_mut().zip(row).for_each(|(c, v)| *c = f16::from_f32(*v).to_bits() as u32),
                _ => {
                    for g in 0..groups {
                        let span = g * gs..((g + 1) * gs).min(cols);
                        let vals = &row[span.clone()];
                        let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let (scale, zero) = match format {
                            WeightFormat::Q8 { .. } => (absmax / 127.0, 0),
                            WeightFormat::Q4 { zero_point: false, .. } => (absmax / 7.0, 8),
                            WeightFormat::Q4 { zero_point: true, .. } => {
                                let lo = vals.iter().fold(0f32, |m, &v| m.min(v));
                                let hi = vals.iter().fold(0f32, |m, &v| m.max(v));
                                let s = (hi - lo) / 15.0;
                                let z = if s > 0.0 { (-lo / s).round().clamp(0.0, 15.0) as u32 } else { 8 };
                                (s, z)
                            }
                            WeightFormat::Ternary => (vals.iter().map(|v| v.abs()).sum::<f32>() / vals.len() as f32, 1),
                            WeightFormat::Fp4 { .. } => (absmax / 6.0, 0),
                            WeightFormat::F32 | WeightFormat::F16 => unreachable!(),
                        };
                        // The kernels see the f16-rounded scale; quantize against that one.
                        let scale = f16::from_f32(scale).to_f32();
                        scales_f[r * groups + g] = scale;
                        if !zeros_q.is_empty() {
                            zeros_q[r * groups + g] = zero;
                        }
                        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                        for (c, &v) in codes[span].iter_mut().zip(vals) {
                            *c = match format {
                                WeightFormat::Q8 { .. } => ((v * inv).round().clamp(-127.0, 127.0) as i32 as u32) & 0xff,
                                WeightFormat::Q4 { .. } => ((v * inv).round() + zero as f32).clamp(0.0, 15.0) as u32,
                                WeightFormat::Ternary => ((v * inv).round().clamp(-1.0, 1.0) + 1.0) as u32,
                                WeightFormat::Fp4 { .. } => fp4_encode(v * inv),
                                _ => unreachable!(),
                            };
                        }
                    }
                }
            }
            let out = &mut data[r * row_words..(r + 1) * row_words];
            for (i, c) in codes.iter().enumerate() {
                out[i / per_word] |= c << ((i % per_word) * bits);
            }
        }
        let scales = pack_f16(&scales_f);
        let zeros = pack_nibbles(&zeros_q);
        Ok(PackedMatrix { format, rows, cols, row_words, groups, data, scales, zeros })
    }

    /// Packs codes a quantization method chose: `codes` row-major `rows × cols` (the values
    /// `code` returns), `scales` and `zeros` row-major over (row, group). Zero points are only
    /// stored for Q4 with zero point; pass an empty `zeros` otherwise.
    pub fn from_codes(format: WeightFormat, rows: usize, cols: usize, codes: &[u32], scales: &[f32], zeros: &[u32]) -> Result<Self> {
        format.validate()?;
        let gs = format.group_size(cols);
        let groups = if gs == 0 { 0 } else { cols.div_ceil(gs) };
        let with_zeros = matches!(format, WeightFormat::Q4 { zero_point: true, .. });
        if rows == 0 || cols == 0 || codes.len() != rows * cols || scales.len() != rows * groups || zeros.len() != if with_zeros { rows * groups } else { 0 } {
            return Err(Error::Shape(format!(
                "from_codes: {} codes, {} scales, {} zeros do not fit a {rows}×{cols} {} matrix",
                codes.len(),
                scales.len(),
                zeros.len(),
                format.name()
            )));
        }
        let (bits, per_word) = (format.bits(), format.per_word());
        let limit = if bits == 32 { u32::MAX } else { (1u32 << bits) - 1 };
        if let Some(i) = codes.iter().position(|&c| c > limit) {
            return Err(Error::Invalid(format!("from_codes: code {} at {i} does not fit {bits} bits", codes[i])));
        }
        if let Some(i) = zeros.iter().position(|&z| z > 15) {
            return Err(Error::Invalid(format!("from_codes: zero point {} at {i} does not fit 4 bits", zeros[i])));
        }
        let row_words = cols.div_ceil(per_word);
        let mut data = vec![0u32; rows * row_words];
        for (r, row) in codes.chunks(cols).enumerate() {
            for (i, &c) in row.iter().enumerate() {
                data[r * row_words + i / per_word] |= if bits == 32 { c } else { c << ((i % per_word) * bits) };
            }
        }
        Ok(PackedMatrix { format, rows, cols, row_words, groups, data, scales: pack_f16(scales), zeros: pack_nibbles(zeros) })
    }

    /// The scale of (row, group) as the kernels read it.
    pub fn scale(&self, row: usize, group: usize) -> f32 {
        let i = row * self.groups + group;
        f16::from_bits((self.scales[i / 2] >> ((i % 2) * 16)) as u16).to_f32()
    }

    /// The code of zero in (row, group): the stored zero point, or the format's fixed one.
    pub fn zero(&self, row: usize, group: usize) -> f32 {
        match self.format {
            WeightFormat::Q4 { zero_point: true, .. } => {
                let i = row * self.groups + group;
                ((self.zeros[i / 8] >> ((i % 8) * 4)) & 0xf) as f32
            }
            WeightFormat::Q4 { zero_point: false, .. } => 8.0,
            WeightFormat::Ternary => 1.0,
            _ => 0.0,
        }
    }

    /// The stored code of element (row, col).
    pub fn code(&self, row: usize, col: usize) -> u32 {
        let bits = self.format.bits();
        let per_word = self.format.per_word();
        let word = self.data[row * self.row_words + col / per_word];
        if bits == 32 { word } else { (word >> ((col % per_word) * bits)) & ((1 << bits) - 1) }
    }

    /// The f32 value the kernels compute with for element (row, col).
    pub fn value(&self, row: usize, col: usize) -> f32 {
        let code = self.code(row, col);
        let g = match self.format.group_size(self.cols) {
            0 => 0,
            gs => col / gs,
        };
        match self.format {
            WeightFormat::F32 => f32::from_bits(code),
            WeightFormat::F16 => f16::from_bits(code as u16).to_f32(),
            WeightFormat::Q8 { .. } => (code as u8 as i8) as f32 * self.scale(row, g),
            WeightFormat::Q4 { .. } | WeightFormat::Ternary => (code as f32 - self.zero(row, g)) * self.scale(row, g),
            WeightFormat::Fp4 { .. } => fp4_decode(code) * self.scale(row, g),
        }
    }

    /// The whole matrix back in f32 (the CPU reference's view of the weights).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.value(r, c));
            }
        }
        out
    }

    /// Stacks matrices of one format and width by rows (q, k, v into one qkv matrix).
    pub fn concat_rows(parts: &[PackedMatrix]) -> Result<PackedMatrix> {
        let Some(first) = parts.first() else { return Err(Error::Shape("concat_rows: no matrices".into())) };
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return Err(Error::Shape("concat_rows: matrices differ in format or width".into()));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let groups = first.groups;
        // Scales and zero points are packed across row boundaries: unpack, stack, repack.
        let scales: Vec<f32> = parts.iter().flat_map(|p| (0..p.rows * groups).map(move |i| p.scale(i / groups.max(1), i % groups.max(1)))).collect();
        let zeros: Vec<u32> = parts.iter().flat_map(|p| (0..p.zeros.len() * 8).take(p.rows * groups).map(move |i| (p.zeros[i / 8] >> ((i % 8) * 4)) & 0xf)).collect();
        Ok(PackedMatrix {
            format: first.format,
            rows,
            cols: first.cols,
            row_words: first.row_words,
            groups,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            scales: if first.scales.is_empty() { Vec::new() } else { pack_f16(&scales) },
            zeros: pack_nibbles(&zeros),
        })
    }

    /// Bytes the kernels read: packed data + scales + zero points.
    pub fn bytes(&self) -> usize {
        4 * (self.data.len() + self.scales.len() + self.zeros.len())
    }

    /// Rows `range` as a matrix of its own (used to split a matrix across storage bindings).
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> PackedMatrix {
        let rows = range.len();
        let take_packed = |v: &[u32], per_word: usize| -> Vec<u32> {
            if v.is_empty() {
                return vec![];
            }
            let (start, n) = (range.start * self.groups, rows * self.groups);
            (0..n.div_ceil(per_word))
                .map(|w| {
                    (0..per_word)
                        .filter(|j| w * per_word + j < n)
                        .map(|j| {
                            let i = start + w * per_word + j;
                            let bits = 32 / per_word;
                            ((v[i / per_word] >> ((i % per_word) * bits)) & ((1u64 << bits) - 1) as u32) << (j * bits)
                        })
                        .fold(0, |a, b| a | b)
                })
                .collect()
        };
        PackedMatrix {
            rows,
            data: self.data[range.start * self.row_words..range.end * self.row_words].to_vec(),
            scales: take_packed(&self.scales, 2),
            zeros: take_packed(&self.zeros, 8),
            ..self.clone()
        }
    }
}

/// Nearest E2M1 code (sign in bit 3) for a value already divided by its scale.
pub fn fp4_encode(x: f32) -> u32 {
    let mag = x.abs();
    let mut best = 0;
    for (i, &v) in FP4_VALUES.iter().enumerate() {
        if (mag - v).abs() < (mag - FP4_VALUES[best]).abs() {
            best = i;
        }
    }
    best as u32 | if x < 0.0 && best != 0 { 8 } else { 0 }
}

pub fn fp4_decode(code: u32) -> f32 {
    let v = FP4_VALUES[(code & 7) as usize];
    if code & 8 != 0 { -v } else { v }
}

/// f32 → f16 bits, two per word (low half first).
pub fn pack_f16(v: &[f32]) -> Vec<u32> {
    v.chunks(2)
        .map(|c| {
            let lo = f16::from_f32(c[0]).to_bits() as u32;
            let hi = c.get(1).map_or(0, |x| f16::from_f32(*x).to_bits() as u32);
            lo | hi << 16
        })
        .collect()
}

fn pack_nibbles(v: &[u32]) -> Vec<u32> {
    v.chunks(8).map(|c| c.iter().enumerate().fold(0, |a, (j, &z)| a | (z & 0xf) << (4 * j))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32 * 0.1)).collect()
    }

    #[test]
    fn round_trip_error_is_bounded_by_the_step() {
        let (rows, cols) = (5, 77);
        let w = ramp(rows, cols);
        for f in WeightFormat::all() {
            let p = PackedMatrix::quantize(&w, rows, cols, f).unwrap();
            let d = p.dequantize();
            let nmse = crate::metrics::nmse(&d, &w);
            let bound = match f.bits() {
                32 => 0.0,
                16 => 1e-6,
                8 => 1e-4,
                4 => 2e-2,
                _ => 0.3,
            };
            assert!(nmse <= bound, "{}: nmse {nmse}", f.name());
            assert_eq!(WeightFormat::parse(&f.name()).unwrap(), f);
            assert_eq!(f.packed_bytes(rows, cols), p.bytes(), "{}", f.name());
            // Stacking packed parts equals packing the stacked matrix.
            let (top, bottom) = (PackedMatrix::quantize(&w[..2 * cols], 2, cols, f).unwrap(), PackedMatrix::quantize(&w[2 * cols..], rows - 2, cols, f).unwrap());
            let stacked = PackedMatrix::concat_rows(&[top, bottom]).unwrap();
            assert_eq!((stacked.data.clone(), stacked.scales.clone(), stacked.zeros.clone()), (p.data.clone(), p.scales.clone(), p.zeros.clone()), "{}", f.name());
        }
    }

    #[test]
    fn fp4_codes() {
        for code in 0..16 {
            if code == 8 {
                continue; // −0 encodes as +0
            }
            assert_eq!(fp4_encode(fp4_decode(code)), code);
        }
    }

    #[test]
    fn slicing_rows_keeps_values() {
        let (rows, cols) = (7, 40);
        let w = ramp(rows, cols);
        for f in WeightFormat::all() {
            let p = PackedMatrix::quantize(&w, rows, cols, f).unwrap();
            let s = p.slice_rows(3..6);
            assert_eq!(s.dequantize(), p.dequantize()[3 * cols..6 * cols].to_vec(), "{}", f.name());
        }
    }

    #[test]
    fn bad_input() {
        assert!(PackedMatrix::quantize(&[1.0; 6], 2, 4, WeightFormat::F32).is_err());
        assert!(PackedMatrix::quantize(&[f32::NAN; 4], 2, 2, WeightFormat::Ternary).is_err());
        assert!(WeightFormat::parse("q4g48").is_err());
        assert!(WeightFormat::parse("q3").is_err());
    }
}
