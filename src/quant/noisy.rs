//! NoisyQuant (CVPR'23): a fixed per-channel noise N is added to a Linear's input before its
//! activation quantizer, Q(X + N)·Wᵀ − N·Wᵀ, with the second term folded into the bias. The
//! noise spreads values that would all round the same way across neighbouring levels, so the
//! quantization error of the output averages out. The noise amplitude (in quantizer steps) is
//! searched per layer on the output error over the calibration inputs.

use super::actq::{fit, output_sse, Kind};
use crate::kernels::act_quant::ActQuantizer;
use crate::synthetic::Rng;
use crate::Result;

/// A layer's noise and the quantizer calibrated on X + N.
#[derive(Clone, Debug)]
pub struct Noisy {
    pub quantizer: ActQuantizer,
    pub noise: Vec<f32>,
}

/// Amplitudes tried, in steps of the plain quantizer (the noise is uniform in ±a/2 steps).
const AMPLITUDES: [f32; 4] = [0.25, 0.5, 0.75, 1.0];

/// The best noise for the input sample `x` [rows, cols] of a Linear with weight `w`
/// [out, cols], or None when no amplitude beats the plain quantizer `plain`.
pub fn search(x: &[f32], w: &[f32], cols: usize, plain: &ActQuantizer, seed: u64) -> Result<Option<Noisy>> {
    let ActQuantizer::Uniform { bits, scale, .. } = *plain else { return Ok(None) };
    let base = output_sse(&plain.reference(x), x, w, cols);
    let mut rng = Rng::new(seed);
    let unit: Vec<f32> = (0..cols).map(|_| rng.next_f32() * 0.5).collect();
    let mut best: Option<(f64, Noisy)> = None;
    for a in AMPLITUDES {
        let noise: Vec<f32> = unit.iter().map(|u| u * a * scale).collect();
        let shifted: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + noise[i % cols]).collect();
        let q = fit(Kind::Uniform, bits, &shifted)?;
        let x_hat: Vec<f32> = shifted.iter().enumerate().map(|(i, &v)| q.apply(v) - noise[i % cols]).collect();
        let e = output_sse(&x_hat, x, w, cols);
        if e < base && best.as_ref().is_none_or(|(b, _)| e < *b) {
            best = Some((e, Noisy { quantizer: q, noise }));
        }
    }
    Ok(best.map(|b| b.1))
}

/// β' = β − W·N: what keeps the float function unchanged once N is added to the input.
pub fn fold_bias(bias: &mut [f32], w: &[f32], noise: &[f32]) {
    for (b, row) in bias.iter_mut().zip(w.chunks(noise.len())) {
        *b -= row.iter().zip(noise).map(|(a, n)| *a as f64 * *n as f64).sum::<f64>() as f32;
    }
}
