//! The comparison metrics every kernel test and quality report uses.

/// Normalized mean squared error: mse(x, reference) / mse(reference, 0), as ggml's
/// test-backend-ops. 0 for identical outputs; 1 for an all-zero output.
pub fn nmse(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "nmse: length mismatch");
    let (mut err, mut norm) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(reference) {
        let d = a as f64 - b as f64;
        err += d * d;
        norm += (b as f64) * (b as f64);
    }
    if norm == 0.0 {
        return if err == 0.0 { 0.0 } else { f64::INFINITY };
    }
    err / norm
}

/// Cosine similarity of two vectors (1 = same direction).
pub fn cosine(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len(), "cosine: length mismatch");
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        xy += a as f64 * b as f64;
        xx += a as f64 * a as f64;
        yy += b as f64 * b as f64;
    }
    if xx == 0.0 || yy == 0.0 {
        return if xx == yy { 1.0 } else { 0.0 };
    }
    xy / (xx.sqrt() * yy.sqrt())
}

/// Relative L1: sum|x - ref| / sum|ref| (SageAttention's quality metric).
pub fn relative_l1(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "relative_l1: length mismatch");
    let (mut d, mut n) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(reference) {
        d += (a as f64 - b as f64).abs();
        n += (b as f64).abs();
    }
    if n == 0.0 { d } else { d / n }
}

/// Signal-to-quantization-noise ratio in dB.
pub fn sqnr_db(x: &[f32], reference: &[f32]) -> f64 {
    -10.0 * nmse(x, reference).log10()
}
