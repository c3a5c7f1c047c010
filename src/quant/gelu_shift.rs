//! AdaLog's post-GELU bias reparameterization: GELU outputs lie in [≈ −0.17, max), a range a
//! log quantizer cannot take (it has no negative codes). Shifting the input of fc2 by a constant
//! c ≥ −min makes it non-negative; AdaLog then quantizes x + c, and fc2's bias absorbs the shift
//! (β' = β − W·c), so the float function is unchanged: fc2(Q(x + c)) − W·c.
//!
//! The shift is searched on fc2's output error over the calibration inputs, and the shifted
//! AdaLog quantizer is kept only where it beats the plain uniform one on that error
//! (`act_calib` tries it at ≤ 6 activation bits: at 8 the uniform grid holds post-GELU values
//! and keeps fc2 in the integer kernel). The
//! shift travels as a constant NoisyQuant-style noise vector (`act_noise`), which the
//! activation-quantizer kernel already adds before quantizing.

use super::actq::{fit, output_sse, Kind};
use crate::kernels::act_quant::ActQuantizer;
use crate::Result;

/// Shifts tried, as multiples of −min (the smallest shift that makes every sample ≥ 0): a
/// larger shift moves the log grid's fine end away from the GELU minimum towards zero.
const SHIFTS: [f32; 6] = [1.0, 1.05, 1.2, 1.5, 2.0, 3.0];

/// The shifted AdaLog quantizer and its shift for fc2's input sample `x` [rows, cols] (weight
/// `w` [out, cols]), or None when none beats `plain` on the output error.
pub fn search(x: &[f32], w: &[f32], cols: usize, bits: u32, plain: &ActQuantizer) -> Result<Option<(ActQuantizer, f32)>> {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    if !min.is_finite() {
        return Ok(None);
    }
    // Never below a small positive shift: log2 of an exact zero is a wasted code.
    let base_shift = (-min).max(1e-3);
    let mut best = (output_sse(&plain.reference(x), x, w, cols), None);
    for c in SHIFTS.map(|k| k * base_shift) {
        let shifted: Vec<f32> = x.iter().map(|v| v + c).collect();
        let q = fit(Kind::AdaLog, bits, &shifted)?;
        let x_hat: Vec<f32> = shifted.iter().map(|&v| q.apply(v) - c).collect();
        let e = output_sse(&x_hat, x, w, cols);
        if e < best.0 {
            best = (e, Some((q, c)));
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::uniform;

    /// GELU (tanh form) of a bell-shaped pre-activation (a sum of three uniforms, with a few
    /// large values): the post-GELU shape fc2 sees.
    fn post_gelu(n: usize, seed: u64) -> Vec<f32> {
        let u = uniform(3 * n, seed, 1.5);
        let z: Vec<f32> = u.chunks(3).enumerate().map(|(i, c)| c.iter().sum::<f32>() * if i % 97 == 0 { 3.0 } else { 1.0 }).collect();
        z.iter().map(|&v| 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh())).collect()
    }

    #[test]
    fn shifted_adalog_makes_post_gelu_values_quantizable_and_beats_uniform_at_4_bits() {
        let cols = 64;
        let x = post_gelu(256 * cols, 7);
        let w = uniform(16 * cols, 8, 0.1);
        let plain = fit(Kind::Uniform, 4, &x).unwrap();
        let (q, c) = search(&x, &w, cols, 4, &plain).unwrap().expect("a shift that beats uniform at 4 bits");
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(c >= -min, "shift {c} leaves values below zero (min {min})");
        assert!(matches!(q, ActQuantizer::AdaLog { bits: 4, .. }));
        // What the search compared, recomputed: the shifted quantizer's output error is lower.
        let x_hat: Vec<f32> = x.iter().map(|&v| q.apply(v + c) - c).collect();
        assert!(output_sse(&x_hat, &x, &w, cols) < output_sse(&plain.reference(&x), &x, &w, cols));
        // Without a shift the log quantizer maps every negative value to 0.
        assert_eq!(q.apply(min), 0.0);
    }

    #[test]
    fn no_shift_is_returned_when_uniform_already_wins() {
        // Symmetric values: the shift wastes half of the log grid, and uniform keeps its place.
        let cols = 32;
        let x = uniform(128 * cols, 3, 1.0);
        let w = uniform(8 * cols, 4, 0.1);
        let plain = fit(Kind::Uniform, 8, &x).unwrap();
        assert!(search(&x, &w, cols, 8, &plain).unwrap().is_none());
    }
}
